"""A stand-in for the Hugging Face hub on 127.0.0.1: what huggingface_hub needs, with switchable faults.

It answers the hub's resolve URLs (``/{repo}/resolve/{revision}/{file}``, HEAD and GET) the way the
real hub does: ``X-Repo-Commit``, an ``ETag`` that is the git blob SHA-1 for small files and the
SHA-256 for LFS files (with ``X-Linked-Etag``/``X-Linked-Size``), ``Content-Length``, ``Range``
requests (206), and 404 with ``X-Error-Code: EntryNotFound`` for files a repository lacks. The
repository layouts are those of ``timm/vit_base_patch32_clip_224.openai`` and ``facebook/bart-base``
(see ``clip_repo``/``bart_repo``), filled with tiny random weights unless told otherwise.

Faults (``StubHub.faults``, each a count of requests it still applies to, per file name):
``corrupt`` (same size, wrong bytes, the true ETag), ``short`` (the body stops halfway: the client
must resume with a Range request or restart), ``slow`` (a pause before each chunk). ``LoopbackProxy``
is a forwarding HTTP proxy that sends every request to the stub, whatever host it names, so a test
can give an endpoint only reachable through it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_MIN = 1024  # files at least this large are served as LFS files (as the hub does for weights)
CHUNK = 1 << 16


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"

    def etag(self, name: str) -> tuple[str, bool]:
        data = self.files[name]
        if len(data) >= LFS_MIN or name.endswith((".safetensors", ".bin")):
            return hashlib.sha256(data).hexdigest(), True
        return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest(), False


@dataclass
class StubHub:
    repos: dict[str, Repo]
    faults: dict[str, Counter] = field(default_factory=lambda: {"corrupt": Counter(), "short": Counter(),
                                                                "slow": Counter()})
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, fault: str, name: str) -> bool:
        """Whether ``fault`` applies to this request for ``name`` (and use one of its count)."""
        counter = self.faults[fault]
        if counter[name] > 0:
            counter[name] -= 1
            return True
        return False

    def gets(self, name: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith("/" + name)]

    def start(self) -> StubHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _send(self, code: int, headers: dict[str, str], payload: bytes = b"") -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(payload)

            def _answer(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if path.startswith("/api/models/"):
                    return self._api(path[len("/api/models/"):])
                repo_id, sep, rest = path.lstrip("/").partition("/resolve/")
                repo = hub.repos.get(repo_id)
                if not sep or repo is None:
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"{}")
                revision, _, name = rest.partition("/")
                if revision not in ("main", repo.commit):
                    return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"{}")
                if name not in repo.files:
                    return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit}, b"{}")
                data = repo.files[name]
                etag, lfs = repo.etag(name)
                headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                if lfs:
                    headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
                if not body:
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return None
                start = 0
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0] or 0)
                if hub.take("corrupt", name):
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                payload = data[start:]
                code = 206 if start else 200
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                short, slow = hub.take("short", name), hub.take("slow", name)
                limit = len(payload) // 2 if short else len(payload)
                for offset in range(0, limit, CHUNK):
                    if slow:
                        time.sleep(0.05)
                    self.wfile.write(payload[offset:min(offset + CHUNK, limit)])
                if short:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the body stops halfway, as a dropped connection does
                return None

            def _api(self, rest: str) -> None:
                """``/api/models/{repo}[/revision/{rev}]`` (repo info) and ``…/tree/{rev}/{folder}`` (a listing)."""
                parts = rest.strip("/").split("/")
                repo_id, tail = "/".join(parts[:2]), parts[2:]
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"{}")
                if tail[:1] == ["tree"]:
                    folder = "/".join(tail[2:])
                    listed = [{"type": "file", "path": n, "size": len(d), "oid": repo.etag(n)[0]}
                              for n, d in sorted(repo.files.items()) if not folder or n.startswith(folder + "/")]
                    if folder and not listed:
                        return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit},
                                          b'{"error": "not found"}')
                    return self._send(200, {"Content-Type": "application/json"}, json.dumps(listed).encode())
                info = {"id": repo_id, "sha": repo.commit,
                        "siblings": [{"rfilename": n} for n in sorted(repo.files)]}
                return self._send(200, {"Content-Type": "application/json", "X-Repo-Commit": repo.commit},
                                  json.dumps(info).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class LoopbackProxy:
    """A forwarding HTTP proxy on 127.0.0.1 that sends every request to ``target`` (host:port)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                proxy.seen.append(self.path)
                parts = urlsplit(self.path)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream = http.client.HTTPConnection(proxy.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "host")}
                upstream.request(self.command, path, headers=headers)
                answer = upstream.getresponse()
                data = answer.read() if self.command != "HEAD" else b""
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the two repositories' layouts ------------------------------------------------------------------------

CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"
BART_REPO = "facebook/bart-base"


def clip_repo(weights: bytes, model_cfg: dict, quick_gelu: bool = True) -> Repo:
    """``timm/vit_base_patch32_clip_224.openai``'s files: the open_clip safetensors, its open_clip config
    (QuickGELU, OpenAI's normalisation), timm's config, README and .gitattributes."""
    open_clip_config = {
        "model_cfg": {**model_cfg, "quick_gelu": quick_gelu},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    timm_config = {"architecture": "vit_base_patch32_clip_224", "num_classes": 512, "pretrained_cfg": {
        "tag": "openai", "custom_load": False, "input_size": [3, 224, 224], "interpolation": "bicubic",
        "crop_pct": 1.0, "crop_mode": "center", "mean": open_clip_config["preprocess_cfg"]["mean"],
        "std": open_clip_config["preprocess_cfg"]["std"], "num_classes": 512}}
    return Repo({
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                          b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"---\ntags:\n- clip\nlibrary_name: open_clip\nlicense: apache-2.0\n---\n# stand-in\n",
        "config.json": json.dumps(timm_config, indent=2).encode(),
        "open_clip_config.json": json.dumps(open_clip_config, indent=2).encode(),
        "open_clip_model.safetensors": weights,
    }, commit="a1b2c3d4e5f60718293a4b5c6d7e8f9012345678")


def bart_repo(folder: Path) -> Repo:
    """``facebook/bart-base``'s layout from a ``save_pretrained`` folder (config, safetensors, tokenizer)."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    files.setdefault(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return Repo(files, commit="b0a1b2c3d4e5f60718293a4b5c6d7e8f90123456")
