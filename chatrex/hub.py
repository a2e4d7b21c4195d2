"""Where a model argument points: a bundled name, a local path, or a Hugging Face hub id.

One rule for every loader that takes a name or a path (``ChatRexPredictor.from_pretrained``
through ``resolve_model_path``, the CLI's ``--model`` / ``--upn``, ``chatrex convert``):

1. A bundled model name (``chatrex-tiny``) is the folder inside the package.
2. A path that exists is used as it is.
3. ``org/name`` (:func:`looks_like_hub_id`) is a hub id: the local Hugging Face cache first
   (no network); then, only when the hub answers within :data:`PROBE_TIMEOUT` seconds and
   ``HF_HUB_OFFLINE`` is not set, a download into that cache. A released ChatRex/RexSeek
   checkpoint is converted once (``chatrex convert official``) into
   ``$CHATREX_CACHE/converted/<org>--<name>/<revision>`` and loaded from there.
4. Anything else looks like a local path that is not there: one line saying so, at once. It
   is never sent to the hub (transformers would retry for most of a minute, or fail with
   "Repo id must use alphanumeric chars").

Nothing here imports torch or transformers at module level: ``chatrex convert`` checks its
arguments with it before loading the heavy converter modules. The messages name the command
that fixes the problem (``hf download ...``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .utils.atomic import publish_dir_once

# The hub's repo-name rule (huggingface_hub's validate_repo_id): letters, digits, '-', '_' and
# '.', not starting or ending with '-' or '.', at most 96 characters, no '--' or '..'.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_PART}/{_PART}")
# A name ending like this is a file the user means (``upn_large.pth``), never a repo.
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".gguf", ".json", ".jsonl", ".yaml", ".yml", ".txt",
                 ".png", ".jpg", ".jpeg", ".npz", ".npy", ".onnx", ".h5", ".msgpack", ".pkl", ".zip", ".tar", ".gz")
# Seconds the hub gets to answer before we give up and say what to run instead (a dead network
# otherwise costs transformers' retries, about 51 s).
PROBE_TIMEOUT = 3.0
# Weight formats no loader here reads; skipping them keeps a download to what is used.
IGNORED_DOWNLOADS = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "*.gguf", "onnx/*", "openvino/*", "coreml/*"]
_TRUE = {"1", "on", "yes", "true"}


class NotFoundError(FileNotFoundError, ValueError):
    """A path or hub id that leads to no files. Both a ``FileNotFoundError`` (what it is) and a
    ``ValueError`` (a bad argument: what callers of ``resolve_model_path`` catch)."""


class HubUnavailableError(NotFoundError):
    """A hub id that is not in the local cache and cannot be downloaded now."""


LOCAL_FOLDERS = ("models", "runs", "data")


def looks_like_hub_id(value: str | os.PathLike) -> bool:
    """True for exactly ``org/name`` in the hub's characters that is not an existing path and
    does not end like a file (``.pth``, ``.safetensors``, ...). ``./x/y``, ``/x/y``, ``~/x``,
    ``x/y/``, ``x/y/z``, ``models/x`` (or any ``d/x`` whose ``d`` is a folder here) and
    anything with a backslash look local."""
    text = os.fspath(value)
    if "\\" in text or text.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(text):
        return False
    if "--" in text or ".." in text or text.lower().endswith(FILE_SUFFIXES):
        return False
    # models/x where models/ is here (or is one of the folders this project's docs write into)
    # is a local path that is missing, not a hub id: sending it to the hub would answer with a
    # download hint for a repository that is not one.
    first = text.split("/", 1)[0]
    if first in LOCAL_FOLDERS or os.path.isdir(first):
        return False
    return not os.path.exists(text)


def chatrex_cache() -> Path:
    """This project's cache folder: ``$CHATREX_CACHE``, else ``$XDG_CACHE_HOME/chatrex``, else
    ``~/.cache/chatrex``."""
    if os.environ.get("CHATREX_CACHE"):
        return Path(os.environ["CHATREX_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "chatrex"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache. huggingface_hub reads its variables once, when it is first
    imported (transformers imports it early); reading them here at call time honours a program
    or a test that sets ``HF_HUB_CACHE`` / ``HF_HOME`` later."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (see :func:`hf_cache_dir` for why not huggingface_hub's copy)."""
    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ["HF_HUB_OFFLINE"].strip().lower() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``refs/main`` (``models--org--name/snapshots/<rev>``),
    or ``None``; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _probe(repo_id: str, timeout: float) -> tuple[int | None, str]:
    """``(HTTP status, "")`` from the hub's model API, or ``(None, reason)`` when it does not
    answer within ``timeout`` seconds. One request, no retries."""
    request = urllib.request.Request(f"{hub_endpoint()}/api/models/{repo_id}")
    from huggingface_hub import get_token

    token = get_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return 200, ""
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:  # DNS, refused, timeout, TLS, garbage
        return None, str(getattr(err, "reason", err))


def download_hint(repo_id: str, then: str = "") -> str:
    """``hf download ORG/NAME --local-dir models/NAME`` plus what to do next (``then`` may use
    ``{dir}``)."""
    local = f"models/{repo_id.split('/')[1]}"
    return f"download it with `hf download {repo_id} --local-dir {local}`" + (", then " + then.format(dir=local) if then else "")


def hub_snapshot(repo_id: str, label: str = "", then: str = "", timeout: float = PROBE_TIMEOUT) -> Path:
    """The local snapshot folder of ``repo_id``: from the cache, else downloaded when the hub is
    reachable. Raises :class:`HubUnavailableError` (one line, with the ``hf download`` command)
    when it is neither cached nor downloadable now. ``label`` prefixes the message (e.g.
    ``"--llm "``); ``then`` says what to do after downloading (see :func:`download_hint`)."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return snapshot
    what = f"{label}{repo_id} is not a local path and not in the Hugging Face cache ({hf_cache_dir()})"
    if hub_offline():
        raise HubUnavailableError(f"{what}, and the hub is off (HF_HUB_OFFLINE=1); {download_hint(repo_id, then)}")
    status, reason = _probe(repo_id, timeout)
    if status is None:
        raise HubUnavailableError(f"{what}, and the hub ({hub_endpoint()}) cannot be reached ({reason}); {download_hint(repo_id, then)}")
    if status == 404:
        raise HubUnavailableError(f"{label}{repo_id} does not exist locally or on the Hugging Face hub ({hub_endpoint()})")
    if status in (401, 403):
        raise HubUnavailableError(f"{label}{repo_id} is gated or private on the Hugging Face hub: log in with `hf auth login` "
                                  f"(and accept its terms on its page), then try again")
    if status != 200:
        raise HubUnavailableError(f"{what}, and the hub answered HTTP {status}; {download_hint(repo_id, then)}")
    from huggingface_hub import snapshot_download

    print(f"chatrex: downloading {repo_id} into the Hugging Face cache ({hf_cache_dir()})", file=sys.stderr)
    try:
        return Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), ignore_patterns=IGNORED_DOWNLOADS))
    except Exception as err:  # network and HTTP errors of huggingface_hub's client: one line, what to retry
        raise OSError(f"downloading {repo_id} failed ({type(err).__name__}: {err}); {download_hint(repo_id, then)}") from None


def resolve_path(value: str | os.PathLike, label: str = "", hint: str = "", then: str = "") -> Path:
    """An existing path as it is; a hub id as its snapshot folder (:func:`hub_snapshot`);
    otherwise :class:`NotFoundError` ``"<label><value> does not exist (<hint>)"`` at once."""
    text = os.fspath(value)
    if os.path.exists(text):
        return Path(text)
    if looks_like_hub_id(text):
        return hub_snapshot(text, label=label, then=then)
    raise NotFoundError(f"{label}{text} does not exist" + (f" ({hint})" if hint else ""))


# -- models ---------------------------------------------------------------------------------
OFFICIAL_THEN = "`chatrex convert official {dir} {dir}-chatrex` (a released ChatRex/RexSeek folder) and load {dir}-chatrex"


def converted_dir(repo_id: str, revision: str) -> Path:
    """Where the converted copy of a released checkpoint lives: one folder per hub revision, so
    a new upload is converted again and an old conversion is never used for it."""
    org, name = repo_id.split("/")
    return chatrex_cache() / "converted" / f"{org}--{name}" / revision


def convert_official_once(snapshot: Path, repo_id: str) -> Path:
    """Convert the released-layout ``snapshot`` with ``chatrex convert official`` into
    :func:`converted_dir` the first time; later calls return that folder. The conversion is
    written to a temporary folder beside it and renamed when complete, so an interrupted one is
    never loaded; of two processes converting at once, the first to finish wins."""
    from .convert.official import convert_official

    target = converted_dir(repo_id, snapshot.name)
    if (target / "config.json").is_file():
        return target
    if target.exists():  # conversions only ever appear complete, so this is not one of ours
        raise ValueError(f"{target} exists but holds no config.json (not a finished conversion); delete it to convert again")
    print(f"chatrex: converting {repo_id} (released layout) once into {target}", file=sys.stderr)
    with publish_dir_once(target) as tmp:
        convert_official(snapshot, tmp)
        Path(tmp, "source.json").write_text(json.dumps({"repo_id": repo_id, "revision": snapshot.name}) + "\n")
    return target


def bundled_names(bundled_dir: Path) -> list[str]:
    return sorted(p.name for p in bundled_dir.iterdir() if (p / "config.json").is_file()) if bundled_dir.is_dir() else []


def resolve_model(name_or_path: str | os.PathLike, bundled_dir: Path) -> Path:
    """A ChatRex model folder for ``name_or_path``: a bundled name, then an existing local folder
    (ours, or a released one that loads converted in memory), then a hub id (cached, or
    downloaded when reachable; a released checkpoint converted once, :func:`convert_official_once`).

    Raises ``ValueError`` (a :class:`NotFoundError` when nothing is there) with one line."""
    text = os.fspath(name_or_path)
    names = bundled_names(bundled_dir)
    if text in names:
        return bundled_dir / text
    path = Path(text)
    if path.exists():
        if (path / "config.json").is_file():
            return path
        raise ValueError(f"unknown model {text!r}: {text} has no config.json (neither a ChatRex folder nor a released ChatRex/RexSeek one)")
    if looks_like_hub_id(text):
        snapshot = hub_snapshot(text, label="model ", then=OFFICIAL_THEN)
        if not (snapshot / "config.json").is_file():
            raise ValueError(f"model {text}: its cached snapshot {snapshot} has no config.json (an interrupted download? "
                             f"run `hf download {text}` again)")
        from .official.layout import is_official_folder  # reads JSON only; the converter is imported when needed

        return convert_official_once(snapshot, text) if is_official_folder(snapshot) else snapshot
    raise NotFoundError(f"unknown model {text!r}: {text} does not exist (give a model folder with config.json, a bundled name: "
                        f"{', '.join(names) or 'none'}, or a Hugging Face id such as IDEA-Research/RexSeek-3B)")
