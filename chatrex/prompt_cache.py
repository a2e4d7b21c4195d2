"""Generation over a shared image prefix, and batched generation.

Every question about one image starts with the same tokens: the system prompt, the ``<image>``
visual tokens and the ``<objK><objfeat>`` box tokens (576 + 2 x 100 positions for the 7B
layouts). :func:`encode_prefix` runs them through the LLM once and keeps their KV cache;
:func:`continuation_inputs` lets ``generate`` go on from a copy of it with only each question's
own tokens. Several questions about one image are batched over the shared prefix with the
padding *between* the prefix and each question: positions come from the attention mask
(``generate`` derives them as its cumulative sum), so every question sees exactly the positions
it has when asked alone. Questions about different images are batched with left padding
(:func:`left_padded_inputs`).

Greedy answers equal those of one full prompt at a time up to float rounding (checked on the
example images by the tests).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache


@dataclass
class PromptPrefix:
    """The LLM state after a prompt's image part.

    Attributes:
        ids: the prefix token ids, ``(P,)``.
        cache: its KV cache (batch 1); never extended in place (copies are).
        object_memory, object_memory_mask: (1, M, H) and (1, M), the box features the pointer
            head and reference features read at every step (``None`` when the config uses neither).
        object_keys: (1, M, H) the pointer head's projected slot keys, or ``None``.
    """

    ids: tuple[int, ...]
    cache: Cache
    object_memory: torch.Tensor | None
    object_memory_mask: torch.Tensor | None
    object_keys: torch.Tensor | None


def prefix_length(ids: list[int], placeholder_ids: tuple[int | None, ...]) -> int:
    """How many leading tokens of ``ids`` do not depend on the question: up to and including
    the last ``<image>`` / ``<objfeat>`` placeholder (0 when there is none). Special tokens
    split the text around them, so the tokens before them never change with what follows."""
    wanted = {i for i in placeholder_ids if i is not None}
    last = max((pos for pos, token in enumerate(ids) if token in wanted), default=-1)
    return last + 1


def encode_prefix(model, ids: list[int], image_features, object_features, device) -> PromptPrefix:
    """Run the prompt prefix ``ids`` (with its image and box features) through ``model`` once.

    Args:
        model: a ``ChatRexForConditionalGeneration``.
        ids: the P prefix token ids, holding every ``<image>`` and ``<objfeat>`` placeholder.
        image_features: ``ChatRexImageFeatures`` of one image (batch 1).
        object_features: a list of one (K, H) tensor.
    """
    input_ids = torch.tensor([ids], device=device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), image_features=image_features,
                    object_features=object_features, use_cache=True, logits_to_keep=1)
    return PromptPrefix(tuple(ids), out.cache, out.object_memory, out.object_memory_mask, out.object_keys)


def _expand(tensor: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.expand(batch, *tensor.shape[1:])


def continuation_inputs(prefix: PromptPrefix, suffixes: list[list[int]], pad_token_id: int) -> dict:
    """``generate`` keyword arguments that continue ``prefix`` with each of ``suffixes``.

    The rows are ``prefix + padding + suffix``: the padding sits between the shared prefix and
    each question, masked, so each question keeps the positions it has alone.

    Returns ``input_ids`` and ``attention_mask`` (B, P + S_max), a fresh ``cache`` (batch B)
    holding the prefix, and the box memory expanded to B rows.
    """
    if not suffixes or any(len(s) == 0 for s in suffixes):
        raise ValueError("every question needs at least one token after the image prefix")
    device = prefix.cache.layers[0].keys.device if prefix.cache.layers else torch.device("cpu")
    batch, width, plen = len(suffixes), max(len(s) for s in suffixes), len(prefix.ids)
    input_ids = torch.full((batch, plen + width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    input_ids[:, :plen] = torch.tensor(prefix.ids, device=device)
    mask[:, :plen] = 1
    for row, suffix in enumerate(suffixes):
        input_ids[row, plen + width - len(suffix):] = torch.tensor(suffix, device=device)
        mask[row, plen + width - len(suffix):] = 1
    # generate extends the cache it is given; the stored prefix must stay as it is.
    cache = copy.deepcopy(prefix.cache)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    kwargs = {"input_ids": input_ids, "attention_mask": mask, "cache": cache}
    for name in ("object_memory", "object_memory_mask", "object_keys"):
        value = _expand(getattr(prefix, name), batch)
        if value is not None:
            kwargs[name] = value
    return kwargs


def left_padded_inputs(prompts: list[list[int]], pad_token_id: int, device) -> dict:
    """``input_ids`` and ``attention_mask`` (B, L_max) for full prompts, padded on the left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, device=device)
        mask[row, width - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def generated_rows(output: torch.Tensor, prompt_width: int, budgets: list[int], stop_ids: list[int]) -> list[list[int]]:
    """Each row's new tokens from a batched ``generate`` output (B, prompt_width + T): cut after
    its first stop token and at its own budget, so a row reads as if it had run alone (a batch
    runs to its longest row, and rows that stopped are padded)."""
    stops = set(stop_ids)
    rows = []
    for row, budget in zip(output[:, prompt_width:].tolist(), budgets):
        row = row[:budget]
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:end])
    return rows
