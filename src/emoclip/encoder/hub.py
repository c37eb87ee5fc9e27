"""Files from the Hugging Face hub, verified: every weight file is checked against the digest the hub published.

huggingface_hub stores each downloaded file as ``blobs/<etag>`` and checks only its size. For LFS
files (every weights file) the ETag *is* the SHA-256 of the content, and for small git files it is
the git blob SHA-1, so the blob's own name says what its bytes must hash to — online or offline.
``fetch`` downloads (or finds in the cache) one file and verifies it before anything reads it:

- a mismatch deletes the bad blob and downloads it again when the hub is reachable, or stops with one
  line naming the file when offline — a damaged cache is never used;
- a verified file is remembered (path, size, modification time, inode → digest) in emoclip's cache
  folder, so the 600 MB are hashed once, not on every run (local weights files too);
- the resolved revision (the snapshot's commit) and the digest are returned, so checkpoints and
  run reports record exactly which published file they used.

Progress: on a terminal huggingface_hub's bar is shown; elsewhere one log line per download says
what is being fetched and how large it is (a 600 MB download is never silent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from emoclip.core.atomic import atomic_write_text
from emoclip.core.errors import WeightsUnavailableError, shorten
from emoclip.encoder.weights import ensure_offline_when_unreachable

log = logging.getLogger("emoclip")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_BLOCK = 1 << 22
VERIFIED_FILE = "verified-weights.json"


@dataclass(frozen=True)
class HubFile:
    """One verified file from the hub: where it is on disk and what it is."""

    path: str        # the snapshot path (a symlink into blobs/ in the standard cache layout)
    repo: str
    filename: str
    revision: str    # the commit the file was resolved at
    sha256: str      # the verified SHA-256 of the content

    def provenance(self) -> dict[str, str]:
        return {"repo": self.repo, "file": self.filename, "revision": self.revision, "sha256": self.sha256}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_sha1_of(path: Path) -> str:
    """Git's blob hash (the ETag of files the hub stores in git rather than LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _memo_path() -> Path:
    from emoclip.encoder.cache_dir import default_cache_dir

    return Path(default_cache_dir()) / VERIFIED_FILE


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_memo() -> dict[str, dict]:
    try:
        data = json.loads(_memo_path().read_text())
    except (OSError, ValueError, RecursionError):
        return {}  # a missing or damaged memo only costs one more hash
    return data if isinstance(data, dict) else {}


def _remember(blob: Path, sha256: str) -> None:
    memo = _read_memo()
    memo[str(blob)] = {**_stamp(blob), "sha256": sha256}
    try:
        atomic_write_text(_memo_path(), json.dumps(memo, indent=1, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only cache folder: verification still happened
        log.debug("cannot remember the verified digest of %s: %s", blob, exc)


def verified_sha256(path: str | Path) -> str | None:
    """The remembered SHA-256 of ``path`` when it was verified and has not changed since (else None)."""
    blob = Path(path).resolve()
    entry = _read_memo().get(str(blob))
    try:
        if isinstance(entry, dict) and {k: entry.get(k) for k in ("size", "mtime_ns", "inode")} == _stamp(blob):
            sha = entry.get("sha256")
            return sha if isinstance(sha, str) and _SHA256.match(sha) else None
    except OSError:
        return None
    return None


def expected_digest(path: str | Path) -> str | None:
    """What the hub published for a cached file: its blob's name (the ETag), or None outside the hub cache."""
    name = Path(path).resolve().name
    return name if (_SHA256.match(name) or _SHA1.match(name)) else None


def verify(path: str | Path) -> str:
    """The SHA-256 of ``path`` after checking it against the hub's digest; raises ``_Mismatch`` when it differs."""
    blob = Path(path).resolve()
    remembered = verified_sha256(blob)
    if remembered is not None:
        return remembered
    want = expected_digest(blob)
    sha256 = sha256_of(blob)
    if want is not None and want != (sha256 if len(want) == 64 else _git_sha1_of(blob)):
        raise _Mismatch(blob, want)
    _remember(blob, sha256)  # any file: its identity is its digest, and hashing 600 MB every run is waste
    return sha256


class DamagedDownloadError(WeightsUnavailableError):
    """A cached or downloaded file does not match the hub's digest (it has been deleted)."""


class _Mismatch(Exception):
    def __init__(self, blob: Path, want: str) -> None:
        super().__init__(f"{blob} does not match the published digest {want[:12]}…")
        self.blob = blob


def _revision_of(path: str | Path) -> str:
    parts = Path(path).parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts):
            return parts[index + 1]
    return "unknown"


@contextmanager
def download_progress() -> Iterator[None]:
    """huggingface_hub's bars on a terminal; off elsewhere (``fetch`` logs one line per download instead)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if sys.stderr.isatty():
        enable_progress_bars()
    else:
        disable_progress_bars()
    try:
        yield
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()


def _human(size: int | None) -> str:
    if not size:
        return "unknown size"
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def _announce(repo: str, filename: str, revision: str | None, cache_dir: str | None) -> None:
    """One log line before a download starts (the size from the hub when it answers quickly)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    size = None
    with suppress(Exception):
        size = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=5).size
    log.warning("downloading %s from %s (%s, %s; cached for next time in %s)", filename, repo, _human(size),
                constants.ENDPOINT, cache_dir or constants.HF_HUB_CACHE)


def _download(repo: str, filename: str, revision: str | None, cache_dir: str | None, offline: bool) -> str:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision)
    if not isinstance(cached, str) and not offline:
        _announce(repo, filename, revision, cache_dir)
    with download_progress():
        return hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir)


def _drop(blob: Path, snapshot: str) -> None:
    for victim in (Path(snapshot), blob):
        with suppress(FileNotFoundError):
            victim.unlink()


def fetch(repo: str, filename: str, revision: str | None = None, cache_dir: str | None = None) -> HubFile:
    """Download (or find cached) and verify one hub file; see the module docstring for what happens on damage."""
    offline = ensure_offline_when_unreachable()
    for attempt in range(2):
        try:
            path = _download(repo, filename, revision, cache_dir, offline)
        except Exception as exc:  # huggingface_hub raises many kinds; all mean "not available"
            where = "the hub is unreachable (offline) and it is not cached" if offline else "the download failed"
            reason = shorten(str(exc).strip().splitlines()[0], 160) if str(exc).strip() else type(exc).__name__
            raise WeightsUnavailableError(f"cannot get {filename} from {repo}: {where} ({reason})") from None
        try:
            return HubFile(path, repo, filename, _revision_of(path), verify(path))
        except _Mismatch as bad:
            _drop(bad.blob, path)
            if offline or attempt:
                fix = ("connect to the network and rerun to download it again" if offline
                       else "the download was damaged twice: check the network or proxy, then rerun")
                raise DamagedDownloadError(f"cached file {bad.blob} ({repo}/{filename}) is damaged: its SHA-256 "
                                              f"does not match the hub's; it was deleted; {fix}") from None
            log.warning("cached %s from %s is damaged (SHA-256 mismatch): deleted, downloading it again",
                        filename, repo)
    raise AssertionError("unreachable")  # pragma: no cover


def verify_snapshot(folder: str | Path) -> dict[str, str]:
    """Verify every file of a cached snapshot folder (BART's); returns {file name: sha256}.

    Raises ``WeightsUnavailableError`` naming the first damaged file (after deleting it, so the next
    online run downloads it again)."""
    digests = {}
    for entry in sorted(Path(folder).iterdir()):
        if not entry.is_file():
            continue
        try:
            digests[entry.name] = verify(entry)
        except _Mismatch as bad:
            _drop(bad.blob, str(entry))
            raise DamagedDownloadError(f"cached file {bad.blob} ({entry.name}) is damaged: its SHA-256 does not "
                                          "match the hub's; it was deleted; rerun online to download it again"
                                          ) from None
    return digests


def is_hub_snapshot(path: str | Path) -> bool:
    return _revision_of(path) != "unknown" and expected_digest(path) is not None


__all__ = ["DamagedDownloadError", "HubFile", "download_progress", "expected_digest", "fetch", "sha256_of",
           "verified_sha256", "verify", "verify_snapshot"]
