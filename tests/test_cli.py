"""The command line: `ask`, `models`, the --json schema, and one clear line for each bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from conftest import NATALIA

QUICK = ["--temperature", "0", "--max-step-tokens", "24", "--thinking-budget", "48"]


NEUTRAL_CWD = tempfile.mkdtemp(prefix="glimp-cli-")  # no ./models.yaml or calibration file here


def glimp(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glimp_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or NEUTRAL_CWD,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("glimp: error:")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_ask_json_prints_one_event_per_line_and_a_summary_last():
    result = glimp("ask", NATALIA, "--json", *QUICK)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    types = [r["type"] for r in records]
    assert types[-1] == "summary" and types.count("summary") == 1
    assert types[-2] == "answer"
    assert types[0] == "probe" and "step" in types
    probe = records[0]
    assert set(probe) == {"type", "step", "entropy", "entropy_full", "entropy_topk", "token_text", "model", "threshold"}
    assert probe["entropy"] == probe["entropy_full"]  # the pair routes on full-vocabulary entropy
    assert probe["model"] in ("small", "large") and probe["threshold"] == 2.5
    step = next(r for r in records if r["type"] == "step")
    assert set(step) >= {"index", "model", "text", "tokens", "entropy", "seconds"}
    summary = records[-1]
    assert set(summary) >= {
        "answer",
        "finish_reason",
        "steps",
        "large_step_rate",
        "tokens",
        "prefill_tokens",
        "decode_calls",
        "latency_s",
    }
    assert (
        set(summary["tokens"]) == {"small", "large"} == set(summary["prefill_tokens"]) == set(summary["decode_calls"])
    )
    steps = [r for r in records if r["type"] == "step"]
    assert [s["text"] for s in summary["steps"]] == [s["text"] for s in steps]
    assert summary["large_step_rate"] == sum(s["model"] == "large" for s in steps) / len(steps)
    assert summary["finish_reason"] == "budget"  # 48 thinking tokens
    assert sum(s["tokens"] for s in steps) == 48


def test_ask_renders_steps_legend_and_summary_without_ansi_codes_when_piped():
    result = glimp("ask", NATALIA, *QUICK)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out
    assert "small = smollm2-135m" in out and "large = gemma3-270m" in out
    assert "── step 1 ·" in out and "H " in out
    assert "answer (large):" in out
    assert "prefill tokens" in out and "finish: budget" in out


def test_ask_modes_route_every_step_to_the_named_model():
    for mode in ("small", "large"):
        result = glimp("ask", NATALIA, "--json", "--mode", mode, *QUICK)
        summary = json.loads(result.stdout.splitlines()[-1])
        assert {s["model"] for s in summary["steps"]} == {mode}


def test_models_lists_models_pairs_and_file_status():
    result = glimp("models", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    status = {m["name"]: m["status"] for m in listing["models"]}
    assert status["smollm2-135m"] == status["gemma3-270m"] == "ok"
    assert {"qwen3-4b", "r1-distill-qwen-32b"} <= set(status)  # the real pairs' models, downloaded by `glimp pull`
    assert {"qwen3-4b+r1-32b", "qwen3-4b+qwen3-32b"} <= {p["name"] for p in listing["pairs"]}
    assert listing["pairs"][0]["name"] == "demo" and listing["pairs"][0]["default"] is True
    import llama_cpp

    assert listing["gpu_offload"] is bool(llama_cpp.llama_supports_gpu_offload())  # False on the README's CPU build


def test_models_reports_a_missing_file_without_failing(tmp_path):
    config = write_config(
        tmp_path,
        "models:\n  a:\n    path: nowhere.gguf\n  b:\n    path: nowhere.gguf\n"
        "pairs:\n  p:\n    small: a\n    large: b\n",
    )
    result = glimp("models", "--json", "--config", str(config))
    assert result.returncode == 0
    assert "file not found" in json.loads(result.stdout)["models"][0]["status"]


def test_missing_model_file_is_one_line_exit_2(tmp_path):
    config = write_config(
        tmp_path,
        "models:\n  a:\n    path: nowhere.gguf\n  b:\n    path: nowhere.gguf\n"
        "pairs:\n  p:\n    small: a\n    large: b\n",
    )
    assert_one_line_error(glimp("ask", "x", "--config", str(config)), "model 'a'", "file not found", "nowhere.gguf")


def test_file_that_is_not_gguf_is_rejected(tmp_path):
    (tmp_path / "fake.gguf").write_text("this is not a model")
    config = write_config(tmp_path, "models:\n  a:\n    path: fake.gguf\npairs:\n  p:\n    small: a\n    large: a\n")
    assert_one_line_error(glimp("ask", "x", "--config", str(config)), "is not a GGUF file")


def test_yaml_that_does_not_parse_names_the_line(tmp_path):
    config = write_config(tmp_path, "models:\n  a:\n    path: [unclosed\npairs: {}\n")
    assert_one_line_error(glimp("ask", "x", "--config", str(config)), f"{config}:4", "YAML does not parse")


def test_unknown_key_names_the_line_and_suggests(tmp_path):
    config = write_config(
        tmp_path, "models:\n  a:\n    path: a.gguf\n    n_gpu_layer: 10\npairs:\n  p:\n    small: a\n    large: a\n"
    )
    assert_one_line_error(
        glimp("models", "--config", str(config)),
        f"{config}:4",
        "unknown key 'n_gpu_layer'",
        "did you mean 'n_gpu_layers'",
    )


def test_unknown_model_and_pair_names_suggest_the_closest():
    assert_one_line_error(
        glimp("ask", "x", "--small", "smollm2-135"), "unknown model 'smollm2-135'", "did you mean 'smollm2-135m'"
    )
    assert_one_line_error(glimp("ask", "x", "--pair", "dem"), "unknown pair 'dem'", "did you mean 'demo'")


def test_threshold_that_is_not_a_number_is_a_usage_error():
    result = glimp("ask", "x", "--threshold", "abc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "Usage: glimp ask [OPTIONS] {problem}",
        "Try 'glimp ask --help' for help.",
        "Error: Invalid value for '--threshold' / '-t': must be a number, 0 or more, got 'abc'",
    ]


def test_unknown_mode_suggests_the_closest():
    assert_one_line_error(glimp("ask", "x", "--mode", "glim"), "unknown mode 'glim'", "did you mean 'glimp'")


def test_problem_that_does_not_fit_the_context(tmp_path):
    packaged = Path(__file__).resolve().parents[1] / "models.yaml"
    text = packaged.read_text().replace("n_ctx: 4096", "n_ctx: 512")
    config = write_config(tmp_path, text)
    assert_one_line_error(glimp("ask", "word " * 400, "--config", str(config)), "does not fit model", "raise n_ctx")


def test_glimp_debug_shows_the_traceback():
    result = glimp("ask", "x", "--pair", "dem", env={"GLIMP_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_ctrl_c_during_ask_exits_130():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "glimp_cli",
            "ask",
            NATALIA,
            "--json",
            "--thinking-budget",
            "4000",
            "--temperature",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=NEUTRAL_CWD,
    )
    first = process.stdout.readline()  # the first probe: generation is under way
    assert json.loads(first)["type"] == "probe"
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr


def test_two_model_files_without_a_pair_take_glimps_own_defaults_and_a_context_for_them(demo_config):
    from glimp_cli.cli import resolve_pair
    from glimp_cli.config import PairSpec

    pair, small, large = resolve_pair(demo_config, pair=None, small="/m/Qwen3-4B.gguf", large="/m/R1-32B.gguf")
    defaults = PairSpec(name="files", small="Qwen3-4B", large="R1-32B")
    assert pair == defaults  # the original implementation's settings, not the demo pair's
    assert (pair.thinking_budget, pair.step_max_tokens, pair.answer_prefix, pair.answer_stops) == (8192, 512, "", ())
    assert (small.path, large.path) == ("/m/Qwen3-4B.gguf", "/m/R1-32B.gguf")
    assert small.n_ctx == large.n_ctx == 8192 + 256 + 1024  # thinking budget + answer + prompt room
    assert small.think_prefix is None  # the think layout comes from the file's own chat template


def test_a_model_file_with_a_named_pair_keeps_the_pairs_settings(demo_config):
    from glimp_cli.cli import resolve_pair

    demo = demo_config.pair("demo")
    pair, small, large = resolve_pair(
        demo_config, pair="demo", small="/m/a.gguf", large=None, overrides={"thinking_budget": 5000}
    )
    assert (pair.name, pair.threshold, pair.answer_prefix, pair.thinking_budget) == (
        "demo",
        2.5,
        demo.answer_prefix,
        5000,
    )
    assert small.n_ctx == 5000 + 32 + 1024 and large.name == "gemma3-270m"
    pair, _, _ = resolve_pair(demo_config, pair=None, small="/m/a.gguf", large="gemma3-270m")
    assert pair.name == "demo"  # one file and one name: the default pair
