"""The server ties its lifetime to its parent only when `make demo` asks for it."""

import signal
import sys

import pytest

from demo import lifetime


@pytest.mark.parametrize("value, expected", [(None, []), ("0", []), ("1", [signal.SIGTERM])])
def test_parent_death_signal_only_under_make_demo(monkeypatch, value, expected):
    calls = []
    monkeypatch.setattr(lifetime, "_set_parent_death_signal", calls.append)
    monkeypatch.setattr(sys, "platform", "linux")
    if value is None:
        monkeypatch.delenv(lifetime.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(lifetime.ENV_VAR, value)
    lifetime.exit_with_parent()
    assert calls == expected


def test_the_makefile_asks_for_it():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert f"{lifetime.ENV_VAR}=1" in makefile and "exec $(PY) -m demo" in makefile
