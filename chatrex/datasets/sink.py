"""Where every importer writes: validated records, bad-row accounting, atomic completion.

Records go to a temporary file beside ``OUT`` (``chatrex.utils.atomic``), renamed onto ``OUT`` only when the whole source has been
read, so a crash or Ctrl-C never leaves an ``OUT`` that looks complete (an earlier, complete
``OUT`` stays as it was until it is replaced). Importers are deterministic, so a re-run writes
a byte-identical file. Sidecars (``OUT`` without ``.jsonl`` + ``.categories.json``, and
``.bad.jsonl`` listing every bad row) are written before the rename for the same reason.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

from tqdm import tqdm

from chatrex.utils.atomic import atomic_write

from .files import image_size
from .schema import validate_record

MAX_PRINTED_BAD = 20


class BadRowError(ValueError):
    """A bad source row under ``--strict`` (message: ``<file:line or id>: <reason>``)."""


class BadRow(ValueError):
    """Raised by a reader for one source row it cannot import; ``kind`` is the short reason
    the summary counts it under (e.g. "degenerate box")."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def sidecar_path(out: str, suffix: str) -> str:
    """``runs/coco.jsonl`` + ``categories.json`` -> ``runs/coco.categories.json``."""
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    return f"{stem}.{suffix}"


def write_json_atomic(path: str, obj) -> None:
    """The JSON layout of import sidecars and bench results (indent 1, UTF-8, final newline)."""
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


@dataclass
class ImportSummary:
    """What one import wrote, and what it could not."""

    out: str
    dataset: str
    records: int = 0
    images: int = 0
    regions: int = 0
    sentences: int = 0
    text_only: int = 0
    bad: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    def line(self) -> str:
        parts = [f"{self.records} records ({self.images} images, {self.regions} regions, {self.sentences} sentences"]
        if self.text_only:
            parts[0] += f", {self.text_only} text-only"
        parts[0] += ")"
        text = f"{self.dataset}: wrote {parts[0]} to {self.out}; "
        if self.bad:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.bad.items()))
            text += f"{self.bad_rows} bad rows ({reasons}), listed in {sidecar_path(self.out, 'bad.jsonl')}"
        else:
            text += "0 bad rows"
        if self.notes:
            text += "; " + ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))
        return text


class RecordSink:
    """Validate and write records; count and report bad rows; finish atomically.

    Use as a context manager; call :meth:`finish` at the end of a successful import. Leaving
    the ``with`` block without ``finish`` (an exception) removes the temporary file.
    """

    def __init__(self, out: str, dataset: str, *, strict: bool = False, progress: bool = True,
                 total: int | None = None, unit: str = "rows"):
        self.out = os.fspath(out)
        self.strict = strict
        self.summary = ImportSummary(out=self.out, dataset=dataset)
        self._bad_rows: list[dict] = []
        self._sidecars: dict[str, object] = {}
        self._writing: ExitStack | None = None
        self._file = None
        self._bar = tqdm(total=total, unit=unit, desc=f"import {dataset}", file=sys.stderr,
                         disable=not progress, dynamic_ncols=True)

    def __enter__(self):
        parent = os.path.dirname(os.path.abspath(self.out))
        os.makedirs(parent, exist_ok=True)
        # The file is committed by finish(), after its sidecars, so it stays open past __enter__.
        self._writing = ExitStack()
        self._file = self._writing.enter_context(atomic_write(self.out, encoding="utf-8", fsync=True))
        return self

    def __exit__(self, exc_type, exc, tb):
        self._bar.close()
        if self._writing is not None:  # finish() was not reached: the records are discarded
            unfinished = exc or RuntimeError(f"{self.out}: import left without finish()")
            writing, self._writing, self._file = self._writing, None, None
            writing.__exit__(type(unfinished), unfinished, tb)
        return False

    def tick(self, n: int = 1) -> None:
        self._bar.update(n)

    def note(self, what: str, n: int = 1) -> None:
        """Count something worth telling that is not an error (e.g. missing image files)."""
        self.summary.notes[what] += n

    def bad(self, where: str, reason: str, kind: str) -> None:
        """Report one bad source row (``where`` = ``file:line`` or ``file: <id>``).

        Raises ``BadRowError`` under ``--strict``; otherwise counts it by ``kind``, prints the
        first few on stderr and lists all of them in ``OUT.bad.jsonl``.
        """
        message = f"{where}: {reason}"
        if self.strict:
            raise BadRowError(message)
        self.summary.bad[kind] += 1
        self._bad_rows.append({"where": where, "kind": kind, "reason": reason})
        n = len(self._bad_rows)
        if n <= MAX_PRINTED_BAD:
            self._bar.write(f"chatrex data import: bad row: {' '.join(message.split())}", file=sys.stderr)
            if n == MAX_PRINTED_BAD:
                self._bar.write("chatrex data import: (further bad rows are only counted and listed in the .bad.jsonl file)",
                                file=sys.stderr)

    def image_size(self, path: str, exists: bool, width, height, where: str) -> tuple | None:
        """The image's ``(width, height)``: as the source gives them, else read from the file's
        header. A missing file is counted (its record is kept); an unreadable one is a bad row
        and gives ``None``."""
        if not exists:
            self.note("image files not found")
        elif width is None or height is None:
            try:
                return image_size(path)
            except ValueError as err:
                self.bad(where, f"{path}: {err}", "unreadable image")
                return None
        return width, height

    def write(self, record: dict, where: str, sentences: int = 0) -> bool:
        """Validate and write one record; an invalid record is a bad row (returns False)."""
        try:
            validate_record(record)
        except ValueError as err:
            self.bad(where, f"invalid record: {err}", "invalid record")
            return False
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        s = self.summary
        s.records += 1
        if "image" in record:
            s.images += 1
        else:
            s.text_only += 1
        s.regions += len(record.get("regions") or [])
        s.sentences += sentences
        return True

    def sidecar(self, suffix: str, obj) -> None:
        """A JSON file written next to ``OUT`` (``sidecar_path``) when the import completes."""
        self._sidecars[suffix] = obj

    def finish(self) -> ImportSummary:
        for suffix, obj in self._sidecars.items():
            write_json_atomic(sidecar_path(self.out, suffix), obj)
        bad_path = sidecar_path(self.out, "bad.jsonl")
        if self._bad_rows:
            with atomic_write(bad_path, encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self._bad_rows)
        elif os.path.exists(bad_path):
            os.remove(bad_path)  # from an earlier run: it would describe rows this run did not see
        self._file = None
        writing, self._writing = self._writing, None
        writing.close()  # fsync and rename: OUT last, once its sidecars are in place
        return self.summary
