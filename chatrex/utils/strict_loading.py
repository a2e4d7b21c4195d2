"""Strict checks on a loaded ChatRex checkpoint, and the one report of bad state-dict keys.

transformers' ``from_pretrained`` only *logs* missing and unexpected keys and initialises the
missing ones at random, so a truncated or foreign ``model.safetensors`` would load "fine" and
answer nonsense. ChatRex folders are loaded strictly instead: every key must be there and
nothing else, except the parameters a config override adds or removes on purpose (for example
``token_compression="avgpool2x2"`` adds a projector that starts from random weights, and
``object_pointer_head=False`` leaves the pointer head's weights unused; see docs/training.md).

:class:`KeyReport` words every such failure, of a load or of a converter (chatrex.convert), the
same way. This module imports no torch (the converters' key checks read only ``.shape``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

SHOWN_KEYS = 20  # keys listed per kind; a damaged checkpoint can miss thousands


def _listing(keys: list[str]) -> str:
    shown = sorted(keys)
    return ", ".join(shown[:SHOWN_KEYS]) + (" ..." if len(shown) > SHOWN_KEYS else "")


@dataclass
class KeyReport:
    """What is wrong with the keys of one conversion or load.

    ``what`` names it (``"CLIP checkpoint"``, ``"weights in x/ do not match the model"``);
    ``unmapped`` are source keys no rule renames; ``missing``, ``unexpected`` and ``wrong_shape``
    compare the result with the model (``wrong_shape`` entries read ``"key (got) != (want)"``);
    ``problems`` are free-form sentences.
    """

    what: str
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def against(cls, what: str, got: dict, expected: dict, unmapped: Iterable[str] = ()) -> KeyReport:
        """Compare a converted state dict with the model's (values need only ``.shape``)."""
        common = set(got) & set(expected)
        return cls(
            what,
            unmapped=list(unmapped),
            missing=list(set(expected) - set(got)),
            unexpected=list(set(got) - set(expected)),
            wrong_shape=[f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}" for k in common
                         if tuple(got[k].shape) != tuple(expected[k].shape)],
        )

    def raise_if_any(self) -> None:
        """Raise ``ValueError`` with every kind of bad key (count, then the first keys sorted);
        nothing when the report is clean."""
        kinds = (("unmapped", self.unmapped), ("missing", self.missing), ("unexpected", self.unexpected),
                 ("wrong shape", self.wrong_shape))
        parts = [f"{label} {len(keys)} key(s): {_listing(list(keys))}" for label, keys in kinds if keys]
        parts += self.problems
        if parts:
            raise ValueError(f"{self.what}: " + "; ".join(parts))


def override_key_changes(config_class, model_class, path, overrides: dict) -> tuple[set[str], set[str]]:
    """``(added, removed)``: the state-dict keys that ``overrides`` (config fields given to
    ``from_pretrained``) add to the model, and those they remove (e.g. switching
    ``object_pointer_head`` off leaves the checkpoint's pointer weights unused). Both models are
    built on the meta device (no memory)."""
    if not overrides:
        return set(), set()
    import torch  # here, not at the top, so that KeyReport imports without torch

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
    KeyReport(
        f"weights in {path} do not match the model",
        missing=list(set(info.get("missing_keys") or ()) - set(allowed_missing)),
        unexpected=list(set(info.get("unexpected_keys") or ()) - set(allowed_unexpected)),
        wrong_shape=[_mismatch(m) for m in info.get("mismatched_keys") or ()],
    ).raise_if_any()


def _mismatch(entry) -> str:
    """transformers' ``(key, checkpoint shape, model shape)``, in the report's wording."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        return f"{entry[0]} {tuple(entry[1])} != {tuple(entry[2])}"
    return str(entry[0]) if isinstance(entry, (tuple, list)) else str(entry)
