import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.modeling_chatrex import ChatRexModel

from ..conftest import assert_batched_generation_matches_single, build_tiny

BOXES = [[10, 10, 50, 50], [60, 20, 120, 90], [0, 0, 160, 120]]
CONV = [
    {"role": "user", "content": "find the red car"},
    {"role": "assistant", "content": "<ground>red car</ground><objects><obj1></objects>"},
]


@pytest.mark.parametrize("preset, causal_cls", [("chatrex-tiny-random", Qwen2ForCausalLM), ("chatrex-tiny-random-llama", LlamaForCausalLM)])
def test_wrapper_adds_nothing_without_image(preset, causal_cls):
    torch.manual_seed(0)
    cfg = get_preset_config(preset)
    plain = causal_cls(cfg.text_config).eval()
    model = ChatRexForConditionalGeneration(cfg, model=ChatRexModel(cfg, language_model=plain.model), lm_head=plain.lm_head).eval()
    ids = torch.randint(0, cfg.text_config.vocab_size, (2, 19))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        ref = plain(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_wrapper_matches_when_weights_are_copied_by_state_dict():
    torch.manual_seed(1)
    cfg = get_preset_config("chatrex-tiny-random")
    plain = Qwen2ForCausalLM(cfg.text_config).eval()
    model = ChatRexForConditionalGeneration(cfg).eval()
    result = model.model.language_model.load_state_dict(plain.model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.lm_head.load_state_dict(plain.lm_head.state_dict())
    ids = torch.randint(0, 1000, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["chatrex-tiny-random", "chatrex-tiny-random-llama"])
def test_forward_with_image_and_boxes(preset, tiny_tokenizer, rgb_image):
    model, proc = build_tiny(preset, tiny_tokenizer)
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    n_img = int((batch["input_ids"] == model.config.image_token_id).sum())
    n_obj = int((batch["input_ids"] == model.config.objfeat_token_id).sum())
    assert (n_img, n_obj) == (model.config.num_image_tokens, 3)
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)


def test_image_and_objects_change_the_output(tiny_model, rgb_image):
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    with torch.no_grad():
        a = model(**batch).logits
        moved = [b.clone() for b in batch["boxes"]]
        moved[0][1] = torch.tensor([0.1, 0.5, 0.3, 0.7])
        b = model(**{**batch, "boxes": moved}).logits
    assert (a - b).abs().max() > 1e-4


def test_placeholder_feature_mismatch_raises(tiny_model, rgb_image):
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    fewer = [batch["boxes"][0][:2]]
    with pytest.raises(ValueError, match=r"3 placeholder tokens in the input but 2 features"):
        model(**{**batch, "boxes": fewer})
    ids = batch["input_ids"].clone()
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    ids[0, first] = 5
    with pytest.raises(ValueError, match=rf"image: {model.config.num_image_tokens - 1} placeholder tokens in the input but {model.config.num_image_tokens} features"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="placeholder tokens in the input but 0 features"):
        model(input_ids=batch["input_ids"])


def test_more_box_features_than_objfeat_placeholders_raises(tiny_model, rgb_image):
    """The direction a masked scatter lets through silently (it uses the first features and
    drops the rest): 4 box features for the prompt's 3 ``<objfeat>`` tokens."""
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    extra = [torch.cat([batch["boxes"][0], torch.tensor([[0.2, 0.2, 0.4, 0.4]])])]
    with pytest.raises(ValueError, match=r"^objects: 3 placeholder tokens in the input but 4 features$"):
        model(**{**batch, "boxes": extra})


def test_cached_features_match_pixels(tiny_model, rgb_image):
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    with torch.no_grad():
        ref = model(**batch).logits
        feats = model.get_image_features(batch["pixel_values_low"], batch["pixel_values_high"])
        assert feats.image_embeds.shape == (1, model.config.num_image_tokens, model.config.text_config.hidden_size)
        objs = model.get_object_features(feats.high_res_features, batch["boxes"])
        assert objs[0].shape == (3, model.config.text_config.hidden_size)
        cached = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], image_features=feats, object_features=objs).logits
    torch.testing.assert_close(cached, ref)


def test_save_load_round_trip(tiny_model, rgb_image, tmp_path):
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    proc2 = ChatRexProcessor.from_pretrained(tmp_path)
    assert isinstance(model2, ChatRexForConditionalGeneration)
    batch2 = proc2(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    assert torch.equal(batch2["input_ids"], batch["input_ids"]) and torch.equal(batch2["labels"], batch["labels"])
    torch.testing.assert_close(batch2["pixel_values_high"], batch["pixel_values_high"])
    with torch.no_grad():
        torch.testing.assert_close(model2(**batch2).logits, model(**batch).logits, atol=0, rtol=0)


@pytest.mark.slow
def test_generate_uses_kv_cache(tiny_model, rgb_image):
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=["find the red car"], boxes=[BOXES], add_generation_prompt=True, return_labels=False)
    lengths = []
    handle = model.model.language_model.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    finally:
        handle.remove()
    prompt = batch["input_ids"].shape[1]
    assert out.shape[1] == prompt + 6
    assert lengths == [prompt] + [1] * 5  # the prompt is encoded once, then one token per step
    # Greedy generation with the cache equals greedy decoding without it.
    ids = batch["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_low=batch["pixel_values_low"], pixel_values_high=batch["pixel_values_high"], boxes=batch["boxes"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_batched_generation_left_padding(tiny_model, rgb_image):
    model, proc = tiny_model
    assert_batched_generation_matches_single(model, proc, rgb_image, BOXES, new_tokens=3)


@pytest.mark.slow
def test_training_reduces_loss_on_fixed_batch(tiny_tokenizer, rgb_image):
    model, proc = build_tiny("chatrex-tiny-random", tiny_tokenizer, seed=0)
    model.train()
    batch = proc(images=[rgb_image, rgb_image], conversations=[CONV, [{"role": "user", "content": "what colour is the boat?"}, {"role": "assistant", "content": "it is yellow."}]], boxes=[BOXES, BOXES[:2]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # The vision side learns too: the object projector received gradients.
    assert model.model.mm_object_projector[0].weight.grad.abs().sum() > 0


def test_too_many_boxes_for_model(tiny_model, rgb_image):
    model, proc = tiny_model
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    with pytest.raises(ValueError, match="at most 100"):
        model.get_object_features(model.get_image_features(batch["pixel_values_low"], batch["pixel_values_high"]).high_res_features, [torch.rand(101, 4).sort(-1).values])
