"""Hugging Face backends on tiny random checkpoints saved to disk: wiring, not quality.

Each fixture builds a random model plus its processor/tokenizer, saves both with
``save_pretrained`` and the backend loads them back with ``from_pretrained`` (no downloads).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_engine.backends.base import Captioner, GroundedBox, Grounder, RegionCaptioner, RegionText, Rewriter, Verifier
from data_engine.backends.hf import (
    HFCaptioner,
    HFGrounder,
    HFRegionCaptioner,
    HFRewriter,
    HFVerifier,
    best_phrase,
    coarse_position,
    head_noun,
)

# Qwen tokenizer specials: the image placeholder for the tiny Llava, ChatML for the chat template.
IMAGE_TOKEN = "<|image_pad|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}" + IMAGE_TOKEN + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GD_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "the", "cat", "dog", "red", "car", "tree", "blue"]


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def images():
    # Different sizes and aspect ratios so that pixel scaling and OWLv2's square padding matter.
    return [_image(120, 160, 0), _image(90, 60, 1), _image(64, 64, 2)]


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory):
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    # Byte-level CLIP vocab without merges; the specials go last because OWL pools the text at the
    # argmax token id (must be EOS) and masks queries whose first id (BOS) is 0.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)  # OWL pads queries to 16
    processor = Owlv2Processor(Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = Owlv2Config(
        text_config=dict(small, vocab_size=len(vocab), max_position_embeddings=16,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(small, image_size=64, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config)
    # The random box head saturates the sigmoid into zero-width boxes; zeroing its last layer
    # leaves OWL's patch-grid prior, so some boxes land in the square padding and get clipped.
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    path = tmp_path_factory.mktemp("owlv2")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gdino_dir(tmp_path_factory):
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    path = tmp_path_factory.mktemp("gdino")
    (path / "vocab.txt").write_text("\n".join(GD_WORDS) + "\n")
    processor = GroundingDinoProcessor(
        GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        BertTokenizer(str(path / "vocab.txt")),
    )
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(GD_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        # d_model must be a multiple of 32 (GroupNorm); decoder_layers >= 2 for the tied box heads.
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=12, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, disable_custom_kernels=True,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


def _tiny_qwen2(qwen_tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(qwen_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                       tie_word_embeddings=True)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, qwen_tokenizer):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=qwen_tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=16),
        text_config=_tiny_qwen2(qwen_tokenizer),
        image_token_id=qwen_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def causal_lm_dir(tmp_path_factory, qwen_tokenizer):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(_tiny_qwen2(qwen_tokenizer)).save_pretrained(path)
    qwen_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["owlv2", "gdino"])
def grounder(request):
    return HFGrounder(request.getfixturevalue(f"{request.param}_dir"))


@pytest.fixture(scope="module")
def captioner(llava_dir):
    return HFCaptioner(llava_dir, max_new_tokens=8)


@pytest.fixture(scope="module")
def verifier(causal_lm_dir):
    return HFVerifier(causal_lm_dir)


@pytest.fixture(scope="module")
def rewriter(causal_lm_dir):
    return HFRewriter(causal_lm_dir, max_new_tokens=8)


PHRASES = [["a cat", "a dog"], ["a red car"], []]


def test_grounder_boxes_are_pixel_xyxy_inside_the_image_with_input_phrases(grounder, images):
    out = grounder.ground(images, PHRASES)
    assert len(out) == len(images)
    assert out[2] == []  # no phrases: no boxes, and no model call needed
    for boxes, image, phrases in zip(out[:2], images, PHRASES):
        assert boxes, "a random detector at threshold 0 still scores its queries above 0"
        for gb in boxes:
            assert isinstance(gb, GroundedBox)
            # OWLv2 pads "a red car" to two queries; the padding query must never surface.
            assert gb.phrase in phrases
            x1, y1, x2, y2 = gb.box
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            assert 0.0 <= gb.score <= 1.0
    # Boxes are scaled to each image, not left normalised: some coordinate exceeds 1 pixel.
    assert max(max(gb.box) for gb in out[0]) > 1.0


def test_grounder_is_deterministic_and_reports_provenance(grounder, images, owlv2_dir, gdino_dir):
    assert isinstance(grounder, Grounder)
    assert grounder.ground(images, PHRASES) == grounder.ground(images, PHRASES)
    prov = grounder.provenance()
    assert prov["backend"] == "hf" and prov["model"] in (owlv2_dir, gdino_dir) and prov["task"] == "grounding"
    assert prov["model_type"] in ("owlv2", "grounding-dino")


def test_grounder_threshold_filters(grounder, images):
    low = grounder.ground(images[:2], PHRASES[:2])
    grounder.box_threshold = 1.01
    try:
        assert grounder.ground(images[:2], PHRASES[:2]) == [[], []]
    finally:
        grounder.box_threshold = 0.0
    assert sum(map(len, low)) > 0


def test_grounder_batching_matches_one_by_one(grounder, images):
    # Same-size images: Grounding DINO pads a batch to its largest image and its backbone sees
    # that padding, so only equal sizes are batch-independent; query-list padding must not matter.
    ims = [images[0], _image(120, 160, 3)]
    together = grounder.ground(ims, PHRASES[:2])
    alone = [grounder.ground([im], [ph])[0] for im, ph in zip(ims, PHRASES[:2])]
    for a, b in zip(together, alone):
        assert [g.phrase for g in a] == [g.phrase for g in b]
        np.testing.assert_allclose([g.box for g in a], [g.box for g in b], atol=1e-3)


def test_grounder_rejects_bad_inputs(grounder, images):
    with pytest.raises(ValueError, match="2 images but 1 phrase lists"):
        grounder.ground(images[:2], [["a cat"]])
    with pytest.raises(ValueError, match=r"phrases\[0\]\[1\]"):
        grounder.ground(images[:1], [["a cat", "  "]])
    assert grounder.ground([], []) == []


def test_best_phrase_maps_detector_labels_back():
    phrases = ["a cat", "a red car"]
    assert best_phrase("red car.", phrases) == "a red car"
    assert best_phrase("car", phrases) == "a red car"
    assert best_phrase("a cat. a red car.", phrases) == "a red car"  # both named: more of the label wins
    assert best_phrase("cat. dog. [SEP]".replace("[SEP]", ""), ["a cat", "a dog"]) == "a cat"  # full tie: earlier
    assert best_phrase("a", phrases) is None  # articles alone name nothing
    assert best_phrase("", phrases) is None
    assert best_phrase("tree", phrases) is None


def test_captioner_returns_one_stripped_string_per_image(captioner, images, llava_dir):
    assert isinstance(captioner, Captioner)
    caps = captioner.caption(images)
    assert len(caps) == len(images)
    assert all(isinstance(c, str) and c == c.strip() for c in caps)
    assert captioner.caption(images) == caps
    assert captioner.caption([]) == []
    assert captioner.provenance() == {"backend": "hf", "model": llava_dir, "task": "caption"}


def test_region_captioner_describes_each_box(captioner, images):
    rc = HFRegionCaptioner(captioner)
    assert isinstance(rc, RegionCaptioner)
    boxes = [(10, 20, 60, 90), (100.5, 0, 160, 120), (0, 0, 1, 1)]
    phrases = ["a red car", "two fluffy puppies", "the glasses"]
    out = rc.describe(images[0], boxes, phrases)
    assert len(out) == 3 and all(isinstance(r, RegionText) for r in out)
    assert [r.category for r in out] == ["car", "puppy", "glass"]
    assert [r.phrase for r in out] == phrases
    assert all(r.description for r in out)
    assert rc.describe(images[0], boxes, phrases) == out
    assert rc.describe(images[0], [], []) == []
    assert rc.provenance()["task"] == "region_caption" and rc.provenance()["backend"] == "hf"


def test_region_captioner_rejects_bad_boxes(captioner, images):
    rc = HFRegionCaptioner(captioner)
    with pytest.raises(ValueError, match="outside the 160x120 image"):
        rc.describe(images[0], [(10, 10, 170, 50)], ["a car"])
    with pytest.raises(ValueError, match="x2 > x1"):
        rc.describe(images[0], [(50, 10, 40, 50)], ["a car"])
    with pytest.raises(ValueError, match="2 boxes but 1 phrases"):
        rc.describe(images[0], [(0, 0, 5, 5), (1, 1, 4, 4)], ["a car"])


@pytest.mark.parametrize(
    "phrase, noun",
    [("a red car", "car"), ("Two CATS", "cat"), ("boxes", "box"), ("the bus", "bus"), ("puppies", "puppy"),
     ("houses", "house"), ("a cactus", "cactus"), ("people", "person")],
)
def test_head_noun(phrase, noun):
    assert head_noun(phrase) == noun


def test_verifier_scores_are_probabilities_and_batch_independent(verifier, causal_lm_dir):
    assert isinstance(verifier, Verifier)
    pairs = [("a red car", "a small red car with black wheels"), ("dog", "a cat"),
             ("the tall man in a blue shirt", "x")]
    scores = verifier.scores(pairs)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    flags = verifier.consistent(pairs)
    assert flags == [s >= verifier.threshold for s in scores] and all(type(f) is bool for f in flags)
    # Left padding must not change a pair's score: score each pair alone and compare.
    np.testing.assert_allclose([verifier.scores([p])[0] for p in pairs], scores, atol=1e-5)
    assert verifier.scores(pairs) == scores
    assert verifier.consistent([]) == []
    assert verifier.provenance() == {"backend": "hf", "model": causal_lm_dir, "task": "verify"}


def test_verifier_threshold_decides(verifier):
    pairs = [("a red car", "a red car"), ("dog", "a cat")]
    old = verifier.threshold
    try:
        verifier.threshold = 0.0
        assert verifier.consistent(pairs) == [True, True]
        verifier.threshold = 1.01
        assert verifier.consistent(pairs) == [False, False]
    finally:
        verifier.threshold = old


def test_rewriter_returns_a_single_line(rewriter, images, causal_lm_dir):
    assert isinstance(rewriter, Rewriter)
    boxes = [(10, 20, 60, 90), (100, 0, 160, 120)]
    region = RegionText(category="car", phrase="red car", description="a small red car")
    text = rewriter.referring(images[0], boxes, 1, region)
    assert isinstance(text, str) and text and text == text.strip() and "\n" not in text
    assert rewriter.referring(images[0], boxes, 1, region) == text
    with pytest.raises(ValueError, match="index=2"):
        rewriter.referring(images[0], boxes, 2, region)
    with pytest.raises(ValueError, match="outside"):
        rewriter.referring(images[1], boxes, 1, region)
    assert rewriter.provenance() == {"backend": "hf", "model": causal_lm_dir, "task": "rewrite"}


def test_rewriter_keeps_the_first_non_empty_line_or_falls_back(rewriter, images, monkeypatch):
    boxes = [(10, 20, 60, 90)]
    region = RegionText(category="car", phrase="red car", description="a small red car")

    def answer(text):
        def generate(input_ids, **kwargs):
            new = rewriter.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            return torch.cat([input_ids, new.to(input_ids)], dim=1)
        return generate

    monkeypatch.setattr(rewriter.model, "generate", answer('\n  "the car on the left" \nand more'))
    assert rewriter.referring(images[0], boxes, 0, region) == "the car on the left"
    monkeypatch.setattr(rewriter.model, "generate", answer(" \n\n"))
    assert rewriter.referring(images[0], boxes, 0, region) == "the red car"


def test_region_captioner_falls_back_to_the_phrase(captioner, images, monkeypatch):
    monkeypatch.setattr(captioner, "generate", lambda crops, prompts: ["" for _ in crops])
    out = HFRegionCaptioner(captioner).describe(images[0], [(0, 0, 10, 10)], ["blue tree"])
    assert out == [RegionText(category="tree", phrase="blue tree", description="blue tree")]


def test_coarse_position():
    assert coarse_position((0, 0, 10, 10), 90, 90) == "top left"
    assert coarse_position((40, 40, 50, 50), 90, 90) == "middle center"
    assert coarse_position((80, 70, 90, 90), 90, 90) == "bottom right"


@pytest.mark.slow
def test_engine_runs_end_to_end_on_hf_backends_chosen_by_config(owlv2_dir, llava_dir, causal_lm_dir, tmp_path):
    """Every model job on a tiny random hf model, picked by config (wiring, not quality)."""
    from data_engine.config import load_engine_config
    from data_engine.runners.local import run_local

    for i in range(2):
        _image(96, 128, 10 + i).save(tmp_path / f"img{i}.png")
    overrides = [
        f"backends.captioner={{kind: hf, model: '{llava_dir}', options: {{max_new_tokens: 8}}}}",
        f"backends.region_captioner={{kind: hf, model: '{llava_dir}'}}",
        f"backends.grounder={{kind: hf, model: '{owlv2_dir}'}}",
        f"backends.verifier={{kind: hf, model: '{causal_lm_dir}', options: {{threshold: 0.0}}}}",
        f"backends.rewriter={{kind: hf, model: '{causal_lm_dir}'}}",
        "stages=[caption, grounding, region_caption, verify]",  # random captions have no reliable nouns for spaCy
        "grounding.box_threshold=0.0",  # random detector scores are low
        "verify.check_unique=false",
    ]
    config = load_engine_config(None, overrides)
    from data_engine.pipeline import Pipeline
    from data_engine.stages.base import Stage

    class FixedPhrases(Stage):  # stands in for spaCy on gibberish captions
        name, version, requires, provides = "phrases", "test", ("caption",), ("phrases",)

        def process(self, samples):
            for s in samples:
                s.scratch["phrases"] = [{"text": "red car", "start": 0, "end": 0}, {"text": "dog", "start": 0, "end": 0}]

    from data_engine.pipeline import build_stage

    stages = [build_stage("caption", config), FixedPhrases(), build_stage("grounding", config), build_stage("region_caption", config), build_stage("verify", config)]
    out = tmp_path / "out"
    summary = run_local(config, str(tmp_path), str(out), progress=False, pipeline=Pipeline(config, stages))
    assert summary.failed == 0, open(out / "failures.jsonl").read()
    assert summary.records == 2
    import json

    for shard in sorted(out.glob("records-*.jsonl")):
        for rec in map(json.loads, open(shard)):
            prov = rec["provenance"]
            assert prov["caption"]["backend"] == "hf" and prov["caption"]["model"] == str(llava_dir)
            assert prov["grounding"]["model"] == str(owlv2_dir)
            assert prov["verify"]["verifier"]["model"] == str(causal_lm_dir)
            assert all(r["description"] for r in rec["regions"])
