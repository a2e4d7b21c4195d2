"""``python -m data_engine.proposals --batch-size N``: the same proposals as one image at a time.

UPN pads a batch of different-size images to a common size, and padding changes the boxes (the
backbone's convolutions and GroupNorm see the padded area), so the CLI batches only images that
UPN resizes to the same size. The records here have three sizes on purpose.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from chatrex.utils.atomic import TEMP_PREFIX
from data_engine import proposals
from data_engine.synthetic.generator import write_split

# Record sizes (width, height): five squares (one batch of 4, then a partial batch of 1 at
# --batch-size 4), a landscape and a portrait crop (UPN resizes them to 384x255 and 240x384).
CROPS = {2: (0, 0, 256, 170), 5: (0, 0, 160, 256)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two threads make this module 3-5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
    """Seven records, images of three sizes: ``(folder, records.jsonl)``."""
    root = tmp_path_factory.mktemp("proposals")
    write_split(root, "test", 7, seed=2, size=256, progress=False)
    path = root / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, box in CROPS.items():
        name = f"images/crop_{i}.png"
        Image.open(root / records[i]["image"]).crop(box).save(root / name)
        records[i] = {"id": records[i]["id"] + "-crop", "image": name}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, path


def run(records, out, *extra) -> list[dict]:
    assert proposals.main([str(records), "--upn", "upn-tiny", "--out", str(out), *extra]) == 0
    assert not [n for n in os.listdir(os.path.dirname(os.path.abspath(out))) if n.startswith(TEMP_PREFIX)]
    return [json.loads(line) for line in open(out)]


@pytest.fixture(scope="module")
def one_at_a_time(mixed_records, tmp_path_factory):
    return run(mixed_records[1], tmp_path_factory.mktemp("bs1") / "out.jsonl", "--batch-size", "1")


def assert_same_proposals(got: list[dict], want: list[dict]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want]  # input order kept
    for a, b in zip(got, want):
        assert len(a["proposals"]) == len(b["proposals"]), a["id"]
        for p, q in zip(a["proposals"], b["proposals"]):
            assert p["granularity"] == q["granularity"], a["id"]
            assert p["box"] == pytest.approx(q["box"], abs=1e-4), a["id"]
            # Scores are written with 4 decimals; batched matmuls differ from single ones by ~5e-7,
            # which can move a score across a rounding boundary: one unit of the 4th decimal at most.
            assert p["score"] == pytest.approx(q["score"], abs=1e-4 + 1e-9), a["id"]


def test_batches_give_the_single_image_proposals(mixed_records, one_at_a_time, tmp_path):
    root, records = mixed_records
    sizes = {Image.open(root / r["image"]).size for r in map(json.loads, open(records))}
    assert len(sizes) == 3
    assert sum(len(r["proposals"]) for r in one_at_a_time) > 50  # real boxes to compare
    assert_same_proposals(run(records, tmp_path / "bs4.jsonl", "--batch-size", "4"), one_at_a_time)


def test_shard_and_limit_with_batches(mixed_records, one_at_a_time, tmp_path):
    got = run(mixed_records[1], tmp_path / "shard.jsonl", "--batch-size", "4", "--limit", "6", "--shard", "1/2")
    assert_same_proposals(got, one_at_a_time[:6][1::2])


def test_forward_passes_are_same_size_and_at_most_the_batch_size():
    from upn.config import ImageConfig

    class Spy:  # records each predict_batch call: no model needed
        image_config = ImageConfig(short_side=384, max_size=384)

        def __init__(self):
            self.calls = []

        def predict_batch(self, images, **kwargs):
            self.calls.append([im.size for im in images])
            return [im.size for im in images]

    spy = Spy()
    # Every square is resized to 384x384, whatever its size: one group of five.
    sizes = [(256, 256), (256, 170), (256, 256), (512, 512), (160, 256), (256, 256), (100, 100)]
    images = [Image.new("RGB", s) for s in sizes]
    batches = []
    out = proposals.predict_grouped(spy, images, 2, on_batch=batches.append)
    assert out == sizes  # results in input order
    assert batches == [2, 2, 1, 1, 1]  # the five squares (one resized size) in 2 + 2 + 1
    assert spy.calls[0] == [(256, 256), (256, 256)] and spy.calls[1] == [(512, 512), (256, 256)]
    assert sorted(len(c) for c in spy.calls) == [1, 1, 1, 2, 2]


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_batch_size_must_be_positive(value, mixed_records, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        proposals.main([str(mixed_records[1]), "--upn", "upn-tiny", "--out", str(tmp_path / "o.jsonl"), "--batch-size", value])
    assert exc.value.code == 2
    assert f"argument --batch-size: must be an integer >= 1, got '{value}'" in capsys.readouterr().err


def test_a_corrupt_image_names_its_record(mixed_records, tmp_path, capsys):
    root, records = mixed_records
    rows = [json.loads(line) for line in open(records)]
    (root / "images" / "broken.png").write_bytes(b"not a png")
    rows[3]["image"] = "images/broken.png"
    bad = root / "with_broken.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    assert proposals.main([str(bad), "--upn", "upn-tiny", "--out", str(out), "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4 (id {rows[3]['id']!r})" in err and "broken.png" in err, err
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]


def test_default_batch_size_on_cpu_is_one(mixed_records, one_at_a_time, tmp_path, monkeypatch):
    sizes = []
    grouped = proposals.predict_grouped

    def spy(predictor, images, batch_size, **kwargs):
        sizes.append(batch_size)
        return grouped(predictor, images, batch_size, **kwargs)

    monkeypatch.setattr(proposals, "predict_grouped", spy)
    got = run(mixed_records[1], tmp_path / "default.jsonl", "--limit", "1")
    assert sizes == [proposals.DEFAULT_BATCH_SIZE["cpu"]] == [1]
    assert_same_proposals(got, one_at_a_time[:1])
