"""The local runner: batches through every stage in this process, with a progress bar.

Resumable: finished images (see :mod:`data_engine.runners.output`) are skipped, so a re-run after
a crash or Ctrl-C continues where it stopped. On Ctrl-C the records finished so far are written
as a (short) shard before the run stops.

``runner.threads`` sets torch's thread count for the run (and puts the old one back after it);
``None`` keeps the process's setting.
"""

from __future__ import annotations

import contextlib
import time

from tqdm.auto import tqdm

from ..config import EngineConfig
from ..inputs import list_inputs
from ..pipeline import Pipeline
from .common import RunSummary, deliver, pending_samples
from .output import OutputDir


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` for the duration of the block; nothing for ``None``."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_local(config: EngineConfig, source: str, output: str, limit: int | None = None, retry_failed: bool = False,
              progress: bool = True, pipeline: Pipeline | None = None) -> RunSummary:
    """Run the engine over ``source`` (folder or list file; the first ``limit`` inputs) into ``output``."""
    with torch_threads(config.runner.threads):
        return _run_local(config, source, output, limit, retry_failed, progress, pipeline)


def _run_local(config: EngineConfig, source: str, output: str, limit: int | None, retry_failed: bool, progress: bool,
               pipeline: Pipeline | None) -> RunSummary:
    start = time.time()
    inputs = list_inputs(source)[:limit] if limit is not None else list_inputs(source)
    pipeline = pipeline or Pipeline(config)
    out = OutputDir(output, config.runner.shard_size)
    summary = RunSummary(output=output, inputs=len(inputs))
    samples = pending_samples(inputs, out, summary, retry_failed)
    if "filter" in config.stages:
        duplicates = pipeline.stage("filter").duplicates
        for sid, phash in out.kept_hashes:
            duplicates.seen(sid, phash)
    bs = config.runner.batch_size
    try:
        with tqdm(total=len(samples), desc="data engine", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for i in range(0, len(samples), bs):
                batch = samples[i : i + bs]
                pipeline.run_batch(batch)
                deliver(out, batch, summary)
                bar.update(len(batch))
                bar.set_postfix(records=summary.records, rejected=summary.rejected, failed=summary.failed)
    finally:
        out.flush()  # also on Ctrl-C: finished records are kept, the rest is redone next time
        summary.seconds = time.time() - start
    return summary
