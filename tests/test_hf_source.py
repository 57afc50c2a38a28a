"""`hf:` models against a loopback stand-in for the Hugging Face hub, through the real huggingface_hub client:
`glimp pull` is the only command that downloads; every other one finds the file offline or names the pull command."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from cli_helpers import one_error_line, run_main
from glimp_cli.cli import main
from glimp_cli.config import ModelSpec, load_config
from glimp_cli.errors import ModelFileError
from glimp_cli.sources import model_file_status, resolve_model_path
from hub_server import COMMIT, GetFault, LocalHub, gguf_bytes
from huggingface_hub import constants as hub_constants

MODEL = gguf_bytes(1_048_576)  # 1 MiB: the progress bar shows 1.05M
CHUNK = hub_constants.DOWNLOAD_CHUNK_SIZE  # the client writes the body in pieces of this size (10 MiB)
BIG = gguf_bytes(CHUNK + CHUNK // 2)
CONFIG = """\
models:
  tiny-hf:
    hf: owner/repo/model.gguf
  missing-hf:
    hf: owner/repo/missing.gguf
  elsewhere-hf:
    hf: someone/other-repo/model.gguf
  big-hf:
    hf: owner/repo/big.gguf
pairs:
  p:
    small: tiny-hf
    large: missing-hf
"""
SNAPSHOT = Path("models--owner--repo") / "snapshots" / COMMIT / "model.gguf"


class CurrentStderr:
    """Writes to sys.stderr as it is at the time of writing (pytest replaces it for each test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The stand-in hub serving owner/repo/model.gguf, with huggingface_hub pointed at it and at an empty cache."""
    server = LocalHub({"owner/repo/model.gguf": MODEL, "owner/repo/big.gguf": BIG}).start()
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these variables once, when imported (here, by an earlier test): read them again, as a
    # process started with them would.
    importlib.reload(hub_constants)
    # Its log handler keeps the stderr of the test that imported it: it writes to this test's, as in a process.
    for handler in logging.getLogger("huggingface_hub").handlers:
        monkeypatch.setattr(handler, "stream", CurrentStderr())
    server.cache = cache
    yield server
    server.stop()
    monkeypatch.undo()
    importlib.reload(hub_constants)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub waits 1 s before resuming a cut-off download and 1+2+4+8+8 s retrying a hub it cannot reach:
    the test skips the waits."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def spec(name: str, config: Path) -> ModelSpec:
    return load_config(config).model(name)


def usable_files(cache: Path) -> list[str]:
    """Files of the cache that hold or point at the model (complete blobs, snapshot links), relative to it."""
    return sorted(
        str(path.relative_to(cache))
        for path in cache.rglob("*")
        if path.is_file() and not path.name.endswith(".incomplete") and {"blobs", "snapshots"} & set(path.parts)
    )


def partial_files(cache: Path) -> list[str]:
    """The downloads in progress (or left to resume): `<etag>[.<id>].incomplete` files beside the blobs."""
    return sorted(path.name for path in cache.rglob("*.incomplete"))


def last_error_line(err: str) -> str:
    """The message of the one `glimp: error:` line, last on stderr; the lines before it are the hub client's warnings
    (a download it resumes, a connection it retries), no traceback."""
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("glimp: error: ")] == lines[-1:], err
    assert "Traceback" not in err
    return lines[-1].removeprefix("glimp: error: ")


def glimp(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run `glimp *argv` in this process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["glimp", *argv])
    monkeypatch.delenv("GLIMP_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_pull_downloads_into_the_cache_and_prints_where(hub, config, monkeypatch, capsys):
    code, out, err = glimp(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))
    assert (code, out, err) == (0, f"{hub.cache / SNAPSHOT}\n", "")  # stderr is no terminal here: no progress bar
    assert (hub.cache / SNAPSHOT).read_bytes() == MODEL
    assert [(method, path) for method, path, _ in hub.file_requests()] == [
        ("HEAD", "/owner/repo/resolve/main/model.gguf"),
        ("GET", "/owner/repo/resolve/main/model.gguf"),
    ]


def test_a_pulled_model_is_found_offline_with_the_hub_down(hub, config, monkeypatch, capsys):
    assert glimp(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))[0] == 0
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_path(spec("tiny-hf", config)) == hub.cache / SNAPSHOT
    code, out, _ = glimp(monkeypatch, capsys, "models", "--json", "--config", str(config))
    assert code == 0
    assert {model["name"]: model["status"] for model in json.loads(out)["models"]}["tiny-hf"] == "ok"


def test_pulling_a_model_already_in_the_cache_does_not_download_it_again(hub, config, monkeypatch, capsys):
    assert glimp(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))[0] == 0
    hub.requests.clear()
    assert glimp(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))[:2] == (
        0,
        f"{hub.cache / SNAPSHOT}\n",
    )
    assert [method for method, _, _ in hub.file_requests()] == ["HEAD"]  # the hub is asked for the current commit only


def test_models_shows_which_hf_models_are_present_and_how_to_get_the_others(hub, config, monkeypatch, capsys):
    assert glimp(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))[0] == 0
    hub.requests.clear()
    code, out, _ = glimp(monkeypatch, capsys, "models", "--json", "--config", str(config))
    assert code == 0
    assert {model["name"]: model["status"] for model in json.loads(out)["models"]} == {
        "tiny-hf": "ok",
        "missing-hf": "not downloaded: glimp pull missing-hf",
        "elsewhere-hf": "not downloaded: glimp pull elsewhere-hf",
        "big-hf": "not downloaded: glimp pull big-hf",
    }
    assert hub.requests == []  # listing never asks the hub


def test_ask_with_a_model_not_downloaded_is_one_line_naming_the_pull_command(hub, config, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "ask", "1+1?", "--config", str(config))
    assert code == 2
    assert one_error_line(err) == "model 'tiny-hf': not downloaded: glimp pull tiny-hf"
    assert hub.requests == []


def test_a_model_not_downloaded_names_the_command_that_fetches_it(hub, config):
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(spec("tiny-hf", config))
    assert str(raised.value) == "model 'tiny-hf': not downloaded: glimp pull tiny-hf"
    assert hub.requests == []


def test_the_pull_command_in_a_message_is_quoted_for_the_shell(hub):
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(ModelSpec(name="my model", hf="owner/repo/model.gguf"))
    assert str(raised.value) == "model 'my model': not downloaded: glimp pull 'my model'"


def test_pull_of_a_file_missing_from_the_repository_is_one_line(hub, config, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "pull", "missing-hf", "--config", str(config))
    assert code == 1
    assert one_error_line(err) == (
        "model 'missing-hf': cannot download hf:owner/repo/missing.gguf: "
        f"file 'missing.gguf' not found in repository 'owner/repo' on {hub.endpoint} (HF_ENDPOINT)"
    )


def test_pull_from_a_repository_that_does_not_exist_is_one_line(hub, config, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "pull", "elsewhere-hf", "--config", str(config))
    assert code == 1
    assert one_error_line(err) == (
        "model 'elsewhere-hf': cannot download hf:someone/other-repo/model.gguf: "
        f"repository 'someone/other-repo' not found on {hub.endpoint} (HF_ENDPOINT) "
        "(a private repository needs HF_TOKEN)"
    )


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (404, "404 (Not Found): is it a Hugging Face hub?"),  # HF_ENDPOINT names another server
        (403, "403 (Forbidden): check HF_TOKEN"),
        (503, "503 (Service Unavailable): try again later"),  # after the client's retries
    ],
)
def test_pull_from_a_server_answering_an_error_is_one_line(
    hub, config, monkeypatch, capsys, no_backoff, status, advice
):
    hub.plain_status = status
    code, err = run_main(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))
    assert code == 1
    assert last_error_line(err) == (
        "model 'tiny-hf': cannot download hf:owner/repo/model.gguf: "
        f"{hub.endpoint} (HF_ENDPOINT) answered HTTP {advice}"
    )


def test_pull_with_the_hub_down_says_it_cannot_connect(hub, config, monkeypatch, capsys, no_backoff):
    endpoint = hub.endpoint
    hub.stop()
    code, err = run_main(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))
    assert code == 1
    assert last_error_line(err) == (
        f"model 'tiny-hf': cannot download hf:owner/repo/model.gguf: cannot connect to {endpoint} (HF_ENDPOINT)"
    )
    # Before it, for 23 s: the client's retries, as its warnings ("Retrying in 1s [Retry 1/5]." ... 8s).
    warnings = err.splitlines()[:-1]
    assert warnings and all("Retrying in" in line or "Connection refused" in line for line in warnings)


def test_a_dropped_connection_resumes_after_the_last_piece_written(hub, config, monkeypatch, capsys, no_backoff):
    hub.fault = GetFault(after_bytes=CHUNK + 1000)
    assert run_main(monkeypatch, capsys, "pull", "big-hf", "--config", str(config))[0] == 0
    assert (hub.cache / SNAPSHOT).with_name("big.gguf").read_bytes() == BIG
    assert [byte_range for method, _, byte_range in hub.file_requests() if method == "GET"] == [None, f"bytes={CHUNK}-"]


def test_a_download_cut_off_leaves_nothing_that_passes_for_the_model(hub, config, monkeypatch, capsys, no_backoff):
    hub.fault = GetFault(after_bytes=300_000, then_cut=True, while_cut=lambda: partial_files(hub.cache))
    code, err = run_main(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))
    assert code == 1
    assert last_error_line(err) == (
        "model 'tiny-hf': cannot download hf:owner/repo/model.gguf: "
        f"the connection to {hub.endpoint} (HF_ENDPOINT) was cut off during the download; run the command again"
    )
    assert [method for method, _, _ in hub.file_requests()] == ["HEAD"] + ["GET"] * 6  # the client tried 5 times more
    assert len(hub.fault.seen) == 1  # the download went to a .incomplete file
    assert usable_files(hub.cache) == []
    with pytest.raises(ModelFileError, match="^model 'tiny-hf': not downloaded: glimp pull tiny-hf$"):
        resolve_model_path(spec("tiny-hf", config))
    hub.fault = None
    assert run_main(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))[0] == 0
    blob = f"models--owner--repo/blobs/{hashlib.sha256(MODEL).hexdigest()}"  # named by its ETag
    assert usable_files(hub.cache) == [blob, str(SNAPSHOT)]
    assert partial_files(hub.cache) == []
    assert resolve_model_path(spec("tiny-hf", config)).read_bytes() == MODEL


def test_ctrl_c_during_the_download_leaves_nothing_and_the_next_pull_completes(hub, config, monkeypatch, capsys):
    hub.fault = GetFault(after_bytes=300_000, interrupt=True, while_cut=lambda: partial_files(hub.cache))
    code, err = run_main(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))
    assert code == 130 and "Traceback" not in err
    assert len(hub.fault.seen) == 1
    assert usable_files(hub.cache) == []
    assert model_file_status(spec("tiny-hf", config)) == "not downloaded: glimp pull tiny-hf"
    hub.fault = None
    assert run_main(monkeypatch, capsys, "pull", "tiny-hf", "--config", str(config))[0] == 0
    assert partial_files(hub.cache) == []
    assert resolve_model_path(spec("tiny-hf", config)).read_bytes() == MODEL


def test_pull_in_a_terminal_shows_the_progress_bar_on_stderr(hub, config):
    """A real process whose stderr is a terminal: HF_ENDPOINT and HF_HUB_CACHE are read from its environment."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(hub.cache)}
    process = subprocess.Popen(
        [sys.executable, "-m", "glimp_cli", "pull", "tiny-hf", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    shown = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        try:
            chunk = os.read(controller, 4096) if ready else b""
        except OSError:  # the terminal closed with the process
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    out = process.stdout.read().decode()
    assert process.wait(timeout=60) == 0, shown
    assert out == f"{hub.cache / SNAPSHOT}\n"
    final = shown.decode().replace("\r\n", "\n").split("\r")[-1].strip()
    assert final.startswith("model.gguf: 100%|") and "1.05M/1.05M" in final, shown


def test_hf_model_without_huggingface_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(ModelSpec(name="m", hf="owner/repo/model.gguf"))
    assert str(raised.value) == "model 'm': hf models need huggingface_hub (pip install 'glimp[hf]')"


def test_a_reasoning_pair_pulled_from_the_hub_runs_offline(hub, tmp_path, tiny_models, monkeypatch, capsys):
    """From `glimp pull` to the answer: the tiny Qwen3 pair (real tokenizer and template) served by the hub."""
    hub.files["Qwen/Qwen3-tiny-GGUF/small.gguf"] = tiny_models.qwen3_small.read_bytes()
    hub.files["Qwen/Qwen3-tiny-GGUF/large.gguf"] = tiny_models.qwen3_large.read_bytes()
    config = tmp_path / "reasoning.yaml"
    config.write_text(
        "models:\n"
        "  small:\n    hf: Qwen/Qwen3-tiny-GGUF/small.gguf\n    n_ctx: 2048\n    n_threads: 1\n"
        "  large:\n    hf: Qwen/Qwen3-tiny-GGUF/large.gguf\n    n_ctx: 2048\n    n_threads: 1\n"
        "pairs:\n  qwen3:\n    small: small\n    large: large\n    threshold: 1.5\n    thinking_budget: 300\n",
        encoding="utf-8",
    )
    code, _, err = glimp(monkeypatch, capsys, "ask", "6 * 7?", "--config", str(config))
    assert code == 2 and last_error_line(err) == "model 'small': not downloaded: glimp pull small"
    for name in ("small", "large"):
        assert glimp(monkeypatch, capsys, "pull", name, "--config", str(config))[0] == 0
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    code, out, _ = glimp(monkeypatch, capsys, "ask", "6 * 7?", "--config", str(config), "--json", "--seed", "1")
    summary = json.loads(out.splitlines()[-1])
    assert code == 0 and summary["finish_reason"] == "end_marker" and summary["answer"]
