"""The one training loop, for every stage: accelerate on CPU (gloo) or GPUs, DeepSpeed through accelerate.

A stage is a :class:`TrainingTask` (what differs: the model, the parameter groups, the data, the
loss, extra state, how the result is saved); :func:`run_training` does the rest the same way
for all of them (ChatRex stages 1-3 in ``train.trainer``, UPN in ``train.upn``, the vision
towers in ``train.vision``, the text pretraining in ``train.text_pretrain``):

* a tqdm bar, gradient accumulation, gradient clipping, mixed precision, DeepSpeed;
* ``OUT/metrics.jsonl``: one row per ``log_every`` steps, ``{"step", "loss", "lr", <task
  metrics>}``, plus ``eval_<name>`` keys on evaluation steps;
* atomic checkpoints ``OUT/checkpoint-{step:08d}`` (accelerate state: model, optimizer,
  scheduler, RNG; and ``trainer_state.json``) every ``save_every`` steps, at the end, on
  Ctrl-C and when ``max_minutes`` runs out;
* exact resume: the data order depends only on (seed, epoch) through an
  :class:`~train.dataset.EpochSampler`, and the position within the epoch is stored, so a
  resumed run takes the same steps as an uninterrupted one;
* ``OUT/final``, written atomically by the task's :meth:`TrainingTask.save`.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from chatrex.utils.atomic import atomic_write, replace_dir
from chatrex.utils.jsonl import read_jsonl

from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .dataset import EpochSampler
from .library_messages import name_cpu_accelerator_for_deepspeed, tied_parameter_names

FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainingData:
    """What the loop batches: ``dataset[key]`` for the keys ``sampler`` yields (an
    :class:`~train.dataset.EpochSampler`: ``epoch * N + i``), collated by ``collate_fn``."""

    dataset: torch.utils.data.Dataset
    sampler: EpochSampler
    collate_fn: Callable
    report: list[str] = field(default_factory=list)
    """Lines printed before training (filters, mixtures, counts)."""


class TrainingTask(abc.ABC):
    """What one stage trains and how. :func:`run_training` calls, in order: :meth:`build`,
    :meth:`param_groups`, :meth:`scheduler`, :meth:`train_data`, then per step :meth:`loss`,
    every ``eval_every`` steps :meth:`evaluate`, at every checkpoint :meth:`extra_state`, and
    at the end :meth:`save`."""

    description = "train"
    """The progress bar's label."""

    zero_hidden_size: int | None = None
    """The LLM width, for DeepSpeed ZeRO's ``auto`` bucket sizes (None: leave them to accelerate)."""

    zero3 = True
    """Whether the task works under DeepSpeed ZeRO-3 (parameters sharded between processes)."""

    @abc.abstractmethod
    def build(self, accelerator: Accelerator) -> torch.nn.Module:
        """The module to train, after the seed is set (called on every process). Its
        ``train()`` must set the mode training needs (e.g. frozen parts kept in eval mode)."""

    @abc.abstractmethod
    def param_groups(self, module: torch.nn.Module) -> list[dict]:
        """AdamW parameter groups, each with a ``"name"`` (printed) and its options."""

    @abc.abstractmethod
    def scheduler(self, optimizer: torch.optim.Optimizer, max_steps: int):
        """The learning-rate schedule, stepped once per optimizer step."""

    @abc.abstractmethod
    def train_data(self) -> TrainingData: ...

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, metrics)`` for one batch; ``model`` is the prepared (possibly wrapped) module.
        The metrics are this process's and are logged beside the loss."""

    def evaluate(self, module: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Held-out metrics (logged as ``eval_<name>``); none by default. ``module`` is unwrapped;
        leave it in the mode it came in."""
        return {}

    def extra_state(self) -> dict:
        """JSON-able state that a resumed run needs besides accelerate's (stored in the checkpoint)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore :meth:`extra_state` on resume."""

    @abc.abstractmethod
    def save(self, module: torch.nn.Module, folder: str, state_dict: dict) -> None:
        """Write the result into ``folder`` (a fresh folder renamed onto ``OUT/final`` afterwards;
        main process only). ``state_dict``: the module's full weights, gathered from every
        process (under ZeRO-3 the module's own parameters are partitioned)."""


@dataclass
class TrainResult:
    """Summary of a run."""

    steps: int
    last_loss: float
    eval_metrics: dict
    """The last evaluation's metrics (empty when the task has none or none ran)."""
    samples_per_second: float
    skipped_records: int
    final_dir: str | None
    weights_digest: str
    """sha256 over this process's final parameters: equal on every rank of a healthy run."""

    @property
    def eval_loss(self) -> float | None:
        return self.eval_metrics.get("loss")


def add_loop_arguments(parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, warmup_steps: int,
                       save_every: int, log_every: int, workers: int) -> None:
    """The loop's options, the same for every stage's command line, with the stage's defaults
    (read back by :func:`run_config`)."""
    group = parser.add_argument_group("training loop (the same for every stage)")
    group.add_argument("--out", "--output-dir", dest="output_dir", required=True,
                       help="output folder: final/ (the result), checkpoint-*/ (resumable), metrics.jsonl")
    group.add_argument("--steps", type=int, default=steps, help="optimizer steps (default %(default)s)")
    group.add_argument("--batch-size", type=int, default=batch_size, help="samples per step per process (default %(default)s)")
    group.add_argument("--lr", type=float, default=lr, help="peak AdamW learning rate (default %(default)s)")
    group.add_argument("--warmup-steps", type=int, default=warmup_steps, help="linear warm-up steps (default %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="seeds the initialisation, the data order and the sampling (default 0)")
    group.add_argument("--save-every", type=int, default=save_every, help="checkpoint every N steps (default %(default)s)")
    group.add_argument("--log-every", type=int, default=log_every, help="append a metrics.jsonl row every N steps (default %(default)s)")
    group.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept (default 2)")
    group.add_argument("--workers", "--num-workers", dest="workers", type=int, default=workers,
                       help="DataLoader worker processes (default %(default)s)")
    group.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    group.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step (default 1)")
    group.add_argument("--max-minutes", type=float, default=None,
                       help="wall-clock budget: stop after the first step past it, checkpoint and write final/")
    group.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                       help="auto: bf16 on GPUs that support it, fp32 on CPU")
    group.add_argument("--deepspeed", default=None, metavar="JSON", help="DeepSpeed config (e.g. train/configs/deepspeed/zero2.json)")
    group.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint-* in the output folder (same data order and RNG)")


def run_config(args: argparse.Namespace) -> RunConfig:
    """A validated :class:`~train.config.RunConfig` from :func:`add_loop_arguments`' options;
    ``ValueError`` names the bad option by its flag. Evaluation runs at the last step."""
    counts = {"--steps": args.steps, "--batch-size": args.batch_size, "--save-every": args.save_every, "--log-every": args.log_every,
              "--grad-accum": args.grad_accum, "--keep-checkpoints": args.keep_checkpoints, "--lr": args.lr}
    for flag, value in counts.items():
        if not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    for flag, value in {"--warmup-steps": args.warmup_steps, "--workers": args.workers}.items():
        if value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be positive, got {args.max_minutes}")
    if args.deepspeed is not None and not os.path.isfile(args.deepspeed):
        raise ValueError(f"--deepspeed file {args.deepspeed!r} does not exist")
    check_output_dir(args.output_dir, args.resume)
    run = RunConfig(output_dir=args.output_dir, max_steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                    seed=args.seed, save_every=args.save_every, eval_every=args.steps, log_every=args.log_every,
                    keep_checkpoints=args.keep_checkpoints, max_minutes=args.max_minutes,
                    mixed_precision=args.mixed_precision, deepspeed=args.deepspeed)
    run.validate()
    return run


def check_files(flag: str, paths) -> None:
    """``ValueError`` naming ``flag`` and the first of ``paths`` that is not a file."""
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{flag} file not found: {path}")


def check_output_dir(output_dir: str, resume: bool) -> None:
    """A run that does not resume must not start in a folder holding another run's checkpoints:
    their pruning would delete the new ones, and a later ``--resume`` would continue the old run."""
    found = None if resume else latest_checkpoint(output_dir)
    if found is not None:
        raise ValueError(f"{output_dir} holds checkpoints of an earlier run ({os.path.basename(found)}): continue it with "
                         "--resume, or give another output folder (or delete its checkpoint-* folders)")


def check_task(task: TrainingTask, run: RunConfig) -> None:
    """``ValueError`` for settings the task cannot train under (read before any process group exists)."""
    if run.deepspeed and not task.zero3:
        with open(run.deepspeed) as f:
            stage = json.load(f).get("zero_optimization", {}).get("stage", 0)
        if stage == 3:
            raise ValueError(f"{task.description} does not run under DeepSpeed ZeRO-3 ({run.deepspeed}); use ZeRO-2 "
                             "(train/configs/deepspeed/zero2.json)")


def run_from_cli(task: TrainingTask, run: RunConfig, **options) -> int:
    """:func:`run_training` for a stage's command line: prints the evaluation and where the result
    is and returns 0; 2 and one line for settings the task cannot train under; on Ctrl-C (the
    loop has saved a checkpoint) one line and 130."""
    import sys

    try:
        check_task(task, run)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = run_training(task, run, **options)
    except KeyboardInterrupt:
        print(f"interrupted: continue with the same command and --resume (checkpoints in {run.output_dir})", file=sys.stderr)
        return 130
    if result.eval_metrics:
        print("eval: " + json.dumps(result.eval_metrics))
    if result.final_dir:
        print(f"wrote {result.final_dir} after {result.steps} steps")
    # Every rank prints its digest (train.chatrex too): equal digests show the replicas stayed in sync.
    if result.weights_digest:
        print(f"[rank {os.environ.get('RANK', '0')}] final weights sha256 {result.weights_digest}", flush=True)
    return 0


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_accelerator(run: RunConfig, force_cpu: bool = False, max_grad_norm: float | None = 1.0) -> Accelerator:
    """``max_grad_norm`` reaches DeepSpeed's ``gradient_clipping`` (its engine clips; accelerate's
    ``clip_grad_norm_`` does nothing under DeepSpeed). None: no clipping."""
    on_gpu = torch.cuda.is_available() and not force_cpu
    name_cpu_accelerator_for_deepspeed()  # no "Setting accelerator to CPU" when accelerate imports DeepSpeed
    # Some parameters get no gradient in a step: CLIP's last layer (features come from layer -2),
    # ConvNeXt's pooling norm, and the object projector for box-less batches.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    plugin = None
    if run.deepspeed:
        plugin = DeepSpeedPlugin(hf_ds_config=run.deepspeed, gradient_accumulation_steps=run.grad_accum,
                                 gradient_clipping=max_grad_norm if max_grad_norm is not None else 0.0)
        if not on_gpu:
            # accelerate picks no backend for DeepSpeed on a CPU-only machine and would then run
            # every process as a world of one; gloo gives DeepSpeed a real process group.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
            if "LOCAL_RANK" not in os.environ:
                # Started without a launcher (or by `accelerate launch` with one process):
                # accelerate only creates that group for launched processes, so describe a
                # world of one, as torchrun would.
                os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(_free_port()))
    return Accelerator(
        gradient_accumulation_steps=run.grad_accum,
        mixed_precision=_mixed_precision(run.mixed_precision),
        deepspeed_plugin=plugin,
        kwargs_handlers=handlers,
        # Without cpu=True accelerate ignores a torchrun world on a machine with no GPU; with
        # DeepSpeed it must stay False or accelerate skips DeepSpeed's initialisation.
        cpu=plugin is None and not on_gpu,
    )


def _size_zero_buckets(accelerator: Accelerator, hidden: int | None) -> None:
    """Fill ZeRO's ``auto`` bucket sizes from the LLM's width, with accelerate's own formulas:
    accelerate looks for ``model.config.hidden_size``, which ChatRex keeps in ``text_config``."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or hidden is None:
        return
    sizes = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
             "stage3_param_persistence_threshold": 10 * hidden}
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value


def _ignore_sigint(worker_id: int) -> None:
    # A terminal's Ctrl-C reaches the DataLoader workers too. The loop finishes the step in flight,
    # which may need more batches than are buffered, so a worker leaves stopping to the main
    # process (which shuts the workers down).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def sync_buffers(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (e.g. BatchNorm running statistics, which each process
    updates from its own batches: DDP broadcasts them before each forward, DeepSpeed never), so a
    checkpoint, ``final/`` and every process's weights digest agree."""
    if accelerator.num_processes == 1:
        return
    for buffer in accelerator.unwrap_model(model).buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def weights_digest(state_dict: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _truncate_metrics(path: str, step: int) -> None:
    """Drop rows logged after ``step`` (by a run that died after its last checkpoint), so a
    resumed run does not log those steps twice. Rewritten atomically."""
    if not os.path.isfile(path):
        return
    rows = [row for row in read_jsonl(path) if row.get("step", 0) <= step]
    with atomic_write(path) as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _param_count(groups: list[dict]) -> str:
    return ", ".join(f"{g['name']} lr={g.get('lr', 'default')} ({sum(p.numel() for p in g['params']):,})" for g in groups)


def run_training(task: TrainingTask, run: RunConfig, *, max_grad_norm: float | None = 1.0, num_workers: int = 0,
                 resume: bool = False, force_cpu: bool = False, optimizer_options: dict | None = None) -> TrainResult:
    """Train ``task`` for ``run.max_steps`` optimizer steps into ``run.output_dir`` (module doc).

    Args:
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        num_workers: DataLoader worker processes.
        resume: continue from the newest checkpoint in the output folder (from scratch, with a
            message, when there is none).
        force_cpu: train on the CPU even where a GPU is present.
        optimizer_options: AdamW defaults for every group (e.g. ``{"lr": 1e-3, "weight_decay": 0.01}``).
    """
    run.validate()
    check_output_dir(run.output_dir, resume)
    check_task(task, run)
    accelerator = build_accelerator(run, force_cpu=force_cpu, max_grad_norm=max_grad_norm)
    out = run.output_dir
    if accelerator.is_main_process:
        os.makedirs(out, exist_ok=True)
    set_seed(run.seed)
    module = task.build(accelerator)
    tied = tied_parameter_names(module)
    groups = task.param_groups(module)
    accelerator.print("optimizer groups: " + _param_count(groups))
    optimizer = torch.optim.AdamW(groups, **(optimizer_options or {}))
    scheduler = task.scheduler(optimizer, run.max_steps)
    data = task.train_data()
    for line in data.report:
        accelerator.print(line)
    sampler = data.sampler
    loader = torch.utils.data.DataLoader(data.dataset, batch_size=run.batch_size, sampler=sampler, collate_fn=data.collate_fn,
                                         num_workers=num_workers, drop_last=False, worker_init_fn=_ignore_sigint)
    # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step
    # it once per process), and registered so checkpoints carry it.
    _size_zero_buckets(accelerator, task.zero_hidden_size)
    model, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)

    step, skipped, last_loss, eval_metrics = 0, {}, float("nan"), {}
    epoch, offset = 0, 0  # offset: batches of `epoch` already consumed
    if resume:
        path = latest_checkpoint(out)
        if path is None:
            accelerator.print(f"--resume: no checkpoint in {out}, starting from scratch")
        else:
            state = load_checkpoint(accelerator, path)
            step, skipped = state["step"], {int(k): v for k, v in state.get("skipped", {}).items()}
            # Stored, not derived from step: accelerate closes an accumulation window at the end
            # of every epoch, so a step does not always cover grad_accum batches.
            epoch, offset = state["epoch"], state["batches_in_epoch"]
            last_loss = state.get("last_loss", last_loss)
            task.load_extra_state(state.get("task", {}))
            accelerator.print(f"resumed from {path} at step {step}")

    if step >= run.max_steps:
        accelerator.print(f"already at step {step} >= max_steps {run.max_steps}: nothing to train, final/ is written again")
    batches_per_epoch = len(loader)
    if offset >= batches_per_epoch:
        epoch, offset = epoch + 1, 0
    metrics_path = os.path.join(out, METRICS_FILE)
    if accelerator.is_main_process:
        _truncate_metrics(metrics_path, step)
    bar = tqdm(total=run.max_steps, initial=step, desc=task.description, disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    timed_samples, timed_since = 0, None
    last_saved = step
    batches_seen = offset

    def checkpoint():
        nonlocal last_saved
        sync_buffers(accelerator, model)
        state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_seen, "skipped": {str(k): v for k, v in skipped.items()},
                 "last_loss": last_loss, "task": task.extra_state()}
        save_checkpoint(accelerator, out, step, state, run.keep_checkpoints, tied)
        last_saved = step

    started = time.perf_counter()
    pending_row = None  # the newest step's metrics, until written

    def write_row():
        nonlocal pending_row
        if pending_row is not None and accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(pending_row) + "\n")
        pending_row = None

    in_flight = False  # a batch taken whose optimizer step has not finished (a checkpoint now would not be exact)
    interrupted = False  # Ctrl-C: stop after the step in flight, with a checkpoint
    stop_at_once = False  # Ctrl-C again: stop now, without one

    def on_interrupt(signum, frame):
        nonlocal interrupted, stop_at_once
        if interrupted:
            stop_at_once = True
            raise KeyboardInterrupt
        interrupted = True
        # Between steps a lone process can checkpoint right away. Several wait for the next step's
        # end: each got the signal at a different point, and only should_stop() makes them stop
        # (and enter the checkpoint's collectives) together.
        if not in_flight and accelerator.num_processes == 1:
            raise KeyboardInterrupt
        accelerator.print("\ninterrupt: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)")

    def should_stop() -> tuple[bool, bool]:
        """(out of time, interrupted), the same on every process, so all stop at the same step."""
        late = run.max_minutes is not None and time.perf_counter() - started > 60 * run.max_minutes
        flags = torch.tensor([float(late), float(interrupted)], device=accelerator.device)
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, "max")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    # Ctrl-C finishes the step in flight, so the checkpoint it leaves resumes exactly.
    micro_losses: list[torch.Tensor] = []
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while step < run.max_steps:
            sampler.start_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
            batches_seen = offset
            for batch in epoch_loader:
                in_flight = True  # first: a checkpoint must never count a batch whose step is unfinished
                batches_seen += 1
                for index, reason in batch.get("skipped", ()) if isinstance(batch, Mapping) else ():
                    skipped.setdefault(index, reason)
                with accelerator.accumulate(model):
                    loss, metrics = task.loss(model, batch)
                    micro_losses.append(loss.detach())
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                in_flight = False
                # The step's loss: the mean over its micro-batches (one, without accumulation).
                step_loss = torch.stack(micro_losses).float().mean()
                micro_losses.clear()
                last_loss = float(accelerator.reduce(step_loss, "mean"))
                if not math.isfinite(last_loss):
                    raise RuntimeError(f"non-finite loss {last_loss} at step {step}; the last good checkpoint is "
                                       f"{latest_checkpoint(out) or 'none yet'} (resume from it with a lower learning rate)")
                if timed_since is None:
                    timed_since = time.perf_counter()  # the first step pays warm-up costs
                else:
                    timed_samples += run.batch_size * run.grad_accum * accelerator.num_processes
                lr = scheduler.get_last_lr()[0]
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                row = {"step": step, "loss": last_loss, "lr": lr, **metrics}
                if step % run.eval_every == 0 or step == run.max_steps:
                    # RNG-neutral (a DataLoader draws a seed), so evaluating, e.g. at the end of a run that
                    # is resumed later, does not change the steps that follow.
                    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
                        eval_metrics = task.evaluate(accelerator.unwrap_model(model), accelerator.device)
                    row.update({f"eval_{k}": v for k, v in eval_metrics.items()})
                    if eval_metrics:
                        accelerator.print(f"step {step}: " + ", ".join(f"eval {k} {v:.4f}" for k, v in eval_metrics.items()))
                evaluated = any(k.startswith("eval_") for k in row)
                timed_out, stop_now = should_stop()
                pending_row = row
                if step % run.log_every == 0 or evaluated or step == run.max_steps or timed_out:
                    write_row()
                if step % run.save_every == 0 or step == run.max_steps or timed_out:
                    checkpoint()
                if timed_out:
                    accelerator.print(f"max_minutes={run.max_minutes} reached at step {step}")
                if step >= run.max_steps or timed_out:
                    break  # a Ctrl-C in the last step: the run is complete, final/ is written
                if stop_now:
                    raise KeyboardInterrupt
            else:
                epoch, offset = epoch + 1, 0
                continue
            break
    except KeyboardInterrupt:
        write_row()  # the last step's, so the log ends where the checkpoint does
        if in_flight or stop_at_once:
            # A second Ctrl-C: perhaps mid-step (the batch counter and RNG past the last finished
            # step) or mid-checkpoint; either way no checkpoint now.
            accelerator.print(f"\nstopped at once; the newest checkpoint is {latest_checkpoint(out) or 'none'}")
        elif step > last_saved:
            accelerator.print(f"\ninterrupted: saving checkpoint at step {step} (resume with --resume)")
            checkpoint()
        raise
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    elapsed = time.perf_counter() - timed_since if timed_since is not None else 0.0
    rate = timed_samples / elapsed if elapsed > 0 else float("nan")
    n_skipped = int(accelerator.reduce(torch.tensor(len(skipped), device=accelerator.device), "sum"))
    if n_skipped:
        warnings.warn(f"{n_skipped} bad record(s) were skipped; first: {next(iter(skipped.items()), None)}", stacklevel=2)
    speed = f"{rate:.2f} samples/s" if math.isfinite(rate) else "too few steps to time"
    accelerator.print(f"done: {step} steps, last loss {last_loss:.4f}, {speed}, {n_skipped} bad record(s) skipped")

    final = os.path.join(out, FINAL_DIR)
    sync_buffers(accelerator, model)
    state_dict = accelerator.get_state_dict(model)  # under ZeRO-3 gathered on the main process only (None elsewhere)
    digest = weights_digest(state_dict) if state_dict is not None else ""  # before saving: save_pretrained empties the dict
    if accelerator.is_main_process:
        with replace_dir(final) as tmp:
            task.save(accelerator.unwrap_model(model), tmp, state_dict)
    accelerator.wait_for_everyone()
    return TrainResult(step, last_loss, eval_metrics, rate, n_skipped, final, digest)
