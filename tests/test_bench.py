"""Tests for glimp bench: the run loop on stepping fake sessions, the CLI's bad-input errors,
and end to end with the demo pair on a few gsm8k problems (interrupted and resumed too)."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import GSM8K
import yaml
from rich.console import Console

from cli_helpers import BAD_DATA, BAD_DATA_IDS, assert_bad_data_rejected, one_error_line, run_main, usage_error
from glimp_cli import bench
from glimp_cli.bench import BenchProgress, Condition, make_plan, run_bench, summary_markdown
from glimp_cli import render_runs
from glimp_cli.render_runs import BenchDisplay
from glimp_cli.config import PACKAGED_CONFIG
from glimp_cli.dataset import Problem
from glimp_cli.errors import ConfigError, ContextError, RunError
from glimp_cli.config import PairSpec, router_settings
from glimp_cli.entropy import ENTROPY_MODES, initial_token_entropies
from glimp_cli.session import FirstToken, Counters, Sampling, StepOutput
from glimp_cli.store import RESULTS_FILE, RUN_FILE, SUMMARY_JSON, SUMMARY_MD, open_store, result_key

LN8 = math.log(8)
SETTINGS = router_settings(
    PairSpec("test", "small", "large", threshold=1.0, answer_stops=()), sampling=Sampling(temperature=0.0, seed=0)
)
FINGERPRINT = {"pair": "fake"}
STEP_TEXT = "{name} step {index}.\n\n"  # 15 characters (one token each) for steps 1-9
FINAL_TEXT = "So \\boxed{"  # 10 characters


class SteppingSession:
    """A Session that thinks `steps` steps per problem, then writes '\\boxed{' and, asked for
    the answer, '<answer>}'. One token per character. The small model's probe at step i is
    uniform over `probe_widths[i]` tokens: entropy ln(width) nats."""

    think = None  # not a reasoning model: no think block

    def __init__(
        self, name: str, *, steps: int = 4, probe_widths: Sequence[int] = (1,), answers: dict[str, str] | None = None
    ):
        self.name = name
        self.steps = steps
        self.probe_widths = probe_widths
        self.answers = answers or {}
        self.counters = Counters()
        self.starts: list[tuple[str, int]] = []  # (problem, seed)
        self.interrupt_at_start: int | None = None  # raise KeyboardInterrupt at this start() call
        self.fail_at_start: dict[str, Exception] = {}  # problem text -> what start() raises for it
        self._problem = ""
        self._text = ""

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        if self.interrupt_at_start == len(self.starts) + 1:
            raise KeyboardInterrupt
        if problem in self.fail_at_start:
            raise self.fail_at_start[problem]
        self.starts.append((problem, sampling.seed))
        self._problem, self._text, self.counters = problem, "", Counters()

    @property
    def text(self) -> str:
        return self._text

    def catch_up(self, transcript: str) -> None:
        assert transcript.startswith(self._text)
        self.counters.prefill_tokens += len(transcript) - len(self._text)
        self._text = transcript

    def context_room(self) -> int:
        return 1_000_000

    def context_tokens(self) -> int:
        return len(self._text)

    entropy_modes = ENTROPY_MODES

    def probe(self, *, top_k: int) -> FirstToken:
        width = self.probe_widths[self._text.count("\n\n") % len(self.probe_widths)]
        logits = np.array([0.0] * width + [-np.inf] * (8 - width))
        return FirstToken(token=0, text="t", entropies=initial_token_entropies(logits, top_k=top_k))

    def generate_step(
        self, *, first_token: int | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        if self._text.endswith("\\boxed{"):
            text, finish, stop = self.answers.get(self._problem, "0") + "}", "eos", None
        elif self._text.count("\n\n") < self.steps - 1:
            text, finish, stop = STEP_TEXT.format(name=self.name, index=self._text.count("\n\n") + 1), "stop", "\n\n"
        else:
            text, finish, stop = FINAL_TEXT, "stop", "\\boxed{"
        assert len(text) <= max_tokens
        yield text
        self._text += text
        self.counters.generated_tokens += len(text)
        return StepOutput(text=text, tokens=len(text), finish=finish, stop=stop)


def _data(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "problem": f"problem {i}", "answer": str(10 + i)}) + "\n" for i in range(n))
    )
    return path


def _pair(n: int, *, steps: int = 4, probe_widths: Sequence[int] = (1, 8, 1, 1)):
    """The large model answers every problem correctly, the small one only even-numbered ones."""
    small = SteppingSession(
        "small",
        steps=steps,
        probe_widths=probe_widths,
        answers={f"problem {i}": str(10 + i) if i % 2 == 0 else "0" for i in range(n)},
    )
    large = SteppingSession("large", steps=steps, answers={f"problem {i}": str(10 + i) for i in range(n)})
    return small, large


def _run(
    tmp_path,
    *,
    n=3,
    limit=None,
    modes="glimp,small,large,random",
    thresholds=None,
    rate=0.25,
    probe_widths=(1, 8, 1, 1),
    steps=4,
    on_progress=None,
    pair=None,
    resume=False,
):
    modes = tuple(modes.split(","))
    thresholds = tuple(float(t) for t in thresholds.split(",")) if thresholds else None
    plan = make_plan(_data(tmp_path, n), settings=SETTINGS, modes=modes, thresholds=thresholds, rate=rate, limit=limit)
    small, large = pair or _pair(n, probe_widths=probe_widths, steps=steps)
    with open_store(tmp_path / "out", fingerprint=FINGERPRINT, resume=resume) as store:
        summary = run_bench(plan, small=small, large=large, store=store, on_progress=on_progress)
    return summary, _records(tmp_path / "out"), (small, large)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


# --- the run loop ------------------------------------------------------------------------------


def test_every_problem_gets_one_record_per_mode_with_random_last(tmp_path):
    _, records, _ = _run(tmp_path)
    assert [(r["mode"], r["id"]) for r in records] == [
        (m, f"p{i}") for m in ("glimp", "small", "large", "random") for i in range(3)
    ]
    assert len({result_key(r) for r in records}) == 12


def test_glimp_record_holds_exact_counts_entropies_and_check(tmp_path):
    _, records, _ = _run(tmp_path)
    first = records[0]
    assert first["probe_entropies"] == {mode: pytest.approx([0.0, LN8, 0.0, 0.0]) for mode in ("full", "topk")}
    assert {k: v for k, v in first.items() if k not in ("latency_s", "seed", "probe_entropies")} == {
        "id": "p0",
        "mode": "glimp",
        "threshold": 1.0,
        "rate": None,
        "correct": True,
        "predicted": "10",
        "gold": "10",
        "answer": "\\boxed{10}",
        "answer_model": "large",
        "steps": 4,
        "large_steps": 1,  # only step 2's probe (ln 8 nats) is above the threshold
        "tokens": {"small": 15 + 15 + 10, "large": 15 + 3},
        "prefill_tokens": {"small": 15, "large": 15 + 15 + 10},
        "cached_tokens": {"small": None, "large": None},  # in-process models report no prefix cache
        "entropies": [0.0, round(LN8, 6), 0.0, 0.0],
        "finish_reason": "answer_marker",
        "trace": [  # each step's model, tokens and text
            ["small", 15, "small step 1.\n\n"],
            ["large", 15, "large step 2.\n\n"],
            ["small", 15, "small step 3.\n\n"],
            ["small", 10, "So \\boxed{"],
        ],
    }
    assert first["latency_s"] > 0


def test_single_model_baselines_never_touch_the_other_model(tmp_path):
    _, records, _ = _run(tmp_path)
    small = [r for r in records if r["mode"] == "small"]
    large = [r for r in records if r["mode"] == "large"]
    assert all(
        r["tokens"]["large"] == r["prefill_tokens"]["large"] == 0 and r["answer_model"] == "small" for r in small
    )
    assert all(
        r["tokens"]["small"] == r["prefill_tokens"]["small"] == 0 and r["answer_model"] == "large" for r in large
    )
    assert [r["correct"] for r in small] == [True, False, True]
    assert all(r["entropies"] == [None] * 4 for r in large)


def test_large_mode_share_is_one_and_small_mode_share_is_zero(tmp_path):
    summary, _, _ = _run(tmp_path)
    shares = {c["label"]: (c["large_step_share"], c["large_token_share"]) for c in summary["conditions"]}
    assert shares["large"] == (1.0, 1.0)
    assert shares["small"] == (0.0, 0.0)
    assert shares["glimp@1"][0] == 0.25


def test_random_runs_at_the_step_share_glimp_used_on_these_problems(tmp_path):
    _, records, _ = _run(tmp_path)
    assert {(r["threshold"], r["rate"]) for r in records if r["mode"] == "random"} == {(1.0, 0.25)}


def test_random_share_tracks_glimp_share_over_many_steps(tmp_path):
    summary, _, _ = _run(tmp_path, n=60, steps=8, probe_widths=(1, 8, 1, 1), modes="glimp,random")
    glimp, random_ = summary["conditions"]
    assert glimp["large_step_share"] == 0.25
    assert random_["rate"] == 0.25
    # 480 independent draws: 3 standard errors is about 0.06
    assert abs(random_["large_step_share"] - 0.25) < 0.06


def test_with_several_thresholds_random_matches_the_first(tmp_path):
    summary, records, _ = _run(tmp_path, thresholds="0.5,3", modes="random,glimp")
    assert [c["label"] for c in summary["conditions"]] == ["glimp@0.5", "glimp@3", "random@0.250"]
    assert [c["large_step_share"] for c in summary["conditions"][:2]] == [0.25, 0.0]
    assert {(r["threshold"], r["rate"]) for r in records if r["mode"] == "random"} == {(0.5, 0.25)}


def test_random_without_glimp_runs_at_the_rate_option(tmp_path):
    _, records, _ = _run(tmp_path, modes="small,random", rate=0.4)
    assert {(r["threshold"], r["rate"]) for r in records if r["mode"] == "random"} == {(None, 0.4)}


def test_each_problem_has_one_seed_in_every_mode_and_problems_differ(tmp_path):
    _, records, (small, _) = _run(tmp_path)
    seeds = {}
    for problem, seed in small.starts:
        seeds.setdefault(problem, set()).add(seed)
    assert all(len(s) == 1 for s in seeds.values())
    assert len({next(iter(s)) for s in seeds.values()}) == 3
    assert {r["id"]: r["seed"] for r in records} == {f"p{i}": bench.problem_seed(0, f"p{i}") for i in range(3)}


def test_summary_numbers_recompute_from_the_records(tmp_path):
    summary, records, _ = _run(tmp_path)
    assert json.loads((tmp_path / "out" / SUMMARY_JSON).read_text()) == summary
    _assert_summary_matches_records(summary, records)


def test_summary_markdown_has_one_row_per_condition(tmp_path):
    summary, _, _ = _run(tmp_path)
    markdown = (tmp_path / "out" / SUMMARY_MD).read_text()
    assert markdown == summary_markdown(summary)
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| mode | n | accuracy | ± se | mean s | median s | vs large | large steps | large tokens | tokens/s | finish |"
    )
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| glimp@1", "| small", "| large", "| random@0.250"]
    assert rows[2].split(" | ")[2:4] == ["66.7%", "27.2%"]  # small: 2 of 3, se sqrt(2/9 / 3)
    assert rows[3].split(" | ")[-1] == "answer_marker 3 |"


class PrefixCachingSession(SteppingSession):
    """A SteppingSession that reports a server's prefix cache: 3 cached tokens for each token it prefills."""

    def catch_up(self, transcript: str) -> None:
        new = len(transcript) - len(self.text)
        super().catch_up(transcript)
        self.counters.cached_tokens = (self.counters.cached_tokens or 0) + 3 * new


def test_records_carry_the_servers_cached_tokens_and_the_summary_their_share_per_mode(tmp_path):
    small, large = _pair(3)
    large = PrefixCachingSession("large", answers=large.answers)
    summary, records, _ = _run(tmp_path, pair=(small, large))
    glimp = records[0]
    assert (glimp["mode"], glimp["prefill_tokens"], glimp["cached_tokens"]) == (
        "glimp",
        {"small": 15, "large": 40},
        {"small": None, "large": 120},  # the small model runs in-process: no count, not 0
    )
    assert all(r["cached_tokens"] == {"small": None, "large": None} for r in records if r["mode"] == "small")
    shares = {c["label"]: c["cached_token_share"] for c in summary["conditions"]}
    # cached / (cached + prefilled) over the reporting model only; large mode reports 0 of 0 tokens sent
    assert shares == {"glimp@1": 0.75, "small": None, "large": 0.0, "random@0.250": 0.75}
    assert json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())["conditions"][0]["cached_token_share"] == 0.75
    assert " · prompt tokens from the servers' prefix caches: glimp@1 75%, large 0%, random@0.250 75% · " in (
        bench.summary_caption(summary)
    )


def test_a_summary_without_server_counts_has_no_cached_share_in_its_caption(tmp_path):
    summary, _, _ = _run(tmp_path)
    assert [c["cached_token_share"] for c in summary["conditions"]] == [None] * 4
    assert "prefix cache" not in bench.summary_caption(summary)


def test_cached_share_pools_reporting_models_and_reads_records_made_before_it():
    records = [
        {"prefill_tokens": {"small": 10, "large": 7}, "cached_tokens": {"small": 30, "large": None}},
        {"prefill_tokens": {"small": 5, "large": 3}, "cached_tokens": {"small": 5, "large": 1}},
        {"prefill_tokens": {"small": 9, "large": 9}},  # a results.jsonl line from before cached_tokens
    ]
    assert bench.cached_token_share(records) == (30 + 5 + 1) / (40 + 10 + 4)
    assert bench.cached_token_share(records[2:]) is None
    assert bench.cached_token_share([]) is None


def test_progress_reports_each_problem_before_and_after_it_runs(tmp_path):
    seen: list[BenchProgress] = []
    _run(tmp_path, on_progress=seen.append)
    assert [p.status for p in seen] == ["running", "finished"] * 12
    assert [p.done for p in seen] == [d for i in range(12) for d in (i, i + 1)]
    assert {p.total for p in seen} == {12}
    small = [p for p in seen if p.condition.mode == "small"]
    assert [(p.position, p.scored, p.correct) for p in small] == [
        (1, 0, 0),
        (1, 1, 1),
        (2, 1, 1),
        (2, 2, 1),
        (3, 2, 1),
        (3, 3, 2),
    ]
    assert small[-1].accuracy == pytest.approx(2 / 3)
    assert all((p.record is not None) == (p.status == "finished") for p in seen)


def test_resume_runs_only_the_missing_results(tmp_path):
    _run(tmp_path)
    results = tmp_path / "out" / RESULTS_FILE
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:7]) + "\n" + lines[7][:15])  # results 8-12 lost, the 8th cut mid-line
    seen: list[BenchProgress] = []
    summary, records, (small, large) = _run(tmp_path, on_progress=seen.append, resume=True)
    assert len(records) == 12 and len({result_key(r) for r in records}) == 12
    assert [p.status for p in seen] == ["skipped"] * 7 + ["running", "finished"] * 5
    assert len(small.starts) == 5  # only the missing (problem, mode) pairs ran
    assert summary["finished"] == summary["planned"] == 12


def test_resume_with_a_larger_limit_runs_only_the_new_problems(tmp_path):
    _run(tmp_path, n=4, limit=2)
    summary, records, (small, _) = _run(tmp_path, n=4, resume=True)
    assert len(records) == 16 and len({result_key(r) for r in records}) == 16
    assert {problem for problem, _ in small.starts} == {"problem 2", "problem 3"}
    assert [c["n"] for c in summary["conditions"]] == [4, 4, 4, 4]


def test_an_interrupt_keeps_finished_results_and_writes_their_summary(tmp_path):
    pair = _pair(3)
    pair[0].interrupt_at_start = 5  # the second problem of `small`
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, pair=pair)
    out = tmp_path / "out"
    records = _records(out)
    assert [(r["mode"], r["id"]) for r in records] == [
        ("glimp", "p0"),
        ("glimp", "p1"),
        ("glimp", "p2"),
        ("small", "p0"),
    ]
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert (summary["results"], summary["finished"], summary["planned"]) == (4, 4, 12)
    _assert_summary_matches_records(summary, records)
    _, records, _ = _run(tmp_path, resume=True)
    assert len(records) == 12 and len({result_key(r) for r in records}) == 12


def test_overhead_is_reported_for_problems_run(tmp_path):
    summary, _, _ = _run(tmp_path)
    overhead = summary["overhead"]
    assert overhead["problems"] == 12
    assert 0 <= overhead["median_s"] <= overhead["max_s"]
    assert 0 <= overhead["share"] < 1


def test_plain_progress_lines_off_a_terminal(tmp_path):
    out = io.StringIO()
    display = BenchDisplay(Console(file=out, force_terminal=False, width=200), out=Path("runs/x"))
    with display:
        _run(tmp_path, modes="large", n=2, on_progress=display)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] large problem 1/2 id=p0 correct (predicted '10', gold '10') ")
    assert lines[1].endswith(" s · acc 100.0% (2/2)")


def test_display_reports_skipped_results_and_how_to_resume_after_an_interrupt(tmp_path):
    _run(tmp_path, modes="large", n=2)
    results = tmp_path / "out" / RESULTS_FILE
    results.write_text(results.read_text().splitlines()[0] + "\n")
    pair = _pair(2)
    pair[0].interrupt_at_start = 1
    out = io.StringIO()
    display = BenchDisplay(Console(file=out, force_terminal=False, width=80), out=Path("runs/x"))
    with pytest.raises(KeyboardInterrupt), display:
        _run(tmp_path, modes="large", n=2, pair=pair, resume=True, on_progress=display)
    assert out.getvalue().splitlines() == [
        "skipped 1 results already in runs/x/results.jsonl",
        "interrupted: finished results stay in runs/x/results.jsonl, their summary in runs/x/summary.md; "
        "rerun with --resume to continue",
    ]


def test_progress_bar_on_a_terminal_shows_mode_problem_count_and_accuracy(tmp_path):
    out = io.StringIO()
    display = BenchDisplay(Console(file=out, force_terminal=True, width=120, color_system=None), out=Path("runs/x"))
    with display:
        _run(tmp_path, modes="glimp,large", n=2, on_progress=display)
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "large problem 2/2 ━" in final
    assert "━ 4/4 acc 100.0% (2/2) 0:00:00" in final


def test_plan_drops_repeated_modes_and_thresholds_and_names_unknown_modes(tmp_path):
    plan = make_plan(
        _data(tmp_path, 1), settings=SETTINGS, modes=("large", "glimp", "large"), thresholds=(0.5, 1.0, 0.5)
    )
    assert (plan.modes, plan.thresholds) == (("large", "glimp"), (0.5, 1.0))
    assert make_plan(_data(tmp_path, 1), settings=SETTINGS).thresholds == (SETTINGS.threshold,)
    with pytest.raises(
        ConfigError, match=r"unknown mode 'smal' \(did you mean 'small'\?\); choose from glimp, small, large, random"
    ):
        make_plan(_data(tmp_path, 1), settings=SETTINGS, modes=("glimp", "smal"))


def test_condition_labels():
    assert [
        Condition("glimp", threshold=1.5).label,
        Condition("random", 1.0, 0.1234).label,
        Condition("small").label,
    ] == ["glimp@1.5", "random@0.123", "small"]


# --- a problem that cannot be run ------------------------------------------------------------------

TOO_LONG = (
    "the problem does not fit model 'small': its prompt is 5000 tokens, plus 288 reserved for generation, "
    "and n_ctx is 4096; raise n_ctx in models.yaml"
)


def _pair_failing_on(problem: str, error: Exception, n: int = 3):
    pair = _pair(n)
    pair[0].fail_at_start[problem] = error
    return pair


def test_a_problem_too_long_for_the_context_is_a_failed_record_and_the_run_goes_on(tmp_path):
    summary, records, (small, _) = _run(tmp_path, pair=_pair_failing_on("problem 1", ContextError(TOO_LONG)))
    assert [(r["mode"], r["id"]) for r in records] == [
        (m, f"p{i}") for m in ("glimp", "small", "large", "random") for i in range(3)
    ]
    assert [problem for problem, _ in small.starts] == ["problem 0", "problem 2"] * 4  # the others ran in every mode
    failed = [r for r in records if r["id"] == "p1"]
    assert all(r["latency_s"] >= 0 and r["seed"] == bench.problem_seed(0, "p1") for r in failed)
    assert {k: v for k, v in failed[0].items() if k not in ("latency_s", "seed")} == {
        "id": "p1",
        "mode": "glimp",
        "threshold": 1.0,
        "rate": None,
        "correct": False,
        "predicted": None,
        "gold": "11",
        "answer": "",
        "answer_model": None,
        "steps": 0,
        "large_steps": 0,
        "tokens": {"small": 0, "large": 0},
        "prefill_tokens": {"small": 0, "large": 0},
        "cached_tokens": {"small": None, "large": None},
        "entropies": [],
        "finish_reason": "error",
        "error": TOO_LONG,
        "line": 2,
        "probe_entropies": {"full": [], "topk": []},
    }
    assert [("probe_entropies" in r, r["finish_reason"]) for r in failed[1:]] == [
        (True, "error"),
        (False, "error"),
        (False, "error"),
    ]  # small probes
    _assert_summary_matches_records(summary, records)


def test_the_summary_counts_failed_problems_and_names_them(tmp_path):
    summary, _, _ = _run(tmp_path, pair=_pair_failing_on("problem 1", ContextError(TOO_LONG)))
    counts = {c["label"]: (c["n"], c["correct"], c["errors"], c["finish_reasons"]) for c in summary["conditions"]}
    assert counts == {
        "glimp@1": (3, 2, 1, {"answer_marker": 2, "error": 1}),
        "small": (3, 2, 1, {"answer_marker": 2, "error": 1}),  # the small model answers problems 0 and 2
        "large": (3, 2, 1, {"answer_marker": 2, "error": 1}),
        "random@0.250": (3, 2, 1, {"answer_marker": 2, "error": 1}),  # glimp's share on the problems that ran
    }
    assert summary["failed"] == [
        {"id": "p1", "line": 2, "error": TOO_LONG, "conditions": ["glimp@1", "small", "large", "random@0.250"]}
    ]
    markdown = (tmp_path / "out" / SUMMARY_MD).read_text()
    assert markdown.endswith(
        f"| random@0.250 |{markdown.rsplit('| random@0.250 |', 1)[1].splitlines()[0]}\n\n"
        f"failed: id 'p1' (line 2) in glimp@1, small, large, random@0.250: {TOO_LONG}\n"
    )
    assert "| answer_marker 2, error 1 |" in markdown


def test_the_terminal_summary_shows_the_failed_problem(tmp_path):
    summary, _, _ = _run(tmp_path, pair=_pair_failing_on("problem 1", ContextError(TOO_LONG)))
    out = io.StringIO()
    render_runs.print_summary(Console(file=out, width=100, color_system=None), summary)
    lines = out.getvalue().splitlines()
    assert "finish: glimp@1: answer_marker 2, error 1; small: answer_marker 2, error 1;" in " ".join(
        " ".join(lines).split()
    )
    assert lines[-1] == f"failed: id 'p1' (line 2) in glimp@1, small, large, random@0.250: {TOO_LONG}"


def test_a_failed_problem_is_not_run_again_on_resume(tmp_path):
    _run(tmp_path, pair=_pair_failing_on("problem 1", ContextError(TOO_LONG)))
    seen: list[BenchProgress] = []
    summary, records, (small, large) = _run(tmp_path, resume=True, on_progress=seen.append)
    assert small.starts == [] and large.starts == []
    assert [p.status for p in seen] == ["skipped"] * 12
    assert len(records) == 12 and [r["finish_reason"] for r in records if r["id"] == "p1"] == ["error"] * 4
    assert (summary["finished"], summary["planned"]) == (12, 12)


def test_a_failed_problem_has_a_plain_progress_line(tmp_path):
    out = io.StringIO()
    display = BenchDisplay(Console(file=out, force_terminal=False, width=300), out=Path("runs/x"))
    with display:
        _run(tmp_path, modes="large", pair=_pair_failing_on("problem 1", ContextError(TOO_LONG)), on_progress=display)
    lines = out.getvalue().splitlines()
    assert lines[1] == f"[2/3] large problem 2/3 id=p1 failed ({TOO_LONG}) · acc 50.0% (1/2)"
    assert lines[2].startswith("[3/3] large problem 3/3 id=p2 correct ")


def test_any_other_error_still_stops_the_run_and_keeps_what_finished(tmp_path):
    with pytest.raises(RunError, match="the GPU fell over"):
        _run(tmp_path, pair=_pair_failing_on("problem 1", RunError("the GPU fell over")))
    records = _records(tmp_path / "out")
    assert [(r["mode"], r["id"]) for r in records] == [("glimp", "p0")]
    assert json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())["results"] == 1


def test_a_problem_text_that_cannot_be_encoded_is_a_failed_record():
    # load_problems refuses such a line; a Problem built another way gets a failed record, not a traceback.
    small, large = _pair(1)
    record = bench.solve(
        Problem(id="x", text="half \ud83d", gold="1", line=7),
        Condition("small"),
        small=small,
        large=large,
        settings=SETTINGS,
    )
    assert (record["finish_reason"], record["correct"], record["line"]) == ("error", False, 7)
    assert record["error"] == "the problem text holds a lone surrogate, \\ud83d at character 6, which is not text"
    assert small.starts == []


def _assert_summary_matches_records(summary: dict, records: list[dict]) -> None:
    by_label = {c["label"]: c for c in summary["conditions"]}
    large_latency = {r["id"]: r["latency_s"] for r in records if r["mode"] == "large" and r["finish_reason"] != "error"}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["mode"], r["threshold"], r["rate"]), []).append(r)
    assert len(by_label) == len(groups)
    for key, group in groups.items():
        c = by_label[Condition(*key).label]
        n = len(group)
        ran = [r for r in group if r["finish_reason"] != "error"]  # a failed problem counts as wrong, and only there
        accuracy = sum(r["correct"] for r in group) / n
        latencies = sorted(r["latency_s"] for r in ran)
        m = len(ran)
        tokens_small = sum(r["tokens"]["small"] for r in ran)
        tokens_large = sum(r["tokens"]["large"] for r in ran)
        assert (c["n"], c["errors"]) == (n, n - m)
        assert c["accuracy"] == pytest.approx(accuracy)
        assert c["accuracy_se"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / n))
        assert c["latency_mean_s"] == pytest.approx(sum(latencies) / m)
        assert c["latency_median_s"] == pytest.approx(
            latencies[m // 2] if m % 2 else (latencies[m // 2 - 1] + latencies[m // 2]) / 2
        )
        assert c["large_step_share"] == pytest.approx(sum(r["large_steps"] for r in ran) / sum(r["steps"] for r in ran))
        assert c["large_token_share"] == pytest.approx(tokens_large / (tokens_small + tokens_large))
        assert c["tokens_per_s"] == pytest.approx((tokens_small + tokens_large) / sum(latencies))
        assert c["finish_reasons"] == dict(Counter(r["finish_reason"] for r in group))
        paired = [(r["latency_s"], large_latency[r["id"]]) for r in ran if r["id"] in large_latency]
        if paired:
            assert c["latency_vs_large"] == pytest.approx(sum(a for a, _ in paired) / sum(b for _, b in paired))
    assert summary["results"] == len(records)


# --- bad input through the CLI (no model is loaded) ------------------------------------------------


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    return run_main(monkeypatch, capsys, "bench", *args)


@pytest.mark.parametrize(("content", "message"), BAD_DATA, ids=BAD_DATA_IDS)
def test_bad_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys, content, message):
    assert_bad_data_rejected("bench", tmp_path, monkeypatch, capsys, content, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modes", "glimp,smal"], "Invalid value for '--modes': unknown mode 'smal' (did you mean 'small'?)"),
        (
            ["--threshold", "0.5,high"],
            "Invalid value for '--threshold' / '-t': must be a number, 0 or more, got 'high'",
        ),
        (["--threshold", "nan"], "Invalid value for '--threshold' / '-t': must be a number, 0 or more, got 'nan'"),
        (["--rate", "1.5"], "Invalid value for '--rate': must be a number at least 0 and at most 1, got '1.5'"),
        (["--limit", "0"], "Invalid value for '--limit'"),
    ],
    ids=["unknown-mode", "bad-threshold", "nan-threshold", "bad-rate", "bad-limit"],
)
def test_bad_option_values_are_usage_errors(tmp_path, monkeypatch, capsys, args, message):
    code, err = _cli(monkeypatch, capsys, str(_data(tmp_path, 2)), "--out", str(tmp_path / "out"), *args)
    assert code == 2
    assert usage_error(err, "bench").startswith(message)
    assert not (tmp_path / "out").exists()


def test_resume_and_force_exclude_each_other(tmp_path, monkeypatch, capsys):
    code, err = _cli(
        monkeypatch, capsys, str(_data(tmp_path, 2)), "--out", str(tmp_path / "out"), "--resume", "--force"
    )
    assert code == 2
    assert one_error_line(err).startswith("--resume and --force exclude each other")


def _out_with_results_from(tmp_path: Path, fingerprint: dict) -> Path:
    out = tmp_path / "out"
    with open_store(out, fingerprint=fingerprint) as store:
        store.append({"id": "p0", "mode": "small", "threshold": None, "rate": None, "correct": True})
    return out


@pytest.mark.parametrize("resume", [False, True])
def test_out_with_results_from_other_settings_exits_2(tmp_path, monkeypatch, capsys, resume):
    out = _out_with_results_from(tmp_path, {"pair": "other"})
    code, err = _cli(monkeypatch, capsys, str(_data(tmp_path, 2)), "--out", str(out), *(["--resume"] if resume else []))
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(
        f"{out} holds results from different settings (pair: 'other' then, 'demo' now; small.name: '(unset)' then, "
    )
    assert line.endswith("pass --force to start over, or choose another --out")
    assert len(_records(out)) == 1  # untouched


def test_out_with_a_corrupt_middle_line_exits_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_FILE).write_text("{}")
    (out / RESULTS_FILE).write_text('{"id": 1, "mode": "small"}\nnot json\n{"id": 2, "mode": "small"}\n')
    code, err = _cli(monkeypatch, capsys, str(_data(tmp_path, 2)), "--out", str(out), "--resume")
    assert code == 2
    assert (
        one_error_line(err)
        == f"{out / RESULTS_FILE}:2: not a result record: fix or delete the line, or pass --force to start over"
    )


# --- end to end with the demo pair ---------------------------------------------------------------

E2E_CAPS = ("--temperature", "0", "--max-step-tokens", "32", "--thinking-budget", "64")


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory) -> str:
    """The shipped demo pair with one thread per model: two llama.cpp contexts with a thread per
    core each spin against each other (and against other processes) on small machines."""
    config = yaml.safe_load(PACKAGED_CONFIG.read_text(encoding="utf-8"))
    for model in config["models"].values():
        model["n_threads"] = 1
    path = tmp_path_factory.mktemp("config") / "models.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def _glimp(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GLIMP_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "glimp_cli", "bench", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def _gsm8k() -> Path:
    if not GSM8K.is_file():
        pytest.skip(f"benchmark data not found at {GSM8K}")
    return GSM8K


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_config):
    """Three gsm8k problems under all four modes, short caps, --json."""
    out = tmp_path_factory.mktemp("bench") / "gsm8k"
    proc = _glimp(str(_gsm8k()), "--limit", "3", *E2E_CAPS, "--config", demo_config, "--out", str(out), "--json")
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    return out, json.loads(stdout), stderr


def test_demo_run_writes_one_record_per_problem_and_mode(demo_run):
    out, _, _ = demo_run
    records = _records(out)
    assert sorted((r["id"], r["mode"]) for r in records) == sorted(
        (i, m) for i in range(3) for m in ("glimp", "small", "large", "random")
    )
    assert {r["gold"] for r in records} == {"18", "3", "70000"}
    assert all(len(r["entropies"]) == r["steps"] for r in records)
    assert all(r["threshold"] == 2.5 for r in records if r["mode"] in ("glimp", "random"))


def test_demo_run_summary_recomputes_from_records_and_is_printed_as_json(demo_run):
    out, printed, _ = demo_run
    assert printed == json.loads((out / SUMMARY_JSON).read_text())
    _assert_summary_matches_records(printed, _records(out))
    assert (printed["results"], printed["finished"], printed["planned"]) == (12, 12, 12)
    assert (out / SUMMARY_MD).read_text() == summary_markdown(printed)


def test_demo_run_shares_large_one_small_zero_random_near_glimp(demo_run):
    out, summary, _ = demo_run
    by_mode = {c["mode"]: c for c in summary["conditions"]}
    assert by_mode["large"]["large_step_share"] == 1.0 and by_mode["large"]["large_token_share"] == 1.0
    assert by_mode["small"]["large_step_share"] == 0.0 and by_mode["small"]["large_token_share"] == 0.0
    glimp, random_ = by_mode["glimp"], by_mode["random"]
    assert random_["rate"] == pytest.approx(glimp["large_steps"] / glimp["steps"], abs=1e-6)
    # A handful of random draws: allow three binomial standard errors (plus one step).
    n = random_["steps"]
    assert (
        abs(random_["large_step_share"] - random_["rate"])
        <= 3 * math.sqrt(random_["rate"] * (1 - random_["rate"]) / n) + 1 / n
    )


def test_demo_run_fingerprint_names_pair_models_and_data(demo_run):
    out, _, _ = demo_run
    fingerprint = json.loads((out / RUN_FILE).read_text())["fingerprint"]
    assert (fingerprint["pair"], fingerprint["small"]["name"], fingerprint["large"]["name"]) == (
        "demo",
        "smollm2-135m",
        "gemma3-270m",
    )
    assert fingerprint["sampling"] == {"temperature": 0.0, "top_p": 0.95, "seed": 0}
    assert (fingerprint["router"]["step_max_tokens"], fingerprint["router"]["thinking_budget"]) == (32, 64)
    assert fingerprint["data"]["file"] == str(GSM8K.resolve())


def test_sigint_midway_then_resume_gives_one_record_per_problem_and_mode(tmp_path, demo_config):
    out = tmp_path / "out"
    args = (
        str(_gsm8k()),
        "--limit",
        "2",
        "--modes",
        "small,large",
        *E2E_CAPS,
        "--config",
        demo_config,
        "--out",
        str(out),
    )
    proc = _glimp(*args)
    results = out / RESULTS_FILE
    deadline = time.monotonic() + 600
    while (
        not (results.exists() and results.read_text().count("\n") >= 1)
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert (
        f"interrupted: finished results stay in {results}, their summary in {out / SUMMARY_MD}; "
        "rerun with --resume to continue" in stderr
    )
    finished = _records(out)
    assert 1 <= len(finished) < 4
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["results"] == len(finished) and summary["planned"] == 4

    # A crash mid-write leaves half a line: the resumed run drops it and reruns that result.
    with results.open("a") as handle:
        handle.write('{"id": 1, "mode": "lar')
    proc = _glimp(*args, "--resume")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "dropped an incomplete last line" in stderr
    records = _records(out)
    assert sorted((r["id"], r["mode"]) for r in records) == [(0, "large"), (0, "small"), (1, "large"), (1, "small")]
    assert records[: len(finished)] == finished
    assert json.loads((out / SUMMARY_JSON).read_text())["finished"] == 4


def test_demo_pair_records_a_problem_too_long_for_its_context_and_goes_on(tmp_path):
    config = yaml.safe_load(PACKAGED_CONFIG.read_text(encoding="utf-8"))
    for model in config["models"].values():
        model.update(n_ctx=512, n_threads=1)
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    data = tmp_path / "data.jsonl"
    problems = [
        ("short", "What is 2 + 3?", "5"),
        ("long", "word " * 600 + "What is 1 + 1?", "2"),
        ("last", "What is 3 + 4?", "7"),
    ]
    data.write_text(
        "".join(json.dumps({"id": i, "problem": p, "answer": a}) + "\n" for i, p, a in problems), encoding="utf-8"
    )
    out = tmp_path / "out"
    caps = ("--temperature", "0", "--max-step-tokens", "8", "--thinking-budget", "8")
    proc = _glimp(
        str(data), "--modes", "small", *caps, "--config", str(tmp_path / "models.yaml"), "--out", str(out), "--json"
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    [condition] = json.loads(stdout)["conditions"]
    assert (condition["n"], condition["errors"], condition["finish_reasons"].get("error")) == (3, 1, 1)
    records = {r["id"]: r for r in _records(out)}
    assert [records[i]["finish_reason"] == "error" for i in ("short", "long", "last")] == [False, True, False]
    assert records["long"]["error"].startswith("the problem does not fit model 'smollm2-135m': its prompt is ")
    assert records["long"]["error"].endswith("and n_ctx is 512; raise n_ctx in models.yaml")
    assert "[2/3] small problem 2/3 id=long failed (the problem does not fit model 'smollm2-135m': " in stderr
