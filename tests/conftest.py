"""Shared fixtures: the demo pair loaded once, real GGUF models from the installed packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimp_cli.config import PACKAGED_CONFIG, load_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED_DATA / "gsm8k.jsonl"
NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "
    "How many clips did she sell altogether?"
)


def gsm8k_problem(index: int) -> str:
    if not GSM8K.is_file():
        pytest.skip(f"benchmark data not found at {GSM8K}")
    with GSM8K.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i == index:
                return json.loads(line)["problem"]
    raise IndexError(index)


@pytest.fixture(autouse=True)
def isolated_calibration(tmp_path_factory, monkeypatch):
    """A `glimp calibrate --save` outside the tests must not change their thresholds."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture(scope="session")
def demo_config():
    return load_config(PACKAGED_CONFIG)


@pytest.fixture(scope="session")
def demo_pair(demo_config):
    """(pair spec, small session, large session) for the shipped demo pair."""
    from glimp_cli.backend import open_session

    pair = demo_config.pair("demo")
    return pair, open_session(demo_config.model(pair.small)), open_session(demo_config.model(pair.large))


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny GGUFs with the real Qwen3 and R1-Distill tokenizers and chat templates (tests/tiny_models.py), built once
    into $GLIMP_TEST_CACHE or ~/.cache/glimp-tests; the first build downloads the llama-cpp-python sdist with pip."""
    from tiny_models import TinyModelError, ensure_tiny_models

    try:
        return ensure_tiny_models()
    except TinyModelError as exc:
        pytest.fail(f"tiny test models unavailable: {exc}", pytrace=False)
