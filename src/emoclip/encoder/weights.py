"""Where CLIP weights come from: an open_clip tag, a local file, or random initialisation.

Fetching a tag from the Hugging Face hub while offline makes huggingface_hub retry for about
45 seconds before giving up. We check reachability first (a few seconds at most) and, when the hub
cannot be reached, switch huggingface_hub to offline mode so cached weights still load and missing
ones fail at once with a message that says how to supply them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from emoclip.core.errors import WeightsUnavailableError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
RANDOM = "random"
WEIGHTS_ENV = "EMOCLIP_PRETRAINED"
_REACH_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsSource:
    """How the weights were chosen: ``kind`` is 'tag', 'file' or 'random'."""

    kind: str
    value: str

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def classify(pretrained: str | os.PathLike | None) -> WeightsSource:
    """Decide whether ``pretrained`` names random weights, a local file, or an open_clip tag."""
    text = str(pretrained) if pretrained is not None else RANDOM
    if text.lower() in (RANDOM, "none", ""):
        return WeightsSource("random", RANDOM)
    path = Path(text).expanduser()
    if path.is_file():
        # absolute, but not resolved: a hub snapshot file is a symlink whose neighbours (its config) matter
        return WeightsSource("file", os.path.abspath(path))
    if os.sep in text or path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz"):
        raise WeightsUnavailableError(
            f"weights file '{text}' does not exist; give an existing file to --pretrained (or {WEIGHTS_ENV})")
    return WeightsSource("tag", text)


def _offline_by_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "EMOCLIP_OFFLINE"))


def _probe_address(endpoint: str) -> tuple[str, int]:
    """Where a connection to ``endpoint`` really goes: the proxy for its scheme when one is set
    (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, honouring ``NO_PROXY``, as httpx does), else the host."""
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        target = urlparse(proxy if "://" in proxy else "http://" + proxy)
        if target.hostname:
            return target.hostname, target.port or (443 if target.scheme == "https" else 80)
    return host, port


def hub_reachable(endpoint: str | None = None, timeout: float = _REACH_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub (or the proxy in front of it) opens within ``timeout`` seconds."""
    host, port = _probe_address(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)  # a daemon: a hung DNS lookup cannot block exit
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def ensure_offline_when_unreachable() -> bool:
    """Switch huggingface_hub to offline mode when asked to or when the hub is unreachable.

    Returns True when offline. Only cached files can then be used, and a missing one fails at once.
    """
    offline = _offline_by_env() or not hub_reachable()
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True  # read at call time by hf_hub_download
        except ImportError:
            pass
    return offline


def missing_weights_message(model: str, tag: str, offline: bool, reason: str = "") -> str:
    if offline:
        return (f"cannot get pretrained weights '{tag}' for {model}: the Hugging Face hub is unreachable (offline) "
                f"and they are not cached; connect (set HTTPS_PROXY if you are behind a proxy) and rerun, or "
                f"download them on a connected machine and pass the file with --pretrained PATH "
                f"(or set {WEIGHTS_ENV}=PATH), or use --pretrained random for benchmarks")
    detail = f" ({reason})" if reason else ""
    return (f"cannot get pretrained weights '{tag}' for {model}: the download failed{detail}; check the network "
            f"(or HTTPS_PROXY, HF_ENDPOINT) and rerun, or pass a downloaded file with --pretrained PATH")


def is_torchscript_archive(path: str | Path) -> bool:
    """OpenAI's released ``.pt`` files are TorchScript zip archives (they hold a ``code/`` folder).

    The whole central directory is read (it is small): a recent torch writes hundreds of data
    entries before the code ones."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file by content (a hub snapshot file is a symlink to a blob without suffix)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size < 100_000_000 and head[8:9] == b"{"


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a weights file: its identity in caches and checkpoints, whatever its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _cached_repo_names() -> list[str] | None:
    """Names of the repositories in the Hugging Face cache, or None when it cannot be listed."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    root = Path(constants.HF_HUB_CACHE)
    if not root.exists():
        return []
    try:
        return [p.name for p in root.iterdir() if p.name.startswith("models--")]
    except OSError:
        return None


def preflight(model: str, pretrained: str | os.PathLike | None) -> WeightsSource:
    """Fail within seconds, before torch and open_clip are imported, when a tag cannot possibly load.

    Importing open_clip (torch, torchvision, timm, transformers) takes 5-15 s on these machines, so
    a user without network and without the weights would wait that long for the one-line answer.
    When the hub is unreachable and no cached repository's name contains the tag (open_clip's hub
    repositories end with it, e.g. ``timm/vit_base_patch32_clip_224.openai``), nothing can supply
    the weights and this raises ``WeightsUnavailableError`` at once. Any doubt (an ``hf-hub:`` name,
    an unlistable cache, a plausible cached repository) falls through to the full loader, which
    gives the exact answer.
    """
    source = classify(pretrained)
    if source.kind != "tag" or model.startswith(("hf-hub:", "local-dir:")):
        return source
    if not ensure_offline_when_unreachable():
        return source
    repos = _cached_repo_names()
    if repos is None or any(_squash(source.value) in _squash(name) for name in repos):
        return source
    raise WeightsUnavailableError(missing_weights_message(model, source.value, offline=True))
