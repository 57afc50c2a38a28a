"""Servers on loopback for the remote-model tests: llama_cpp.server processes (one per model, real), and a
replay server that answers with recorded vLLM / SGLang / llama-server responses (tests/data/remote) and keeps
the request bodies glimp sent; it can also answer slowly, for the timeout tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECORDED = Path(__file__).with_name("data") / "remote"
SERVER_START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recorded(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


@dataclass
class LlamaServer:
    """A `python -m llama_cpp.server` process serving one GGUF file as `alias`."""

    alias: str
    gguf: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log: Path | None = None
    options: tuple[str, ...] = ()  # more llama_cpp.server options

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, *, log_dir: Path) -> None:
        self.log = log_dir / f"{self.alias}.log"
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096", "--n_threads", "2",
            "--interrupt_requests", "False",  # else a request ends the stream in progress: no parallel runs
            *self.options,
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server for {self.alias} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"llama_cpp.server for {self.alias} did not answer within {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crashed server."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Reply:
    body: str  # JSON, or an SSE stream (text/event-stream when it starts with "data:")
    status: int = 200
    delay_s: float = 0.0  # before the headers
    chunk_delay_s: float = 0.0  # between SSE events


class ReplayServer:
    """Answers GET /v1/models with `models` and each POST /v1/completions with the next queued Reply;
    `requests` holds the JSON bodies it was sent."""

    def __init__(self, *, models: str) -> None:
        self.models = models
        self.replies: list[Reply] = []
        self.requests: list[dict] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._send(Reply(replay.models) if self.path.endswith("/models") else Reply("{}", status=404))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                replay.requests.append(json.loads(self.rfile.read(length)))
                reply = replay.replies.pop(0) if replay.replies else Reply('{"error": "no reply queued"}', 500)
                time.sleep(reply.delay_s)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                stream = reply.body.startswith("data:")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
                    if stream:
                        self.send_header("Connection", "close")
                        self.end_headers()
                        for event in reply.body.split("\n\n"):
                            if event.strip():
                                self.wfile.write((event + "\n\n").encode("utf-8"))
                                self.wfile.flush()
                                time.sleep(reply.chunk_delay_s)
                        self.close_connection = True
                    else:
                        data = reply.body.encode("utf-8")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ReplayServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def replay_server(models: str) -> Iterator[ReplayServer]:
    with ReplayServer(models=models) as server:
        yield server
