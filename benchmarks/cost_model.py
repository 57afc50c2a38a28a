"""The benchmark's cost model: what each llama.cpp call of a run should cost, priced call by call
from costs measured on this machine (`perf.call_costs`), and the timed calls it prices. Pure
arithmetic: no model is loaded here."""

from __future__ import annotations

import dataclasses

# The first one-token calls after a multi-token call cost more on a CUDA build: the first runs
# without a CUDA graph, the second captures one (measured on an H100: +1.75 and +1.5 ms on a
# 1.2 ms call), the third is a little slower still. They are priced one by one.
AFTER_BATCH = 3
# llama.cpp pads the part of the KV cache it attends over to a multiple of 256 cells (get_n_kv in
# llama-kv-cache.cpp), so the graph changes at positions 256, 512, ...: a CUDA build runs the
# call at such a position without its graph and captures a new one at the next.
KV_STEP = 256


def kv_cells(position: int | float) -> int:
    """The KV cells a call at `position` attends over: its depth, as llama.cpp pads it. Attention
    costs per cell, masked or not, so a one-token call costs the same anywhere inside a step."""
    return KV_STEP * (int(position) // KV_STEP + 1)


@dataclasses.dataclass(frozen=True)
class Call:
    """One timed llama.cpp call: a llama_decode of `tokens` tokens from `position`, or a read of
    its results (a sample or the logits: tokens=0)."""

    model: str
    tokens: int
    position: int
    seconds: float
    function: str = "llama_decode"


def inside_seconds(calls: list[Call]) -> float:
    return sum(c.seconds for c in calls)


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear curve through `points` (sorted by x) at x: flat before the first point,
    the last segment extended past the last."""
    if x <= points[0][0] or len(points) == 1:
        return points[0][1]
    for i in range(1, len(points)):
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        if x <= x1 or i == len(points) - 1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclasses.dataclass
class Priced:
    """One llama_decode call, measured (with the samples that read its logits) and predicted."""

    model: str
    kind: str  # "batch" | "one-token" | "one-token after batch" | "one-token at KV step"
    measured_s: float
    predicted_s: float


def priced_calls(calls: list[Call], costs: dict, speed: dict[str, float] | None = None) -> list[Priced]:
    """The cost model, call by call. A one-token call at position p costs llama-cpp-python's own
    steady time per generated token (sample + decode) + what a one-token call costs more at p than
    at the depth that time was measured at (`single_curve`, by KV cells attended); the k-th
    one-token call after one of the model's multi-token calls costs `after_batch_s[k - 1]` more,
    and after those, a call at a KV step (position KV_STEP * m + i) `kv_step_s[i]` more. A
    multi-token call (prompt, catch-up) of n tokens from position d costs what n tokens from
    position 0 cost (`batch_curve`) + `batch_depth_s` * n * d. `speed` scales a model's costs (the machine's drift since they were
    measured: reference time now / then): `speed[model]` its one-token calls, and
    `speed[model + " batch"]` (where given) its multi-token calls."""
    priced: list[Priced] = []
    last: dict[str, Priced] = {}  # each model's latest call
    since_batch: dict[str, int] = {}  # one-token calls since each model's latest multi-token call
    scale = speed or {}
    for call in calls:
        if call.tokens == 0:
            if call.model in last:
                last[call.model].measured_s += call.seconds
            continue
        c = costs[call.model]
        if call.tokens == 1:
            curve, after, step = c["single_curve"], c["after_batch_s"], c["kv_step_s"]
            seconds = c["decode_s_per_token"] + interpolate(curve, kv_cells(call.position)) - interpolate(curve, kv_cells(c["decode_depth"]))
            k = since_batch[call.model] = since_batch.get(call.model, len(after)) + 1
            kind = "one-token"
            if k <= len(after):
                seconds += after[k - 1]
                kind = "one-token after batch"
            elif call.position >= KV_STEP and call.position % KV_STEP < len(step):
                seconds += step[call.position % KV_STEP]
                kind = "one-token at KV step"
        else:
            seconds = interpolate(c["batch_curve"], call.tokens) + c["batch_depth_s"] * call.tokens * call.position
            kind = "batch"
            since_batch[call.model] = 0
        factor = scale.get(f"{call.model} batch" if kind == "batch" else call.model, scale.get(call.model, 1.0))
        last[call.model] = Priced(call.model, kind, call.seconds, seconds * factor)
        priced.append(last[call.model])
    return priced


def predicted_seconds(calls: list[Call], costs: dict, speed: dict[str, float] | None = None) -> float:
    return sum(p.predicted_s for p in priced_calls(calls, costs, speed))


def by_kind(priced: list[Priced]) -> dict[str, dict]:
    """Calls, measured and predicted seconds per model and kind of call."""
    totals: dict[str, dict] = {}
    for p in priced:
        t = totals.setdefault(f"{p.model} {p.kind}", {"calls": 0, "measured_s": 0.0, "predicted_s": 0.0})
        t["calls"] += 1
        t["measured_s"] += p.measured_s
        t["predicted_s"] += p.predicted_s
    return totals
