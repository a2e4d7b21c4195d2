"""chatrex.utils.atomic: a file or folder shows up under its name only complete; an exception or
a Ctrl-C inside the block keeps the old one and leaves no temporary behind."""

import os

import pytest

from chatrex.utils.atomic import TEMP_PREFIX, atomic_path, atomic_write, publish_dir_once, replace_dir, temp_dir_for


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "out.jsonl"
    with atomic_write(target, encoding="utf-8") as f:
        f.write('{"a": 1}\n')
        f.flush()
        assert not target.exists()  # written so far, but not yet under its name
        f.write('{"b": "é"}\n')
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    assert _leftovers(tmp_path) == []


def test_it_replaces_an_existing_file_whole(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old and much longer content\n")
    with atomic_write(str(target), fsync=True) as f:
        f.write("new\n")
    assert target.read_text() == "new\n"


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_an_error_inside_the_block_keeps_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(type(error)):
        with atomic_write(target) as f:
            f.write("half of the new")
            raise error
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_an_error_without_an_old_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "out.txt") as f:
            f.write("x")
            raise ValueError("bad row")
    assert os.listdir(tmp_path) == []


def test_binary_mode_writes_bytes_unchanged(tmp_path):
    data = bytes(range(256)) + b"\r\n\n"
    with atomic_write(tmp_path / "blob.bin", "wb") as f:
        f.write(data)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_a_mode_that_does_not_write_a_new_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    assert os.listdir(tmp_path) == []


def test_the_path_variant_moves_what_the_writer_wrote(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(TEMP_PREFIX)
        assert not tmp.endswith(".pt")  # a listing of *.pt never sees a half-written file
        with open(tmp, "wb") as f:  # stands for torch.save(obj, tmp)
            f.write(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_the_path_variant_deletes_a_half_written_file(tmp_path, error):
    target = tmp_path / "image.png"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise error
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_the_path_variant_names_the_file_when_nothing_was_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="out.json"):
        with atomic_path(tmp_path / "out.json"):
            pass
    assert not (tmp_path / "out.json").exists()


def test_two_writers_of_one_file_get_different_temporaries(tmp_path):
    with atomic_path(tmp_path / "x") as a, atomic_path(tmp_path / "x") as b:
        assert a != b
        for tmp in (a, b):
            open(tmp, "w").close()


def test_replace_dir_swaps_in_a_complete_folder(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "stale.bin").write_text("from the previous save")
    with replace_dir(target) as tmp:
        assert tmp == temp_dir_for(target) and os.listdir(tmp) == []
        (tmp_path / tmp / "weights.bin").write_text("new")
        assert (target / "stale.bin").exists()  # the old folder is whole until the block ends
    assert os.listdir(target) == ["weights.bin"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_replace_dir_keeps_the_old_folder_on_error(tmp_path, error):
    target = tmp_path / "final"
    target.mkdir()
    (target / "model.bin").write_text("old")
    with pytest.raises(type(error)):
        with replace_dir(str(target)) as tmp:
            open(os.path.join(tmp, "model.bin"), "w").close()
            raise error
    assert os.listdir(target) == ["model.bin"] and (target / "model.bin").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_replace_dir_clears_a_crashed_runs_leftover_and_creates_a_new_folder(tmp_path):
    leftover = temp_dir_for(tmp_path / "final")
    os.makedirs(leftover)
    open(os.path.join(leftover, "torn.bin"), "w").close()
    with replace_dir(tmp_path / "final") as tmp:
        assert os.listdir(tmp) == []
        open(os.path.join(tmp, "ok.bin"), "w").close()
    assert os.listdir(tmp_path / "final") == ["ok.bin"]


def test_replace_dir_for_a_non_owner_only_names_the_folder(tmp_path):
    """Other ranks of a distributed save write into the owner's folder and never swap it."""
    with replace_dir(tmp_path / "ckpt", owner=False) as tmp:
        assert tmp == temp_dir_for(tmp_path / "ckpt") and not os.path.exists(tmp)
    assert os.listdir(tmp_path) == []


def test_publish_dir_once_appears_complete_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "cache" / "entry"
    with publish_dir_once(target) as tmp:
        assert not target.exists()  # nothing under its name before the block ends
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write("{}")
    assert (target / "config.json").read_text() == "{}"
    assert _leftovers(target.parent) == []


def test_publish_dir_once_the_first_of_two_racing_writers_wins(tmp_path):
    target = tmp_path / "entry"
    with publish_dir_once(target) as slow:
        with publish_dir_once(target) as fast:  # finishes while the slow one is still writing
            with open(os.path.join(fast, "who"), "w") as f:
                f.write("fast")
        with open(os.path.join(slow, "who"), "w") as f:
            f.write("slow")
    assert (target / "who").read_text() == "fast"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_publish_dir_once_publishes_nothing_on_error(tmp_path, error):
    target = tmp_path / "entry"
    with pytest.raises(error):
        with publish_dir_once(target) as tmp:
            with open(os.path.join(tmp, "half"), "w") as f:
                f.write("x")
            raise error()
    assert not target.exists()
    assert _leftovers(tmp_path) == []
