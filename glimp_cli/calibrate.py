"""glimp calibrate: choose the entropy threshold from data.

The probe pass is bench's run loop with the small model alone (its `small` condition): each
record carries the entropies of every step in both modes, read from the router's Step events.
The threshold for a target share of large-model steps is a quantile of those entropies. The
sweep pass runs the routed pipeline at candidate thresholds, with `small` and `large` as
references, through bench's result store, and picks a threshold by an objective. `--save`
writes glimp-calibration.yaml (calibration_file.py), never models.yaml. The core never prints;
the Rich display is in render_runs.py.

The quantile rule: with n entropies and a rate r, k = round(r * n), halves rounded up. The
threshold leaves exactly k entropies strictly above it (entropy <= threshold -> small). Ties at
the boundary can make k impossible; then the threshold gives the achievable count closest to k,
the smaller count when two are equally close, and the report says the count is not exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glimp_cli.bench import ERROR
from glimp_cli.bench import PROBE_ENTROPIES as PROBE_KEY
from glimp_cli.bench import BenchPlan, Condition, ProgressCallback, run_bench, run_condition, session_pairs, summarize
from glimp_cli.bench import fingerprint as bench_fingerprint
from glimp_cli.bench import make_plan as make_bench_plan
from glimp_cli.config import ModelSpec, PairSpec
from glimp_cli.entropy import ENTROPY_MODES
from glimp_cli.errors import ConfigError, DataError, did_you_mean
from glimp_cli.parallel import DEFAULT_PARALLEL, SessionPairs
from glimp_cli.router import RouterSettings
from glimp_cli.session import Session
from glimp_cli.store import ResultStore

DEFAULT_TARGET_RATE = 0.25  # the paper recommends 20-30% of steps on the large model
DEFAULT_MAX_LATENCY = 0.8  # × the large model's mean latency, for --objective accuracy
DEFAULT_MARGIN = 0.0  # accuracy (0-1) below large's that --objective latency accepts
OBJECTIVES = ("accuracy", "latency")
MIN_STEPS = 10  # fewer steps than this give no quantile worth saving
OPEN_GAP = 1.0  # nats above the largest entropy: where a threshold that sends no step sits
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
HISTOGRAM_WIDTHS = (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0)  # nats per bin; the first giving few enough bins
MAX_HISTOGRAM_BINS = 16


# -- the quantile ----------------------------------------------------------------


@dataclass(frozen=True)
class RateThreshold:
    """The threshold that sends a share of the collected steps to the large model."""

    threshold: float  # nats: entropy <= threshold -> small
    rate: float  # the share asked for
    steps: int  # entropies collected
    target_steps: int  # round(rate * steps), halves up
    large_steps: int  # entropies strictly above the threshold

    @property
    def share(self) -> float:
        return self.large_steps / self.steps

    @property
    def exact(self) -> bool:
        return self.large_steps == self.target_steps

    def record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "share": self.share, "exact": self.exact}


def threshold_for_rate(entropies: Sequence[float], rate: float) -> RateThreshold:
    """The threshold (nats, >= 0) above which round(rate * n) of these entropies lie; with ties at
    the boundary, the closest achievable count (the smaller one when two are equally close)."""
    if not entropies:
        raise ValueError("no entropies")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate {rate} is outside [0, 1]")
    n = len(entropies)
    target = math.floor(round(rate * n, 9) + 0.5)
    # Every achievable split: (steps above, low, high) for thresholds in [low, high).
    splits = []
    above, high = 0, math.inf
    for value, count in sorted(Counter(entropies).items(), reverse=True):
        splits.append((above, value, high))
        above += count
        high = value
    if high > 0.0:  # every step above: needs a threshold below the smallest entropy, and thresholds are >= 0
        splits.append((n, 0.0, high))
    large_steps, low, high = min(splits, key=lambda split: (abs(split[0] - target), split[0]))
    threshold = short_number_between(low, high if math.isfinite(high) else low + OPEN_GAP)
    return RateThreshold(threshold=threshold, rate=rate, steps=n, target_steps=target, large_steps=large_steps)


def short_number_between(low: float, high: float) -> float:
    """The number with fewest decimals in the middle half of [low, high): a readable threshold with
    room on both sides (results.jsonl rounds entropies to 6 decimals)."""
    middle, margin = (low + high) / 2, (high - low) / 4
    for digits in range(16):
        candidate = round(middle, digits)
        if low + margin <= candidate <= high - margin:
            return candidate + 0.0  # no -0.0
    return middle


def large_steps_at(entropies: Iterable[float], threshold: float) -> int:
    """Steps the glimp policy sends to the large model at this threshold."""
    return sum(1 for e in entropies if e > threshold)


def steps_needed(rate: float) -> int:
    """Entropies a quantile at this rate needs: MIN_STEPS, and enough for one step on each side."""
    return max(MIN_STEPS, math.ceil(round(1 / min(rate, 1 - rate), 9)))


def check_enough_steps(steps: int, rates: Iterable[float], *, problems: int, failed: int = 0) -> None:
    """A DataError saying how many steps were collected (and problems failed) when a quantile needs more."""
    rates = list(rates)
    needed = max(steps_needed(rate) for rate in rates)
    if steps < needed:
        shown = ", ".join(f"{rate:g}" for rate in rates)
        failures = f' ({failed} more could not be run: see "error" in results.jsonl)' if failed else ""
        raise DataError(
            f"only {steps} steps collected from {problems} problem{'s' if problems != 1 else ''}{failures}: "
            f"a threshold for a large-step share of {shown} "
            f"needs at least {needed}; raise --limit (with --resume the problems already run are kept)"
        )


# -- options -----------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationPlan:
    bench: BenchPlan  # the problems and router settings; its one mode is `small`, the probe
    target_rate: float
    sweep: bool = False
    thresholds: tuple[float, ...] = ()  # nats, from --thresholds
    rates: tuple[float, ...] = ()  # from --rates: each becomes the probe quantile's threshold
    objective: str = "accuracy"
    max_latency: float = DEFAULT_MAX_LATENCY
    margin: float = DEFAULT_MARGIN

    @property
    def settings(self) -> RouterSettings:
        return self.bench.settings


def make_plan(
    data: Path,
    *,
    settings: RouterSettings,
    target_rate: float = DEFAULT_TARGET_RATE,
    sweep: bool = False,
    thresholds: tuple[float, ...] | None = None,
    rates: tuple[float, ...] | None = None,
    objective: str = "accuracy",
    max_latency: float = DEFAULT_MAX_LATENCY,
    margin: float = DEFAULT_MARGIN,
    problem_key: str | None = None,
    answer_key: str | None = None,
    offset: int = 0,
    limit: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
) -> CalibrationPlan:
    """Check the options and read the data file (before any model loads).

    Args:
        target_rate, rates: large-step shares in (0, 1); thresholds: nats; max_latency: x large's; margin: accuracy.
        parallel: problems in flight at once, in both passes.
    """
    for rate in (target_rate, *(rates or ())):
        if not 0.0 < rate < 1.0:
            raise ConfigError(f"a large-step share must be between 0 and 1 (exclusive), got {rate:g}")
    threshold_values = tuple(dict.fromkeys(thresholds or ()))
    rate_values = tuple(dict.fromkeys(rates or ()))
    if not sweep and (thresholds is not None or rates is not None):
        raise ConfigError("--thresholds and --rates give the candidates of a sweep: add --sweep")
    if sweep and not (threshold_values or rate_values):
        raise ConfigError(
            "--sweep has no thresholds to try: pass --thresholds (nats, e.g. 0.5,1,1.5) "
            "or --rates (large-step shares, e.g. 0.1,0.2,0.3)"
        )
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"--objective must be one of {', '.join(OBJECTIVES)}, "
            f"got '{objective}'{did_you_mean(objective, OBJECTIVES)}"
        )
    if not max_latency > 0:
        raise ConfigError(
            f"--max-latency must be above 0 (a multiple of the large model's latency), got {max_latency:g}"
        )
    if not 0 <= margin <= 1:
        raise ConfigError(f"--margin is an accuracy difference between 0 and 1, got {margin:g}")
    plan = make_bench_plan(
        data,
        settings=settings,
        modes=("small",),
        problem_key=problem_key,
        answer_key=answer_key,
        offset=offset,
        limit=limit,
        parallel=parallel,
    )
    return CalibrationPlan(
        bench=plan,
        target_rate=target_rate,
        sweep=sweep,
        thresholds=threshold_values,
        rates=rate_values,
        objective=objective,
        max_latency=max_latency,
        margin=margin,
    )


def fingerprint(plan: CalibrationPlan, *, pair: PairSpec, small: ModelSpec, large: ModelSpec) -> dict[str, Any]:
    """bench's fingerprint, marked as calibrate's: its `small` records carry both entropy modes,
    so the two commands do not share an output directory."""
    return {"command": "calibrate", **bench_fingerprint(plan.bench, pair=pair, small=small, large=large)}


# -- the probe pass ------------------------------------------------------------------


class ProbeCondition(Condition):
    """bench's `small` condition (same result key), shown as the probe."""

    @property
    def label(self) -> str:
        return "probe"


PROBE = ProbeCondition("small")


def run_probe(
    plan: BenchPlan,
    *,
    small: Session | None = None,
    large: Session | None = None,
    sessions: SessionPairs | None = None,
    store: ResultStore,
    on_progress: ProgressCallback | None = None,
) -> list[dict[str, Any]]:
    """The small model alone through every problem (bench's loop, `small` condition), its records
    in problem order; records already in the store are reused. Sessions as for bench.run_bench."""
    for problem in plan.problems:
        record = store.get(PROBE.key(problem.id))
        if record is not None and PROBE_KEY not in record:
            raise DataError(
                f"{store.results_path}: the small result of problem {problem.id!r} has no probe entropies: "
                "pass --force to start over"
            )
    sessions = session_pairs(plan, small=small, large=large, sessions=sessions)
    run_condition(plan, PROBE, sessions=sessions, store=store, on_progress=on_progress)
    return [store.get(PROBE.key(problem.id)) for problem in plan.problems]


def probe_entropies(records: Iterable[dict[str, Any]], mode: str) -> list[float]:
    """Every step's initial-token entropy (nats) in one mode, pooled over problems in order."""
    return [
        e for record in records for e in record[PROBE_KEY][mode] if e is not None
    ]  # None: not measured by this engine


def distribution(entropies: Sequence[float]) -> dict[str, float]:
    """min, the QUANTILES (linear interpolation), max and mean, in nats."""
    values = np.asarray(entropies, dtype=np.float64)
    summary = {"min": float(values.min())}
    summary.update({f"p{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES})
    summary.update({"max": float(values.max()), "mean": float(values.mean())})
    return {key: round(value, 6) + 0.0 for key, value in summary.items()}


def histogram(entropies: Sequence[float], *, threshold: float | None = None) -> list[dict[str, Any]]:
    """Equal-width bins from 0 nats (of a round width); each counts its steps and those above the threshold."""
    top = max(entropies)
    width = next((w for w in HISTOGRAM_WIDTHS if top / w < MAX_HISTOGRAM_BINS), HISTOGRAM_WIDTHS[-1])
    bins = [
        {"low": round(i * width, 6), "high": round((i + 1) * width, 6), "steps": 0, "large_steps": 0}
        for i in range(int(top // width) + 1)
    ]
    for entropy in entropies:
        row = bins[min(int(entropy // width), len(bins) - 1)]
        row["steps"] += 1
        row["large_steps"] += threshold is not None and entropy > threshold
    return bins


def probe_report(plan: CalibrationPlan, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Both modes' entropy distributions and the threshold for the target rate in each. Without
    enough steps this is a DataError, except in a sweep, whose report then has no such threshold.
    A problem that could not be run (bench's failed record) has no steps: the quantile skips it, and
    the report counts it as failed, not among the problems measured."""
    failed = sum(1 for record in records if record["finish_reason"] == ERROR)
    steps = sum(len(record[PROBE_KEY]["full"]) for record in records)
    if not plan.sweep:
        check_enough_steps(steps, [plan.target_rate], problems=len(records) - failed, failed=failed)
    quantile = steps >= steps_needed(plan.target_rate)
    modes = {}
    for mode in ENTROPY_MODES:
        entropies = probe_entropies(records, mode)
        at_rate = threshold_for_rate(entropies, plan.target_rate) if quantile and entropies else None
        modes[mode] = {
            "distribution": distribution(entropies) if entropies else None,
            "threshold": at_rate.record() if at_rate else None,
            "histogram": histogram(entropies, threshold=at_rate.threshold if at_rate else None) if entropies else [],
        }
    return {
        "problems": len(records) - failed,
        "failed": failed,
        "steps": steps,
        "target_rate": plan.target_rate,
        "modes": modes,
    }


# -- the sweep pass -------------------------------------------------------------------


def sweep_candidates(plan: CalibrationPlan, records: list[dict[str, Any]]) -> dict[float, float | None]:
    """Thresholds to try (nats, ascending) -> the rate each was derived from (None: from --thresholds)."""
    entropies = probe_entropies(records, plan.settings.entropy_mode)
    if plan.rates:
        failed = sum(1 for record in records if record["finish_reason"] == ERROR)
        check_enough_steps(len(entropies), plan.rates, problems=len(records) - failed, failed=failed)
    candidates: dict[float, float | None] = {threshold: None for threshold in plan.thresholds}
    for rate in plan.rates:
        candidates.setdefault(threshold_for_rate(entropies, rate).threshold, rate)
    return dict(sorted(candidates.items()))


def run_sweep(
    plan: CalibrationPlan,
    candidates: dict[float, float | None],
    *,
    small: Session | None = None,
    large: Session | None = None,
    sessions: SessionPairs | None = None,
    store: ResultStore,
    on_progress: ProgressCallback | None = None,
) -> list[dict[str, Any]]:
    """glimp at every candidate and the `large` reference through bench (the probe's records are
    the `small` reference); one summary row per condition, on this plan's problems only."""
    sweep_plan = dataclasses.replace(plan.bench, modes=("small", "glimp", "large"), thresholds=tuple(candidates))
    sessions = session_pairs(sweep_plan, small=small, large=large, sessions=sessions)
    run_bench(sweep_plan, sessions=sessions, store=store, on_progress=on_progress)
    keys = [condition.key(problem.id) for condition in sweep_plan.fixed_conditions() for problem in sweep_plan.problems]
    summary = summarize([record for record in map(store.get, keys) if record is not None], run=store.fingerprint)
    entropies = probe_entropies((store.get(PROBE.key(p.id)) for p in sweep_plan.problems), plan.settings.entropy_mode)
    rows = [_sweep_row(condition, candidates, entropies) for condition in summary["conditions"]]
    for row, optimal in zip(rows, pareto_flags(rows)):
        row["pareto"] = optimal
    return rows


def _sweep_row(
    condition: dict[str, Any], candidates: dict[float, float | None], entropies: list[float]
) -> dict[str, Any]:
    threshold = condition["threshold"]
    glimp = condition["mode"] == "glimp"
    return {
        "label": condition["label"],
        "mode": condition["mode"],
        "threshold": threshold,
        "target_rate": candidates.get(threshold) if glimp else None,
        # the share the probe's entropies predict; the routed run's own share is large_step_share
        "probe_share": large_steps_at(entropies, threshold) / len(entropies) if glimp and entropies else None,
        **{
            key: condition[key]
            for key in (
                "n",
                "correct",
                "errors",
                "accuracy",
                "accuracy_se",
                "latency_mean_s",
                "latency_vs_large",
                "large_step_share",
            )
        },
        "pareto": False,
        "chosen": False,
    }


def pareto_flags(rows: Sequence[dict[str, Any]]) -> list[bool]:
    """For each row: whether no other row is at least as accurate and at least as fast (mean
    latency) and better in one of the two."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        no_worse = a["accuracy"] >= b["accuracy"] and latency(a) <= latency(b)
        return no_worse and (a["accuracy"] > b["accuracy"] or latency(a) < latency(b))

    return [not any(dominates(other, row) for other in rows if other is not row) for row in rows]


def latency(row: dict[str, Any]) -> float:
    """A row's mean latency in seconds; infinite when none of its problems could be run."""
    return row["latency_mean_s"] if row["latency_mean_s"] is not None else math.inf


def choose(
    rows: Sequence[dict[str, Any]], *, objective: str, max_latency: float, margin: float
) -> tuple[dict[str, Any] | None, str, str]:
    """The glimp row the objective picks (None if none qualifies), the rule in words, and the outcome.

    accuracy: the most accurate within max_latency x large's mean latency (then the fastest).
    latency: the fastest with accuracy >= large's minus margin (then the most accurate).
    """
    glimp = [row for row in rows if row["mode"] == "glimp"]
    large = next(row for row in rows if row["mode"] == "large")
    if objective == "accuracy":
        rule = f"most accurate at latency <= {max_latency:g}x large"
        eligible = [
            row for row in glimp if row["latency_vs_large"] is not None and row["latency_vs_large"] <= max_latency
        ]
        key = lambda row: (-row["accuracy"], latency(row))  # noqa: E731
        fastest = min(glimp, key=latency)
        miss = f"the fastest, {fastest['label']}, takes {fastest['latency_vs_large'] or math.nan:.2f}x large"
    else:
        floor = large["accuracy"] - margin
        rule = f"fastest at accuracy >= {max(floor, 0.0):.1%}" + (
            f" (large's {large['accuracy']:.1%} - {margin:.1%})" if margin else " (large's)"
        )
        eligible = [row for row in glimp if row["accuracy"] >= floor - 1e-9]
        key = lambda row: (latency(row), -row["accuracy"])  # noqa: E731
        best = max(glimp, key=lambda row: row["accuracy"])
        miss = f"the most accurate, {best['label']}, reaches {best['accuracy']:.1%}"
    if not eligible:
        return None, rule, f"{rule}: no threshold qualifies ({miss})"
    chosen = min(eligible, key=key)
    return chosen, rule, f"{rule}: {chosen['label']}"


def sweep_report(plan: CalibrationPlan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    chosen, rule, reason = choose(rows, objective=plan.objective, max_latency=plan.max_latency, margin=plan.margin)
    if chosen is not None:
        chosen["chosen"] = True
    return {
        "objective": plan.objective,
        "max_latency": plan.max_latency,
        "margin": plan.margin,
        "rule": rule,
        "reason": reason,
        "rows": rows,
    }


# -- both passes ------------------------------------------------------------------------


def run_calibration(
    plan: CalibrationPlan,
    *,
    small: Session | None = None,
    large: Session | None = None,
    sessions: SessionPairs | None = None,
    store: ResultStore,
    display: Callable[[], AbstractContextManager[ProgressCallback | None]] = nullcontext,
) -> dict[str, Any]:
    """The probe pass, then the sweep if asked; the report that --json prints.

    Args:
        small, large, sessions: as for bench.run_bench; both passes share the sessions.
        display: a fresh progress context for each pass; it yields the on_progress callback.
    """
    sessions = session_pairs(plan.bench, small=small, large=large, sessions=sessions)
    with display() as on_progress:
        records = run_probe(plan.bench, sessions=sessions, store=store, on_progress=on_progress)
    run = store.fingerprint
    report: dict[str, Any] = {
        "pair": run.get("pair"),
        "small": run.get("small", {}).get("name"),
        "large": run.get("large", {}).get("name"),
        "data": str(plan.bench.data.resolve()),
        "out": str(store.directory),
        "entropy_mode": plan.settings.entropy_mode,
        "probe": probe_report(plan, records),
        "sweep": None,
    }
    if plan.sweep:
        candidates = sweep_candidates(plan, records)
        with display() as on_progress:
            rows = run_sweep(
                plan, candidates, sessions=sessions, store=store, on_progress=_without_probe_skips(on_progress)
            )
        report["sweep"] = sweep_report(plan, rows)
    report.update(_chosen(report))
    report["saved"] = None
    return report


def _without_probe_skips(on_progress: ProgressCallback | None) -> ProgressCallback | None:
    """The sweep's `small` reference is the probe pass, which has reported those results already."""
    if on_progress is None:
        return None
    return lambda progress: (
        None if progress.status == "skipped" and progress.condition.mode == "small" else on_progress(progress)
    )


def _chosen(report: dict[str, Any]) -> dict[str, Any]:
    """The threshold the report recommends, how it was chosen and the large-step share it gave."""
    if report["sweep"] is not None:
        row = next((r for r in report["sweep"]["rows"] if r["chosen"]), None)
        return {
            "method": "sweep",
            "threshold": row["threshold"] if row else None,
            "target_rate": row["target_rate"] if row else None,
            "large_share": row["large_step_share"] if row else None,
        }
    at_rate = report["probe"]["modes"][report["entropy_mode"]]["threshold"]
    return {
        "method": "probe",
        "threshold": at_rate["threshold"],
        "target_rate": at_rate["rate"],
        "large_share": at_rate["share"],
    }
