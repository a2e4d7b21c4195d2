"""The README's examples run and print what the README says they print.

``console`` blocks are transcripts: a ``$ `` line is a command, the lines under it are its
stdout. ``pycon`` blocks are doctests. Both run in a scratch folder that sees the repository's
``examples/`` and ``.venv/``, so commands that write files leave nothing behind. ``bash``
blocks (downloads, GPU runs, long training) are not run; they are only checked for the one
way of calling the CLI that the README promises.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == kind]


def transcript(body: str) -> list[tuple[str, str]]:
    """``[(command, expected stdout)]`` from a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"README console block has output before its first '$ ' command: {line!r}")
    return [(cmd, "\n".join(out).rstrip()) for cmd, out in steps]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder where ``examples`` and ``.venv`` are the repository's, and nothing else is."""
    if not (ROOT / ".venv" / "bin" / "chatrex").exists():
        pytest.skip("the README's commands call .venv/bin/chatrex; run through `make test`")
    path = tmp_path_factory.mktemp("readme")
    for name in ("examples", ".venv"):
        (path / name).symlink_to(ROOT / name)
    return path


CONSOLE_STEPS = [step for body in blocks("console") for step in transcript(body)]


def test_the_readme_has_examples_with_output():
    assert len(CONSOLE_STEPS) >= 4 and all(expected for _, expected in CONSOLE_STEPS)
    assert blocks("pycon"), "the Python example is a doctest"


@pytest.mark.parametrize("command, expected", CONSOLE_STEPS, ids=[c for c, _ in CONSOLE_STEPS])
@pytest.mark.slow
def test_console_example_prints_what_the_readme_shows(scratch, command, expected):
    done = subprocess.run(["bash", "-c", command], cwd=scratch, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    actual = "\n".join(line.rstrip() for line in done.stdout.rstrip().splitlines())
    assert actual == expected, f"{command}\nREADME shows:\n{expected}\nbut it printed:\n{actual}"


@pytest.mark.parametrize("index", range(len(blocks("pycon"))))
@pytest.mark.slow
def test_python_example_prints_what_the_readme_shows(scratch, index, monkeypatch):
    monkeypatch.chdir(scratch)
    test = doctest.DocTestParser().get_doctest(blocks("pycon")[index], {}, f"README.md pycon block {index}", str(README), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_every_cli_call_uses_the_venv_path():
    """One way to call the CLI everywhere in the README: ``.venv/bin/chatrex`` and ``.venv/bin/python``."""
    shell = "\n".join(blocks("bash") + blocks("console"))
    checked = 0
    for line in shell.splitlines():
        code = line.split("#", 1)[0].removeprefix("$ ")
        for command in re.split(r"&&|\|\||;|\|", code):
            words = [w for w in command.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # skip VAR=value prefixes
            if not words:
                continue
            if words[0].endswith(("chatrex", "python", "python3", "torchrun", "accelerate", "pytest")):
                checked += 1
                assert words[0].startswith(".venv/bin/"), f"README calls {words[0]!r} outside the venv: {line.strip()!r}"
    assert checked > 20
