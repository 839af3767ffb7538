"""A fake Hugging Face Hub on 127.0.0.1 for tests: serves donor folders as repos to huggingface_hub.

huggingface_hub reads its endpoint, cache and offline settings at import, so in-process tests
patch :mod:`huggingface_hub.constants` (:func:`use_cache`, :func:`go_online`); subprocesses get
``HF_ENDPOINT`` / ``HF_HUB_CACHE`` in their environment (:meth:`FakeHub.env`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves each folder of ``repos`` (repo id → folder) with the endpoints huggingface_hub calls.

    Every request is logged in ``requests`` as ``(method, path, range header)``. A GET of a
    whole file named in ``drop`` sends the headers and half the body, then closes the
    connection; later ranged requests (resumes) for it are cut before any byte.
    """

    def __init__(self, repos: Mapping[str, Path], drop: frozenset[str] = frozenset()) -> None:
        self.repos = dict(repos)
        self.drop = drop
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._dropped: set[str] = set()

    def full_downloads(self) -> list[str]:
        """Paths of files fetched whole (GET without a Range header), as ``repo/file``."""
        paths = []
        for method, path, ranged in self.requests:
            if method == "GET" and not ranged and (match := re.fullmatch(r"/(.+?/.+?)/resolve/[^/]+/(.+)", path)):
                paths.append(f"{match[1]}/{match[2]}")
        return paths

    def env(self, cache: Path) -> dict[str, str]:
        """Environment variables pointing a huggingface_hub subprocess at this server and ``cache``."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent),
                "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("range")))
                path = self.path.split("?")[0]
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    folder, revision = hub.repos.get(match[1]), match[2] or "main"
                    if folder is None:
                        return self._send(404, b'{"error": "Repository Not Found"}', {"X-Error-Code": "RepoNotFound"})
                    if revision not in ("main", SHA):
                        return self._send(404, b'{"error": "Revision Not Found"}', {"X-Error-Code": "RevisionNotFound"})
                    siblings = [{"rfilename": p.name, "size": p.stat().st_size} for p in sorted(folder.iterdir())]
                    return self._send(200, json.dumps({"id": match[1], "sha": SHA, "siblings": siblings}).encode(),
                                      {"Content-Type": "application/json"}, body)
                if (match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)) and match[1] in hub.repos:
                    file = hub.repos[match[1]] / match[3]
                    if match[2] not in ("main", SHA) or not file.is_file():
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                    data = file.read_bytes()
                    headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                    if ranged := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range") or ""):
                        start = int(ranged[1])
                        end = min(int(ranged[2] or len(data) - 1), len(data) - 1)
                        if body and file.name in hub._dropped:  # a resume after the drop: cut at once
                            return self.connection.close()
                        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                        return self._send(206, data[start:end + 1], headers, body)
                    if body and file.name in hub.drop:
                        hub._dropped.add(file.name)
                        return self._send(200, data, headers, body, cut=len(data) // 2)
                    return self._send(200, data, headers, body)
                self._send(404, b'{"error": "Repository Not Found"}', {"X-Error-Code": "RepoNotFound"}, body)

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool = True,
                      cut: int | None = None) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        return Handler

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def use_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> Path:
    """Point huggingface_hub (already imported) and subprocesses at an empty cache, offline."""
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def go_online(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> FakeHub:
    """Send this process's huggingface_hub calls to ``hub``."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"  # built from ENDPOINT at import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return hub
