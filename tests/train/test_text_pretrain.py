"""Stage 0b (``python -m train.text_pretrain``): object slots filled with text embeddings."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.utils.jsonl import JsonlRecords
from train.text_pretrain import build_sample, main, slot_features

from ..conftest import build_tiny


def test_build_sample_slots_follow_the_shuffled_box_list(records_path):
    rec = JsonlRecords(records_path).raw(1)
    slots, conv = build_sample(rec, np.random.default_rng(0), turns=5)
    assert sorted(slots) == sorted(r["phrase"] for r in rec["regions"])
    assert len(conv) == 10
    for q, a in zip(conv[::2], conv[1::2]):
        if a["content"].startswith("<ground>"):
            phrase = a["content"].split("<ground>")[1].split("</ground>")[0]
            indices = [int(i) for i in a["content"].split("<objects>")[1].replace("</objects>", "").replace("<obj", " ").replace(">", " ").split()]
            # A phrase query's answer points at the slots holding that phrase.
            assert all(slots[i] == phrase for i in indices) or not indices or phrase not in slots


def test_slot_features_are_mean_embeddings():
    emb = torch.nn.Embedding(10, 4)
    out = slot_features(emb, [[[1, 2], [3]]])
    assert torch.allclose(out[0][0], emb.weight[[1, 2]].mean(0)) and torch.allclose(out[0][1], emb.weight[3])


def test_processor_places_object_slots_without_an_image(tiny_tokenizer):
    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random"))
    model.attach_tokenizer(tiny_tokenizer)
    proc = ChatRexProcessor.from_model_config(model.config, tiny_tokenizer)
    ids, _ = proc.encode_sample([{"role": "user", "content": "find the red car"}], num_boxes=3, has_image=False)
    assert ids.count(model.config.objfeat_token_id) == 3 and model.config.image_token_id not in ids


def saved_tiny_model(tokenizer_dir, path):
    """A tiny random ChatRex and its processor saved at ``path`` (a stage-0 output stand-in)."""
    from transformers import AutoTokenizer

    model, processor = build_tiny("chatrex-tiny-random", AutoTokenizer.from_pretrained(tokenizer_dir))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.mark.slow
def test_text_pretraining_trains_only_the_llm(records_path, tiny_tokenizer_dir, tmp_path):
    init = saved_tiny_model(tiny_tokenizer_dir, tmp_path / "init")
    out = tmp_path / "text"
    assert main(["--init", str(init), "--records", records_path, "--out", str(out), "--steps", "30", "--batch-size", "2", "--turns", "2", "--log-every", "1"]) == 0
    before, after = load_file(os.path.join(init, "model.safetensors")), load_file(os.path.join(out, "final", "model.safetensors"))
    changed = {k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert "language_model" in changed and changed <= {"language_model", "lm_head"}, changed  # encoders and projectors untouched
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert len(losses) == 30
    # Single losses of batch 2 are noisy; the trend over 30 steps is not: the mean of the last
    # ten is clearly below the mean of the first ten (a flat or rising loss fails).
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.95 * first, (first, last, losses)  # measured: 6.92 -> 6.08


def test_reinit_sets_the_requested_scale():
    from train.text_pretrain import reinit

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(500, 64), torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    net[2].weight.data.fill_(3.0)
    reinit(net, 0.045)
    assert abs(net[0].weight.std().item() - 0.045) < 0.003 and abs(net[1].weight.std().item() - 0.045) < 0.005
    assert torch.equal(net[1].bias, torch.zeros(64)) and torch.equal(net[2].weight, torch.ones(64))


def test_training_loads_fp16_bundles_as_fp32(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from train.model_loading import load_model_and_processor

    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random"))
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model.attach_tokenizer(tok)
    model.half().save_pretrained(tmp_path)
    ChatRexProcessor.from_model_config(model.config, tok).save_pretrained(tmp_path)
    loaded, _ = load_model_and_processor(str(tmp_path))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_lookup_turns_put_each_index_right_after_its_phrase(records_path):
    import re

    rec = JsonlRecords(records_path).raw(0)
    slots, conv = build_sample(rec, np.random.default_rng(1), turns=4, lookup=1.0)
    assert len(conv) == 8 and all(t["content"] == "Name the box of each object." for t in conv[0::2])
    for answer in conv[1::2]:
        for phrase, k in re.findall(r"([a-z ]+?)<obj(\d+)>", answer["content"]):
            assert slots[int(k)] == phrase.strip()


def test_object_pointer_flag_turns_on_and_trains_the_head(records_path, tiny_tokenizer_dir, tmp_path):
    init = saved_tiny_model(tiny_tokenizer_dir, tmp_path / "init")
    out = tmp_path / "text"
    assert main(["--init", str(init), "--records", records_path, "--out", str(out), "--steps", "4", "--batch-size", "2", "--turns", "2",
                 "--log-every", "1", "--object-pointer"]) == 0
    trained = ChatRexForConditionalGeneration.from_pretrained(out / "final")
    assert trained.config.object_pointer_head and trained.config.object_reference_features
    assert not torch.equal(trained.object_pointer.query.weight, torch.eye(trained.config.text_config.hidden_size))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert any(r.get("index_acc") is not None for r in rows)  # the records' detection answers hold box indices


@pytest.mark.slow
def test_text_pretraining_resumes_exactly(records_path, tiny_tokenizer_dir, tmp_path):
    """The one training loop: a run stopped after step 2 (only its step-2 checkpoint left) and
    resumed ends bit-identical to the straight run; the samples depend only on (seed, key)."""
    init = saved_tiny_model(tiny_tokenizer_dir, tmp_path / "init")
    common = ["--init", str(init), "--records", records_path, "--steps", "4", "--batch-size", "2", "--turns", "2",
              "--save-every", "2", "--keep-checkpoints", "3", "--workers", "0", "--warmup-steps", "1"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    shutil.copytree(tmp_path / "a" / "checkpoint-00000002", tmp_path / "b" / "checkpoint-00000002")
    assert main(common + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (load_file(os.path.join(tmp_path, run, "final", "model.safetensors")) for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps must be positive"), (["--reinit-llm-std", "0"], "must be > 0"),
                                           (["--lookup", "2"], "--lookup must be in [0, 1]"), (["--max-minutes", "-1"], "--max-minutes must be positive"),
                                           (["--init", "chatrex-tiny-random"], "is a preset (random weights); give a ChatRex folder")])
def test_text_pretraining_argument_errors(args, message, records_path, tmp_path, capsys):
    init = ["--init", "chatrex-tiny"] if "--init" not in args else []
    assert main(init + ["--records", records_path, "--out", str(tmp_path)] + args) == 2
    assert message in capsys.readouterr().err


def test_index_accuracy_hand_case():
    from train.answer_metrics import index_accuracy

    obj = [10, 11, 12]
    labels = torch.tensor([[-100, 5, 10, 12, 3]])
    logits = torch.zeros(1, 5, 20)
    # position t predicts label t+1: 5 (not an index), 10 (right), 12 (wrong: 11), 3 (not an index)
    logits[0, 0, 5] = logits[0, 1, 10] = logits[0, 2, 11] = logits[0, 3, 3] = 1.0
    assert index_accuracy(logits, labels, obj) == 0.5
    assert index_accuracy(logits, torch.tensor([[-100, 5, 6, 7, 3]]), obj) is None
    assert index_accuracy(logits, labels, None) is None
