"""Stages built from an :class:`EngineConfig`, run over batches, and records finished.

``run_stage`` runs one stage over a batch. A stage that raises on a batch is retried one sample
at a time, so a failure is pinned to its image (``sample.failure``) and the other images go on.
``finish_record`` turns a sample into the final record: grounded caption written from the
phrase offsets, provenance per stage, id, schema validation. ``Pipeline`` runs all stages.
"""

from __future__ import annotations

import copy
import traceback

from chatrex.text.markup import format_span

from .backends.registry import build_backend
from .config import EngineConfig
from .sample import Sample
from .schema import validate_record
from .stages.base import Stage
from .stages.captioning import CaptionStage
from .stages.grounding import GroundingStage
from .stages.image_filter import ImageFilter
from .stages.phrases import PhraseStage
from .stages.region_captioning import RegionCaptionStage
from .stages.verify_rewrite import VerifyRewriteStage

ENGINE_VERSION = "1"

STAGE_CLASSES: dict[str, type[Stage]] = {
    cls.name: cls for cls in (ImageFilter, CaptionStage, PhraseStage, GroundingStage, RegionCaptionStage, VerifyRewriteStage)
}


def build_stage(name: str, config: EngineConfig) -> Stage:
    """One stage with its backends (models load lazily, on first use)."""
    b = config.backends
    if name == "filter":
        return ImageFilter(**vars(config.filter))
    if name == "caption":
        return CaptionStage(build_backend("captioner", b.captioner))
    if name == "phrases":
        return PhraseStage(**vars(config.phrases))
    if name == "grounding":
        return GroundingStage(build_backend("grounder", b.grounder), **vars(config.grounding))
    if name == "region_caption":
        return RegionCaptionStage(build_backend("region_captioner", b.region_captioner))
    if name == "verify":
        rewriter = build_backend("rewriter", b.rewriter)
        grounder = build_backend("grounder", b.grounder) if config.verify.check_unique else None
        g = config.grounding
        return VerifyRewriteStage(build_backend("verifier", b.verifier), rewriter, grounder, config.verify.check_unique,
                                  config.verify.unique_iou, g.box_threshold, g.nms_iou)
    raise ValueError(f"unknown stage {name!r}")


def check_order(stages: list[Stage] | list[type[Stage]]) -> None:
    """Raise ``ValueError`` when a stage needs a field no earlier stage provides. Works on stage
    classes too (``requires``/``provides`` are class attributes), so no backend is built."""
    available: set[str] = set()
    for stage in stages:
        missing = [r for r in stage.requires if r not in available]
        if missing:
            raise ValueError(f"stage {stage.name!r} needs {missing}, which no earlier stage provides; order: {[s.name for s in stages]}")
        available.update(stage.provides)


def grounded_caption(caption: str, phrases: list[dict], region_phrase: list[int]) -> str | None:
    """The caption with ``<ground>phrase</ground><objects><objI>…</objects>`` around every phrase
    that kept at least one region (I = index into the record's regions)."""
    boxes_of: dict[int, list[int]] = {}
    for i, p in enumerate(region_phrase):
        boxes_of.setdefault(p, []).append(i)
    if not boxes_of:
        return None
    out, cursor = [], 0
    for p in sorted(boxes_of, key=lambda k: phrases[k]["start"]):
        start, end = phrases[p]["start"], phrases[p]["end"]
        out.append(caption[cursor:start] + format_span(caption[start:end], boxes_of[p]))
        cursor = end
    return "".join(out) + caption[cursor:]


def run_stage(stage: Stage, samples: list[Sample]) -> None:
    """Run ``stage`` on the samples still in play; on an exception, retry one sample at a time
    and record the failure on the sample that raised (its record is rolled back)."""
    todo = [s for s in samples if s.rejected is None and s.failure is None]
    if not todo:
        return
    try:
        stage.process(todo)
    except Exception:  # noqa: BLE001 - isolate the failing image below
        if len(todo) == 1:
            todo[0].fail(stage.name, traceback.format_exc(limit=3))
            return
        for s in todo:
            snapshot = (copy.deepcopy(s.record), copy.deepcopy(s.scratch), s.rejected)
            try:
                stage.process([s])
            except Exception:  # noqa: BLE001 - recorded in failures.jsonl; the run goes on
                s.record, s.scratch, s.rejected = snapshot
                s.fail(stage.name, traceback.format_exc(limit=3))
    provenance = stage.provenance()
    for s in todo:
        if s.failure is None:
            s.scratch.setdefault("provenance", {})[stage.name] = provenance


def finish_record(sample: Sample) -> dict:
    """The output record of an accepted sample (raises ``ValueError`` if it breaks the schema).

    Provenance comes from the sample itself (each stage stamps it where it ran), so a Ray driver
    can finish records without loading any model.
    """
    rec = dict(sample.record)
    rec["id"] = sample.id
    rec["image"] = sample.path
    region_phrase = sample.scratch.get("region_phrase")
    if rec.get("caption") and region_phrase is not None and "phrases" in sample.scratch:
        gc = grounded_caption(rec["caption"], sample.scratch["phrases"], region_phrase)
        if gc:
            rec["grounded_caption"] = gc
    provenance = {"engine_version": ENGINE_VERSION, **copy.deepcopy(sample.scratch.get("provenance", {}))}
    if "verify_counts" in sample.scratch and "verify" in provenance:
        provenance["verify"].update(sample.scratch["verify_counts"])
    rec["provenance"] = provenance
    validate_record(rec)
    return rec


class Pipeline:
    """The configured stages, in order (checked: every stage's inputs come from earlier stages)."""

    def __init__(self, config: EngineConfig, stages: list[Stage] | None = None):
        self.config = config
        self.stages = stages if stages is not None else [build_stage(n, config) for n in config.stages]
        check_order(self.stages)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def run_batch(self, samples: list[Sample]) -> list[Sample]:
        for stage in self.stages:
            run_stage(stage, samples)
        return samples
