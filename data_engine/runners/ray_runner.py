"""The Ray runner: the same stages as Ray Data ``map_batches`` operators.

- Light stages (filter, phrases) run as Ray tasks; each model stage (caption, grounding,
  region_caption, verify) runs in its own actor pool (``ray.actors`` actors, each asking for
  ``ray.num_cpus_per_actor`` CPUs and ``ray.num_gpus_per_actor`` GPUs), so a model loads once
  per actor and a GPU cluster gives each model stage its own devices.
- Duplicate detection needs a global order, so it runs on the driver between the filter and the
  model stages, over ``(id, phash)`` pairs only, in input order: the same images survive as in
  the local runner.
- Results stream back to the driver, which writes the same shards, manifest and failures as
  the local runner (so resuming and ``stats`` work the same way).

The driver computes image ids by hashing files; on a cluster with remote storage that pass is
I/O bound and would be the next thing to distribute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

from tqdm.auto import tqdm

from ..config import EngineConfig
from ..inputs import list_inputs
from ..pipeline import STAGE_CLASSES, build_stage, check_order, run_stage
from ..sample import Sample
from ..stages.image_filter import DuplicateFilter
from .common import RunSummary, deliver, pending_samples
from .output import OutputDir


class StageWorker:
    """Rows in, rows out, for a run of consecutive stages (a Ray task body or actor).

    Built from a plain config dict so it pickles cheaply; models load on the worker.
    """

    def __init__(self, config: dict, stage_names: list[str]):
        from chatrex.yaml_config import from_dict

        cfg = from_dict(EngineConfig, config)
        cfg.filter.dedup = False  # done on the driver, in input order
        self.stages = [build_stage(n, cfg) for n in stage_names]

    def __call__(self, batch):
        import pandas as pd

        samples = [Sample.from_row(r) for r in batch.to_dict("records")]
        for stage in self.stages:
            run_stage(stage, samples)
        return pd.DataFrame([{**s.to_row(), "order": int(o)} for s, o in zip(samples, batch["order"])])


def _groups(config: EngineConfig) -> list[tuple[list[str], bool]]:
    """Stage names split into runs: each model stage alone, consecutive light stages together."""
    groups: list[tuple[list[str], bool]] = []
    for name in config.stages:
        uses_model = STAGE_CLASSES[name].uses_model  # a class attribute: the driver builds no backend
        if uses_model or not groups or groups[-1][1]:
            groups.append(([name], uses_model))
        else:
            groups[-1][0].append(name)
    return groups


def _map(ds, config: EngineConfig, names: list[str], uses_model: bool):
    cfg = dataclasses.asdict(config)
    r = config.ray
    if uses_model:
        import ray

        return ds.map_batches(StageWorker, fn_constructor_kwargs={"config": cfg, "stage_names": names}, batch_size=r.batch_size,
                              batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=r.actors), num_cpus=r.num_cpus_per_actor,
                              num_gpus=r.num_gpus_per_actor or None)
    worker = StageWorker(cfg, names)  # light stages: a stateless task body
    return ds.map_batches(worker, batch_size=r.batch_size, batch_format="pandas", num_cpus=1)


# What Ray prints on its own for a small local run, and how each is kept quiet unless verbose:
# - "Started a local Ray instance" (INFO) and the token-authentication notice (WARNING) go
#   through the "ray" logger, whose level ray.init sets (``logging_level``);
# - each dataset's "Starting execution" / "Execution plan" / "execution finished" (INFO) and
#   "Progress bars disabled" (WARNING) go through the "ray.data" logger's console handler
#   (its file handlers in the session's logs/ray-data keep everything);
# - Ray Data's own progress bars (one per operator, many lines when stderr is not a terminal);
#   the runner's single bar counts images instead;
# - worker processes' output (``log_to_driver``).
# One line stays: the driver's C++ core worker logs at ERROR that actor constructor arguments
# live in the object store (ray-project/ray#53727; Ray Data always puts them there). Only
# RAY_BACKEND_LOG_LEVEL=fatal hides it, and that prints a line of its own and is inherited by
# every Ray process, emptying the raylet's and GCS's log files: a worse trade.


def _init_ray(config: EngineConfig, verbose: bool) -> None:
    """Start or join the cluster of ``config.ray``; quiet (see above) unless ``verbose``."""
    import ray

    ray.init(address=config.ray.address, num_cpus=config.ray.num_cpus, include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def _ray_data_console(verbose: bool):
    """Ray Data's console messages at ERROR and above only, for the duration of the run, unless
    ``verbose``; the handler's level is put back afterwards (the runner may run inside another
    program, e.g. the tests)."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger on first import)

    handlers = [] if verbose else [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels):
            handler.setLevel(level)


def run_ray(config: EngineConfig, source: str, output: str, limit: int | None = None, retry_failed: bool = False, progress: bool = True,
            verbose: bool = False) -> RunSummary:
    """Run the stages of ``config`` over ``source`` on Ray Data into ``output`` (the local
    runner's layout). ``progress``: one bar counting images; ``verbose``: Ray's own log lines,
    progress bars and worker output as well (otherwise quiet: see the comment above ``_init_ray``)."""
    import ray

    start = time.time()
    check_order([STAGE_CLASSES[n] for n in config.stages])
    inputs = list_inputs(source)[:limit] if limit is not None else list_inputs(source)
    out = OutputDir(output, config.runner.shard_size)
    summary = RunSummary(output=output, inputs=len(inputs))
    samples = pending_samples(inputs, out, summary, retry_failed)
    if not ray.is_initialized():
        _init_ray(config, verbose)
    with _ray_data_console(verbose):
        return _run(config, out, summary, samples, start, progress, verbose)


def _run(config: EngineConfig, out: OutputDir, summary: RunSummary, samples: list, start: float, progress: bool, verbose: bool) -> RunSummary:
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress and verbose
    groups = _groups(config)
    try:
        if not samples:
            return summary
        ds = ray.data.from_items([{**s.to_row(), "order": i} for i, s in enumerate(samples)])
        if groups and groups[0][0][0] == "filter":
            names, uses_model = groups.pop(0)
            rows = sorted(_map(ds, config, names, uses_model).take_all(), key=lambda r: r["order"])
            filtered = [Sample.from_row(r) for r in rows]
            if config.filter.dedup:
                duplicates = DuplicateFilter(config.filter.max_hash_distance)
                for sid, phash in out.kept_hashes:
                    duplicates.seen(sid, phash)
                for s in filtered:
                    if s.rejected is None and s.failure is None:
                        other = duplicates.seen(s.id, s.scratch["phash"])
                        if other is not None:
                            s.reject("filter", f"duplicate of {other}")
            done = [s for s in filtered if s.rejected is not None or s.failure is not None]
            deliver(out, done, summary)
            survivors = [s for s in filtered if s.rejected is None and s.failure is None]
            if not survivors:
                return summary
            ds = ray.data.from_items([{**s.to_row(), "order": i} for i, s in enumerate(survivors)])
            pending = len(survivors)
        else:
            pending = len(samples)
        for names, uses_model in groups:
            ds = _map(ds, config, names, uses_model)
        with tqdm(total=pending, desc="data engine (ray)", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for batch in ds.iter_batches(batch_size=config.ray.batch_size, batch_format="pandas"):
                finished = [Sample.from_row(r) for r in batch.to_dict("records")]
                deliver(out, finished, summary)
                bar.update(len(finished))
    finally:
        out.flush()
        summary.seconds = time.time() - start
    return summary
