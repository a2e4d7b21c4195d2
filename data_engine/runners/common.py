"""What both runners share: picking the images still to do, and writing each sample's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..inputs import InputImage, image_id, path_id
from ..pipeline import finish_record
from ..sample import Sample
from .output import OutputDir


@dataclass
class RunSummary:
    output: str
    inputs: int = 0
    already_done: int = 0
    records: int = 0
    rejected: int = 0
    failed: int = 0
    seconds: float = 0.0
    rejects_by_stage: dict = field(default_factory=dict)

    @property
    def processed(self) -> int:
        return self.records + self.rejected + self.failed

    def line(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.records} records, {self.rejected} rejected, {self.failed} failed, {self.already_done} already done "
                f"(of {self.inputs} inputs) in {self.seconds:.1f}s ({rate:.2f} img/s) -> {self.output}")


def pending_samples(inputs: list[InputImage], out: OutputDir, summary: RunSummary, retry_failed: bool = False) -> list[Sample]:
    """Samples for the inputs not finished yet; unreadable files and repeated files (same bytes
    as an earlier input) are written to the output at once."""
    todo, seen = [], set()
    for inp in inputs:
        try:
            sid = image_id(inp.path)
        except OSError as err:
            sid = "missing-" + path_id(inp.path)
            if not out.is_finished(sid, retry_failed):
                out.add_failure(sid, inp.path, "input", f"{type(err).__name__}: {err}")
                summary.failed += 1
            continue
        if out.is_finished(sid, retry_failed):
            summary.already_done += 1
            continue
        if sid in seen:
            out.add_reject(sid + "-" + path_id(inp.path), inp.path, "filter: same file as an earlier input")
            summary.rejected += 1
            continue
        seen.add(sid)
        todo.append(Sample(id=sid, path=inp.path, meta=dict(inp.meta)))
    return todo


def deliver(out: OutputDir, samples: list[Sample], summary: RunSummary) -> None:
    """Write each finished sample: a record, a reject or a failure."""
    for s in samples:
        if s.failure is not None:
            out.add_failure(s.id, s.path, s.failure["stage"], s.failure["error"])
            summary.failed += 1
        elif s.rejected is not None:
            out.add_reject(s.id, s.path, s.rejected)
            summary.rejected += 1
            stage = s.rejected.split(":", 1)[0]
            summary.rejects_by_stage[stage] = summary.rejects_by_stage.get(stage, 0) + 1
        else:
            try:
                record = finish_record(s)
            except ValueError as err:
                out.add_failure(s.id, s.path, "finish", f"record fails the schema: {err}")
                summary.failed += 1
                continue
            out.add_record(record, s.scratch.get("phash"))
            summary.records += 1
