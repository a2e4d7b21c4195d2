"""Backend objects from config: ``build_backend(role, BackendConfig)``.

One object per (kind, model, device, options) and process, so a model used by several stages
(ChatRex grounds in ``grounding`` and again in ``verify``) is loaded once.
"""

from __future__ import annotations

import functools
import json

from .base import Captioner, Grounder, RegionCaptioner, Rewriter, Verifier

ROLES = {"captioner": Captioner, "grounder": Grounder, "region_captioner": RegionCaptioner, "verifier": Verifier, "rewriter": Rewriter}


@functools.lru_cache(maxsize=16)
def _cached(role: str, kind: str, model: str | None, device: str, options_json: str):
    options = json.loads(options_json)
    if kind == "chatrex":
        from .chatrex_backend import ChatRexBackend

        return ChatRexBackend(model, device=device, **options)
    if kind == "oracle":
        from .oracle import OracleBackend

        return OracleBackend(model, **options)
    if kind == "rules":
        from .rules import RuleVerifier

        return RuleVerifier(**options)
    if kind == "hf":
        from . import hf

        if role == "grounder":
            return hf.HFGrounder(model, device=device, **options)
        if role == "captioner":
            return hf.HFCaptioner(model, device=device, **options)
        if role == "region_captioner":
            return hf.HFRegionCaptioner(_cached("captioner", kind, model, device, "{}"), **options)
        if role == "verifier":
            return hf.HFVerifier(model, device=device, **options)
        if role == "rewriter":
            return hf.HFRewriter(model, device=device, **options)
    raise ValueError(f"no {kind!r} backend for {role!r}")


def build_backend(role: str, config):
    """The backend for ``role`` (captioner, grounder, region_captioner, verifier, rewriter);
    ``None`` for ``kind: none``."""
    if role not in ROLES:
        raise ValueError(f"unknown backend role {role!r}; known: {sorted(ROLES)}")
    if config.kind == "none":
        return None
    backend = _cached(role, config.kind, config.model, config.device, json.dumps(config.options, sort_keys=True))
    assert isinstance(backend, ROLES[role]), f"{type(backend).__name__} does not implement {role}"
    return backend
