"""The performance benchmark's arithmetic: the cost model and the probe-cost count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from glimp_cli.events import ModelTotals, Step, Summary
from glimp_cli.session import Counters

PERF_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "perf.py"
_spec = importlib.util.spec_from_file_location("glimp_perf", PERF_PATH)
perf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(perf)

COSTS = {
    "small": {"decode_s_per_token": 1.0, "decode_depth": 5, "per_call_s": 0.5, "per_token_s": 0.1, "switch_s": 0.25,
              "slope_s_per_token_per_position": 0.01, "measured_at": 2},
    "large": {"decode_s_per_token": 2.0, "decode_depth": 10, "per_call_s": 1.0, "per_token_s": 0.2, "switch_s": 0.5,
              "slope_s_per_token_per_position": 0.0, "measured_at": 2},
}


def step(model: str, tokens: int, finish: str = "delimiter") -> Step:
    return Step(index=1, model=model, text="x", tokens=tokens, entropy=0.0, seconds=0.0, finish=finish)


def summary(small: ModelTotals, large: ModelTotals, steps: tuple[Step, ...] = ()) -> Summary:
    return Summary(answer="", answer_model="large", finish_reason="eos", steps=steps, large_step_rate=0.0,
                   small=small, large=large, latency_s=1.0, mode="glimp", threshold=1.0)


def test_cost_model_adds_each_term_once():
    small = ModelTotals(steps=2, tokens=10, prefill_tokens=20, decode_calls=12, context_tokens=30)
    large = ModelTotals(steps=1, tokens=4, prefill_tokens=6, decode_calls=5, context_tokens=10)
    counters = {"small": Counters(single_after_batch=2), "large": Counters(single_after_batch=1)}
    # small: 10 tokens * 1.0 + 3 calls (prompt + 2 catch-ups) * 0.5 + 20 prefill * 0.1 + 2 switches * 0.25
    #        + 0.01 * (30^2 / 2 - 10 * 5 - 20 * 2) = 10 + 1.5 + 2 + 0.5 + 3.6
    # large: 4 * 2.0 + 2 calls * 1.0 + 6 * 0.2 + 1 * 0.5 (no depth term) = 8 + 2 + 1.2 + 0.5
    assert perf.predicted_seconds(summary(small, large), counters, COSTS) == pytest.approx(17.6 + 11.7, rel=1e-12)


def test_cost_model_skips_a_model_the_run_never_used():
    small = ModelTotals(steps=0, tokens=0, prefill_tokens=0, decode_calls=0, context_tokens=0)
    large = ModelTotals(steps=1, tokens=4, prefill_tokens=6, decode_calls=5, context_tokens=10)
    counters = {"small": Counters(), "large": Counters(single_after_batch=1)}
    assert perf.predicted_seconds(summary(small, large), counters, COSTS) == pytest.approx(11.7, rel=1e-12)


def test_probe_cost_counts_escalations_followed_by_a_probe():
    totals = ModelTotals(steps=2, tokens=8, prefill_tokens=50, decode_calls=9, context_tokens=80)
    large = ModelTotals(steps=2, tokens=9, prefill_tokens=60, decode_calls=9, context_tokens=80)
    # s l s l: the last large step is followed by no probe; 9 calls for 8 tokens = 1 catch-up
    steps = (step("small", 5), step("large", 4), step("small", 3), step("large", 5))
    assert perf.probe_cost(summary(totals, large, steps)) == (1, 1)
    # ending on a small step that did not end in EOS: its last token is still pending, not evaluated
    steps = (step("small", 5), step("large", 4), step("small", 3))
    pending = ModelTotals(steps=2, tokens=8, prefill_tokens=50, decode_calls=8, context_tokens=80)
    assert perf.probe_cost(summary(pending, large, steps)) == (1, 1)
