"""Atomic writes: a file or folder appears under its name only once it is complete.

The data goes to a temporary sibling (same folder, hence same filesystem, so the final
``os.replace`` is a rename) that is renamed into place when the writer's block ends normally.
Any exception, ``KeyboardInterrupt`` included, removes the temporary instead, so a crash or a
Ctrl-C leaves the previous version (or nothing), never a torn file. Only a ``kill -9`` can
leave a temporary behind; their names start with :data:`TEMP_PREFIX`, so a folder's owner can
sweep them.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from typing import IO, Iterator

TEMP_PREFIX = ".tmp-"


def _temp_file_name(path: str) -> str:
    # A random part keeps two writers of the same file (processes, threads) off each other's
    # temporary. It ends the name, so a listing by extension (``*.png``, ``*.safetensors``)
    # never picks up a half-written file; a writer that infers the format from the extension
    # must be told it (``Image.save(tmp, format="PNG")``).
    parent, name = os.path.split(path)
    return os.path.join(parent, f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}")


def _remove_quietly(tmp: str) -> None:
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` for a writer that takes a path (``torch.save``,
    ``safetensors.torch.save_file``, ``PIL.Image.save``); it becomes ``path`` when the block
    ends normally and is deleted when the block raises."""
    path = os.fspath(path)
    tmp = _temp_file_name(path)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"nothing was written to {tmp!r}, the temporary file for {path!r}")
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Yield a file opened with ``open(tmp, mode, **open_kwargs)``; it replaces ``path`` when
    the block ends normally. ``fsync``: flush it to disk before the rename, for files a resume
    protocol trusts after a power loss, not only after a crash of the process."""
    if "w" not in mode:
        raise ValueError(f"atomic_write writes a whole new file: mode must contain 'w', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def temp_dir_for(path: str | os.PathLike) -> str:
    """The temporary sibling folder :func:`replace_dir` fills for ``path``. The name is fixed, so
    that every process of a distributed job finds the same folder, and a crashed run's leftover
    is cleared by the next write of the same folder."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(parent, TEMP_PREFIX + name)


@contextmanager
def replace_dir(path: str | os.PathLike, *, owner: bool = True) -> Iterator[str]:
    """Yield an empty temporary folder to fill; when the block ends normally it takes the place
    of folder ``path`` (whose old contents are deleted); when the block raises it is deleted.

    Unlike a file, a folder cannot be swapped in one rename: the old one is renamed aside
    first, so for an instant ``path`` is absent, but it is never partly written or partly
    deleted. ``owner=False`` (the other ranks of a distributed job, which write into the same
    folder) only yields the name: the owner alone creates, swaps in and cleans up."""
    tmp = temp_dir_for(path)
    old = f"{tmp}.old"
    if owner:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        if owner:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if owner:
        _swap_in(tmp, os.path.abspath(os.fspath(path)), old)


def _swap_in(tmp: str, path: str, old: str) -> None:
    if os.path.lexists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def publish_dir_once(path: str | os.PathLike) -> Iterator[str]:
    """Yield a private empty temporary folder to fill; when the block ends normally it is renamed
    to ``path``, unless another writer (a process racing for the same cache entry) got there
    first: the first complete folder wins and this one is deleted. When the block raises, the
    temporary is deleted and ``path`` is left as it was.

    Unlike :func:`replace_dir`, an existing ``path`` is never replaced, so a reader that has
    found it complete can rely on it staying so."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}")  # one per writer
    os.makedirs(tmp)
    try:
        yield tmp
        try:
            os.rename(tmp, path)  # refuses a non-empty ``path``: the first writer's folder stays
        except OSError:
            if not (os.path.isdir(path) and os.listdir(path)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
