"""The training loop: accelerate on CPU (gloo) or GPUs, DeepSpeed ZeRO through accelerate.

One function, :func:`train`, runs a stage from a :class:`~train.config.TrainConfig`. It prints
the trainable-parameter table and the optimizer groups, shows a tqdm bar, evaluates and
checkpoints periodically (atomically), resumes exactly, checkpoints on Ctrl-C, and ends with a
``save_pretrained`` directory ``OUTPUT/final`` that ``ChatRexForConditionalGeneration``
loads. When the starting model has a proposal network (``upn/``, as a bundled model does),
``final/upn`` is a copy of it, so ``ChatRexPredictor.from_pretrained(OUTPUT/final)`` and
``chatrex detect --model OUTPUT/final`` propose boxes as the starting model did.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from chatrex.processing_chatrex import IGNORE_INDEX
from chatrex.utils.atomic import atomic_write
from chatrex.utils.jsonl import JsonlRecords, read_jsonl

from .answer_metrics import index_accuracy
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint, save_pretrained_atomic
from .config import TrainConfig, to_dict
from .dataset import ChatRexCollator, ChatRexDataset
from .feature_cache import ConcatFeatureCache, FeatureCache, build_cache
from .library_messages import name_cpu_accelerator_for_deepspeed, tied_parameter_names
from .model_loading import load_model_and_processor, upn_folder
from .stages import apply_stage, build_param_groups, format_counts, param_count
from .training_data import build_train_data, chatrex_dataset

FINAL_DIR = "final"


@dataclass
class TrainResult:
    """Summary of a run."""

    steps: int
    last_loss: float
    eval_loss: float | None
    samples_per_second: float
    skipped_records: int
    final_dir: str | None
    weights_digest: str
    """sha256 over this process's final parameters: equal on every rank of a healthy run."""


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    on_gpu = torch.cuda.is_available()
    name_cpu_accelerator_for_deepspeed()  # no "Setting accelerator to CPU" when accelerate imports DeepSpeed
    # Some parameters get no gradient in a step: CLIP's last layer (features come from layer -2),
    # ConvNeXt's pooling norm, and the object projector for box-less batches.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    plugin = None
    if cfg.train.deepspeed:
        plugin = DeepSpeedPlugin(hf_ds_config=cfg.train.deepspeed, gradient_accumulation_steps=cfg.train.grad_accum)
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
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=_mixed_precision(cfg.train.mixed_precision),
        deepspeed_plugin=plugin,
        kwargs_handlers=handlers,
        # Without cpu=True accelerate ignores a torchrun world on a machine with no GPU; with
        # DeepSpeed it must stay False or accelerate skips DeepSpeed's initialisation.
        cpu=plugin is None and not on_gpu,
    )


def _size_zero_buckets(accelerator: Accelerator, model) -> None:
    """Fill ZeRO's ``auto`` bucket sizes from the LLM's width, with accelerate's own formulas:
    accelerate looks for ``model.config.hidden_size``, which ChatRex keeps in ``text_config``."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    hidden = model.config.text_config.hidden_size
    sizes = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
             "stage3_param_persistence_threshold": 10 * hidden}
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proposal_fn(cfg: TrainConfig):
    if not cfg.data.upn_model:
        return None
    from upn import UPNPredictor  # optional: only runs that propose on the fly need it

    predictor = UPNPredictor.from_pretrained(cfg.data.upn_model)
    return lambda image: predictor.predict(image, prompt_type="both").boxes


def _feature_caches(cfg: TrainConfig, model, processor, accelerator) -> dict:
    """``{records path: FeatureCache}`` for every train and eval file (built on the main
    process on first use; the others wait and then read it)."""
    if not cfg.data.feature_cache:
        return {}
    if cfg.data.upn_model:
        raise ValueError("data.feature_cache cannot be combined with data.upn_model (on-the-fly proposals): precompute proposals into the records")
    folders = {}
    model.to(accelerator.device)  # encode on the GPU when there is one (prepare() would move it later anyway)
    with accelerator.main_process_first():
        for path in dict.fromkeys(cfg.data.train_paths() + cfg.data.eval):
            folders[path] = build_cache(path, model, processor, use_proposals=cfg.data.use_record_proposals,
                                        progress=accelerator.is_local_main_process)
    caches = {path: FeatureCache(folder) for path, folder in folders.items()}
    if cfg.data.oracle_object_features:
        from .diagnostics.oracle_features import OracleFeatureCache, OracleFeatures

        oracle = OracleFeatures(model.config, processor.image_processor, parent=cfg.data.oracle_parent_features)
        caches = {path: OracleFeatureCache(cache, JsonlRecords([path]), oracle) for path, cache in caches.items()}
    return caches


def _eval_dataset(cfg: TrainConfig, proposal_fn, caches: dict | None = None) -> ChatRexDataset:
    cache = ConcatFeatureCache([caches[p] for p in cfg.data.eval]) if caches else None
    return chatrex_dataset(cfg, JsonlRecords(cfg.data.eval), proposal_fn, cache)


def _model_inputs(batch) -> dict:
    return {k: v for k, v in batch.items() if k != "skipped"}


def _to_device(batch: dict, device) -> dict:
    return {k: [t.to(device) for t in v] if k in ("boxes", "object_pooled") else v.to(device) for k, v in _model_inputs(batch).items()}


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    """Mean loss over ``loader`` (token-weighted per batch), computed identically on every rank."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = _to_device(batch, device)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**_model_inputs(batch)).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    cfg.validate()
    accelerator = build_accelerator(cfg)
    out = cfg.train.output_dir
    if accelerator.is_main_process:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    set_seed(cfg.train.seed)

    model, processor = load_model_and_processor(cfg.model.init, cfg.model.tokenizer, cfg.model.config_overrides)
    upn = upn_folder(cfg.model.init)  # travels into final/ (a bundle and every stage after it keep their UPN)
    tied = tied_parameter_names(model)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    caches = _feature_caches(cfg, model, processor, accelerator)
    if caches:
        model.config.vision_high_no_grad = True  # the towers are frozen: a later run on pixels keeps them so
    counts = apply_stage(model, cfg.stage, freeze_vision=bool(caches))
    accelerator.print(f"stage {cfg.stage}: trainable parameters per module\n{format_counts(counts)}")
    groups = build_param_groups(model, cfg.optim.lr, cfg.optim.weight_decay)
    accelerator.print("optimizer groups: " + ", ".join(f"{g['name']} lr={g['lr']:g} ({sum(param_count(p) for p in g['params']):,})" for g in groups))
    optimizer = torch.optim.AdamW(groups)
    scheduler = get_scheduler(cfg.optim.scheduler, optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.train.max_steps)

    proposal_fn = _proposal_fn(cfg)
    train_cache = ConcatFeatureCache([caches[p] for p in cfg.data.train_paths()]) if caches else None
    data = build_train_data(cfg, proposal_fn, train_cache)
    for line in data.report:
        accelerator.print(line)
    dataset, sampler = data.dataset, data.sampler
    # DeepSpeed needs every process to run the same modules in every step (ZeRO-3 gathers each
    # module's weights collectively): a batch of text-only samples still encodes an image.
    collator = ChatRexCollator(processor, always_image=bool(cfg.train.deepspeed))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collator, num_workers=cfg.data.num_workers, drop_last=False)
    eval_loader = None
    if cfg.data.eval:
        eval_set = _eval_dataset(cfg, proposal_fn, caches)
        subset = torch.utils.data.Subset(eval_set, range(min(cfg.data.eval_samples, len(eval_set))))
        eval_loader = torch.utils.data.DataLoader(subset, batch_size=cfg.train.batch_size, collate_fn=collator)

    # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step
    # it once per process), and registered so checkpoints carry it.
    _size_zero_buckets(accelerator, model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)

    step, skipped, last_loss, eval_loss = 0, {}, float("nan"), None
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
            accelerator.print(f"resumed from {path} at step {step}")

    batches_per_epoch = len(loader)
    if offset >= batches_per_epoch:
        epoch, offset = epoch + 1, 0
    metrics_path = os.path.join(out, "metrics.jsonl")
    if accelerator.is_main_process:
        _truncate_metrics(metrics_path, step)
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc=f"stage {cfg.stage}", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    timed_samples, timed_since = 0, None
    last_saved = step
    batches_seen = offset

    def checkpoint():
        nonlocal last_saved
        state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_seen, "skipped": {str(k): v for k, v in skipped.items()}, "last_loss": last_loss}
        save_checkpoint(accelerator, out, step, state, cfg.train.keep_checkpoints, tied)
        last_saved = step

    started = time.perf_counter()

    def out_of_time() -> bool:
        if cfg.train.max_minutes is None:
            return False
        late = torch.tensor(float(time.perf_counter() - started > 60 * cfg.train.max_minutes), device=accelerator.device)
        return bool(accelerator.reduce(late, "max") > 0)  # every process stops at the same step

    try:
        while step < cfg.train.max_steps:
            sampler.start_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
            batches_seen = offset
            for batch in epoch_loader:
                batches_seen += 1
                for index, reason in batch["skipped"]:
                    skipped.setdefault(index, reason)
                with accelerator.accumulate(model):
                    outputs = model(**_model_inputs(batch))
                    loss = outputs.loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                last_loss = float(accelerator.reduce(loss.detach(), "mean"))
                if timed_since is None:
                    timed_since = time.perf_counter()  # the first step pays warm-up costs
                else:
                    timed_samples += cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                row = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0]}
                index_acc = index_accuracy(outputs.logits.detach(), batch["labels"], accelerator.unwrap_model(model).config.object_token_ids)
                if index_acc is not None:
                    row["index_acc"] = index_acc  # this process's batch only
                if eval_loader is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.max_steps):
                    eval_loss = evaluate(accelerator.unwrap_model(model), eval_loader, accelerator.device)
                    row["eval_loss"] = eval_loss
                    accelerator.print(f"step {step}: eval loss {eval_loss:.4f}")
                if accelerator.is_main_process and (step % cfg.train.log_every == 0 or "eval_loss" in row):
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                timed_out = out_of_time()
                if step % cfg.train.save_every == 0 or step == cfg.train.max_steps or timed_out:
                    checkpoint()
                if timed_out:
                    accelerator.print(f"train.max_minutes={cfg.train.max_minutes} reached at step {step}")
                if step >= cfg.train.max_steps or timed_out:
                    break
            else:
                epoch, offset = epoch + 1, 0
                continue
            break
    except KeyboardInterrupt:
        if step > last_saved:
            accelerator.print(f"\ninterrupted: saving checkpoint at step {step} (resume with --resume)")
            checkpoint()
        raise
    finally:
        bar.close()

    elapsed = time.perf_counter() - timed_since if timed_since is not None else 0.0
    rate = timed_samples / elapsed if elapsed > 0 else float("nan")
    n_skipped = int(accelerator.reduce(torch.tensor(len(skipped), device=accelerator.device), "sum"))
    if n_skipped:
        warnings.warn(f"{n_skipped} bad record(s) were skipped; first: {next(iter(skipped.items()), None)}", stacklevel=2)
    accelerator.print(f"done: {step} steps, last loss {last_loss:.4f}, {rate:.2f} samples/s, {n_skipped} bad record(s) skipped")

    final = os.path.join(out, FINAL_DIR)
    state_dict = accelerator.get_state_dict(model)
    digest = weights_digest(state_dict)  # before saving: save_pretrained empties the dict
    if accelerator.is_main_process:
        save_pretrained_atomic(accelerator.unwrap_model(model), processor, final, upn, state_dict)
    accelerator.wait_for_everyone()
    return TrainResult(step, last_loss, eval_loss, rate, n_skipped, final, digest)


def _truncate_metrics(path: str, step: int) -> None:
    """Drop rows logged after ``step`` (by a run that died after its last checkpoint), so a
    resumed run does not log those steps twice. Rewritten atomically."""
    if not os.path.isfile(path):
        return
    rows = [row for row in read_jsonl(path) if row.get("step", 0) <= step]
    with atomic_write(path) as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def weights_digest(state_dict: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
