"""Load the refer toolkit's ``refs(*).p`` without ever running code from the file.

A pickle can call any importable function while it loads (``__reduce__`` -> ``os.system``).
Every such call first names a global through ``find_class`` (GLOBAL, STACK_GLOBAL and the
extension-registry opcodes all go through it), so an unpickler whose ``find_class`` always
refuses can only build the builtin containers and scalars. The refs pickles hold nothing
else (lists of dicts of str/int/lists), and the result is checked again after loading: only
dict, list, tuple, str, bytes, int, float, bool and None are accepted (this also refuses
sets, bytearrays and out-of-band buffers, which protocols 4/5 build without globals).
"""

from __future__ import annotations

import io
import os
import pickle

ALLOWED_TYPES = (dict, list, tuple, str, bytes, int, float, bool, type(None))


class RefusedPickle(ValueError):
    """The pickle asked for something other than plain data."""


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise RefusedPickle(f"refuses to load global {module}.{name} (only plain lists, dicts, strings and numbers are allowed)")

    def persistent_load(self, pid):
        raise RefusedPickle("refuses a persistent id (only plain lists, dicts, strings and numbers are allowed)")


def _check_plain(obj) -> None:
    stack, seen = [obj], set()
    while stack:
        o = stack.pop()
        if type(o) not in ALLOWED_TYPES:
            raise RefusedPickle(f"holds a {type(o).__name__} (only plain lists, dicts, strings and numbers are allowed)")
        if isinstance(o, (dict, list, tuple)):
            if id(o) in seen:
                continue
            seen.add(id(o))
            stack.extend(o.keys() if isinstance(o, dict) else ())
            stack.extend(o.values() if isinstance(o, dict) else o)


def _load(data: bytes, encoding: str):
    return _DataOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_plain_pickle(path: str | os.PathLike):
    """Unpickle ``path`` allowing only plain data; ``ValueError`` naming the file otherwise.

    Python 2 ``str`` objects (the refer pickles were written by Python 2) are decoded as UTF-8,
    falling back to Latin-1 when a byte string is not valid UTF-8.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        try:
            obj = _load(data, "utf-8")
        except UnicodeDecodeError:
            obj = _load(data, "latin1")
    except RefusedPickle as err:
        raise RefusedPickle(f"{path}: unsafe pickle: {err}") from None
    except Exception as err:  # truncated or corrupt pickles raise many different types
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
    try:
        _check_plain(obj)
    except RefusedPickle as err:
        raise RefusedPickle(f"{path}: unsafe pickle: {err}") from None
    return obj
