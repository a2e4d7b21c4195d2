"""The project's one JSONL reader: a torn last line is skipped, any other bad line raises."""

from __future__ import annotations

import json

import pytest

from chatrex.utils.jsonl import JsonlRecords, MalformedJsonlError, read_jsonl


def _write(path, text: str) -> str:
    path.write_bytes(text.encode())
    return str(path)


def test_rows_in_order_blank_lines_skipped(tmp_path):
    p = _write(tmp_path / "a.jsonl", '{"a": 1}\n\n{"a": 2}\n')
    assert list(read_jsonl(p)) == [{"a": 1}, {"a": 2}]
    assert list(read_jsonl(p, line_numbers=True)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_torn_last_line_is_skipped(tmp_path):
    # What a crash mid-write leaves: the last line cut short, without its newline.
    p = _write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, 2')
    assert list(read_jsonl(p)) == [{"a": 1}, {"a": 2}]
    assert len(JsonlRecords(p)) == 2


def test_complete_last_line_without_newline_is_kept(tmp_path):
    p = _write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": 2}')
    assert list(read_jsonl(p)) == [{"a": 1}, {"a": 2}]
    assert JsonlRecords(p).raw(1) == {"a": 2}


def test_malformed_line_elsewhere_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", '{"a": 1}\n{"a": oops}\n{"a": 3}\n')
    with pytest.raises(MalformedJsonlError, match=r"bad\.jsonl:2: not valid JSON") as info:
        list(read_jsonl(p))
    assert info.value.line_number == 2 and isinstance(info.value, ValueError)
    records = JsonlRecords(p)
    assert len(records) == 3 and records.raw(0) == {"a": 1}
    with pytest.raises(MalformedJsonlError, match=r"bad\.jsonl:2:"):
        records[1]


def test_a_torn_line_in_the_middle_is_not_a_crash_tail(tmp_path):
    # Two files concatenated after a crash: the torn line now ends with a newline, so it is data loss, not a tail.
    p = _write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(MalformedJsonlError, match=":2:"):
        list(read_jsonl(p))


def test_missing_file(tmp_path):
    assert list(read_jsonl(tmp_path / "none.jsonl", missing_ok=True)) == []
    with pytest.raises(FileNotFoundError):
        list(read_jsonl(tmp_path / "none.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JsonlRecords(str(tmp_path / "none.jsonl"))


def test_records_resolve_relative_image_paths_and_iterate(tmp_path):
    rows = [{"image": "images/0.png"}, {"image": "/abs/1.png"}]
    p = _write(tmp_path / "r.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    records = JsonlRecords(p)
    assert records[0]["image"] == str(tmp_path / "images" / "0.png") and records[-1]["image"] == "/abs/1.png"
    assert records.raw(0)["image"] == "images/0.png"
    assert [r["image"] for r in records] == [str(tmp_path / "images" / "0.png"), "/abs/1.png"]
    with pytest.raises(IndexError, match="out of range for 2 records"):
        records[2]


def test_the_model_package_never_imports_training_code():
    """chatrex (evaluation included) sits below train/, demo/ and data_engine/ and must not import them."""
    import pathlib
    import re

    import chatrex

    root = pathlib.Path(chatrex.__file__).parent
    pattern = re.compile(r"^\s*(from|import)\s+(train|demo|data_engine)\b", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == [] or offenders == ["cli/main.py"], offenders  # the CLI dispatches to the other packages
