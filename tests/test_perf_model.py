"""The performance benchmark's arithmetic and instruments: the cost model, the probe-cost count,
and the call log its fit and overhead figures are computed from."""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import llama_cpp  # isort: skip
import pytest

from glimp_cli.events import ModelTotals, Step, Summary
from glimp_cli.policy import make_policy
from glimp_cli.router import run, settings_from_pair
from glimp_cli.session import Sampling

from conftest import gsm8k_problem

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # perf.py imports cost_model.py beside it
import cost_model  # noqa: E402
_spec = importlib.util.spec_from_file_location("glimp_perf", BENCHMARKS / "perf.py")
perf = sys.modules["glimp_perf"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(perf)

COSTS = {
    # small: a steady one-token call costs 1.0 attending over 256 KV cells (positions 0-255), 0.5 more
    # over 512, 0.75 more over 768, and on along that last segment; the first one after a
    # multi-token call 0.25 more, the second 0.125 more; at positions 256 * m and 256 * m + 1,
    # 0.0625 and 0.03125 more; n tokens from position 0 cost 0.5 + 0.1 * n up to 8 tokens, then
    # 0.3 more per token
    "small": {"decode_s_per_token": 1.0, "decode_depth": 5, "single_curve": [(256, 0.0), (512, 0.5), (768, 0.75)],
              "after_batch_s": [0.25, 0.125], "kv_step_s": [0.0625, 0.03125],
              "batch_curve": [(2, 0.7), (8, 1.3), (10, 1.9)], "batch_depth_s": 0.001},
    "large": {"decode_s_per_token": 2.0, "decode_depth": 10, "single_curve": [(256, 0.7)], "after_batch_s": [0.5],
              "kv_step_s": [0.0, 0.0], "batch_curve": [(2, 1.4), (4, 1.8)], "batch_depth_s": 0.0},
}
Call = cost_model.Call


def test_interpolate_is_flat_before_the_first_point_and_extends_the_last_segment():
    curve = [(10, 1.0), (20, 3.0), (40, 4.0)]
    assert [cost_model.interpolate(curve, x) for x in (0, 10, 15, 20, 30, 40, 60)] == [1.0, 1.0, 2.0, 3.0, 3.5, 4.0, 5.0]
    assert cost_model.interpolate([(64, 0.7)], 1000) == 0.7


def test_kv_cells_pads_a_position_to_the_next_step():
    assert [cost_model.kv_cells(p) for p in (0, 255, 256, 511, 512, 1100)] == [256, 256, 512, 512, 768, 1280]


def test_cost_model_prices_each_call_once():
    calls = [
        Call("small", 4, 0, 9.0),  # prompt: 0.5 + 4 * 0.1 = 0.9
        Call("small", 0, -1, 9.0),  # a sample: inside the per-token time
        Call("small", 1, 4, 9.0),  # 1.0 + first after a batch 0.25 = 1.25
        Call("small", 1, 5, 9.0),  # 1.0 + second after a batch 0.125 = 1.125
        Call("small", 1, 6, 9.0),  # 1.0
        Call("large", 3, 0, 9.0),  # 1.0 + 3 * 0.2 = 1.6
        Call("large", 1, 3, 9.0),  # 2.0 + first after a batch 0.5 = 2.5 (another model's calls do not count)
        Call("small", 2, 7, 9.0),  # catch-up: 0.5 + 2 * 0.1 + 0.001 * 2 tokens * position 7 = 0.714
        Call("small", 1, 9, 9.0),  # 1.0 + 0.25 = 1.25
    ]
    expected = 0.9 + 1.25 + 1.125 + 1.0 + 1.6 + 2.5 + 0.714 + 1.25
    assert cost_model.predicted_seconds(calls, COSTS) == pytest.approx(expected, rel=1e-12)
    # past the measured sizes the last segment goes on: 12 tokens from position 0 = 1.9 + 2 * 0.3
    assert cost_model.predicted_seconds([Call("small", 12, 0, 1.0)], COSTS) == pytest.approx(2.5, rel=1e-12)


def test_a_one_token_call_costs_by_the_kv_cells_it_attends_over():
    positions = (100, 255, 300, 511, 600, 1100)
    priced = cost_model.priced_calls([Call("small", 1, p, 1.0) for p in positions], COSTS)
    # 256 cells: +0; 512: +0.5; 768: +0.75; 1280: 0.75 + 0.25 * 512 / 256 along the last segment
    assert [p.predicted_s for p in priced] == pytest.approx([1.0, 1.0, 1.5, 1.5, 1.75, 2.25], rel=1e-12)


def test_calls_at_a_kv_step_cost_more_unless_they_follow_a_batch():
    small = COSTS["small"]
    base = {255: 1.0, 256: 1.5, 257: 1.5, 258: 1.5, 512: 1.75, 513: 1.75}  # by the KV cells attended
    # a batch, the two calls after it, then steady calls at and around the KV steps
    calls = [Call("small", 10, 0, 1.0)] + [Call("small", 1, p, 1.0) for p in (98, 99, 255, 256, 257, 258, 512, 513)]
    priced = cost_model.priced_calls(calls, COSTS)
    step = "one-token at KV step"
    assert [p.kind for p in priced[3:]] == ["one-token", step, step, "one-token", step, step]
    assert [p.predicted_s for p in priced[3:]] == pytest.approx(
        [base[255], base[256] + 0.0625, base[257] + 0.03125, base[258], base[512] + 0.0625, base[513] + 0.03125], rel=1e-12)
    # right after a batch, the call at the step is priced as an after-batch call, once
    after = cost_model.priced_calls([Call("small", 10, 246, 1.0), Call("small", 1, 256, 1.0), Call("small", 1, 257, 1.0)], COSTS)
    assert [p.predicted_s for p in after[1:]] == pytest.approx([base[256] + small["after_batch_s"][0], base[257] + small["after_batch_s"][1]], rel=1e-12)
    assert [p.kind for p in after[1:]] == ["one-token after batch"] * 2


def test_each_call_is_measured_with_the_samples_that_read_its_logits():
    calls = [
        Call("small", 4, 0, 0.5),
        Call("small", 0, -1, 0.125),  # reads the prompt's logits
        Call("large", 3, 0, 2.0),
        Call("small", 1, 4, 1.0),
        Call("large", 0, -1, 0.25),  # the large model's, though a small call came after its batch
        Call("small", 0, -1, 0.125),
        Call("small", 1, 5, 1.5),
    ]
    priced = cost_model.priced_calls(calls, COSTS)
    assert [(p.model, p.kind, p.measured_s) for p in priced] == [
        ("small", "batch", 0.625), ("large", "batch", 2.25), ("small", "one-token after batch", 1.125), ("small", "one-token after batch", 1.5),
    ]
    assert [p.predicted_s for p in priced] == pytest.approx([0.9, 1.6, 1.25, 1.125], rel=1e-12)
    assert cost_model.by_kind(priced + [cost_model.Priced("small", "one-token", 0.5, 1.0)]) == {
        "small batch": {"calls": 1, "measured_s": 0.625, "predicted_s": pytest.approx(0.9)},
        "large batch": {"calls": 1, "measured_s": 2.25, "predicted_s": pytest.approx(1.6)},
        "small one-token after batch": {"calls": 2, "measured_s": 2.625, "predicted_s": pytest.approx(2.375)},
        "small one-token": {"calls": 1, "measured_s": 0.5, "predicted_s": pytest.approx(1.0)},
    }


def test_cost_model_scales_each_model_by_its_speed():
    calls = [Call("small", 1, 5, 9.0), Call("large", 3, 0, 9.0), Call("small", 1, 6, 9.0)]
    # small: 1.0 + 1.0 at speed 1.5 (no batch before them); large: 1.6 at speed 0.5
    assert cost_model.predicted_seconds(calls, COSTS, {"small": 1.5, "large": 0.5}) == pytest.approx(2.0 * 1.5 + 0.8, rel=1e-12)
    assert cost_model.predicted_seconds(calls, COSTS, {"small": 1.0}) == pytest.approx(2.0 + 1.6, rel=1e-12)
    # multi-token calls drift apart from one-token calls: they take their own factor where given
    assert cost_model.predicted_seconds(calls, COSTS, {"small": 1.5, "large": 0.5, "large batch": 2.0}) == pytest.approx(3.0 + 3.2, rel=1e-12)


def test_cost_model_ignores_a_model_without_calls():
    assert cost_model.predicted_seconds([Call("large", 1, 10, 1.0)], {"large": COSTS["large"]}) == 2.0
    assert cost_model.predicted_seconds([], COSTS) == 0.0


def test_inside_seconds_adds_every_call():
    assert cost_model.inside_seconds([Call("small", 1, 0, 0.25), Call("small", 0, -1, 0.5)]) == 0.75


def step(model: str, tokens: int, finish: str = "delimiter") -> Step:
    return Step(index=1, model=model, text="x", tokens=tokens, entropy=0.0, seconds=0.0, finish=finish)


def summary(small: ModelTotals, large: ModelTotals, steps: tuple[Step, ...] = ()) -> Summary:
    return Summary(answer="", answer_model="large", finish_reason="eos", steps=steps, large_step_rate=0.0,
                   small=small, large=large, latency_s=1.0, mode="glimp", threshold=1.0)


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


def test_call_log_sees_every_decode_of_a_routed_run_and_who_made_it(demo_pair):
    """The log the fit is computed from agrees with the sessions' own counters, call by call."""
    pair, small, large = demo_pair
    names = ("llama_decode", "llama_sampler_sample", "llama_get_logits", "llama_get_logits_ith")
    original = [getattr(llama_cpp, name) for name in names]
    settings = dataclasses.replace(settings_from_pair(pair, sampling=Sampling(temperature=0.0)), threshold=math.inf)
    with perf.CallLog({"small": small, "large": large}) as log:
        with log.recording() as calls:
            summary = run(gsm8k_problem(0), small=small, large=large, settings=settings, policy=make_policy("glimp"))
        evaluated = {"small": small.counters.evaluated_tokens, "large": large.counters.evaluated_tokens}
        run(gsm8k_problem(0), small=small, large=large, settings=settings, policy=make_policy("large"))  # not recording
    for module in (llama_cpp, llama_cpp.llama_cpp):
        assert [getattr(module, name) for name in names] == original
    assert summary.small.steps > 0 and summary.large.tokens > 0
    for role, totals in (("small", summary.small), ("large", summary.large)):
        decodes = [c for c in calls if c.model == role and c.tokens > 0]
        assert len(decodes) == totals.decode_calls + 1  # + the prompt's
        assert sum(c.tokens for c in decodes) == evaluated[role]
        # every step delegated: each call starts where the previous one ended, from position 0
        assert [c.position for c in decodes] == [sum(d.tokens for d in decodes[:i]) for i in range(len(decodes))]
    assert all(c.seconds > 0 for c in calls)
    reads = [c for c in calls if c.tokens == 0]
    assert len(calls) == len(reads) + summary.small.decode_calls + summary.large.decode_calls + 2
    # the probe reads the small model's logits once per step, and no one else reads them directly
    count = collections.Counter((c.model, c.function) for c in reads)
    assert count[("small", "llama_get_logits_ith")] == len(summary.steps) == 1
    assert set(count) == {("small", "llama_get_logits_ith"), ("small", "llama_sampler_sample"), ("large", "llama_sampler_sample")}


def test_call_costs_measure_each_kind_of_call_the_model_prices(demo_pair):
    """One round on the small model: every term the cost model reads, with multi-token calls
    measured from TINY tokens (a catch-up on a short step) up to the longest prompt-like call."""
    _, small, _ = demo_pair
    costs = perf.call_costs(small, repeats=1, depths=(64, 128))
    assert [n for n, _ in costs["batch_curve"]] == [perf.TINY, 16, 64, 128]
    assert all(seconds > 0 for _, seconds in costs["batch_curve"])
    assert [cells for cells, _ in costs["single_curve"]] == [256, 256]  # both depths attend over 256 cells
    assert costs["single_curve"][0][1] == 0.0  # the shallowest depth is the curve's zero
    assert len(costs["after_batch_s"]) == cost_model.AFTER_BATCH and len(costs["kv_step_s"]) == 2
    assert costs["decode_s_per_token"] > 0 and costs["batch_reference_s"] > 0 and costs["batch_depth_s"] >= 0
