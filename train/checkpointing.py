"""Atomic, resumable checkpoints.

A checkpoint is a directory ``checkpoint-{step:08d}`` holding accelerate's state (model,
optimizer, scheduler, RNG; DeepSpeed engines included) and ``trainer_state.json``. It is
written under a temporary name and renamed into place (``chatrex.utils.atomic.replace_dir``),
so a crash mid-write never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from chatrex.predictor import UPN_SUBDIR
from chatrex.utils.atomic import replace_dir

from .library_messages import expected_shared_tensors

TRAINER_STATE = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d{8})$")


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f"checkpoint-{step:08d}")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, TRAINER_STATE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(accelerator, output_dir: str, step: int, trainer_state: dict, keep: int,
                    tied: frozenset[str] = frozenset()) -> str:
    """Save accelerate state + trainer state for ``step`` atomically; prune to ``keep`` newest.
    ``tied``: :func:`train.library_messages.tied_parameter_names` of the model, whose sharing
    is expected (accelerate's warning about it is dropped).

    Must be called on every process (accelerate writes per-process RNG state).
    """
    final = checkpoint_dir(output_dir, step)
    main = accelerator.is_main_process
    with replace_dir(final, owner=main) as tmp:
        accelerator.wait_for_everyone()  # the main process has created tmp
        with expected_shared_tensors(tied):
            accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if main:
            with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
                json.dump(trainer_state, f, indent=2)
    if main:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str) -> dict:
    """Restore accelerate state from ``path`` and return its trainer state."""
    with open(os.path.join(path, TRAINER_STATE)) as f:
        state = json.load(f)
    accelerator.load_state(path)
    return state


def copy_upn(upn: str | os.PathLike | None, model_dir: str | os.PathLike) -> None:
    """Copy the UPN folder ``upn`` (if any) into ``model_dir/upn``, where a bundled model keeps
    its proposal network and ``ChatRexPredictor.from_pretrained`` looks for it."""
    if upn is not None:
        shutil.copytree(upn, Path(model_dir) / UPN_SUBDIR, dirs_exist_ok=True)


def save_pretrained_into(folder: str, model, processor, upn: str | os.PathLike | None = None, state_dict: dict | None = None) -> None:
    """``save_pretrained`` of model and processor into ``folder`` (not atomic: pass the folder
    of a :func:`chatrex.utils.atomic.replace_dir` block). ``upn``: a UPN folder copied to
    ``folder/upn`` (``train.model_loading.upn_folder`` of the model the run started from), so
    the saved folder proposes boxes as that model did. ``state_dict``: the weights to save, when
    they are not the model's own (e.g. gathered from a distributed model)."""
    model.save_pretrained(folder, state_dict=state_dict)
    processor.save_pretrained(folder)
    copy_upn(upn, folder)


def save_pretrained_atomic(model, processor, path: str, upn: str | os.PathLike | None = None, state_dict: dict | None = None) -> str:
    """:func:`save_pretrained_into` a temporary sibling folder renamed onto ``path``, so ``path``
    is always either the previous complete folder or the new one."""
    with replace_dir(path) as tmp:
        save_pretrained_into(tmp, model, processor, upn, state_dict)
    return path
