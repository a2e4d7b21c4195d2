"""Run a list of ``chatrex ...`` and ``python -m MODULE ...`` commands, several at once, from one
warm interpreter.

    python -m train.batch_commands COMMANDS.txt --jobs 8 --logs runs/logs

``COMMANDS.txt`` holds one shell-quoted command per line (``printf '%q '`` writes them), e.g.
``chatrex data import coco --ann ... --out ...`` or ``python -m data_engine.proposals ...``.
Importing ``chatrex`` takes seconds (torch, transformers), which dominates a command on a small
dataset; here the modules are imported once and every command runs in a forked child, so a
recipe's twenty imports cost one start-up, run ``--jobs`` at a time, and keep separate state,
memory and logs. Each command's output goes to ``LOGS/<n>-<name>.log``; the exit status is 1
when any command failed, and the failures are listed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import runpy
import shlex
import sys
import time


def parse_command(line: str) -> tuple[str, list[str]]:
    """``("chatrex", args)`` or ``(module, args)`` for ``python -m module args``."""
    argv = shlex.split(line)
    if argv and argv[0] == "chatrex":
        return "chatrex", argv[1:]
    if len(argv) >= 3 and os.path.basename(argv[0]).startswith("python") and argv[1] == "-m":
        return argv[2], argv[3:]
    raise ValueError(f"cannot run {line.strip()!r}: only 'chatrex ...' and 'python -m MODULE ...' commands")


def _run(target: str, args: list[str]) -> int:
    """The command's exit status (in the forked child)."""
    if target == "chatrex":
        from chatrex.cli.main import main

        return int(main(args) or 0)
    sys.argv = [target, *args]
    try:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)  # what the interpreter prints for sys.exit("message")
        return 1
    return 0


def _log_name(n: int, target: str, args: list[str]) -> str:
    out = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--out"), None)
    stem = os.path.basename(out) if out else f"{target} {' '.join(args[:2])}"
    return f"{n:03d}-" + re.sub(r"[^A-Za-z0-9_.+-]+", "_", stem)[:80] + ".log"


def _start(target: str, args: list[str], log: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = _run(target, args)
    except BaseException as err:  # the child must never return into the parent's loop
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_commands(lines: list[str], jobs: int, logs: str) -> list[tuple[str, int, str]]:
    """Run the commands, at most ``jobs`` at a time; ``(command, exit status, log)`` for each."""
    commands = [(line, *parse_command(line)) for line in lines]
    # Import once, before forking: every child starts with the modules loaded.
    importlib.import_module("chatrex.cli.main")
    for _, target, _ in commands:
        if target != "chatrex":
            importlib.import_module(target)
    os.makedirs(logs, exist_ok=True)
    results: dict[int, tuple[str, int, str]] = {}
    running: dict[int, int] = {}
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < jobs:
            n, (line, target, args) = pending.pop(0)
            log = os.path.join(logs, _log_name(n, target, args))
            running[_start(target, args, log)] = n
            results[n] = (line, -1, log)
        pid, status = os.wait()
        n = running.pop(pid)
        results[n] = (results[n][0], os.waitstatus_to_exitcode(status), results[n][2])
    return [results[n] for n in sorted(results)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.batch_commands", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commands", help="file with one shell-quoted command per line")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="commands at once (default: the CPU count)")
    parser.add_argument("--logs", required=True, help="folder for one log per command")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    with open(args.commands) as f:
        lines = [line for line in f if line.strip()]
    try:
        for line in lines:
            parse_command(line)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = run_commands(lines, args.jobs, args.logs)
    failed = [(line, code, log) for line, code, log in results if code != 0]
    print(f"{len(results) - len(failed)} of {len(results)} commands succeeded in {time.perf_counter() - started:.0f} s; logs in {args.logs}")
    for line, code, log in failed:
        print(f"failed (exit {code}, log {log}): {line.strip()}", file=sys.stderr)
        with open(log) as f:
            tail = f.read().strip().splitlines()[-5:]
        print("".join(f"    {t}\n" for t in tail), end="", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
