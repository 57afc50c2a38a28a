"""A loopback stand-in for the Hugging Face hub: what `hf_hub_download` asks of it, answered as the hub does.

huggingface_hub (file_download.py) makes two calls per file, both on `{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`:
a HEAD whose headers carry the metadata (X-Repo-Commit, ETag, Content-Length; without X-Xet-* headers it downloads
over plain HTTP), then a GET of the bytes, repeated with `Range: bytes=N-` to resume after a dropped connection.
Errors are told apart by the X-Error-Code header: an unknown repository is 401 RepoNotFound (what the hub answers
an anonymous client), a file missing from a repository is 404 EntryNotFound. huggingface_hub 2.x also fetches
`/api/agent-harnesses` once a process (a registry for its User-Agent header, best effort): served empty.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AGENT_REGISTRY = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # 40 hex digits, as the hub's commit ids
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
RANGE = re.compile(r"^bytes=(?P<start>\d+)-$")


def gguf_bytes(size: int) -> bytes:
    """`size` bytes that start like a GGUF file (magic, version 3, no tensors, no metadata), zero-padded."""
    header = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (0).to_bytes(8, "little")
    return header + bytes(size - len(header))


@dataclass
class GetFault:
    """What the next GETs suffer: the first sends `after_bytes` of the body then ends the connection (closed, or
    with SIGINT sent to the main thread, as Ctrl-C does); with `then_cut` the ones after it too, before any byte."""

    after_bytes: int
    interrupt: bool = False
    then_cut: bool = False
    while_cut: Callable[[], object] | None = None  # called once the bytes are sent, before the connection ends
    seen: object = None  # what while_cut returned
    used: bool = False


@dataclass
class LocalHub:
    """The hub on 127.0.0.1 serving `files` ({"owner/repo/file.gguf": bytes}); `start()` before use."""

    files: dict[str, bytes]
    plain_status: int | None = None  # answer every request so, without the hub's headers (another server, an outage)
    fault: GetFault | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    cache = None  # set by the tests: the hub cache huggingface_hub was pointed at
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        hub = self
        main_thread = threading.main_thread().ident

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
                self._answer(body=False)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path, self.headers.get("Range")))
                self._answer(body=True)

            def log_message(self, format, *args) -> None:  # the test's stderr is the user's: keep it clean
                pass

            def _answer(self, *, body: bool) -> None:
                match = RESOLVE.match(self.path)
                if hub.plain_status is not None:
                    return self._status(hub.plain_status, {})
                if self.path == "/api/agent-harnesses":
                    return self._status(200, {"Content-Type": "application/json"}, AGENT_REGISTRY if body else b"")
                if match is None:
                    return self._status(404, {})
                repo, filename = match["repo"], match["filename"]
                if not any(key.startswith(repo + "/") for key in hub.files):
                    return self._status(
                        401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
                    )
                content = hub.files.get(f"{repo}/{filename}")
                if content is None:
                    return self._status(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                fault = hub.fault if body else None
                requested = RANGE.match(self.headers.get("Range", ""))
                start = int(requested["start"]) if requested else 0
                self.send_response(206 if start else 200)
                headers = {
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(content) - start),
                }
                if body:  # as the hub's file storage names the file: the client shows this name on its progress bar
                    name = filename.rpartition("/")[2]
                    headers["Content-Disposition"] = f"inline; filename*=UTF-8''{name}; filename=\"{name}\";"
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not body:
                    return
                if fault is not None and fault.used and fault.then_cut:
                    self.close_connection = True
                    return
                if fault is not None and not fault.used:
                    fault.used = True
                    self.wfile.write(content[start : start + fault.after_bytes])
                    self.wfile.flush()
                    if fault.while_cut is not None:
                        fault.seen = fault.while_cut()
                    self.close_connection = True
                    if fault.interrupt:  # Ctrl-C while the client waits for the rest of the body
                        signal.pthread_kill(main_thread, signal.SIGINT)
                    return
                self.wfile.write(content[start:])

            def _status(self, code: int, headers: dict[str, str], content: bytes = b"") -> None:
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def file_requests(self) -> list[tuple[str, str, str | None]]:
        """The requests for files (`/resolve/`), in order."""
        return [request for request in self.requests if "/resolve/" in request[1]]

    def stop(self) -> None:
        """Stop answering: the port refuses connections afterwards, as a hub that is down (again: does nothing)."""
        if self._server.socket.fileno() != -1:
            self._server.shutdown()
            self._server.server_close()
