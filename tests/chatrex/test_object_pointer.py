"""The pointer head and reference features (chatrex/layers/object_pointer.py)."""

from __future__ import annotations

import pytest
import torch

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.layers.object_pointer import gather_references, object_index_of, pad_object_features

from ..conftest import assert_batched_generation_matches_single

BOXES = [[10, 10, 50, 50], [60, 20, 120, 90], [0, 0, 160, 120]]
CONV = [
    {"role": "user", "content": "what is in <obj2>?"},
    {"role": "assistant", "content": "<ground>red car</ground><objects><obj1></objects>"},
]


def build(tokenizer, pointer=True, reference=True, index=True, seed=0):
    torch.manual_seed(seed)
    cfg = get_preset_config("chatrex-tiny-random", object_pointer_head=pointer, object_reference_features=reference, object_index_embedding=index)
    model = ChatRexForConditionalGeneration(cfg).eval()
    model.attach_tokenizer(tokenizer)
    return model, ChatRexProcessor.from_model_config(model.config, tokenizer)


def test_object_index_of_hand_case():
    ids = torch.tensor([[5, 100, 7, 102, 101, 3]])
    assert object_index_of(ids, [100, 101, 102]).tolist() == [[-1, 0, -1, 2, 1, -1]]
    # Order of the id list decides the index, not the id values.
    assert object_index_of(ids, [102, 100, 101]).tolist() == [[-1, 1, -1, 0, 2, -1]]


def test_pad_object_features_assigns_owners():
    a, b = torch.ones(2, 3), 2 * torch.ones(1, 3)
    memory, mask = pad_object_features([a, b], owners=[2, 0], batch_size=3)
    assert memory.shape == (3, 2, 3)
    assert mask.tolist() == [[True, False], [False, False], [True, True]]
    assert torch.equal(memory[2], a) and torch.equal(memory[0, 0], b[0]) and memory[1].abs().sum() == 0
    assert pad_object_features([torch.zeros(0, 3)], [0], 1) is None
    with pytest.raises(ValueError, match="2 object feature tensors for 1 images"):
        pad_object_features([a, b], [0], 2)


def test_gather_references_skips_missing_indices():
    memory = torch.arange(12.0).reshape(1, 3, 4)
    mask = torch.tensor([[True, True, False]])
    ids = torch.tensor([[100, 9, 101, 102, 150]])  # <obj2> is padding for this sample; <obj50> beyond M
    out = gather_references(ids, list(range(100, 200)), memory, mask)
    assert torch.equal(out[0, 0], memory[0, 0]) and torch.equal(out[0, 2], memory[0, 1])
    assert out[0, 1].abs().sum() == 0 and out[0, 3].abs().sum() == 0 and out[0, 4].abs().sum() == 0


def test_pointer_logits_are_slot_scores(tiny_tokenizer, rgb_image):
    model, proc = build(tiny_tokenizer)
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        ids = torch.tensor(model.config.object_token_ids)
        hidden = out.hidden_states[-1]
        slots = model.model.object_slots(out.object_memory)
        expected = model.object_pointer(hidden, slots)
        plain = model.lm_head(hidden)
    assert out.object_memory.shape == (1, 3, model.config.text_config.hidden_size)
    torch.testing.assert_close(out.logits[..., ids[:3]], expected)
    assert (out.logits[..., ids[3:]] == torch.finfo(out.logits.dtype).min).all()
    others = torch.ones(out.logits.shape[-1], dtype=torch.bool)
    others[ids] = False
    torch.testing.assert_close(out.logits[..., others], plain[..., others])
    # Slots carry the same vectors the prompt's <objfeat> tokens got.
    objects = model.get_object_features(model.get_image_features(batch["pixel_values_low"], batch["pixel_values_high"]).high_res_features, batch["boxes"])
    torch.testing.assert_close(out.object_memory[0], objects[0])


def test_reference_tokens_carry_their_box(tiny_tokenizer, rgb_image):
    model, proc = build(tiny_tokenizer)
    off, _ = build(tiny_tokenizer, reference=False)
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    ids = batch["input_ids"]
    seen = {}
    for m, name in ((model, "on"), (off, "off")):
        m.model.language_model.register_forward_pre_hook(lambda mod, a, kw, name=name: seen.__setitem__(name, kw["inputs_embeds"]), with_kwargs=True)
        with torch.no_grad():
            out = m(**batch)
    delta = seen["on"] - seen["off"]
    index = object_index_of(ids, model.config.object_token_ids)[0]
    for t in range(ids.shape[1]):
        if index[t] >= 0:
            torch.testing.assert_close(delta[0, t], out.object_memory[0, index[t]])
        else:
            assert delta[0, t].abs().max() == 0
    # The question's <obj2> and the answer's <obj1> were both among them.
    assert {2, 1} <= set(index[len(index) // 2:].tolist())


def test_generation_carries_the_memory_and_matches_uncached(tiny_tokenizer, rgb_image):
    model, proc = build(tiny_tokenizer, seed=3)
    # Make the pointer win so that generation emits box indices.
    with torch.no_grad():
        model.object_pointer.query.bias.fill_(3.0)
        model.object_pointer.key.bias.fill_(3.0)
    batch = proc(images=[rgb_image], conversations=["find the red car"], boxes=[BOXES[:2]], add_generation_prompt=True, return_labels=False)
    out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:]
    obj = object_index_of(new[None], model.config.object_token_ids)[0]
    assert (obj >= 0).any() and (obj < 2).all(), obj  # only the two boxes the image has
    ids = batch["input_ids"]
    with torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_low=batch["pixel_values_low"], pixel_values_high=batch["pixel_values_high"], boxes=batch["boxes"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_generation_projects_the_slot_keys_once(tiny_tokenizer, rgb_image, monkeypatch):
    model, proc = build(tiny_tokenizer, seed=3)
    calls = []
    project = model.object_pointer.project_keys
    monkeypatch.setattr(model.object_pointer, "project_keys", lambda slots: calls.append(slots.shape) or project(slots))
    batch = proc(images=[rgb_image], conversations=["find the red car"], boxes=[BOXES], add_generation_prompt=True, return_labels=False)
    model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert calls == [(1, 3, model.config.text_config.hidden_size)]  # at prefill only, not at each of the 5 decoding steps


def test_batched_generation_keeps_each_samples_boxes(tiny_tokenizer, rgb_image):
    model, proc = build(tiny_tokenizer, seed=3)
    with torch.no_grad():
        model.object_pointer.query.bias.fill_(3.0)
        model.object_pointer.key.bias.fill_(3.0)
    assert_batched_generation_matches_single(model, proc, rgb_image, BOXES, new_tokens=4)


def test_text_only_sample_can_not_emit_indices(tiny_tokenizer):
    model, proc = build(tiny_tokenizer)
    ids = torch.tensor([proc.encode_sample([{"role": "user", "content": "find the red car"}], num_boxes=0, has_image=False, add_generation_prompt=True)[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert (logits[..., model.config.object_token_ids] == torch.finfo(logits.dtype).min).all()


@pytest.mark.slow
def test_pointer_learns_to_retrieve_by_content(tiny_tokenizer):
    """Slots are random vectors; the question names one by a word whose embedding is the
    slot's vector. 80 steps must teach the head to answer its index (chance is 1/6)."""
    model, proc = build(tiny_tokenizer, reference=False, index=False, seed=0)
    model.train()
    cfg = model.config
    words = list(range(50, 56))  # six ordinary tokens of the tiny vocabulary
    gen = torch.Generator().manual_seed(0)

    def sample(n):
        ids_list, feats = [], []
        for _ in range(n):
            perm = torch.randperm(6, generator=gen)
            target = int(torch.randint(0, 6, (1,), generator=gen))
            slots = model.get_input_embeddings().weight[torch.tensor(words)[perm]].detach()
            prompt = [t for k in range(6) for t in (cfg.object_token_ids[k], cfg.objfeat_token_id)] + [words[perm[target]], cfg.object_token_ids[target]]
            ids_list.append(prompt)
            feats.append(slots)
        ids = torch.tensor(ids_list)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        return ids, labels, feats

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        ids, labels, feats = sample(16)
        loss = model(input_ids=ids, labels=labels, object_features=feats).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, labels, feats = sample(64)
    with torch.no_grad():
        pred = model(input_ids=ids, object_features=feats).logits[:, -2].argmax(-1)
    accuracy = (pred == ids[:, -1]).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_pointer_weights_survive_save_and_load(tiny_tokenizer, rgb_image, tmp_path):
    model, proc = build(tiny_tokenizer)
    model.save_pretrained(tmp_path)
    again = ChatRexForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.object_pointer_head and again.config.object_reference_features
    batch = proc(images=[rgb_image], conversations=[CONV], boxes=[BOXES])
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_presets():
    assert get_preset_config("chatrex-tiny-scratch").object_pointer_head is True
    assert get_preset_config("chatrex-7b").object_pointer_head is False
    assert get_preset_config("chatrex-7b").object_reference_features is False


def test_index_tables_cached_during_prediction_can_be_used_in_training():
    # The lookup tables are cached across calls; built under inference mode they would be
    # inference tensors, which autograd refuses to save (training after an evaluation).
    from chatrex.layers.object_pointer import _id_tables, object_index_of

    _id_tables.cache_clear()
    ids = [900, 700, 800]
    with torch.inference_mode():
        object_index_of(torch.tensor([[700, 5]]), ids)
    assert not any(t.is_inference() for t in _id_tables(tuple(ids), torch.device("cpu")))
