"""chatrex.hub: which arguments are hub ids, the local Hugging Face cache first, one-line
failures that name the download command, and a released checkpoint converted once.

No test touches the network: the Hugging Face cache is a folder under tmp_path in the real
layout (``models--org--name/snapshots/<rev>/`` + ``refs/main``), ``HF_HUB_OFFLINE`` is set,
and the "hub" of the probe tests is a server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from chatrex import hub
from chatrex.predictor import BUNDLED_DIR, ChatRexPredictor, resolve_model_path

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str = REVISION) -> Path:
    """A cached snapshot of ``repo_id`` in the hub cache layout; files are symlinks, as the
    hub's own snapshots are (theirs point into ``blobs/``). Returns the snapshot folder."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        os.symlink(source, snapshot / name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CHATREX_CACHE", str(tmp_path / "chatrex-cache"))
    return cache


@pytest.mark.parametrize("text, expected", [
    ("IDEA-Research/RexSeek-3B", True),
    ("Qwen/Qwen2.5-7B", True),
    ("laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg", True),
    ("openai/clip-vit-large-patch14-336", True),
    ("Qwen2.5-7B", False),            # no org: a local folder name
    ("Qwen2.5-7B/", False),
    ("Qwen/Qwen2.5-7B/", False),      # a trailing slash means a folder
    ("./models/RexSeek-3B", False),
    ("/models/RexSeek-3B", False),
    ("~/RexSeek-3B", False),
    ("a/b/c", False),
    ("org\\name", False),
    ("org/upn_large.pth", False),     # a file extension
    ("org/model.safetensors", False),
    ("-org/name", False),
    ("org/name.", False),
    ("org/na--me", False),
    ("org/na..me", False),
    ("", False),
])
def test_hub_id_rule(text, expected):
    assert hub.looks_like_hub_id(text) is expected


def test_an_existing_org_name_path_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert not hub.looks_like_hub_id("models/tiny")
    assert hub.resolve_path("models/tiny") == Path("models/tiny")


@pytest.mark.parametrize("text", ["Qwen2.5-7B/", "Qwen2.5-7B", "./models/x", "models/x/y", "org/upn_large.pth"])
def test_a_missing_local_path_fails_at_once_and_never_asks_the_hub(text, hf_cache, monkeypatch):
    # A hub that is "on" and would answer: any request to it would change the message.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(hub.NotFoundError) as info:
        hub.resolve_path(text, "--llm ", "a transformers causal-LM folder")
    assert str(info.value) == f"--llm {text} does not exist (a transformers causal-LM folder)"
    with pytest.raises(ValueError, match=f"unknown model '{text}': {text} does not exist"):
        resolve_model_path(text)


def test_an_uncached_hub_id_offline_names_the_commands(hf_cache):
    with pytest.raises(hub.HubUnavailableError) as info:
        resolve_model_path("IDEA-Research/RexSeek-3B")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"model IDEA-Research/RexSeek-3B is not a local path and not in the Hugging Face cache ({hf_cache})")
    assert "the hub is off (HF_HUB_OFFLINE=1)" in message
    assert "`hf download IDEA-Research/RexSeek-3B --local-dir models/RexSeek-3B`" in message
    assert "`chatrex convert official models/RexSeek-3B models/RexSeek-3B-chatrex`" in message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_within_seconds(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailableError, match=r"cannot be reached .*hf download Qwen/Qwen2.5-7B --local-dir models/Qwen2.5-7B`, then pass --llm"):
        hub.resolve_path("Qwen/Qwen2.5-7B", "--llm ", then="pass --llm {dir}")
    print(f"unreachable hub: failed in {time.perf_counter() - start:.2f}s")


class _Hub(http.server.BaseHTTPRequestHandler):
    status = 404
    paths: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).paths.append(self.path)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, expected", [
    (404, "model acme/missing does not exist locally or on the Hugging Face hub"),
    (401, "model acme/missing is gated or private on the Hugging Face hub: log in with `hf auth login`"),
    (503, "and the hub answered HTTP 503; download it with `hf download acme/missing"),
])
def test_the_hub_answer_is_reported_in_one_line(status, expected, hf_cache, monkeypatch):
    handler = type("Handler", (_Hub,), {"status": status, "paths": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(hub.HubUnavailableError) as info:
            resolve_model_path("acme/missing")
    finally:
        server.shutdown()
        server.server_close()
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert handler.paths == ["/api/models/acme/missing"]  # one request, no retries


def test_a_cached_hub_model_loads_from_the_cache(hf_cache):
    files = {p.name: p for p in BUNDLED_DIR.joinpath("chatrex-tiny").iterdir()}
    snapshot = fake_hub_repo(hf_cache, "acme/chatrex-tiny", files)
    assert resolve_model_path("acme/chatrex-tiny") == snapshot
    predictor = ChatRexPredictor.from_pretrained("acme/chatrex-tiny")
    bundled = ChatRexPredictor.from_pretrained("chatrex-tiny")
    assert predictor.upn is not None  # the snapshot's upn/ came along
    name, weight = next(iter(predictor.model.state_dict().items()))
    assert torch.equal(weight, bundled.model.state_dict()[name])


def test_a_cached_released_checkpoint_is_converted_once(hf_cache, tiny_official, capsys):
    folder, original = tiny_official
    snapshot = fake_hub_repo(hf_cache, "IDEA-Research/RexSeek-tiny", {p.name: p for p in Path(folder).iterdir()})
    path = resolve_model_path("IDEA-Research/RexSeek-tiny")
    expected = hub.chatrex_cache() / "converted" / "IDEA-Research--RexSeek-tiny" / REVISION
    assert path == expected and snapshot.name == REVISION
    assert "converting IDEA-Research/RexSeek-tiny (released layout) once into" in capsys.readouterr().err
    config = json.loads((path / "config.json").read_text())
    assert "vision_low_config" in config  # our layout now
    assert json.loads((path / "source.json").read_text()) == {"repo_id": "IDEA-Research/RexSeek-tiny", "revision": REVISION}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    stamp = (path / "config.json").stat().st_mtime_ns
    assert resolve_model_path("IDEA-Research/RexSeek-tiny") == path  # reused, not converted again
    assert "converting" not in capsys.readouterr().err
    assert (path / "config.json").stat().st_mtime_ns == stamp
    predictor = ChatRexPredictor.from_pretrained("IDEA-Research/RexSeek-tiny")
    ours, theirs = predictor.model.state_dict(), original.state_dict()
    assert set(ours) == set(theirs)
    for name, weight in theirs.items():
        assert torch.equal(ours[name].float(), weight.float()), name


def test_a_path_under_a_local_or_documented_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    assert not hub.looks_like_hub_id("models/RexSeek-3B-chatrex")  # the README's folder, not made yet
    assert not hub.looks_like_hub_id("weights/upn-large")           # a folder that exists here
    assert hub.looks_like_hub_id("IDEA-Research/RexSeek-3B")


def test_a_half_made_conversion_folder_is_named_not_loaded(hf_cache, tmp_path):
    """Conversions only appear complete; a folder without config.json there is somebody else's."""
    target = hub.converted_dir("IDEA-Research/RexSeek-tiny", REVISION)
    target.mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no config.json"):
        hub.convert_official_once(tmp_path / REVISION, "IDEA-Research/RexSeek-tiny")
