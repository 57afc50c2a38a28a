"""glimp bench: every problem of a JSONL file under each routing mode, checked, timed and summarised.

The core (plan, run_bench, summarize) consumes the router's event stream and never prints;
progress goes to an `on_progress` callback. The Rich display is in render_runs.py.

With plan.parallel > 1, that many problems are in flight at once, each on its own pair of sessions
(parallel.py); this thread alone writes results.jsonl and reports progress, in completion order.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimp_cli.checker import extract_answer, is_equivalent
from glimp_cli.config import ModelSpec, PairSpec
from glimp_cli.dataset import Problem, file_sha256, load_problems
from glimp_cli.errors import ConfigError, ProblemError, WriteError, did_you_mean, lone_surrogate
from glimp_cli.events import Summary
from glimp_cli.parallel import DEFAULT_PARALLEL, Cancelled, SessionPairs, check_parallel_value, run_parallel
from glimp_cli.policy import MODES, make_policy
from glimp_cli.router import RouterSettings, route
from glimp_cli.session import Session
from glimp_cli.store import ResultStore

PROBE_ENTROPIES = "probe_entropies"  # a probed record's step entropies in every mode: {"full": [...], "topk": [...]}
ERROR = "error"  # the finish reason of a problem that could not be run; its record's "error" says why
MAX_ERRORS_SHOWN = 3  # failed problems named under the summary table
DEFAULT_RATE = 0.25
# The single-model baselines answer with their own model, so that `small` never runs the large one.
BASELINE_ANSWER_BY = {"small": "small", "large": "large"}


@dataclass(frozen=True)
class Condition:
    """One column of the benchmark: a mode, with its threshold (glimp) or rate (random)."""

    mode: str
    threshold: float | None = None  # nats; for random, the glimp threshold whose rate it matches
    rate: float | None = None  # random only: probability that a step goes to the large model

    @property
    def label(self) -> str:
        if self.mode == "glimp":
            return f"glimp@{self.threshold:g}"
        if self.mode == "random":
            return f"random@{self.rate:.3f}"
        return self.mode

    def key(self, problem_id: str | int) -> tuple:
        """The store's result key for one problem under this condition."""
        return (problem_id, self.mode, self.threshold, self.rate)


@dataclass(frozen=True)
class BenchPlan:
    data: Path
    problems: tuple[Problem, ...]
    modes: tuple[str, ...]  # deduplicated; random runs last, whatever its position
    thresholds: tuple[float, ...]  # glimp's, in order; random matches the rate of the first
    rate: float  # random's rate when glimp is not among the modes
    settings: RouterSettings
    problem_key: str | None = None
    answer_key: str | None = None
    parallel: int = DEFAULT_PARALLEL  # problems in flight at once

    def fixed_conditions(self) -> list[Condition]:
        """Every condition but random (whose rate comes from the glimp results)."""
        conditions = []
        for mode in self.modes:
            if mode == "glimp":
                conditions += [Condition("glimp", threshold=t) for t in self.thresholds]
            elif mode != "random":
                conditions.append(Condition(mode))
        return conditions

    @property
    def total(self) -> int:
        return len(self.problems) * (len(self.fixed_conditions()) + ("random" in self.modes))


@dataclass(frozen=True)
class BenchProgress:
    """Sent to `on_progress` before each problem is run, and after each is finished or skipped."""

    status: str  # "running" | "finished" | "skipped" (already in results.jsonl)
    done: int  # results of this plan finished so far, skipped ones included
    total: int
    condition: Condition
    position: int  # 1-based position of the problem in this condition
    problems: int  # problems per condition
    scored: int  # results of this condition so far
    correct: int  # ... of which correct
    record: dict[str, Any] | None  # the new record when finished

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else 0.0


ProgressCallback = Callable[[BenchProgress], None]


def make_plan(
    data: Path,
    *,
    settings: RouterSettings,
    modes: tuple[str, ...] = MODES,
    thresholds: tuple[float, ...] | None = None,
    rate: float = DEFAULT_RATE,
    problem_key: str | None = None,
    answer_key: str | None = None,
    offset: int = 0,
    limit: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
) -> BenchPlan:
    """Check the options and read the data file (before any model loads).

    Args:
        modes: routing modes (repeats dropped); thresholds: glimp's, in nats (None or empty: the pair's).
        parallel: problems in flight at once (each on its own pair of sessions).
    """
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise ConfigError(
            f"unknown mode '{unknown[0]}'{did_you_mean(unknown[0], MODES)}; choose from {', '.join(MODES)}"
        )
    mode_names = tuple(dict.fromkeys(modes))
    threshold_values = tuple(dict.fromkeys(thresholds)) if thresholds else (settings.threshold,)
    make_policy("random", rate=rate)  # the same range check as `glimp ask --rate`
    check_parallel_value(parallel)
    problems = load_problems(data, problem_key=problem_key, answer_key=answer_key, offset=offset, limit=limit)
    return BenchPlan(
        data=Path(data),
        problems=tuple(problems),
        modes=mode_names,
        thresholds=threshold_values,
        rate=rate,
        settings=settings,
        problem_key=problem_key,
        answer_key=answer_key,
        parallel=parallel,
    )


def fingerprint(plan: BenchPlan, *, pair: PairSpec, small: ModelSpec, large: ModelSpec) -> dict[str, Any]:
    """The settings that make results comparable (stored in run.json). Modes, thresholds and the
    problem range are not in it: results are keyed by them, so one directory can grow."""
    router = {k: v for k, v in dataclasses.asdict(plan.settings).items() if k not in ("threshold", "sampling")}
    speculate = {} if pair.speculate == "off" else {"speculate": pair.speculate}  # absent: stores made before it
    return {
        "pair": pair.name,
        **speculate,
        "small": _model_fingerprint(small),
        "large": _model_fingerprint(large),
        "sampling": dataclasses.asdict(plan.settings.sampling),
        "router": router,
        "data": {
            "file": str(plan.data.resolve()),
            "sha256": file_sha256(plan.data),
            "problem_key": plan.problem_key,
            "answer_key": plan.answer_key,
        },
    }


def _model_fingerprint(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "source": spec.source,
        "prompt": spec.prompt,
        "system": spec.system,
        "think_prefix": spec.think_prefix,
    }


# -- running -------------------------------------------------------------------


@dataclass
class Overhead:
    """Wall time per problem outside route() (session reset is inside it): checking, writing, progress."""

    outside_s: list[float] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0

    def add(self, wall_s: float, latency_s: float) -> None:
        self.outside_s.append(wall_s - latency_s)
        self.wall_s += wall_s

    def record(self) -> dict[str, Any]:
        if not self.outside_s:
            return {"problems": 0, "mean_s": None, "median_s": None, "max_s": None, "share": None}
        return {
            "problems": len(self.outside_s),
            "mean_s": round(statistics.fmean(self.outside_s), 6),
            "median_s": round(statistics.median(self.outside_s), 6),
            "max_s": round(max(self.outside_s), 6),
            "share": round(sum(self.outside_s) / self.wall_s, 6) if self.wall_s > 0 else None,
        }


def run_bench(
    plan: BenchPlan,
    *,
    small: Session | None = None,
    large: Session | None = None,
    sessions: SessionPairs | None = None,
    store: ResultStore,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run every (problem, condition) not yet in the store; write the summary even when interrupted.

    Args:
        small, large: one pair of sessions for every problem (plan.parallel 1); or
        sessions: where each problem in flight gets its pair, e.g. SessionPairs(make_sessions).
    """
    sessions = session_pairs(plan, small=small, large=large, sessions=sessions)
    overhead = Overhead()
    started = time.perf_counter()
    done = 0
    is_equivalent("0", "1")  # imports math_verify now: a one-time cost, not the first problem's overhead
    failed = False
    try:
        for condition in plan.fixed_conditions():
            done = run_condition(
                plan, condition, done=done, sessions=sessions, store=store, on_progress=on_progress, overhead=overhead
            )
        if "random" in plan.modes:
            random_condition = _random_condition(plan, store)
            run_condition(
                plan,
                random_condition,
                done=done,
                sessions=sessions,
                store=store,
                on_progress=on_progress,
                overhead=overhead,
            )
    except BaseException:
        failed = True
        raise
    finally:
        summary = summarize(
            store.records,
            run=store.fingerprint,
            planned=_completion(plan, store),
            overhead=overhead.record(),
            throughput=throughput(
                plan.parallel, problems=len(overhead.outside_s), wall_s=time.perf_counter() - started
            ),
        )
        try:
            store.write_summary(summary, summary_markdown(summary))
        except WriteError:
            if not failed:  # else the error (or Ctrl-C) that stopped the run is the one to report
                raise
    return summary


def session_pairs(
    plan: BenchPlan, *, small: Session | None, large: Session | None, sessions: SessionPairs | None
) -> SessionPairs:
    """The run's SessionPairs: `sessions`, or one made of `small` and `large`."""
    if sessions is None:
        if small is None or large is None:
            raise TypeError("pass both small and large sessions, or sessions")
        sessions = SessionPairs.one(small, large)
    elif small is not None or large is not None:
        raise TypeError("pass small and large sessions, or sessions, not both")
    if sessions.max_pairs is not None and plan.parallel > sessions.max_pairs:
        raise ValueError(
            f"parallel {plan.parallel} needs a pair of sessions per problem in flight: pass SessionPairs(make_sessions)"
        )
    return sessions


def throughput(parallel: int, *, problems: int, wall_s: float) -> dict[str, Any]:
    """Results run per minute of this run's wall time (a problem in one mode is one result)."""
    return {
        "parallel": parallel,
        "problems": problems,
        "wall_s": round(wall_s, 6),
        "problems_per_min": round(problems / wall_s * 60, 6) if problems and wall_s > 0 else None,
    }


@dataclass
class _Tally:
    """One condition's results as they come: counted, reported to on_progress, timed into the overhead."""

    plan: BenchPlan
    condition: Condition
    on_progress: ProgressCallback | None
    overhead: Overhead
    done: int
    scored: int = 0
    correct: int = 0

    def skipped(self, position: int, record: dict[str, Any]) -> None:
        self._count(record)
        self._notify("skipped", position, None)

    def running(self, position: int) -> None:
        self._notify("running", position, None)

    def finished(self, position: int, record: dict[str, Any], *, since: float, elsewhere_s: float = 0.0) -> None:
        """A result just written; its wall time is from `since` to now in this thread, plus `elsewhere_s`."""
        self._count(record)
        self._notify("finished", position, record)
        self.overhead.add(time.perf_counter() - since + elsewhere_s, record["latency_s"])

    def _count(self, record: dict[str, Any]) -> None:
        self.done, self.scored, self.correct = self.done + 1, self.scored + 1, self.correct + bool(record["correct"])

    def _notify(self, status: str, position: int, record: dict[str, Any] | None) -> None:
        if self.on_progress is not None:
            self.on_progress(
                BenchProgress(
                    status,
                    self.done,
                    self.plan.total,
                    self.condition,
                    position,
                    len(self.plan.problems),
                    self.scored,
                    self.correct,
                    record,
                )
            )


def run_condition(
    plan: BenchPlan,
    condition: Condition,
    *,
    done: int = 0,
    small: Session | None = None,
    large: Session | None = None,
    sessions: SessionPairs | None = None,
    store: ResultStore,
    on_progress: ProgressCallback | None = None,
    overhead: Overhead | None = None,
) -> int:
    """Every problem of the plan under one condition, skipping those already in the store; returns `done`.

    One problem at a time in this thread, or plan.parallel at once on worker threads: then results are
    written and reported here as they finish, so results.jsonl holds them in completion order.
    """
    sessions = session_pairs(plan, small=small, large=large, sessions=sessions)
    tally = _Tally(plan, condition, on_progress, overhead if overhead is not None else Overhead(), done)
    if plan.parallel == 1:  # in this thread: Ctrl-C stops an in-process model at once
        for position, problem in enumerate(plan.problems, start=1):
            record = store.get(condition.key(problem.id))
            if record is not None:
                tally.skipped(position, record)
                continue
            since = time.perf_counter()
            tally.running(position)
            with sessions.pair() as (small_session, large_session):
                record = solve(problem, condition, small=small_session, large=large_session, settings=plan.settings)
            store.append(record)
            tally.finished(position, record, since=since)
        return tally.done

    def to_run() -> Iterator[tuple[int, Problem]]:
        """Drawn as workers come free: skipped results are reported in problem order, between runs."""
        for position, problem in enumerate(plan.problems, start=1):
            record = store.get(condition.key(problem.id))
            if record is not None:
                tally.skipped(position, record)
            else:
                tally.running(position)
                yield position, problem

    def work(item: tuple[int, Problem], stop: threading.Event) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        with sessions.pair() as (small_session, large_session):
            record = solve(
                item[1], condition, small=small_session, large=large_session, settings=plan.settings, stop=stop
            )
        return record, time.perf_counter() - started

    def write(item: tuple[int, Problem], result: tuple[dict[str, Any], float]) -> None:
        since = time.perf_counter()
        record, worker_s = result
        store.append(record)
        tally.finished(item[0], record, since=since, elsewhere_s=worker_s)

    run_parallel(to_run(), work, workers=plan.parallel, on_result=write)
    return tally.done


def solve(
    problem: Problem,
    condition: Condition,
    *,
    small: Session,
    large: Session,
    settings: RouterSettings,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Route one problem under one condition and check its answer; returns its results.jsonl record.

    A problem that cannot be run (a ProblemError: too long for a model's context, text that cannot be
    encoded) gets a failed record with the reason, so that one bad problem does not stop a benchmark.
    Once `stop` is set the problem ends at its next event with Cancelled, and has no record.
    """
    seed = problem_seed(settings.sampling.seed, problem.id)
    settings = dataclasses.replace(
        settings,
        threshold=condition.threshold if condition.threshold is not None else settings.threshold,
        answer_by=BASELINE_ANSWER_BY.get(condition.mode, settings.answer_by),
        sampling=dataclasses.replace(settings.sampling, seed=seed),
    )
    policy = make_policy(condition.mode, rate=condition.rate if condition.rate is not None else DEFAULT_RATE)
    started = time.perf_counter()
    try:
        surrogate = lone_surrogate(problem.text)
        if surrogate:  # load_problems refuses these; a Problem built elsewhere may hold one
            raise ProblemError(f"the problem text holds a lone surrogate, {surrogate}, which is not text")
        summary = _drain(route(problem.text, small=small, large=large, settings=settings, policy=policy), stop)
    except ProblemError as exc:
        return failed_record(
            problem,
            condition,
            error=str(exc),
            seed=seed,
            latency_s=time.perf_counter() - started,
            probed=policy.needs_probe,
        )
    thinking = "".join(step.text for step in summary.steps)
    predicted = extract_answer(summary.answer) or extract_answer(thinking + summary.answer)
    with _CHECKING:
        correct = is_equivalent(predicted, problem.gold)
    record = {
        "id": problem.id,
        "mode": condition.mode,
        "threshold": condition.threshold,
        "rate": condition.rate,
        "correct": correct,
        "predicted": predicted,
        "gold": problem.gold,
        "answer": summary.answer,
        "answer_model": summary.answer_model,
        "latency_s": round(summary.latency_s, 6),
        "steps": len(summary.steps),
        "large_steps": sum(1 for s in summary.steps if s.model == "large"),
        "tokens": {"small": summary.small.tokens, "large": summary.large.tokens},
        "prefill_tokens": {"small": summary.small.prefill_tokens, "large": summary.large.prefill_tokens},
        # a server's prompt tokens served from its prefix cache (not in prefill_tokens); None: not reported
        "cached_tokens": {"small": summary.small.cached_tokens, "large": summary.large.cached_tokens},
        "entropies": [
            None if s.entropy is None else round(s.entropy, 6) + 0.0 for s in summary.steps
        ],  # nats; + 0.0: no -0.0
        "finish_reason": summary.finish_reason,
        "seed": seed,
        # each step: the model that wrote it, its tokens and its text (the thinking, for reading a run back)
        "trace": [[s.model, s.tokens, s.text] for s in summary.steps],
    }
    if summary.large.verify_calls:  # speculative decoding (the large model's): its draft counters
        record["drafts"] = {
            "drafted": summary.large.drafted_tokens,
            "accepted": summary.large.accepted_tokens,
            "verify_calls": summary.large.verify_calls,
        }
    if policy.needs_probe:  # every step was probed: both modes' entropies (nats), for calibrate
        record[PROBE_ENTROPIES] = {
            "full": [None if s.entropy_full is None else s.entropy_full + 0.0 for s in summary.steps],  # + 0.0: no -0.0
            "topk": [None if s.entropy_topk is None else s.entropy_topk + 0.0 for s in summary.steps],
        }
    return record


# math_verify parses with ANTLR and sympy, whose shared caches are not documented as thread-safe: one check at a time
_CHECKING = threading.Lock()


def _drain(events: Generator[Any, None, None], stop: threading.Event | None) -> Summary:
    """route()'s Summary; Cancelled between events once `stop` is set (the generator is closed either way)."""
    summary = None
    try:
        if stop is not None and stop.is_set():
            raise Cancelled
        for event in events:
            if stop is not None and stop.is_set():
                raise Cancelled
            summary = event
    finally:
        events.close()
    assert isinstance(summary, Summary)
    return summary


def failed_record(
    problem: Problem, condition: Condition, *, error: str, seed: int, latency_s: float, probed: bool
) -> dict[str, Any]:
    """The results.jsonl record of a problem that could not be run: wrong, no steps, the reason in `error`."""
    record = {
        "id": problem.id,
        "mode": condition.mode,
        "threshold": condition.threshold,
        "rate": condition.rate,
        "correct": False,
        "predicted": None,
        "gold": problem.gold,
        "answer": "",
        "answer_model": None,
        "latency_s": round(latency_s, 6),  # until the failure; summaries leave it out
        "steps": 0,
        "large_steps": 0,
        "tokens": {"small": 0, "large": 0},
        "prefill_tokens": {"small": 0, "large": 0},
        "cached_tokens": {"small": None, "large": None},
        "entropies": [],
        "finish_reason": ERROR,
        "seed": seed,
        "error": error,
        "line": problem.line,
    }
    if probed:
        record[PROBE_ENTROPIES] = {"full": [], "topk": []}  # no steps: calibrate's quantile skips it
    return record


def problem_seed(run_seed: int, problem_id: str | int) -> int:
    """The seed of one problem: the same in every mode, different between problems.

    The router seeds both sampling and random mode's draws with it; one seed for all problems
    would give random mode the same draws on every problem (with seed 0, steps 1-3 never
    go to the large model at rates up to 0.42).
    """
    return random.Random(f"{run_seed}/{problem_id}").getrandbits(32)


def _random_condition(plan: BenchPlan, store: ResultStore) -> Condition:
    """Random at the large-step share of the first glimp threshold on these problems, else at --rate."""
    if "glimp" not in plan.modes:
        return Condition("random", rate=plan.rate)
    threshold = plan.thresholds[0]
    records = [store.get(Condition("glimp", threshold=threshold).key(p.id)) for p in plan.problems]
    return Condition("random", threshold=threshold, rate=matched_rate(r for r in records if r is not None))


def matched_rate(glimp_records: Iterable[dict[str, Any]]) -> float:
    """The share of steps that glimp gave the large model, pooled over problems (the matched-rate control)."""
    steps = large_steps = 0
    for record in glimp_records:
        steps += record["steps"]
        large_steps += record["large_steps"]
    return round(large_steps / steps, 6) if steps else 0.0


def _completion(plan: BenchPlan, store: ResultStore) -> dict[str, int]:
    """How many of this plan's results exist, of how many."""
    conditions = plan.fixed_conditions()
    if "random" in plan.modes:
        conditions.append(_random_condition(plan, store))
    finished = sum(1 for c in conditions for p in plan.problems if store.get(c.key(p.id)) is not None)
    return {"planned": plan.total, "finished": finished}


# -- summary -------------------------------------------------------------------


def summarize(
    records: list[dict[str, Any]],
    *,
    run: dict[str, Any],
    planned: dict[str, int] | None = None,
    overhead: dict[str, Any] | None = None,
    throughput: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-condition accuracy, latency and large-model share over every record in results.jsonl,
    in the order glimp (by threshold), small, large, random. The same records in any order give the
    same summary (a parallel run writes them in completion order); overhead and throughput are the run's."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["mode"], record.get("threshold"), record.get("rate")), []).append(record)
    large_latency = {r["id"]: r["latency_s"] for r in records if r["mode"] == "large" and r["finish_reason"] != ERROR}
    order = sorted(groups, key=_condition_order)
    conditions = [_condition_summary(Condition(*key), groups[key], large_latency) for key in order]
    return {
        "pair": run.get("pair"),
        "small": run.get("small", {}).get("name"),
        "large": run.get("large", {}).get("name"),
        "data": run.get("data", {}).get("file"),
        "sampling": run.get("sampling"),
        "results": len(records),
        **(planned or {}),
        "conditions": conditions,
        "failed": failed_problems(records),
        "overhead": overhead,
        "throughput": throughput,
    }


def failed_problems(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The problems that could not be run, in data-file order: id, data-file line, reason and the conditions
    (in the summary's order)."""
    failed: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record["finish_reason"] == ERROR:
            entry = failed.setdefault(
                (record["id"], record["error"]),
                {"id": record["id"], "line": record.get("line"), "error": record["error"], "conditions": []},
            )
            entry["conditions"].append((record["mode"], record.get("threshold"), record.get("rate")))
    for entry in failed.values():
        entry["conditions"] = [Condition(*key).label for key in sorted(entry["conditions"], key=_condition_order)]
    return sorted(
        failed.values(), key=lambda entry: (entry["line"] is None, entry["line"] or 0, str(entry["id"]), entry["error"])
    )


def _condition_order(key: tuple) -> tuple:
    """(mode, threshold, rate) sorts glimp (by threshold), small, large, random (by rate)."""
    mode, threshold, rate = key
    return (MODES.index(mode) if mode in MODES else len(MODES), threshold or 0.0, rate or 0.0)


def _condition_summary(
    condition: Condition, records: list[dict[str, Any]], large_latency: dict[Any, float]
) -> dict[str, Any]:
    """Accuracy over every record (a failed problem counts as wrong); latency, steps and tokens over the
    problems that ran (None when none did)."""
    n = len(records)
    correct = sum(1 for r in records if r["correct"])
    accuracy = correct / n
    ran = [r for r in records if r["finish_reason"] != ERROR]
    latencies = [r["latency_s"] for r in ran]
    paired = [(r["latency_s"], large_latency[r["id"]]) for r in ran if r["id"] in large_latency]
    paired_large_s = math.fsum(large for _, large in paired)  # fsum: exact, so the records' order does not matter
    steps = sum(r["steps"] for r in ran)
    large_steps = sum(r["large_steps"] for r in ran)
    tokens_small = sum(r["tokens"]["small"] for r in ran)
    tokens_large = sum(r["tokens"]["large"] for r in ran)
    drafted = sum(r["drafts"]["drafted"] for r in ran if "drafts" in r)
    accepted = sum(r["drafts"]["accepted"] for r in ran if "drafts" in r)
    return {
        "label": condition.label,
        "mode": condition.mode,
        "threshold": condition.threshold,
        "rate": condition.rate,
        "n": n,
        "correct": correct,
        "errors": n - len(ran),
        "accuracy": accuracy,
        "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / n),
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
        "latency_median_s": statistics.median(latencies) if latencies else None,
        # mean latency over the problems that `large` also ran, divided by large's on them
        "latency_vs_large": math.fsum(own for own, _ in paired) / paired_large_s
        if paired and paired_large_s > 0
        else None,
        "steps": steps,
        "large_steps": large_steps,
        "large_step_share": large_steps / steps if steps else 0.0,
        "tokens": {"small": tokens_small, "large": tokens_large},
        "large_token_share": tokens_large / (tokens_small + tokens_large) if tokens_small + tokens_large else 0.0,
        "tokens_per_s": (tokens_small + tokens_large) / math.fsum(latencies) if math.fsum(latencies) > 0 else 0.0,
        "finish_reasons": dict(sorted(Counter(r["finish_reason"] for r in records).items())),
        "draft_acceptance": accepted / drafted if drafted else None,  # the large model's drafts; None: no drafts
        "cached_token_share": cached_token_share(ran),
    }


def cached_token_share(records: Iterable[dict[str, Any]]) -> float | None:
    """Of the prompt tokens sent to the models that report their prefix cache (servers), the share it served:
    cached / (cached + prefill). None when no model reported one (in-process models, llama_cpp.server)."""
    cached = sent = 0
    reported = False
    for record in records:
        for model, tokens in (record.get("cached_tokens") or {}).items():  # absent: a store made before it
            if tokens is not None:
                reported = True
                cached += tokens
                sent += tokens + record["prefill_tokens"][model]
    if not reported:
        return None
    return cached / sent if sent else 0.0


SUMMARY_COLUMNS = (
    "mode",
    "n",
    "accuracy",
    "± se",
    "mean s",
    "median s",
    "vs large",
    "large steps",
    "large tokens",
    "tokens/s",
    "finish",
)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """The summary table as strings, one row per condition (for summary.md and the terminal)."""
    rows = []
    for c in summary["conditions"]:
        rows.append(
            (
                c["label"],
                str(c["n"]),
                f"{c['accuracy']:.1%}",
                f"{c['accuracy_se']:.1%}",
                f"{c['latency_mean_s']:.2f}" if c["latency_mean_s"] is not None else "-",
                f"{c['latency_median_s']:.2f}" if c["latency_median_s"] is not None else "-",
                f"{c['latency_vs_large']:.2f}×" if c["latency_vs_large"] is not None else "-",
                f"{c['large_step_share']:.1%}",
                f"{c['large_token_share']:.1%}",
                f"{c['tokens_per_s']:.1f}",
                ", ".join(f"{reason} {count}" for reason, count in c["finish_reasons"].items()),
            )
        )
    return rows


def summary_caption(summary: dict[str, Any]) -> str:
    sampling = summary.get("sampling") or {}
    parts = [
        f"pair {summary['pair']} (small {summary['small']}, large {summary['large']})",
        f"temperature {sampling.get('temperature')}, top-p {sampling.get('top_p')}, seed {sampling.get('seed')}",
        f"{summary['results']} results",
    ]
    if "planned" in summary:
        parts[-1] += f" ({summary['finished']} of {summary['planned']} planned finished)"
    for key, title in (
        ("draft_acceptance", "large-model drafts accepted"),
        ("cached_token_share", "prompt tokens from the servers' prefix caches"),
    ):
        shares = [f"{c['label']} {c[key]:.0%}" for c in summary.get("conditions") or [] if c.get(key) is not None]
        if shares:
            parts.append(f"{title}: " + ", ".join(shares))
    overhead = summary.get("overhead") or {}
    if overhead.get("share") is not None:
        parts.append(
            f"outside generation {overhead['median_s'] * 1000:.1f} ms/problem median "
            f"({overhead['share']:.2%} of wall time)"
        )
    throughput = summary.get("throughput") or {}
    if throughput.get("problems_per_min") is not None:
        parts.append(
            f"this run: {throughput['problems']} results in {throughput['wall_s']:.1f} s, "
            f"{throughput['problems_per_min']:.1f}/min with {throughput['parallel']} in flight"
        )
    return " · ".join(parts)


def failed_lines(summary: dict[str, Any]) -> list[str]:
    """One line per problem that could not be run (the first MAX_ERRORS_SHOWN), for under the table."""
    failed = summary.get("failed") or []
    lines = [
        f"failed: id {entry['id']!r}"
        + (f" (line {entry['line']})" if entry.get("line") else "")
        + f" in {', '.join(entry['conditions'])}: {entry['error']}"
        for entry in failed[:MAX_ERRORS_SHOWN]
    ]
    if len(failed) > MAX_ERRORS_SHOWN:
        lines.append(f'... and {len(failed) - MAX_ERRORS_SHOWN} more failed problems: see "error" in results.jsonl')
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# glimp bench: {Path(summary['data'] or '?').name}",
        "",
        summary_caption(summary),
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|"
        + "|".join("---" if i in (0, len(SUMMARY_COLUMNS) - 1) else "---:" for i in range(len(SUMMARY_COLUMNS)))
        + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(summary)]
    failed = failed_lines(summary)
    lines += ["", *failed] if failed else []
    return "\n".join(lines) + "\n"
