"""The benchmark module: its arithmetic, its command line, and the call log its figures come from."""

from __future__ import annotations

import collections
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import llama_cpp  # isort: skip
import pytest

from benchmarks import perf
from glimp_cli.events import ModelTotals
from glimp_cli.policy import make_policy
from glimp_cli.config import router_settings
from glimp_cli.router import run
from glimp_cli.session import Sampling

from conftest import NATALIA, gsm8k_problem

ROOT = Path(__file__).resolve().parents[1]
READS = ("llama_decode", "llama_sampler_sample", "llama_get_logits", "llama_get_logits_ith")


def totals(tokens: int, prefill_tokens: int) -> ModelTotals:
    return ModelTotals(steps=3, tokens=tokens, prefill_tokens=prefill_tokens, decode_calls=77, context_tokens=999)


def test_ideal_prices_generated_and_prefilled_tokens_at_each_models_own_rates():
    rates = {"small": perf.Rates(decode_s=0.5, prefill_s=0.125), "large": perf.Rates(decode_s=2.0, prefill_s=0.25)}
    # small: 10 * 0.5 + 100 * 0.125 = 17.5; large: 4 * 2.0 + 8 * 0.25 = 10.0
    assert perf.ideal_seconds({"small": totals(10, 100), "large": totals(4, 8)}, rates) == 27.5
    # a large-only run: the small model never ran
    assert perf.ideal_seconds({"small": totals(0, 0), "large": totals(4, 8)}, rates) == 10.0


def test_spread_is_the_median_and_the_range():
    assert perf.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert perf.spread([0.75]) == {"median": 0.75, "min": 0.75, "max": 0.75}


def test_outside_share_is_what_the_logged_calls_leave_of_a_run():
    calls = [perf.Call("small", 1, 5, 0.25), perf.Call("small", 0, -1, 0.125, "llama_sampler_sample")]
    assert perf.outside_share(calls, 0.5) == 0.25


def benchmark(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.perf", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_lists_every_option():
    result = benchmark("--help")
    assert result.returncode == 0 and result.stderr == ""
    for option in ("--problems", "--tokens", "--repeats", "--config", "--pair", "--data", "--json"):
        assert option in result.stdout


@pytest.mark.parametrize("option, value", [("--repeats", "0"), ("--problems", "ten"), ("--tokens", "-5")])
def test_a_bad_count_is_a_usage_error(option, value):
    result = benchmark(option, value)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        f"python -m benchmarks.perf: error: argument {option}: expected a whole number of 1 or more, got '{value}'"
    )


def test_a_missing_data_file_is_one_error_line(tmp_path):
    missing = tmp_path / "none.jsonl"
    result = benchmark("--data", str(missing))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: data file not found: {missing}\n")


def test_call_log_times_llama_cpp_pythons_own_loop(demo_pair):
    _, small, large = demo_pair
    with perf.CallLog({"small": small, "large": large}) as log:
        with log.recording() as calls:
            seconds, rates = perf.llama_alone(small, NATALIA, 8)
    prompt = len(small.prompt_tokens(NATALIA))
    # the prompt in one call, then one call per token but the last (sampled, never evaluated)
    assert [(c.model, c.tokens, c.position) for c in calls if c.tokens] == (
        [("small", prompt, 0)] + [("small", 1, prompt + i) for i in range(7)]
    )
    assert collections.Counter(c.function for c in calls if not c.tokens) == {"llama_sampler_sample": 8}
    assert 0 < sum(c.seconds for c in calls) < seconds
    assert rates.decode_s > 0 and rates.prefill_s > 0


def test_call_log_sees_every_decode_of_a_routed_run_and_who_made_it(demo_pair):
    """The log agrees with the sessions' counters, call by call; the probe reads the logits once a step."""
    pair, small, large = demo_pair
    original = [getattr(llama_cpp, name) for name in READS]
    settings = dataclasses.replace(router_settings(pair, sampling=Sampling(temperature=0.0)), threshold=math.inf)
    with perf.CallLog({"small": small, "large": large}) as log:
        with log.recording() as calls:
            summary = run(gsm8k_problem(0), small=small, large=large, settings=settings, policy=make_policy("glimp"))
        evaluated = {"small": small.counters.evaluated_tokens, "large": large.counters.evaluated_tokens}
        run(gsm8k_problem(0), small=small, large=large, settings=settings, policy=make_policy("large"))  # not recording
    for module in (llama_cpp, llama_cpp.llama_cpp):
        assert [getattr(module, name) for name in READS] == original
    assert summary.small.steps > 0 and summary.large.tokens > 0
    # every step delegated: each model's first evaluation is all its prefill (the small model's prompt; the
    # large model's prompt and the transcript it answers after), in one call per n_batch tokens
    first = {"small": len(small.prompt_tokens(gsm8k_problem(0))), "large": summary.large.prefill_tokens}
    for role, totals in (("small", summary.small), ("large", summary.large)):
        decodes = [c for c in calls if c.model == role and c.tokens > 0]
        assert len(decodes) == totals.decode_calls + math.ceil(first[role] / small.spec.n_batch)
        assert sum(c.tokens for c in decodes) == evaluated[role]
        # each call starts where the previous one ended, from position 0
        assert [c.position for c in decodes] == [sum(d.tokens for d in decodes[:i]) for i in range(len(decodes))]
    assert all(c.seconds > 0 for c in calls)
    reads = collections.Counter((c.model, c.function) for c in calls if c.tokens == 0)
    # the probe reads the small model's logits once per step, and no one else reads them directly
    assert reads[("small", "llama_get_logits_ith")] == len(summary.steps) == 1
    assert set(reads) == {
        ("small", "llama_get_logits_ith"),
        ("small", "llama_sampler_sample"),
        ("large", "llama_sampler_sample"),
    }


def test_report_prints_each_figure_with_its_range_and_target(capsys):
    s = perf.spread
    decode = {
        "tokens": 256,
        "ratio": s([0.99, 0.98, 1.0]),
        "glimp_tps": s([80.0]),
        "llama_cpp_tps": s([81.0]),
        "outside_share": {"glimp": s([0.0125]), "llama_cpp": s([0.005])},
    }
    headline = {
        "threshold": 3.036,
        "large_step_share": 0.25,
        "seconds": {"glimp": s([40.0]), "large": s([56.0])},
        "ratio": s([0.7, 0.75, 0.71]),
        "ideal_ratio": s([0.73]),
        "ratio_over_ideal": s([0.97]),
        "seconds_over_ideal": {"glimp": s([1.03]), "large": s([1.05])},
        "outside_share": {"glimp": s([0.011, 0.0115]), "large": s([0.006])},
        "outside_ms_per_step": s([6.25]),
    }
    machine = {"cpu": "x86_64", "cores": 2, "llama_cpp_python": "0.3.36", "gpu_offload": False, "system_info": "AVX2"}
    perf.print_report(
        {"repeats": 3, "decode": {"small": decode, "large": decode}, "headline": headline, "machine": machine}
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "1. decode loop, small, glimp / llama-cpp-python [>= 0.97]: 0.990 (0.980-1.000); "
        "80.0 vs 81.0 tok/s (256 tokens)"
    )
    assert lines[3] == (
        "2. glimp / large latency at 25% large steps (threshold 3.036): 0.710 (0.700-0.750); "
        "ideal 0.730 (0.730-0.730), measured / ideal 0.970 (0.970-0.970); 40.0 s vs 56.0 s"
    )
    assert lines[4] == (
        "   latency over its ideal, routed runs [<= 1.05]: 1.030 (1.030-1.030); large-only runs 1.050 (1.050-1.050)"
    )
    assert lines[5] == (
        "3. time outside llama.cpp, routed runs [<= 2%]: 1.12% (1.10%-1.15%), "
        "6.25 (6.25-6.25) ms per step; large-only runs 0.60% (0.60%-0.60%)"
    )


def test_report_prints_the_speculation_figure_alone_when_only_it_ran(capsys):
    s = perf.spread
    row = {
        "seconds": s([30.0]),
        "ratio": s([0.9, 0.8]),
        "acceptance": 0.61,
        "large_tokens_per_call": 2.25,
        "verify_calls": 10,
        "differing_texts": 0,
    }
    speculation = {
        "source": {"source": "ngram", "reason": "auto: prompt lookup, since x"},
        "draft_tokens": 3,
        "draft_p_min": 0.75,
        "threshold": 2.0,
        "problems": 10,
        "configurations": {"large": {**row, "acceptance": None}, "large + ngram drafts": row},
    }
    machine = {"cpu": "x86_64", "cores": 2, "llama_cpp_python": "0.3.36", "gpu_offload": False, "system_info": "AVX2"}
    perf.print_report({"repeats": 2, "speculation": speculation, "machine": machine})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "4. speculation (ngram: auto: prompt lookup, since x; k = 3), 10 problems, "
        "latency over large's (same settings):"
    )
    assert lines[2] == (
        "   large                        0.850 (0.800-0.900)    30.0 s  drafts accepted    -  large tokens/call 2.25"
        "  texts differing 0"
    )
    assert lines[3].startswith("   large + ngram drafts         0.850 (0.800-0.900)    30.0 s  drafts accepted  61%")


def test_an_unknown_figure_is_a_usage_error():
    result = benchmark("--figures", "decode,speed")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        "python -m benchmarks.perf: error: unknown figure 'speed'; expected some of decode,headline,speculation"
    )
