"""Strict checks on a loaded ChatRex checkpoint.

transformers' ``from_pretrained`` only *logs* missing and unexpected keys and initialises the
missing ones at random, so a truncated or foreign ``model.safetensors`` would load "fine" and
answer nonsense. ChatRex folders are loaded strictly instead: every key must be there and
nothing else, except the parameters a config override adds on purpose (for example
``token_compression="avgpool2x2"`` adds a projector that starts from random weights, see
docs/training.md "Variants").
"""

from __future__ import annotations

import torch


def override_added_keys(config_class, model_class, path, overrides: dict) -> set[str]:
    """State-dict keys that exist only because of ``overrides`` (config fields given to
    ``from_pretrained``): the keys of a model built from the overridden config minus those of a
    model built from the saved config. Both are built on the meta device (no memory)."""
    if not overrides:
        return set()
    saved = config_class.from_pretrained(path)
    changed = config_class.from_pretrained(path, **overrides)
    with torch.device("meta"):
        before = set(model_class(saved).state_dict())
        after = set(model_class(changed).state_dict())
    return after - before


def check_loading_info(path, info: dict, allowed_missing: set[str] = frozenset()) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mismatched key of a load.

    Args:
        path: the folder, for the message.
        info: transformers' loading info (``output_loading_info=True``).
        allowed_missing: keys that may be missing (see :func:`override_added_keys`).
    """
    missing = sorted(set(info.get("missing_keys") or ()) - set(allowed_missing))
    unexpected = sorted(info.get("unexpected_keys") or ())
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
