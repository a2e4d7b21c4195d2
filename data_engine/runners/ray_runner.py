"""The Ray runner: the engine's stages on a Ray cluster (a local one by default).

Two layouts (``ray.fuse_stages``):

- ``true`` (default): ``ray.actors`` worker actors, each holding every stage. The filter runs
  on them first; duplicate detection, which needs a global order, then runs on the driver over
  ``(id, phash)`` pairs in input order (the same images survive as in the local runner); the
  surviving images then go through caption, phrases, grounding, region captions and verify on
  the same workers, a batch at a time, so each worker loads its models once and encodes an
  image once for all of its questions, as the local runner does. N workers are N model
  replicas: throughput grows with N. A batch is ``ray.batch_size`` consecutive inputs less the
  ones the filter dropped: with ``ray.batch_size`` equal to ``runner.batch_size`` (both 4 by
  default) every stage sees the local runner's batches, so even a backend whose results
  depend on what else is in its batch gives the local runner's records. The actors start
  before the driver hashes the input files, so their start-up (a process and its imports,
  6-10 s on 2 cores) overlaps that pass.
- ``false``: Ray Data ``map_batches`` operators. The filter runs as Ray tasks (duplicate
  detection on the driver, as above); light stages (phrases) run as tasks and each model stage
  (caption, grounding, region_caption, verify) in its own actor pool of ``ray.actors`` actors,
  so a GPU cluster gives each model stage its own devices. Each stage decodes the image again
  and ChatRex encodes it again (its feature cache is per process), and Ray Data forms each
  stage's batches, so the records equal the local runner's only for backends whose results
  do not depend on the batch.

Every actor asks for ``ray.num_cpus_per_actor`` CPUs and ``ray.num_gpus_per_actor`` GPUs and
runs ``ray.threads_per_actor`` torch threads (default: its CPUs rounded down, at least 1), so N
actors on N cores do not oversubscribe them.

Results stream back to the driver, which puts them back in input order and writes the same
shards, manifest and failures as the local runner (resuming and ``stats`` work the same way,
and with the same records the shards are the local runner's byte for byte). Results that arrive ahead of an
unfinished earlier image are held until it arrives; Ctrl-C or a crash loses those (a re-run
redoes them).

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
    """Rows in, rows out, through configured stages (a Ray actor, or a Ray Data task body or actor).

    Built from a plain config dict so it pickles cheaply; models load on the worker, lazily.
    Rows are ``Sample.to_row()`` dicts plus their ``"order"`` (position in the run).
    """

    def __init__(self, config: dict, stage_names: list[str], threads: int | None = None):
        from chatrex.utils.yaml_config import from_dict

        if threads is not None:  # an actor: its own process, so the setting stays with it
            import torch

            torch.set_num_threads(threads)
        cfg = from_dict(EngineConfig, config)
        cfg.filter.dedup = False  # done on the driver, in input order
        self.stages = [build_stage(n, cfg) for n in stage_names]

    def run(self, rows: list[dict], names: list[str] | None = None) -> list[dict]:
        """The rows after the stages called ``names`` (default: all of this worker's), in order."""
        samples = [Sample.from_row(r) for r in rows]
        for stage in self.stages:
            if names is None or stage.name in names:
                run_stage(stage, samples)
        return [{**s.to_row(), "order": int(r["order"])} for s, r in zip(samples, rows)]

    def __call__(self, batch):  # Ray Data: a pandas batch
        import pandas as pd

        return pd.DataFrame(self.run(batch.to_dict("records")))


def _groups(config: EngineConfig) -> list[tuple[list[str], bool]]:
    """``fuse_stages: false``: stage names split into Ray Data operators, each model stage alone and
    consecutive light stages together, with whether the operator holds a model."""
    groups: list[tuple[list[str], bool]] = []
    for name in config.stages:
        uses_model = STAGE_CLASSES[name].uses_model  # a class attribute: the driver builds no backend
        if uses_model or not groups or groups[-1][1]:
            groups.append(([name], uses_model))
        else:
            groups[-1][0].append(name)
    return groups


def actor_threads(config: EngineConfig) -> int:
    """torch threads per actor: ``ray.threads_per_actor``, else its CPUs rounded down (at least 1)."""
    r = config.ray
    return r.threads_per_actor if r.threads_per_actor is not None else max(1, int(r.num_cpus_per_actor))


def _map(ds, config: EngineConfig, names: list[str], uses_model: bool):
    cfg = dataclasses.asdict(config)
    r = config.ray
    if uses_model:
        import ray

        return ds.map_batches(StageWorker, fn_constructor_kwargs={"config": cfg, "stage_names": names, "threads": actor_threads(config)},
                              batch_size=r.batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=r.actors),
                              num_cpus=r.num_cpus_per_actor, num_gpus=r.num_gpus_per_actor or None)
    worker = StageWorker(cfg, names)  # light stages: a stateless task body
    return ds.map_batches(worker, batch_size=r.batch_size, batch_format="pandas", num_cpus=1)


def _start_workers(config: EngineConfig) -> list:
    """``ray.actors`` actors holding every stage (``fuse_stages: true``); they start in the background."""
    import ray

    r = config.ray
    if config.ray.address is None:  # a local cluster cannot grow: say so instead of waiting forever
        cpus = ray.cluster_resources().get("CPU", 0)
        if r.actors * r.num_cpus_per_actor > cpus:
            raise ValueError(f"ray.actors ({r.actors}) x ray.num_cpus_per_actor ({r.num_cpus_per_actor:g}) asks for more CPUs than "
                             f"the local Ray cluster has ({cpus:g}); lower one of them or raise ray.num_cpus")
    actor = ray.remote(StageWorker).options(num_cpus=r.num_cpus_per_actor, num_gpus=r.num_gpus_per_actor,
                                            max_restarts=1, max_task_retries=1)
    return [actor.remote(dataclasses.asdict(config), list(config.stages), actor_threads(config)) for _ in range(r.actors)]


def _batches(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _rows(samples: list[Sample]) -> list[dict]:
    return [{**s.to_row(), "order": i} for i, s in enumerate(samples)]


def _after_filter(config: EngineConfig, out: OutputDir, summary: RunSummary, filtered: list[Sample]) -> list[Sample]:
    """Duplicate detection in input order (``filtered`` is in input order), rejects and failures
    written; returns the images still in play."""
    if config.filter.dedup:
        duplicates = DuplicateFilter(config.filter.max_hash_distance)
        for sid, phash in out.kept_hashes:
            duplicates.seen(sid, phash)
        for s in filtered:
            if s.rejected is None and s.failure is None:
                other = duplicates.seen(s.id, s.scratch["phash"])
                if other is not None:
                    s.reject("filter", f"duplicate of {other}")
    deliver(out, [s for s in filtered if s.rejected is not None or s.failure is not None], summary)
    return [s for s in filtered if s.rejected is None and s.failure is None]


class _InOrder:
    """Delivers results in input order (``"order"`` 0, 1, 2, ...), holding the ones that come early."""

    def __init__(self, out: OutputDir, summary: RunSummary):
        self.out, self.summary = out, summary
        self.waiting: dict[int, Sample] = {}
        self.next = 0

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.waiting[int(r["order"])] = Sample.from_row(r)
        ready = []
        while self.next in self.waiting:
            ready.append(self.waiting.pop(self.next))
            self.next += 1
        deliver(self.out, ready, self.summary)

    def close(self) -> None:
        # Only if a row went missing: keep what came after it (the missing image is redone next run).
        deliver(self.out, [self.waiting.pop(k) for k in sorted(self.waiting)], self.summary)


# What Ray prints on its own for a small local run, and how each is kept quiet unless verbose:
# - "Started a local Ray instance" (INFO) and the token-authentication notice (WARNING) go
#   through the "ray" logger, whose level ray.init sets (``logging_level``);
# - each dataset's "Starting execution" / "Execution plan" / "execution finished" (INFO) and
#   "Progress bars disabled" (WARNING) go through the "ray.data" logger's console handler
#   (its file handlers in the session's logs/ray-data keep everything);
# - Ray Data's own progress bars (one per operator, many lines when stderr is not a terminal);
#   the runner's single bar counts images instead;
# - worker processes' output (``log_to_driver``).
# With ``fuse_stages: false`` one line stays: the driver's C++ core worker logs at ERROR that actor
# constructor arguments live in the object store (ray-project/ray#53727; Ray Data always puts
# them there; the default layout's actors get their small arguments inline). Only
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
    """Run the stages of ``config`` over ``source`` on Ray into ``output`` (the local runner's
    layout). ``progress``: one bar counting images; ``verbose``: Ray's own log lines, progress bars
    and worker output as well (otherwise quiet: see the comment above ``_init_ray``)."""
    import ray

    start = time.time()
    check_order([STAGE_CLASSES[n] for n in config.stages])
    inputs = list_inputs(source)[:limit] if limit is not None else list_inputs(source)
    out = OutputDir(output, config.runner.shard_size)
    summary = RunSummary(output=output, inputs=len(inputs))
    if not ray.is_initialized():
        _init_ray(config, verbose)
    workers = _start_workers(config) if config.ray.fuse_stages else []
    try:
        samples = pending_samples(inputs, out, summary, retry_failed)  # hashes every file while the workers start
        with _ray_data_console(verbose):
            if workers:
                _run_workers(config, workers, out, summary, samples, progress)
            else:
                _run(config, out, summary, samples, progress, verbose)
    finally:
        out.flush()
        summary.seconds = time.time() - start
        for worker in workers:
            ray.kill(worker)
    return summary


def _run_workers(config: EngineConfig, workers: list, out: OutputDir, summary: RunSummary, samples: list, progress: bool) -> None:
    """``fuse_stages: true``: the filter, then every later stage, on the same worker actors."""
    from ray.util import ActorPool

    if not samples:
        return
    pool = ActorPool(workers)
    bs = config.ray.batch_size
    names = list(config.stages)
    batches = _batches(samples, bs)
    if names[0] == "filter":
        done = pool.map(lambda w, rows: w.run.remote(rows, ["filter"]), _batches(_rows(samples), bs))  # in order
        filtered = [Sample.from_row(r) for rows in done for r in rows]
        kept = {id(s) for s in _after_filter(config, out, summary, filtered)}
        # The local runner's batches: bs consecutive inputs, less the ones the filter dropped. A
        # backend that batches across images (one padded forward pass) then sees the same batches.
        batches = [b for b in ([s for s in part if id(s) in kept] for part in _batches(filtered, bs)) if b]
        names = names[1:]
    samples = [s for b in batches for s in b]
    if not names:  # nothing after the filter: the survivors are the records
        deliver(out, samples, summary)
        return
    order = iter(range(len(samples)))
    jobs = [[{**s.to_row(), "order": next(order)} for s in b] for b in batches]
    in_order = _InOrder(out, summary)
    with tqdm(total=len(samples), desc="data engine (ray)", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for rows in pool.map_unordered(lambda w, rows: w.run.remote(rows, names), jobs):
            in_order.add(rows)
            bar.update(len(rows))
    in_order.close()


def _run(config: EngineConfig, out: OutputDir, summary: RunSummary, samples: list, progress: bool, verbose: bool) -> None:
    """``fuse_stages: false``: Ray Data operators, an actor pool per model stage."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress and verbose
    groups = _groups(config)
    if not samples:
        return
    ds = ray.data.from_items(_rows(samples))
    if groups and groups[0][0][0] == "filter":
        names, uses_model = groups.pop(0)
        rows = sorted(_map(ds, config, names, uses_model).take_all(), key=lambda r: r["order"])
        samples = _after_filter(config, out, summary, [Sample.from_row(r) for r in rows])
        if not samples:
            return
        ds = ray.data.from_items(_rows(samples))
    for names, uses_model in groups:
        ds = _map(ds, config, names, uses_model)
    in_order = _InOrder(out, summary)
    with tqdm(total=len(samples), desc="data engine (ray)", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for batch in ds.iter_batches(batch_size=config.ray.batch_size, batch_format="pandas"):
            rows = batch.to_dict("records")
            in_order.add(rows)
            bar.update(len(rows))
    in_order.close()
