"""KV cache types (models.yaml type_k / type_v) from the config to llama.cpp, and a context too large for memory
as one line."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import llama_cpp  # isort: skip
import pytest

from cli_helpers import one_error_line, run_main
from conftest import NATALIA
from glimp_cli import backend, fit
from glimp_cli.config import load_config
from glimp_cli.errors import ConfigError
from glimp_cli.gguf_header import read_gguf_header
from glimp_cli.memory import estimate_spec
from glimp_cli.session import Sampling
from glimp_cli.sources import resolve_model_path

GREEDY = Sampling(temperature=0.0)
CONFIG = "models:\n  s:\n    path: s.gguf\n  l:\n    path: l.gguf\npairs:\n  p:\n    small: s\n    large: l\n"


def _config(tmp_path: Path, model_lines: str) -> Path:
    """The two-model config with these lines added to model 's' (they start on line 4)."""
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG.replace("    path: s.gguf\n", "    path: s.gguf\n" + model_lines), encoding="utf-8")
    return path


# --- models.yaml ---------------------------------------------------------------------------------------


def test_cache_types_default_to_f16(tmp_path):
    spec = load_config(_config(tmp_path, "")).model("s")
    assert (spec.type_k, spec.type_v) == ("f16", "f16")


def test_cache_types_are_read_from_models_yaml(tmp_path):
    spec = load_config(_config(tmp_path, "    type_k: q8_0\n    type_v: q4_0\n    flash_attn: true\n")).model("s")
    assert (spec.type_k, spec.type_v, spec.flash_attn) == ("q8_0", "q4_0", True)


def test_a_quantized_k_cache_alone_needs_no_flash_attention(tmp_path):
    assert load_config(_config(tmp_path, "    type_k: q8_0\n")).model("s").type_k == "q8_0"


def test_a_quantized_v_cache_without_flash_attention_is_refused_naming_its_line(tmp_path):
    config = _config(tmp_path, "    type_k: q8_0\n    type_v: q8_0\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert str(raised.value) == (
        f"{config}:5: model 's': type_v q8_0 (a quantized V cache) needs flash attention: set flash_attn: true"
    )


@pytest.mark.parametrize(("key", "value"), [("type_k", "q8"), ("type_v", "Q8_0"), ("type_k", "q4_k")])
def test_an_unknown_cache_type_is_one_line_with_file_line_and_choices(tmp_path, monkeypatch, capsys, key, value):
    config = _config(tmp_path, f"    {key}: {value}\n")
    code, err = run_main(monkeypatch, capsys, "models", "--config", str(config))
    assert code == 2
    assert one_error_line(err) == (
        f"{config}:4: {key} must be one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1, got '{value}'"
    )


def test_a_cache_type_that_is_not_a_string_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(_config(tmp_path, "    type_v: 8\n"))
    assert str(raised.value) == f"{tmp_path / 'models.yaml'}:4: 'type_v' must be a string, got 8"


def test_every_cache_type_has_its_llama_cpp_type():
    assert list(backend.KV_CACHE_GGML_TYPES) == list(fit.KV_CACHE_TYPES)
    assert backend.KV_CACHE_GGML_TYPES["q8_0"] == 8 and backend.KV_CACHE_GGML_TYPES["q4_0"] == 2


# --- a real model with a q8_0 cache ------------------------------------------------------------------------


def _session_bytes(spec, *, tokens: int) -> tuple[int, int, int]:
    """(prompt tokens, tokens in the cache, bytes of llama.cpp's saved state) after a greedy step of `tokens`."""
    session = backend.open_session(spec)
    session.start(NATALIA, sampling=GREEDY)
    step = session.generate_step(first_token=None, stops=(), max_tokens=tokens)
    with pytest.raises(StopIteration) as done:
        while True:
            next(step)
    assert done.value.value.tokens == tokens
    prompt = len(session.prompt_tokens(NATALIA))
    return prompt, session.evaluated_tokens(), llama_cpp.llama_state_get_size(session._llm.ctx)


def test_a_q8_0_cache_holds_each_token_in_the_bytes_fit_computes(demo_config):
    # The saved state holds each cached token's keys and values as the cache stores them: the difference between
    # the f16 and the q8_0 state is the per-token difference of fit's formula (10800 bytes for SmolLM2).
    f16 = dataclasses.replace(demo_config.model("smollm2-135m"), n_ctx=512, n_threads=1, flash_attn=True)
    q8_0 = dataclasses.replace(f16, type_k="q8_0", type_v="q8_0")
    shape = fit.model_shape(read_gguf_header(resolve_model_path(f16)), source="smollm2")
    per_cell = {t: fit.kv_cache_bytes(shape, n_ctx=256, type_k=t, type_v=t) // 256 for t in ("f16", "q8_0")}
    assert per_cell == {"f16": 23040, "q8_0": 12240}
    prompt, cached_f16, state_f16 = _session_bytes(f16, tokens=6)
    _, cached_q8_0, state_q8_0 = _session_bytes(q8_0, tokens=6)
    assert cached_f16 == cached_q8_0 == prompt + 5  # the step's last token waits, not evaluated
    assert state_f16 - state_q8_0 == cached_f16 * (per_cell["f16"] - per_cell["q8_0"])


# --- a context too large for memory ---------------------------------------------------------------------------


def _memory_refuses_huge_allocations() -> int | None:
    """RAM + swap in bytes where the kernel refuses an allocation beyond them (Linux, overcommit mode 0 or 2)."""
    try:
        mode = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    if mode not in ("0", "2"):
        return None  # mode 1 grants any allocation: llama.cpp would then fill the memory
    sizes = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.endswith("kB")}
    return sizes["MemTotal"] + sizes.get("SwapTotal", 0)


def test_a_context_too_large_for_memory_is_one_line_with_the_estimate(tmp_path, monkeypatch, capsys, demo_config):
    memory = _memory_refuses_huge_allocations()
    if memory is None:
        pytest.skip("needs Linux with overcommit_memory 0 or 2 (an impossible allocation must fail, not succeed)")
    # A KV cache four times RAM + swap: llama.cpp's one allocation for it fails at once, before touching memory.
    n_ctx = math.ceil(4 * memory / 23040 / 256) * 256
    if n_ctx > 2**31 - 1:
        pytest.skip("this machine's memory is beyond what n_ctx can exceed")
    small = demo_config.model("smollm2-135m")
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  s:\n    package: {small.package}\n    file: {small.file}\n    n_ctx: {n_ctx}\n"
        "    n_threads: 1\npairs:\n  p:\n    small: s\n    large: s\n",
        encoding="utf-8",
    )
    code, err = run_main(monkeypatch, capsys, "ask", "What is 2 + 3?", "--config", str(config))
    spec = load_config(config).model("s")
    estimate = estimate_spec(spec)
    assert estimate.kv_cache_bytes == n_ctx * 23040
    assert code == 1
    assert one_error_line(err) == fit.context_failure_message(
        model="s",
        estimate=estimate,
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        flash_attn=False,
        reason="Failed to create llama_context",
    )
