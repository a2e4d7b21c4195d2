"""Object memory and the pointer head: box indices scored by content, not by a vocabulary row.

ChatRex answers with ``<objK>`` tokens. A large pretrained LLM learns to copy the right index
from its box list with ordinary attention; a small LLM trained from scratch on our synthetic
world did not (MODEL_CARD.md: index accuracy stayed at chance while every other token was
learned). Two optional config switches make retrieval a direct content match instead:

* ``object_pointer_head``: the logit of ``<objK>`` at every position is
  ``q(h_t) · k(slot_K) / sqrt(H)`` instead of the LM-head row of ``<objK>`` (a pointer network).
  Indices beyond the image's box count get the lowest logit, so they are never produced.
* ``object_reference_features``: every ``<objK>`` token in the text (a question that names a
  box, or an index the model has already answered) also carries box K's feature, so reading a
  box is no retrieval at all.

Both need the per-sample box features at every decoding step, so the model keeps them as an
*object memory* (padded features and a mask) that ``generate`` carries between steps.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=16)
def _id_tables(object_token_ids: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, sorted ids, order) as tensors; cached because every decoding step needs them.

    Built outside inference mode: tensors made under ``torch.inference_mode`` (prediction) may
    not be saved for backward, and the cache outlives the prediction (training in the same
    process, e.g. ``make finetune-tiny``'s evaluation before training)."""
    with torch.inference_mode(False):
        ids = torch.tensor(object_token_ids, device=device)
        order = torch.argsort(ids)
        return ids, ids[order], order


def pad_object_features(object_features: list[torch.Tensor], owners: list[int], batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Pad per-image box features into one table.

    Args:
        object_features: one (K_i, H) tensor per image.
        owners: the batch sample each image belongs to (same length).
        batch_size: B.

    Returns:
        ``(memory, mask)``: (B, M, H) features with M = max K_i and (B, M) bool, or ``None``
        when no image has a box.
    """
    if len(object_features) != len(owners):
        raise ValueError(f"{len(object_features)} object feature tensors for {len(owners)} images")
    widest = max((len(f) for f in object_features), default=0)
    if widest == 0:
        return None
    ref = object_features[0]
    memory = ref.new_zeros((batch_size, widest, ref.shape[-1]))
    mask = torch.zeros((batch_size, widest), dtype=torch.bool, device=ref.device)
    for feats, b in zip(object_features, owners):
        memory[b, : len(feats)] = feats
        mask[b, : len(feats)] = True
    return memory, mask


def object_index_of(input_ids: torch.Tensor, object_token_ids: list[int]) -> torch.Tensor:
    """(B, T) -> (B, T): K where the token is ``<objK>``, -1 elsewhere."""
    ids, sorted_ids, order = _id_tables(tuple(object_token_ids), input_ids.device)
    pos = torch.searchsorted(sorted_ids, input_ids.contiguous()).clamp(max=len(ids) - 1)
    hit = sorted_ids[pos] == input_ids
    return torch.where(hit, order[pos], torch.full_like(input_ids, -1))


def gather_references(input_ids: torch.Tensor, object_token_ids: list[int], memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H): box K's feature at each ``<objK>`` token with K < that sample's box count, zero
    elsewhere (other tokens, and indices the image does not have)."""
    index = object_index_of(input_ids, object_token_ids)
    valid = (index >= 0) & (index < memory.shape[1])
    safe = index.clamp(min=0, max=memory.shape[1] - 1)
    valid &= torch.gather(mask, 1, safe)
    picked = torch.gather(memory, 1, safe.unsqueeze(-1).expand(-1, -1, memory.shape[-1]))
    return picked * valid.unsqueeze(-1).to(picked.dtype)


class ObjectPointerHead(nn.Module):
    """Scores every box slot from every position (scaled dot product of two projections).

    Args:
        hidden_size: the LLM's hidden size H.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        for linear in (self.query, self.key):
            linear.identity_init = True  # read by ChatRexPreTrainedModel._init_weights
        self.scale = 1.0 / math.sqrt(hidden_size)

    def forward(self, hidden: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H), slots (B, M, H) -> scores (B, T, M)."""
        return self.scores(hidden, self.project_keys(slots))

    def project_keys(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (B, M, H) -> keys (B, M, H). The box list does not change while an answer is
        generated, so ``generate`` computes the keys once at prefill and carries them."""
        return self.key(slots.to(self.key.weight.dtype))

    def scores(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H), keys (B, M, H) -> scores (B, T, M)."""
        q = self.query(hidden)
        return torch.einsum("bth,bmh->btm", q, keys.to(q.dtype)) * self.scale

    def write_logits(self, logits: torch.Tensor, hidden: torch.Tensor, object_token_ids: list[int], keys: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """Replace the ``<obj0>``..``<objN-1>`` columns of ``logits`` (B, T, V) with pointer scores
        (``keys`` from :meth:`project_keys`, (B, M, H); ``mask`` (B, M)).

        Only the M columns of boxes in the memory are computed; the other index columns, and
        slots a sample does not have, get the dtype's lowest value, so they take no probability.
        Written in place: the LM head's output is not needed by its backward pass.
        """
        lowest = torch.finfo(logits.dtype).min
        ids = _id_tables(tuple(object_token_ids), logits.device)[0]
        m = 0 if keys is None else min(keys.shape[1], len(ids))
        if m < len(ids):
            logits.index_fill_(-1, ids[m:], lowest)
        if m:
            scores = self.scores(hidden, keys[:, :m]).to(logits.dtype)
            logits.index_copy_(-1, ids[:m], scores.masked_fill(~mask[:, None, :m], lowest))
        return logits
