"""config.object_index_embedding: the K-th object slot carries the embedding of <objK>."""

from __future__ import annotations

import torch

from chatrex import ChatRexForConditionalGeneration, get_preset_config


def merged(tokenizer, on: bool):
    torch.manual_seed(0)
    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random", object_index_embedding=on)).eval()
    model.attach_tokenizer(tokenizer)
    cfg = model.config
    ids = torch.tensor([[cfg.object_token_ids[0], cfg.objfeat_token_id, cfg.object_token_ids[1], cfg.objfeat_token_id]])
    feats = [torch.randn(2, cfg.text_config.hidden_size)]
    embeds = model.model.merge_embeddings(ids, model.get_input_embeddings()(ids), None, feats, prefill=False)
    return model, ids, feats, embeds


def test_slots_carry_their_index_embedding(tiny_tokenizer):
    model, ids, feats, embeds = merged(tiny_tokenizer, on=True)
    table = model.get_input_embeddings().weight
    assert torch.allclose(embeds[0, 1], feats[0][0] + table[ids[0, 0]])
    assert torch.allclose(embeds[0, 3], feats[0][1] + table[ids[0, 2]])
    assert torch.equal(embeds[0, 0], table[ids[0, 0]])  # the <objK> tokens themselves are unchanged


def test_off_by_default_keeps_the_plain_features(tiny_tokenizer):
    assert get_preset_config("chatrex-7b").object_index_embedding is False
    assert get_preset_config("chatrex-tiny-scratch").object_index_embedding is True
    _, _, feats, embeds = merged(tiny_tokenizer, on=False)
    assert torch.equal(embeds[0, 1], feats[0][0]) and torch.equal(embeds[0, 3], feats[0][1])


def test_object_token_ids_survive_save_and_load(tiny_tokenizer, tmp_path):
    model, *_ = merged(tiny_tokenizer, on=True)
    model.save_pretrained(tmp_path)
    again = ChatRexForConditionalGeneration.from_pretrained(tmp_path)
    assert again.config.object_token_ids == model.config.object_token_ids and len(again.config.object_token_ids) == 100
    assert again.config.object_index_embedding is True
