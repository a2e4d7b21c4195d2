"""The three-stage freeze policy (docs/training.md) and per-module parameter groups.

| stage | trainable |
|---|---|
| 1 alignment  | mm_projector, mm_object_projector (and the pointer head), input and output embeddings |
| 2 perception | everything |
| 3 joint      | everything |

Modules are named by attribute, never by substrings of parameter names.
"""

from __future__ import annotations

from torch import nn

STAGES = (1, 2, 3)

# Module groups of ChatRexForConditionalGeneration, used both for freezing and for learning rates.
MODULE_GROUPS = {
    "vision": lambda m: [m.model.vision_low, m.model.vision_high],
    "projectors": lambda m: [m.model.mm_projector, m.model.mm_object_projector]
    + ([m.model.token_compression] if m.model.token_compression is not None else [])
    + ([m.object_pointer] if m.object_pointer is not None else []),
    "embeddings": lambda m: [m.get_input_embeddings(), m.get_output_embeddings()],
    "llm": lambda m: [m.model.language_model, m.lm_head],
}


def _group_params(model) -> dict[str, list[nn.Parameter]]:
    """Parameters per group; embeddings are taken out of ``llm`` so each parameter has one group."""
    seen: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {}
    for name in ("embeddings", "projectors", "vision", "llm"):
        params = []
        for module in MODULE_GROUPS[name](model):
            for p in module.parameters():
                if id(p) not in seen:  # tied embeddings appear once
                    seen.add(id(p))
                    params.append(p)
        groups[name] = params
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    assert not missing, f"parameters outside every module group: {missing[:5]}"
    return groups


def param_count(p: nn.Parameter) -> int:
    # Under DeepSpeed ZeRO-3 a loaded model's parameters are already partitioned (empty
    # tensors); the full size and shape are kept in ds_numel / ds_shape.
    return int(getattr(p, "ds_numel", p.numel()))


def _ndim(p: nn.Parameter) -> int:
    return len(getattr(p, "ds_shape", p.shape))


def apply_stage(model, stage: int, freeze_vision: bool = False) -> dict[str, tuple[int, int]]:
    """Set ``requires_grad`` for ``stage`` and return ``{group: (trainable, total)}`` counts.
    ``freeze_vision`` keeps both vision towers frozen in every stage (training from cached
    encoder outputs)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    trainable_groups = {"projectors", "embeddings"} if stage == 1 else set(MODULE_GROUPS)
    if freeze_vision:
        trainable_groups.discard("vision")
    counts = {}
    # A tower run without gradients (config.vision_high_no_grad) is frozen whatever the stage.
    no_grad = {id(p) for p in model.model.vision_high.parameters()} if model.config.vision_high_no_grad else set()
    for name, params in _group_params(model).items():
        for p in params:
            p.requires_grad_(name in trainable_groups and id(p) not in no_grad)
        total = sum(param_count(p) for p in params)
        counts[name] = (sum(param_count(p) for p in params if p.requires_grad), total)
    return counts


def format_counts(counts: dict[str, tuple[int, int]]) -> str:
    """A fixed-width table of trainable / total parameters per module group."""
    lines = [f"{'module':<12}{'trainable':>14}{'total':>14}"]
    for name, (trainable, total) in counts.items():
        lines.append(f"{name:<12}{trainable:>14,}{total:>14,}")
    lines.append(f"{'all':<12}{sum(c[0] for c in counts.values()):>14,}{sum(c[1] for c in counts.values()):>14,}")
    return "\n".join(lines)


def build_param_groups(model, learning_rates: dict[str, float], weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups per module group, with their own learning rates.

    ``learning_rates`` maps group names (``vision``, ``projectors``, ``embeddings``, ``llm``) to
    a learning rate; a missing group falls back to ``learning_rates["default"]``. Frozen
    parameters are left out. Biases and norm weights (1-D tensors) get no weight decay.
    """
    unknown = set(learning_rates) - set(MODULE_GROUPS) - {"default"}
    if unknown:
        raise ValueError(f"unknown module groups {sorted(unknown)} in learning rates; known: {sorted(MODULE_GROUPS)}")
    out = []
    for name, params in _group_params(model).items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if name not in learning_rates and "default" not in learning_rates:
            raise ValueError(f"no learning rate for module group {name!r} and no 'default'")
        lr = float(learning_rates.get(name, learning_rates.get("default")))
        decay = [p for p in params if _ndim(p) >= 2]
        no_decay = [p for p in params if _ndim(p) < 2]
        if decay:
            out.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
        if no_decay:
            out.append({"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return out
