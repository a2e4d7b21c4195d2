"""``chatrex convert compose``: tiny random parts in a temp dir -> a ChatRex folder, checked
against independent implementations (transformers' CLIP, timm's ConvNeXt, the plain LLM), plus
a full-size key and shape check on the meta device against the ``chatrex-7b`` preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPConfig, CLIPModel, Qwen2Config, Qwen2ForCausalLM

from chatrex import ChatRexForConditionalGeneration, ChatRexPredictor, get_preset_config
from chatrex.cli.main import main as cli_main
from chatrex.convert.compose import INFO_NAME, compose_model, map_clip_vision, read_checkpoint
from chatrex.convert.convnext_timm import OPEN_CLIP_PREFIX, hf_to_timm, timm_to_hf

from ..conftest import CORPUS
from ..train.conftest import make_records, tiny_config

TINY_CLIP = CLIPConfig(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=8, image_size=64),
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                     bos_token_id=0, eos_token_id=1, pad_token_id=1),
    projection_dim=16,
)
# Text-tower and projection keys of an open_clip checkpoint, which compose must skip by name.
OPEN_CLIP_EXTRAS = ("visual.head.mlp.fc1.weight", "transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight",
                    "positional_embedding", "ln_final.weight", "text_projection", "logit_scale")


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its init (zero biases, unit norms, 1e-6 layer scales) so that
    each one changes the output the equality tests compare."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if name.endswith("gamma") else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def _timm_atto():
    # convnext_atto: depths (2, 2, 6, 2), widths 40..320, 1x1-conv MLP (conv_mlp=True); no
    # classifier, as open_clip's trunk.
    return _perturb(timm.create_model("convnext_atto", pretrained=False, num_classes=0), seed=1)


def _plain_tokenizer():
    """A small ChatML BPE tokenizer without the ChatRex tokens, like any LLM's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from chatrex.text.chat_template import CHATML_TEMPLATE
    from chatrex.text.tokenizer_training import CHATML_TOKENS

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=CHATML_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    CLIPModel(TINY_CLIP).save_pretrained(root / "clip")
    trunk = _timm_atto()
    state = {OPEN_CLIP_PREFIX + k: v.contiguous() for k, v in trunk.state_dict().items()}
    state.update({k: torch.zeros(2, 2) for k in OPEN_CLIP_EXTRAS})
    save_file(state, str(root / "open_clip_model.safetensors"))
    tok = _plain_tokenizer()
    # 512 rows > len(tok): padded like Qwen's 152064-row embedding; compose keeps len(tokenizer).
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False))
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    out = root / "composed"
    rc = cli_main(["convert", "compose", "--clip", str(root / "clip"), "--convnext", str(root / "open_clip_model.safetensors"),
                   "--llm", str(root / "llm"), "--out", str(out)])
    assert rc == 0
    return root, out, trunk, len(tok)


def _features(model, low, high):
    """(fused tokens before the projector (B, N, C_low + C_high), ConvNeXt stage outputs)."""
    seen = {}
    hook = model.model.mm_projector.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            feats = model.get_image_features(low, high)
    finally:
        hook.remove()
    return seen["x"], feats.high_res_features


def test_composed_towers_equal_clip_and_timm(parts):
    root, out, trunk, _ = parts
    model = ChatRexForConditionalGeneration.from_pretrained(out).eval()
    info = json.loads((out / INFO_NAME).read_text())
    assert sorted(info["convnext_ignored"]) == sorted(OPEN_CLIP_EXTRAS) and info["high_image_size"] == 256
    assert "text_projection.weight" in info["clip_ignored"] and "logit_scale" in info["clip_ignored"]
    torch.manual_seed(3)
    low, high = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 256, 256)
    fused, stages = _features(model, low, high)
    with torch.no_grad():
        clip = CLIPModel.from_pretrained(root / "clip").eval().vision_model(low, output_hidden_states=True).hidden_states[-2][:, 1:]
        ref_stages = trunk.forward_intermediates(high, intermediates_only=True)
    torch.testing.assert_close(fused[..., :32], clip, atol=1e-5, rtol=0)
    assert len(stages) == len(ref_stages) == 4
    # Deep stages reach |x| ~ 2-10, where fp32 summation order alone (which differs between
    # CPUs' kernels: 1.04e-5 at |x| = 1.9 on an AMD EPYC) passes 1e-5 absolute.
    for ours, ref in zip(stages, ref_stages):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[..., 32:], ref_stages[-1].flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_text_only_logits_equal_plain_llm_and_new_rows_at_mean(parts):
    root, out, _, num_old = parts
    model = ChatRexForConditionalGeneration.from_pretrained(out).eval()
    plain = AutoModelForCausalLM.from_pretrained(root / "llm").eval()
    assert model.config.text_config.vocab_size == num_old + 106
    ids = torch.randint(0, num_old, (2, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        ours, ref = model(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[..., :num_old], ref[..., :num_old], atol=1e-5, rtol=0)
    for new, old in ((model.get_input_embeddings().weight, plain.get_input_embeddings().weight),
                     (model.lm_head.weight, plain.lm_head.weight)):
        mean = old[:num_old].mean(dim=0)
        torch.testing.assert_close(new[num_old:], mean.expand(106, -1), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_composed_folder_detects_and_trains_stage1(parts, tmp_path):
    from train.trainer import train

    _, out, _, _ = parts
    predictor = ChatRexPredictor.from_pretrained(out, max_new_tokens=4)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8))
    assert predictor.set_image(image, boxes=[[2, 2, 30, 30], [20, 10, 60, 44]]) == 2
    det = predictor.detect("car")
    assert all(0 <= i < 2 for i in det.indices) and isinstance(det.answer, str)
    records = make_records(tmp_path / "data", n=2)
    cfg = tiny_config(records, str(out), str(tmp_path / "run"), stage=1,
                      **{"model.init": str(out), "model.tokenizer": "null", "train.max_steps": 1, "train.save_every": 100})
    result = train(cfg)
    assert result.steps == 1


@pytest.mark.slow
def test_dtype_paths_on_cpu(parts):
    _, out, _, _ = parts
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, size=(40, 40, 3), dtype=np.uint8))
    rois = {}
    for dtype in ("float32", "bfloat16"):
        pred = ChatRexPredictor.from_pretrained(out, device="cpu", torch_dtype=dtype, max_new_tokens=2)
        assert {p.dtype for p in pred.model.parameters()} == {getattr(torch, dtype)}
        seen = {}
        hooks = [pred.model.model.object_encoder.register_forward_hook(lambda _, a, o: seen.setdefault("roi", o)),
                 pred.model.model.mm_object_projector.register_forward_pre_hook(lambda _, a: seen.setdefault("proj", a[0]))]
        pred.set_image(image, boxes=[[1, 1, 20, 20], [5, 8, 39, 30]])
        for hook in hooks:
            hook.remove()
        assert pred.ask("what is this?").raw is not None
        # ROI features are float32 whatever the weights' dtype, and cast only at the projector.
        assert seen["roi"][0].dtype == torch.float32 and seen["proj"].dtype == getattr(torch, dtype)
        rois[dtype] = seen["roi"][0]
    torch.testing.assert_close(rois["bfloat16"], rois["float32"], atol=0.05, rtol=0.05)


def test_cli_cuda_without_cuda_is_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["detect", "nope.png", "car", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err


def test_unmapped_keys_are_listed(parts):
    root, *_ = parts
    state = read_checkpoint(root / "open_clip_model.safetensors")
    with pytest.raises(ValueError, match=r"visual\.mystery\.weight"):
        timm_to_hf({**state, "visual.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"stages\.0\.blocks\.0\.grn\.weight"):
        timm_to_hf({**state, OPEN_CLIP_PREFIX + "stages.0.blocks.0.grn.weight": torch.zeros(1)})
    clip = CLIPModel(TINY_CLIP).state_dict()
    with pytest.raises(ValueError, match=r"vision_adapter\.bias"):
        map_clip_vision({**clip, "vision_adapter.bias": torch.zeros(1)}, TINY_CLIP.vision_config)
    del clip["vision_model.post_layernorm.bias"]
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): post_layernorm\.bias"):
        map_clip_vision(clip, TINY_CLIP.vision_config)


def test_timm_layout_bin_both_ways(tmp_path):
    """A plain timm checkpoint (Linear MLP) as .bin, to ConvNextModel and back."""
    from transformers import ConvNextModel

    net = _perturb(timm.models.convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=5), seed=2)
    torch.save(net.state_dict(), tmp_path / "convnext.bin")
    config, hf, ignored = timm_to_hf(read_checkpoint(tmp_path / "convnext.bin"))
    assert (config.depths, config.hidden_sizes) == ([1, 1, 2, 1], [8, 16, 32, 64]) and ignored == ["head.fc.bias", "head.fc.weight"]
    model = ConvNextModel(config).eval()
    model.load_state_dict(hf, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, ref = model(x, output_hidden_states=True), net.forward_features(x)
        torch.testing.assert_close(ours.hidden_states[-1], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.pooler_output, net.forward_head(ref, pre_logits=True), atol=1e-5, rtol=0)
    back = hf_to_timm(model.state_dict())
    assert back.keys() == {k for k in net.state_dict() if not k.startswith("head.fc.")}
    for k, v in back.items():
        assert torch.equal(v, net.state_dict()[k]), k


# Published config.json of Qwen/Qwen2.5-7B and the vision config of openai/clip-vit-large-patch14-336.
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, max_position_embeddings=131072, max_window_layers=28, sliding_window=131072,
                 use_sliding_window=False, rms_norm_eps=1e-6, rope_theta=1000000.0, bos_token_id=151643, eos_token_id=151643,
                 tie_word_embeddings=False, hidden_act="silu", attention_dropout=0.0, initializer_range=0.02)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                  image_size=336, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768)
# Config fields that record provenance, not architecture.
METADATA = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "output_hidden_states"}


def _architecture(config) -> dict:
    d = config.to_dict()
    return {k: ({kk: vv for kk, vv in v.items() if kk not in METADATA} if isinstance(v, dict) else v)
            for k, v in d.items() if k not in METADATA}


@pytest.fixture(scope="module")
def qwen25_tokenizer(qwen_tokenizer_dir, tmp_path_factory):
    """The Qwen2.5 tokenizer (151,665 tokens): the bundled Qwen3 tokenizer less the 4 tokens
    Qwen3 appended (ids 151665..151668)."""
    path = tmp_path_factory.mktemp("qwen25")
    tok = json.loads(open(f"{qwen_tokenizer_dir}/tokenizer.json").read())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < 151665]
    (path / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads(open(f"{qwen_tokenizer_dir}/tokenizer_config.json").read())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg.get("added_tokens_decoder", {}).items() if int(k) < 151665}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = AutoTokenizer.from_pretrained(path)
    assert len(out) == 151665
    return out


def test_full_size_compose_on_meta_equals_chatrex_7b_preset(qwen25_tokenizer):
    with torch.device("meta"):
        clip = CLIPModel(CLIPConfig(vision_config=CLIP_L_336, text_config=CLIP_L_TEXT, projection_dim=768))
        trunk = timm.create_model("convnext_large", pretrained=False)
        llm = Qwen2ForCausalLM(Qwen2Config(**QWEN25_7B))
        open_clip = {OPEN_CLIP_PREFIX + k: v for k, v in trunk.state_dict().items() if not k.startswith("head.fc.")}
        model, processor, info = compose_model(clip.config.vision_config, clip.state_dict(), open_clip, llm, qwen25_tokenizer)
        preset = ChatRexForConditionalGeneration(get_preset_config("chatrex-7b"))
    assert info["high_image_size"] == 768 and info["vocab_size"] == 151771 and processor.num_image_tokens == 576
    preset.attach_tokenizer(qwen25_tokenizer)  # tokens already added: sets the ids, resizes nothing
    assert _architecture(model.config) == _architecture(preset.config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in preset.state_dict().items()}
    assert ours == theirs
    assert ours["lm_head.weight"] == (151771, 3584) and ours["model.vision_high.layernorm.weight"] == (1536,)
