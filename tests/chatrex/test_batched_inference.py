"""The shared image prefix and batched questions give the answers of one full prompt at a time,
on the bundled model and every example image (chatrex.prompt_cache)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from chatrex.predictor import ChatRexPredictor
from chatrex.prompt_cache import generated_rows, prefix_length

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONTENTS = json.loads((EXAMPLES / "contents.json").read_text())


def _queries(entry: dict) -> list[str]:
    """Every object's category, phrase and referring expression, and two with no target."""
    out = [q for o in entry["objects"] for q in (o["category"], o["phrase"], o["referring"])]
    return list(dict.fromkeys(out + ["giraffe", "the checkered green star"]))


@pytest.fixture(scope="module")
def predictor():
    return ChatRexPredictor.from_pretrained("chatrex-tiny")


@pytest.fixture(scope="module")
def full_prompts(predictor):
    """Today's reference: every question runs its whole prompt (no shared prefix)."""
    return ChatRexPredictor(predictor.model, predictor.processor, predictor.upn, share_prefix=False)


@pytest.fixture(scope="module")
def images():
    return {e["image"]: Image.open(EXAMPLES / e["image"]).convert("RGB") for e in CONTENTS}


@pytest.fixture(scope="module")
def reference(full_prompts, images):
    """{image: [Detection, ...]} one full prompt at a time."""
    out = {}
    for entry in CONTENTS:
        full_prompts.set_image(images[entry["image"]])
        out[entry["image"]] = [full_prompts.detect(q) for q in _queries(entry)]
    return out


@pytest.mark.parametrize("entry", CONTENTS, ids=lambda e: e["image"])
@pytest.mark.slow
def test_shared_prefix_gives_the_full_prompt_answers(predictor, images, reference, entry):
    predictor.set_image(images[entry["image"]])
    answers = [predictor.detect(q) for q in _queries(entry)]
    assert [d.answer for d in answers] == [d.answer for d in reference[entry["image"]]]
    assert any(d.indices for d in answers)  # the comparison covers real box answers


@pytest.mark.parametrize("entry", CONTENTS, ids=lambda e: e["image"])
@pytest.mark.slow
def test_detect_batch_equals_one_at_a_time(predictor, images, reference, entry):
    predictor.set_image(images[entry["image"]])
    batched = predictor.detect_batch(_queries(entry), batch_size=4)  # a partial last batch too
    ref = reference[entry["image"]]
    assert [(d.phrase, d.answer, d.indices, d.boxes, d.prompt) for d in batched] == [(d.phrase, d.answer, d.indices, d.boxes, d.prompt) for d in ref]


@pytest.mark.slow
def test_detect_images_equals_image_by_image(predictor, images, reference):
    names = [e["image"] for e in CONTENTS]
    # Each image twice with different phrases, in an order that mixes images within a batch.
    pairs = [(n, _queries(e)[k]) for k in (0, 3) for n, e in zip(names, CONTENTS)]
    before = predictor.set_image(images[names[0]]), predictor.boxes.clone()
    out = predictor.detect_images([images[n] for n, _ in pairs], [q for _, q in pairs], batch_size=4)
    expected = {(n, d.phrase): d.answer for n in names for d in reference[n]}
    assert [d.answer for d in out] == [expected[p] for p in pairs]
    assert torch.equal(predictor.boxes, before[1])  # the current image is unchanged


@pytest.mark.slow
def test_ask_batch_and_history_share_the_prefix_with_the_same_answers(predictor, full_prompts, images):
    questions = ["Describe the image.", "Where is the boat?", "What is in the image?"]
    for p in (predictor, full_prompts):
        p.set_image(images["scene1.png"])
    assert [a.raw for a in predictor.ask_batch(questions, batch_size=2)] == [full_prompts.ask(q).raw for q in questions]
    first = full_prompts.ask("Where is the boat?")
    follow = "What colour is it?"
    assert predictor.ask(follow, history=[("Where is the boat?", first)]).raw == full_prompts.ask(follow, history=[("Where is the boat?", first)]).raw


def test_the_image_prefix_runs_once_per_image(predictor, images):
    lengths = []
    hook = predictor.model.model.language_model.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        predictor.set_image(images["scene3.png"].rotate(90))  # an image not seen yet
        for q in ("car", "lamp", "the large hexagon"):
            predictor.detect(q)
        predictor.detect_batch(["house", "square"])
    finally:
        hook.remove()
    image_tokens = predictor.processor.num_image_tokens
    assert len([n for n in lengths if n > image_tokens]) == 1, lengths  # only the prefix holds the visual tokens


def test_batch_arguments_are_checked_before_any_work(predictor, images):
    predictor.set_image(images["scene1.png"])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        predictor.detect_batch(["boat"], batch_size=0)
    with pytest.raises(ValueError, match="phrase is empty"):
        predictor.detect_batch(["boat", "  "])
    with pytest.raises(ValueError, match="2 images but 1 phrases"):
        predictor.detect_images([images["scene1.png"]] * 2, ["boat"])
    assert predictor.detect_batch([]) == []


def test_prefix_ends_at_the_last_placeholder():
    assert prefix_length([1, 7, 7, 2, 9, 9, 3, 4], (7, 9)) == 6
    assert prefix_length([1, 2, 3], (7, None)) == 0


def test_generated_rows_cut_at_stop_and_budget():
    out = torch.tensor([[5, 5, 1, 2, 0, 8], [5, 5, 3, 4, 6, 0]])
    assert generated_rows(out, 2, budgets=[4, 2], stop_ids=[0]) == [[1, 2, 0], [3, 4]]


@pytest.mark.slow
def test_ask_images_equals_image_by_image(predictor, full_prompts, images):
    question = predictor.prompts.grounded_caption
    batched = predictor.ask_images(list(images.values()), question, max_new_tokens=48, batch_size=2)
    expected = []
    for image in images.values():
        full_prompts.set_image(image)
        expected.append(full_prompts.ask(question, max_new_tokens=48).raw)
    assert [a.raw for a in batched] == expected


@pytest.mark.slow
def test_data_engine_grounding_batches_each_images_phrases(predictor, reference, images):
    from data_engine.backends import chatrex_backend

    backend = chatrex_backend.ChatRexBackend()
    chatrex_backend.shared_predictor.cache_clear()
    original = chatrex_backend.shared_predictor
    chatrex_backend.shared_predictor = lambda model, device="cpu": predictor
    try:
        entry = CONTENTS[0]
        texts = _queries(entry)[:6]
        found = backend.ground([images[entry["image"]]], [texts])[0]
    finally:
        chatrex_backend.shared_predictor = original
    expected = [(d.phrase, tuple(b)) for d in reference[entry["image"]][:6] for b in d.boxes]
    assert [(g.phrase, g.box) for g in found] == expected and expected


@pytest.mark.parametrize("task", ["detection", "referring", "region"])
@pytest.mark.slow
def test_eval_metrics_do_not_depend_on_the_batch_size(predictor, tmp_path_factory, task):
    from chatrex.evaluation.runner import evaluate
    from data_engine.synthetic.generator import write_split

    data = tmp_path_factory.getbasetemp() / "eval4"
    if not (data / "records.jsonl").exists():
        write_split(data, "test", 4, seed=11, size=384)
    one, eight = (evaluate("", str(data), task, predictor=predictor, progress=False, per_image=5, batch_size=b).metrics for b in (1, 4))
    one.pop("seconds"), eight.pop("seconds")
    assert one == eight and one.get("queries", one.get("regions")) >= 12


@pytest.mark.slow
def test_detect_images_of_different_sizes_equals_image_by_image(predictor, full_prompts, images):
    """UPN would give a padded image other boxes; batches hold one resized size only."""
    scene = images["scene1.png"]
    mixed = [scene, scene.crop((0, 0, 384, 268)), scene.crop((0, 60, 240, 384)), images["scene2.png"].crop((0, 0, 384, 300))]
    phrases = ["boat", "house", "tree", "star"]
    out = predictor.detect_images(mixed, phrases, batch_size=4)
    expected = []
    for image, phrase in zip(mixed, phrases):
        full_prompts.set_image(image)
        expected.append((full_prompts.boxes.tolist(), full_prompts.detect(phrase).answer))
    assert [d.answer for d in out] == [a for _, a in expected]
    for image, (boxes, _) in zip(mixed, expected):
        predictor.set_image(image)
        torch.testing.assert_close(predictor.boxes, torch.tensor(boxes), atol=1e-3, rtol=0)
