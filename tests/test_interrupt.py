"""Ctrl-C at any moment of a real `glimp` process: exit 130, no traceback, finished results kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import NATALIA
from glimp_cli.config import PACKAGED_CONFIG

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60  # for the moment to come, and again for the process to end after Ctrl-C


@pytest.fixture(scope="module")
def one_thread_config(tmp_path_factory) -> Path:
    """The demo pair with one thread per model: on a small machine more threads spin against each other."""
    config = yaml.safe_load(PACKAGED_CONFIG.read_text(encoding="utf-8"))
    for model in config["models"].values():
        model["n_threads"] = 1
    path = tmp_path_factory.mktemp("config") / "models.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("GLIMP_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "glimp_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def _wait_for(process: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"glimp ended (code {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {WAIT_S} s")
        time.sleep(0.001)


def _maps(pid: int, fragment: str) -> bool:
    """llama.cpp has mapped the model file: it is loading that model."""
    return fragment in Path(f"/proc/{pid}/maps").read_text()


def _interrupt(process: subprocess.Popen) -> tuple[str, str, float]:
    """Send Ctrl-C; (stdout, stderr, seconds until the process ended)."""
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"still running {WAIT_S} s after Ctrl-C (the interrupt was lost): {stderr}")
    return stdout, stderr, time.monotonic() - sent


# A Ctrl-C before Python has imported its own `site` module ends Python with its own fatal error: not glimp's.
def _ask(config: Path) -> tuple[str, ...]:
    return ("ask", NATALIA, "--json", "--thinking-budget", "4000", "--config", str(config))


MOMENTS = {
    "importing": lambda pid: _maps(pid, "libllama"),  # glimp's imports: llama_cpp's library is loaded first
    "loading-small": lambda pid: _maps(pid, "SmolLM2-135M"),
    "loading-large": lambda pid: _maps(pid, "gemma-3-270m"),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_before_generation_exits_130_at_once(moment, one_thread_config, tmp_path):
    process = _start(*_ask(one_thread_config), cwd=tmp_path)
    _wait_for(process, lambda: MOMENTS[moment](process.pid), moment)
    stdout, stderr, took_s = _interrupt(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stdout == ""  # nothing was generated: loading did not go on
    assert took_s < 10


def test_ctrl_c_while_generating_exits_130(one_thread_config, tmp_path):
    process = _start(*_ask(one_thread_config), cwd=tmp_path)
    first = process.stdout.readline()  # the first probe: generation is under way
    assert json.loads(first)["type"] == "probe"
    stdout, stderr, _ = _interrupt(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert all(json.loads(line)["type"] != "summary" for line in stdout.splitlines())


def test_ctrl_c_while_bench_loads_its_models_exits_130_and_leaves_the_directory_free(one_thread_config, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"problem": NATALIA, "answer": "72"}) + "\n")
    out = tmp_path / "out"
    args = ("bench", str(data), "--out", str(out), "--config", str(one_thread_config), "--thinking-budget", "32")
    process = _start(*args, cwd=tmp_path)
    _wait_for(process, lambda: _maps(process.pid, "gemma-3-270m"), "loading-large")
    _, stderr, _ = _interrupt(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted before the first result" in stderr
    assert not (out / "results.jsonl").exists() or (out / "results.jsonl").read_text() == ""
    # The same run starts again at once: no lock is left held, no result to resume.
    process = _start(*args, cwd=tmp_path)
    _wait_for(process, lambda: _maps(process.pid, "SmolLM2-135M"), "loading-small")
    _, stderr, _ = _interrupt(process)
    assert process.returncode == 130, stderr
