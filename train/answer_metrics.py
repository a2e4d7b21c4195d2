"""Cheap teacher-forced metrics logged while training."""

from __future__ import annotations

import torch

from chatrex.layers.object_pointer import object_index_of


def index_accuracy(logits: torch.Tensor, labels: torch.Tensor, object_token_ids: list[int] | None) -> float | None:
    """Teacher-forced accuracy on the answer tokens that are box indices ``<objK>``.

    Args:
        logits: (B, T, V) next-token logits.
        labels: (B, T) with -100 where no loss is taken (not shifted: position t's logits
            predict label t + 1, as in transformers' causal-LM loss).
        object_token_ids: ids of ``<obj0>``..``<obj99>``.

    Returns:
        The fraction of index tokens predicted exactly, or ``None`` when the batch has none.
        With several boxes per answer this is a lower bound: any still-unanswered correct box
        would do at each step, but only the one written next counts.
    """
    if not object_token_ids:
        return None
    target = labels[:, 1:].to(logits.device)
    is_index = object_index_of(target, object_token_ids) >= 0
    if not is_index.any():
        return None
    pred = logits[:, :-1].argmax(-1)
    return round(float((pred[is_index] == target[is_index]).float().mean()), 4)
