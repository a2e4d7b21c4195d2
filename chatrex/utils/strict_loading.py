"""Strict checks on a loaded ChatRex checkpoint.

transformers' ``from_pretrained`` only *logs* missing and unexpected keys and initialises the
missing ones at random, so a truncated or foreign ``model.safetensors`` would load "fine" and
answer nonsense. ChatRex folders are loaded strictly instead: every key must be there and
nothing else, except the parameters a config override adds or removes on purpose (for example
``token_compression="avgpool2x2"`` adds a projector that starts from random weights, and
``object_pointer_head=False`` leaves the pointer head's weights unused; see docs/training.md).
"""

from __future__ import annotations

import torch


def override_key_changes(config_class, model_class, path, overrides: dict) -> tuple[set[str], set[str]]:
    """``(added, removed)``: the state-dict keys that ``overrides`` (config fields given to
    ``from_pretrained``) add to the model, and those they remove (e.g. switching
    ``object_pointer_head`` off leaves the checkpoint's pointer weights unused). Both models are
    built on the meta device (no memory)."""
    if not overrides:
        return set(), set()
    saved = config_class.from_pretrained(path)
    changed = config_class.from_pretrained(path, **overrides)
    with torch.device("meta"):
        before = set(model_class(saved).state_dict())
        after = set(model_class(changed).state_dict())
    return after - before, before - after


def check_loading_info(path, info: dict, allowed_missing: set[str] = frozenset(), allowed_unexpected: set[str] = frozenset()) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mismatched key of a load.

    Args:
        path: the folder, for the message.
        info: transformers' loading info (``output_loading_info=True``).
        allowed_missing, allowed_unexpected: keys a config override adds or removes
            (see :func:`override_key_changes`).
    """
    missing = sorted(set(info.get("missing_keys") or ()) - set(allowed_missing))
    unexpected = sorted(set(info.get("unexpected_keys") or ()) - set(allowed_unexpected))
    mismatched = sorted(str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or ())
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
    if mismatched:
        problems.append(f"{len(mismatched)} key(s) with the wrong shape: {', '.join(mismatched[:20])}")
    if problems:
        raise ValueError(f"weights in {path} do not match the model: " + "; ".join(problems))
