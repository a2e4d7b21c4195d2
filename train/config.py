"""Training configuration: nested dataclasses loaded from YAML, validated, overridable from the CLI.

Example (see ``train/configs/stage2.yaml``)::

    stage: 2
    model: {init: runs/stage1/final}
    data: {train: [data/train/records.jsonl], task_weights: {detection: 2, region: 1}}
    # or a weighted mixture (train/mixture.py), with evaluation images kept out:
    # data: {train: [{path: coco.jsonl, weight: 2}, {path: rexverse.jsonl, weight: 1}], exclude: [refcoco_val.jsonl]}
    optim: {lr: {default: 2.0e-4, projectors: 1.0e-3}}
    train: {output_dir: runs/stage2, max_steps: 2000, batch_size: 8}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from chatrex.utils.yaml_config import from_dict, load_yaml_with_overrides

from .mixture import DataSource, parse_sources

DEFAULT_TASK_WEIGHTS = {
    1: {"caption": 1.0, "detection": 1.0},
    2: {"detection": 2.0, "region": 1.0, "grounded_caption": 0.5},
    3: {"detection": 2.0, "region": 1.0, "grounded_caption": 0.5, "conversation": 1.0},
}


@dataclass
class ModelConfig:
    init: str = "chatrex-tiny-random"
    """A checkpoint directory (e.g. the previous stage's ``final``), a bundled model's name
    (``chatrex-tiny``: its trained weights) or a preset's (``chatrex-tiny-scratch``: random
    weights); ``train.model_loading``."""
    tokenizer: str | None = None
    """Tokenizer directory; required with a preset, optional with a checkpoint or a bundled model (which have one)."""
    config_overrides: dict = field(default_factory=dict)
    """Model-config fields to change on load, e.g. ``{token_compression: avgpool2x2}``."""


@dataclass
class DataConfig:
    train: list = field(default_factory=list)
    """Record files: plain paths (concatenated, every record equally likely) or, for a mixture,
    ``{path: ..., weight: ...}`` mappings: a weight is the file's share of the samples
    (probability w / sum(w), whatever its size; train/mixture.py). Not both kinds at once."""
    eval: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    """Evaluation record files (RefCOCO/+/g val/test, LVIS minival, ...): training records of
    the same COCO images are dropped when the data loads (chatrex/datasets/leakage.py)."""
    task_weights: dict[str, float] | None = None
    """Defaults per stage: DEFAULT_TASK_WEIGHTS."""
    max_boxes: int = 100
    num_proposals: int | None = None
    dedup_iou: float = 0.7
    use_record_proposals: bool = True
    upn_model: str | None = None
    """Optional UPN checkpoint to propose boxes on the fly (slower than precomputed proposals)."""
    num_workers: int = 0
    eval_samples: int = 64
    turns_per_sample: int = 1
    """Question/answer turns drawn (task by task) for one image and joined into one multi-turn
    conversation: the image and box tokens are encoded once for several supervised answers."""
    answer_format: str = "indices"
    """``indices`` (ChatRex) or ``coordinates`` (the coordinate-output baseline, BENCHMARKS.md)."""
    feature_cache: bool = False
    """Freeze both vision towers and train from their outputs cached once per image
    (``train.feature_cache``; built next to each records file on first use)."""
    oracle_object_features: bool = False
    """Diagnostic (needs ``feature_cache``): every box token is a perfect feature of the matched
    region's true attributes (train/diagnostics/oracle_features.py), to measure what the LLM
    can learn when the vision side is perfect. Never for a model you ship."""
    oracle_parent_features: bool = False
    """With ``oracle_object_features``: a part's oracle feature also states the object it
    belongs to (its record ``parent``)."""

    def sources(self) -> list[DataSource]:
        """``train`` as sources (path, weight or None); ValueError names a bad entry."""
        return parse_sources(self.train)

    def train_paths(self) -> list[str]:
        return [s.path for s in self.sources()]


@dataclass
class OptimConfig:
    lr: dict[str, float] = field(default_factory=lambda: {"default": 2e-4, "projectors": 1e-3})
    """Per module group: vision, projectors, embeddings, llm; 'default' for the rest."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0


@dataclass
class RunConfig:
    output_dir: str = "runs/chatrex"
    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 0
    save_every: int = 100
    eval_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    max_minutes: float | None = None
    """Wall-clock budget: stop after the first step past it, checkpoint and write final/ as at
    max_steps (e.g. to fit a GPU lease). The learning-rate schedule still spans max_steps."""
    mixed_precision: str = "auto"
    """'auto' (bf16 on GPUs that support it, fp32 on CPU), 'no', 'bf16' or 'fp16'."""
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    """Path to a DeepSpeed JSON config (e.g. train/configs/deepspeed/zero2.json)."""

    def validate(self) -> "RunConfig":
        """Raise ``ValueError`` naming the first bad field (``train.<field>``, as in the YAML)."""
        checks = {
            "max_steps": self.max_steps > 0,
            "batch_size": self.batch_size > 0,
            "grad_accum": self.grad_accum > 0,
            "save_every": self.save_every > 0,
            "eval_every": self.eval_every > 0,
            "log_every": self.log_every > 0,
            "keep_checkpoints": self.keep_checkpoints > 0,
            "max_minutes": self.max_minutes is None or self.max_minutes > 0,
            "mixed_precision": self.mixed_precision in ("auto", "no", "bf16", "fp16"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid train.{name}: {getattr(self, name)!r}")
        if self.deepspeed is not None and not os.path.isfile(self.deepspeed):
            raise ValueError(f"train.deepspeed file {self.deepspeed!r} does not exist")
        return self


@dataclass
class TrainConfig:
    stage: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        self._check_types()
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        if not self.data.train:
            raise ValueError("data.train lists no record files")
        for path in self.data.train_paths() + self.data.eval:
            if not os.path.isfile(path):
                raise ValueError(f"record file {path!r} does not exist")
        for path in self.data.exclude:
            if not isinstance(path, str) or not os.path.isfile(path):
                raise ValueError(f"data.exclude file {path!r} does not exist")
        if self.data.task_weights is None:
            self.data.task_weights = dict(DEFAULT_TASK_WEIGHTS[self.stage])
        self.train.validate()
        checks = {
            "data.max_boxes": 1 <= self.data.max_boxes <= 100,
            "data.dedup_iou": 0 < self.data.dedup_iou <= 1,
            "data.num_workers": self.data.num_workers >= 0,
            "data.turns_per_sample": 1 <= self.data.turns_per_sample <= 32,
            "data.answer_format": self.data.answer_format in ("indices", "coordinates"),
            "optim.warmup_steps": self.optim.warmup_steps >= 0,
            "optim.max_grad_norm": self.optim.max_grad_norm > 0,
        }
        for name, ok in checks.items():
            if not ok:
                section, key = name.split(".")
                raise ValueError(f"invalid {name}: {getattr(getattr(self, section), key)!r}")
        if self.data.oracle_object_features and not self.data.feature_cache:
            raise ValueError("data.oracle_object_features needs data.feature_cache: true (oracle rows replace the cached box features)")
        if self.data.oracle_parent_features and not self.data.oracle_object_features:
            raise ValueError("data.oracle_parent_features needs data.oracle_object_features: true")
        # Imports the model code, so it comes after the cheap checks; the ValueError names the
        # presets and the bundled models.
        from .model_loading import init_folder

        if init_folder(self.model.init) is None and self.model.tokenizer is None:
            raise ValueError(f"model.init={self.model.init!r} is a preset with random weights; set model.tokenizer to a tokenizer directory")
        return self

    def _check_types(self) -> None:
        """YAML quirks surface here with the key named (e.g. ``lr: 2e-4`` is read as a string)."""
        for section in ("data", "optim", "train"):
            obj = getattr(self, section)
            defaults = type(obj)()
            for f in dataclasses.fields(obj):
                default, value = getattr(defaults, f.name), getattr(obj, f.name)
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise ValueError(f"invalid {section}.{f.name}: {value!r} (expected true/false)")
                elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ValueError(f"invalid {section}.{f.name}: {value!r} (expected a number)")
        for name in ("train", "eval", "exclude"):
            if not isinstance(getattr(self.data, name), list):
                raise ValueError(f"data.{name} must be a list of record files, got {getattr(self.data, name)!r}")
        for name, lr in self.optim.lr.items():
            if isinstance(lr, bool) or not isinstance(lr, (int, float)):
                raise ValueError(f"invalid optim.lr.{name}: {lr!r} (expected a number; write 2.0e-4, not 2e-4, in YAML)")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load YAML (relative record paths resolve against the working directory) and apply
    ``section.key=value`` overrides (values parsed as YAML, e.g. ``train.max_steps=5``).
    ``$VAR`` / ``${VAR}`` in file and folder paths are environment variables (a recipe sets
    ``$RECORDS`` once for all its configs); an unset one is left as written."""
    return _expand_paths(from_dict(TrainConfig, load_yaml_with_overrides(path, overrides)))


def _expand(value):
    return os.path.expandvars(value) if isinstance(value, str) else value


def _expand_paths(cfg: TrainConfig) -> TrainConfig:
    cfg.model.init, cfg.model.tokenizer = _expand(cfg.model.init), _expand(cfg.model.tokenizer)
    cfg.data.upn_model = _expand(cfg.data.upn_model)
    cfg.train.output_dir, cfg.train.deepspeed = _expand(cfg.train.output_dir), _expand(cfg.train.deepspeed)
    for name in ("eval", "exclude"):
        if isinstance(getattr(cfg.data, name), list):
            setattr(cfg.data, name, [_expand(p) for p in getattr(cfg.data, name)])
    if isinstance(cfg.data.train, list):
        cfg.data.train = [dict(e, path=_expand(e["path"])) if isinstance(e, dict) and "path" in e else _expand(e) for e in cfg.data.train]
    return cfg


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
