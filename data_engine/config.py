"""Data-engine configuration (``engine.yaml``): stage order, stage settings, backends, runners.

Example (every key optional; these are the defaults)::

    stages: [filter, caption, phrases, grounding, region_caption, verify]
    filter: {min_size: 64, reject_nsfw: true, min_std: 4.0, dedup: true, max_hash_distance: 4}
    phrases: {max_words: 6, max_chars: 60}
    grounding: {box_threshold: 0.1, nms_iou: 0.5, max_boxes_per_phrase: 10, assign_iou: 0.7}
    verify: {check_unique: true, unique_iou: 0.5}
    backends:
      captioner: {kind: chatrex, model: chatrex-tiny}
      grounder: {kind: chatrex, model: chatrex-tiny}
      region_captioner: {kind: chatrex, model: chatrex-tiny}
      verifier: {kind: rules}
      rewriter: {kind: chatrex, model: chatrex-tiny}
    runner: {batch_size: 4, shard_size: 500, threads: null}
    ray: {num_cpus: null, actors: 1, fuse_stages: true, num_cpus_per_actor: 1, num_gpus_per_actor: 0,
          threads_per_actor: null, batch_size: 4}

Backend kinds: ``chatrex`` (bundled name or folder), ``hf`` (a transformers model path or id:
zero-shot detector for ``grounder``, image-text-to-text model for ``captioner`` and
``region_captioner``, causal LM for ``verifier`` and ``rewriter``), ``rules`` (verifier only),
``oracle`` (answers from ground-truth records; ``model`` = records.jsonl: an upper bound for
measuring the pipeline, and model-free tests), ``none`` (rewriter only: no referring expressions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatrex.utils.yaml_config import from_dict, load_yaml_with_overrides

STAGE_NAMES = ("filter", "caption", "phrases", "grounding", "region_caption", "verify")
BACKEND_KINDS = {
    "captioner": ("chatrex", "hf", "oracle"),
    "grounder": ("chatrex", "hf", "oracle"),
    "region_captioner": ("chatrex", "hf", "oracle"),
    "verifier": ("rules", "hf"),
    "rewriter": ("chatrex", "hf", "oracle", "none"),
}


@dataclass
class FilterConfig:
    min_size: int = 64
    reject_nsfw: bool = True
    min_std: float = 4.0
    edge_threshold: float = 8.0
    min_edge_fraction: float = 0.002
    dedup: bool = True
    max_hash_distance: int = 4


@dataclass
class PhraseConfig:
    spacy_model: str = "en_core_web_sm"
    max_words: int = 6
    max_chars: int = 60
    extra_abstract_nouns: list[str] = field(default_factory=list)


@dataclass
class GroundingConfig:
    box_threshold: float = 0.1
    nms_iou: float = 0.5
    max_boxes_per_phrase: int = 10
    assign_iou: float = 0.7


@dataclass
class VerifyConfig:
    check_unique: bool = True
    unique_iou: float = 0.5


@dataclass
class BackendConfig:
    kind: str = "chatrex"
    model: str | None = "chatrex-tiny"
    device: str = "cpu"
    options: dict = field(default_factory=dict)
    """Extra keyword arguments for the backend class (e.g. ``prompt`` for an hf captioner)."""


@dataclass
class BackendsConfig:
    captioner: BackendConfig = field(default_factory=BackendConfig)
    grounder: BackendConfig = field(default_factory=BackendConfig)
    region_captioner: BackendConfig = field(default_factory=BackendConfig)
    verifier: BackendConfig = field(default_factory=lambda: BackendConfig(kind="rules", model=None))
    rewriter: BackendConfig = field(default_factory=BackendConfig)


@dataclass
class LocalRunnerConfig:
    batch_size: int = 4
    shard_size: int = 500
    threads: int | None = None
    """torch threads for the run (``torch.set_num_threads``, put back afterwards); ``None``: the
    process's setting (torch's default is one per core, or ``OMP_NUM_THREADS``)."""


@dataclass
class RayConfig:
    address: str | None = None
    """``None`` starts a local cluster; ``"auto"`` joins a running one."""
    num_cpus: int | None = None
    """CPUs of the local cluster (``None``: all)."""
    actors: int = 1
    """Actors per pool: how many model replicas process images at once (data parallelism)."""
    fuse_stages: bool = True
    """``True``: every stage after the filter runs in one actor pool, so a worker takes an image
    through caption, phrases, grounding, region captions and verify with its models loaded once
    and the image encoded once (as the local runner does); ``ray.actors`` such workers run side
    by side. ``False``: one actor pool per model stage (``ray.actors`` actors each), so each model
    stage gets its own CPUs/GPUs, at the cost of decoding and encoding every image once per
    stage."""
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    threads_per_actor: int | None = None
    """torch threads in each actor; ``None``: ``num_cpus_per_actor`` rounded down, at least 1
    (more threads than the actor's CPUs oversubscribe the cores its neighbours use)."""
    batch_size: int = 4


@dataclass
class EngineConfig:
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))
    filter: FilterConfig = field(default_factory=FilterConfig)
    phrases: PhraseConfig = field(default_factory=PhraseConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    backends: BackendsConfig = field(default_factory=BackendsConfig)
    runner: LocalRunnerConfig = field(default_factory=LocalRunnerConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> "EngineConfig":
        if not isinstance(self.stages, list) or not self.stages:
            raise ValueError(f"stages must be a non-empty list of {STAGE_NAMES}, got {self.stages!r}")
        for name in self.stages:
            if name not in STAGE_NAMES:
                raise ValueError(f"unknown stage {name!r} in stages; known: {', '.join(STAGE_NAMES)}")
        if "filter" in self.stages and self.stages[0] != "filter":
            raise ValueError(f"the filter stage works on raw images and must come first, got {self.stages}")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages lists a stage twice: {self.stages}")
        for role, allowed in BACKEND_KINDS.items():
            b = getattr(self.backends, role)
            if b.kind not in allowed:
                raise ValueError(f"backends.{role}.kind must be one of {allowed}, got {b.kind!r}")
            if b.kind in ("chatrex", "hf", "oracle") and not b.model:
                raise ValueError(f"backends.{role}.model is required for kind {b.kind!r}")
        for name, value in (("runner.batch_size", self.runner.batch_size), ("runner.shard_size", self.runner.shard_size),
                            ("ray.actors", self.ray.actors), ("ray.batch_size", self.ray.batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("runner.threads", self.runner.threads), ("ray.threads_per_actor", self.ray.threads_per_actor)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        if not isinstance(self.ray.fuse_stages, bool):
            raise ValueError(f"ray.fuse_stages must be true or false, got {self.ray.fuse_stages!r}")
        if self.ray.num_gpus_per_actor < 0 or self.ray.num_cpus_per_actor < 0:
            raise ValueError("ray.num_cpus_per_actor and ray.num_gpus_per_actor must be >= 0")
        return self


def load_engine_config(path: str | None = None, overrides: list[str] | None = None) -> EngineConfig:
    return from_dict(EngineConfig, load_yaml_with_overrides(path, overrides)).validate()
