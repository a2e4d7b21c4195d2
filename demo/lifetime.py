"""Tie the server's lifetime to the process that started it, when asked (Linux; elsewhere a no-op).

``make demo`` execs Python, so the server's parent is make; killing a backgrounded make by its
PID would otherwise leave the server running. The Makefile asks for it with
``CHATREX_EXIT_WITH_PARENT=1``; other launches (``nohup chatrex demo &``, a service manager)
keep the usual Unix behaviour of outliving their parent. Kept free of heavy imports so that
``python -m demo`` can ask for this before spending seconds importing torch and Gradio, a time
during which the parent may already be killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _set_parent_death_signal(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


ENV_VAR = "CHATREX_EXIT_WITH_PARENT"


def exit_with_parent() -> None:
    """With ``CHATREX_EXIT_WITH_PARENT=1``, have the kernel send this process SIGTERM when its
    parent dies."""
    if os.environ.get(ENV_VAR) != "1" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        raise SystemExit("demo: the process that started the server has exited")
