"""Released-model layout: conversion, tokens, numerics settings, prompts and answers, on small
random models written in the official layout (the parity against the official code itself is
tests/chatrex/test_official_parity.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig

from chatrex import ChatRexConfig, ChatRexForConditionalGeneration, ChatRexPredictor, get_preset_config
from chatrex.cli.main import main as cli_main
from chatrex.convert.official import load_official, to_official_state
from chatrex.official.layout import is_official_folder
from chatrex.official.synthetic import OFFICIAL_ADDED_TOKENS
from chatrex.predictor import BUNDLED_DIR
from chatrex.presets import OFFICIAL_NUMERICS
from chatrex.text.answer import parse_answer

from .official_layout import MM_FIELDS, _tiny_vision, write_official  # noqa: F401


def test_official_layout_is_recognised(tiny_official):
    folder, _ = tiny_official
    assert is_official_folder(folder)
    assert not is_official_folder(BUNDLED_DIR / "chatrex-tiny")


def test_conversion_restores_every_tensor_and_the_official_numerics(tiny_official):
    folder, original = tiny_official
    model, processor = load_official(folder)
    ours, ref = model.state_dict(), original.state_dict()
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    cfg = model.config
    assert (cfg.roi_aligned, cfg.roi_sampling_ratio, cfg.box_embed_order, cfg.vision_high_no_grad) == (False, -1, "cycxwh", True)
    assert cfg.vision_low_config.num_hidden_layers == 2 and cfg.vision_high_config.depths == [1, 1, 2, 1]  # from the weights
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    ip = processor.image_processor
    assert (ip.pad_mode, ip.low_from_high, ip.pad_value) == ("center", True, (122, 116, 104))
    assert processor.prompts.name == "official" and processor.proposals == {"prompt_type": "fine", "min_score": 0.3, "nms_iou": 0.8}


def test_official_token_ids_are_kept_and_placeholders_come_after(tiny_official):
    folder, _ = tiny_official
    model, processor = load_official(folder)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(OFFICIAL_ADDED_TOKENS) == list(range(151665, 151769))
    assert model.config.object_token_ids == list(range(151665, 151765))
    assert model.get_input_embeddings().num_embeddings == model.config.text_config.vocab_size == 151769
    assert (model.config.objfeat_token_id, model.config.image_token_id) == (151769, 151770)


def test_rexseek_prompt_format(tiny_official):
    """RexSeek's INSTRUCTION template with the official visual prefix (official_chatrex.md A.8-A.9)."""
    folder, _ = tiny_official
    _, processor = load_official(folder)
    question = processor.prompts.detection["category"].format(phrase="cup")
    messages = processor._with_visual_prefix([{"role": "user", "content": question}], num_boxes=2, has_image=True)
    assert processor._render(messages, add_generation_prompt=True) == (
        "<|im_start|>user\n<image>\n<obj0><objfeat><obj1><objfeat>\n"
        "Please detect cup in this image. Answer the question with object indexes.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_official_box_transform_and_centre_padding(tiny_official):
    folder, _ = tiny_official
    _, processor = load_official(folder)
    ip = processor.image_processor
    image = Image.new("RGB", (100, 60), (255, 0, 0))
    low, high, meta = ip.preprocess(image)
    assert (meta.offset_x, meta.offset_y) == (0, 20)
    # Official: xywh + centre-pad offset, scaled by side/max(W, H) (official_chatrex.md A.11).
    boxes = np.array([[10.5, 5.0, 50.0, 40.25]])
    x, y, w, h = 10.5, 5.0 + 20, 50.0 - 10.5, 40.25 - 5.0
    expected = np.array([[x, y, x + w, y + h]]) * 256 / 100
    assert np.allclose(ip.normalize_boxes(boxes, meta).numpy() * 256, expected, atol=1e-4)
    assert np.allclose(ip.denormalize_boxes(ip.normalize_boxes(boxes, meta), meta).numpy(), boxes, atol=1e-4)
    # Padding rows carry the truncated CLIP mean colour; the low input is the resized high one.
    pad = ((torch.tensor([122, 116, 104]) / 255 - torch.tensor(ip.image_mean)) / torch.tensor(ip.image_std))
    assert torch.allclose(high[:, 0, 128], pad, atol=1e-6) and torch.allclose(high[:, -1, 128], pad, atol=1e-6)
    expected_low = torch.nn.functional.interpolate(high[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    assert torch.equal(low, expected_low)


def test_converting_a_folder_with_an_extra_or_missing_key_names_it(tmp_path, tiny_official, rexseek_tokenizer_dir, capsys):
    _, model = tiny_official
    extra = tmp_path / "extra"
    write_official(extra, model, rexseek_tokenizer_dir, "rexseek_qwen", extra={"vision_tower_aux.vision_head.weight": torch.zeros(3)})
    assert cli_main(["convert", "official", str(extra), str(tmp_path / "out1")]) == 2
    assert "vision_tower_aux.vision_head.weight" in capsys.readouterr().err
    missing = tmp_path / "missing"
    write_official(missing, model, rexseek_tokenizer_dir, "rexseek_qwen", drop=["mm_object_projector.2.bias"])
    assert cli_main(["convert", "official", str(missing), str(tmp_path / "out2")]) == 2
    assert "model.mm_object_projector.2.bias" in capsys.readouterr().err
    shape = tmp_path / "shape"
    write_official(shape, model, rexseek_tokenizer_dir, "rexseek_qwen", extra={"mm_projector.0.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"mm_projector.0.bias \(5,\)"):
        load_official(shape)


def test_config_settings_the_released_models_do_not_use_are_refused(tmp_path, tiny_official, rexseek_tokenizer_dir):
    _, model = tiny_official
    folder = tmp_path / "cls"
    write_official(folder, model, rexseek_tokenizer_dir, "rexseek_qwen")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_vision_select_feature": "cls_patch"}))
    with pytest.raises(ValueError, match="mm_vision_select_feature='cls_patch'"):
        load_official(folder)
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_official(folder)


def test_training_start_keeps_the_official_vocabulary(tiny_official, tmp_path):
    """train.model_loading attaches the tokenizer: the placeholders must not add rows."""
    from train.model_loading import load_model_and_processor

    folder, _ = tiny_official
    out = tmp_path / "converted"
    model, processor = load_official(folder)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    loaded, _ = load_model_and_processor(str(out))
    assert loaded.get_input_embeddings().num_embeddings == loaded.config.text_config.vocab_size == 151769


@pytest.mark.slow
def test_convert_then_detect_from_the_command_line(tmp_path, tiny_official, capsys):
    """The user's path: convert, then chatrex detect with the converted folder and a box list;
    loading the official folder directly gives the same answer."""
    folder, _ = tiny_official
    out = tmp_path / "converted"
    assert cli_main(["convert", "official", str(folder), str(out)]) == 0
    assert "vocab 151769 (<obj0> = 151665)" in capsys.readouterr().out
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(image)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[5, 5, 60, 50], [40, 20, 110, 85]]))
    answers = []
    for model_dir in (out, folder):
        assert cli_main(["detect", str(image), "the cup", "--model", str(model_dir), "--boxes", str(boxes), "--json"]) == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        answers.append(json.loads(captured.out)["answer"])
    assert answers[0] == answers[1]


def test_predictor_on_an_official_folder_uses_the_official_prompts(tiny_official):
    folder, _ = tiny_official
    predictor = ChatRexPredictor.from_pretrained(folder, max_new_tokens=4)
    assert predictor.prompts.name == "official" and predictor.proposal_prompt_type == "fine" and predictor.proposal_min_score == 0.3
    image = Image.new("RGB", (80, 50), (0, 128, 0))
    assert predictor.set_image(image, boxes=[[1, 1, 30, 30]]) == 1
    assert isinstance(predictor.detect("cup").boxes, list)
    assert isinstance(predictor.grounded_caption(max_new_tokens=3).text, str)


def _llama_like_tokenizer():
    """A small BPE tokenizer with Llama's <s>/</s> conventions and no ChatRex tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(["USER: hi ASSISTANT: hello there"] * 10, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_llama_family_keeps_its_base_vocabulary_and_uses_the_vicuna_template(tmp_path):
    """ChatRex-7B is Vicuna (Llama): its 104 tokens follow the base vocabulary (32000 there)."""
    tok = _llama_like_tokenizer()
    base = len(tok)
    tok.add_tokens(OFFICIAL_ADDED_TOKENS, special_tokens=True)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    config = ChatRexConfig(**_tiny_vision(), text_config=LlamaConfig(vocab_size=base + 104, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048),
                           **OFFICIAL_NUMERICS)
    torch.manual_seed(0)
    folder = tmp_path / "vicuna"
    write_official(folder, ChatRexForConditionalGeneration(config), str(tok_dir), "chatrex")
    model, processor = load_official(folder)
    assert model.config.text_config.model_type == "llama" and not model.config.tie_word_embeddings
    assert model.config.object_token_ids[0] == base and model.config.objfeat_token_id >= base + 104
    text = processor._render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<s>USER: hi ASSISTANT:"
    _, v1 = load_official(folder, chat_template="vicuna_v1")
    assert "A chat between a curious user" in v1._render([{"role": "user", "content": "hi"}], add_generation_prompt=True)


def test_released_presets_have_the_official_shapes():
    """Key shapes of the presets against official_chatrex.md A.10 (RexSeek-3B: H = 2048, tied;
    ChatRex-7B: Vicuna, H = 4096, vocabulary 32,104, untied)."""
    with torch.device("meta"):
        rexseek = to_official_state(ChatRexForConditionalGeneration(get_preset_config("rexseek-3b")).state_dict())
        vicuna = to_official_state(ChatRexForConditionalGeneration(get_preset_config("chatrex-7b-vicuna")).state_dict())
    assert tuple(rexseek["model.embed_tokens.weight"].shape) == (151769, 2048)
    assert tuple(rexseek["mm_projector.0.weight"].shape) == (2048, 2560)
    assert tuple(rexseek["mm_object_projector.0.weight"].shape) == (2048, 2880)
    assert tuple(rexseek["vision_tower_aux.vision_stages.3.blocks.2.ramma"].shape) == (1536,)
    assert tuple(rexseek["vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight"].shape) == (577, 1024)
    assert tuple(vicuna["lm_head.weight"].shape) == (32104, 4096)
    assert "model.layers.0.self_attn.q_proj.bias" not in vicuna and "model.layers.0.self_attn.q_proj.bias" in rexseek
    vision = [k for k in rexseek if k.startswith(("vision_tower", "mm_"))]
    assert len(vision) == 1078 - (28 * 12 + 3)  # Appendix 2's vision and projector keys (its LLM: 28 layers x 12 + 3)


@pytest.mark.parametrize(
    "text, chatrex_spans, official_spans",
    [
        ("<ground>cup</ground><objects><obj0></objects> and <ground>cup</ground><objects><obj1></objects>", 2, 1),
        ("<ground>a</ground><objects><obj0><obj1></objects><ground>b</ground><objects><obj1></objects>", 2, 1),
        ("<ground>a</ground><objects><obj0></objects><ground>b</ground><objects><obj7></objects>", 2, 2),
    ],
)
def test_official_answer_rules(text, chatrex_spans, official_spans):
    boxes = [[0, 0, 1, 1], [1, 1, 2, 2]]
    assert len(parse_answer(text, boxes).spans) == chatrex_spans
    official = parse_answer(text, boxes, rules="official")
    assert len(official.spans) == official_spans
    assert official.text == parse_answer(text, boxes).text  # the text is the same; only spans differ
    with pytest.raises(ValueError, match="rules"):
        parse_answer(text, boxes, rules="paper")


def test_a_sharded_official_folder_reads_back_every_tensor(tmp_path):
    from chatrex.convert.compose import read_folder_weights
    from chatrex.official.synthetic import synthetic_state, write_official_folder

    shapes = {"model.embed_tokens.weight": (16, 8), "model.layers.0.mlp.up_proj.weight": (8, 8), "model.norm.weight": (8,)}
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    write_official_folder(str(tmp_path / "sharded"), {"model_type": "rexseek_qwen"}, shapes, str(tokenizer), max_shard_bytes=300)
    files = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(files) >= 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file(), files
    got, want = read_folder_weights(tmp_path / "sharded"), synthetic_state(shapes)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
