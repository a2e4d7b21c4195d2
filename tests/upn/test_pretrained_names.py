"""UPNPredictor.from_pretrained by name ("upn-tiny", the weights bundled with chatrex-tiny),
without upn importing chatrex; unknown names and missing paths fail at once and say what exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from upn import PRETRAINED, UPNPredictor
from upn.predictor import resolve_weights

UPN_DIR = Path(__file__).resolve().parents[2] / "upn"
BUNDLED_UPN = Path(__file__).resolve().parents[2] / "chatrex" / "bundled" / "chatrex-tiny" / "upn"


def test_upn_tiny_by_name_is_the_bundled_weights():
    assert Path(resolve_weights("upn-tiny")).resolve() == BUNDLED_UPN.resolve()
    by_name = UPNPredictor.from_pretrained("upn-tiny")
    by_path = UPNPredictor.from_pretrained(BUNDLED_UPN)
    assert by_name.model.config.name == "upn-tiny"
    for (name, a), b in zip(by_name.model.state_dict().items(), by_path.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("path", ["upn-small", "models/upn-large", "upn_large.pth", "IDEA-Research/upn"])
def test_unknown_names_and_missing_paths_list_the_known_names(path):
    with pytest.raises(FileNotFoundError) as info:
        UPNPredictor.from_pretrained(path)
    assert str(info.value).startswith(f"UPN weights {path!r} do not exist: ")
    assert str(info.value).endswith(f"or a bundled name ({', '.join(sorted(PRETRAINED))})")


def test_upn_imports_nothing_from_chatrex():
    # chatrex depends on upn; the bundled upn-tiny is found with importlib.util.find_spec, which
    # locates a top-level package without importing it.
    for file in UPN_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "chatrex" or n.startswith("chatrex.") for n in names), f"{file.name} imports {names}"

