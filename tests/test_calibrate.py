"""Tests for glimp calibrate: the quantile rule, Pareto marking and the objectives on hand-made
tables, the probe and sweep passes on stepping fake sessions, saving and loading thresholds, the
CLI's bad-input errors, and end to end with the demo pair on a few gsm8k problems."""

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from conftest import GSM8K, NATALIA
from cli_helpers import BAD_DATA, BAD_DATA_IDS, assert_bad_data_rejected, one_error_line, run_main, usage_error
from glimp_cli import calibrate
from glimp_cli.render_runs import BenchDisplay, print_report
from glimp_cli.calibrate import (
    PROBE_KEY,
    choose,
    large_steps_at,
    make_plan,
    pareto_flags,
    probe_entropies,
    run_calibration,
    run_probe,
    run_sweep,
    short_number_between,
    threshold_for_rate,
)
from glimp_cli.calibration_file import apply_calibration, calibration_path, save_calibration
from glimp_cli.config import PACKAGED_CONFIG, load_config
from glimp_cli.errors import ConfigError, ContextError, DataError
from glimp_cli.config import PairSpec, router_settings
from glimp_cli.entropy import ENTROPY_MODES, initial_token_entropies
from glimp_cli.session import FirstToken, Counters, Sampling, StepOutput
from glimp_cli.store import RESULTS_FILE, open_store

SETTINGS = router_settings(
    PairSpec("test", "small", "large", threshold=1.0, answer_stops=()), sampling=Sampling(temperature=0.0, seed=0)
)
FINGERPRINT = {"pair": "fake", "small": {"name": "fake-small"}, "large": {"name": "fake-large"}}
VOCAB = 64
# Probe widths of three problems, four steps each: full entropy ln(width), top-20 entropy ln(min(width, 20)).
WIDTHS = {
    "problem 0": (2, 30, 5, 64),
    "problem 1": (1, 8, 40, 3),
    "problem 2": (16, 2, 25, 4),
    "problem 3": (3, 50, 6, 1),
}
# Entropies recorded by a probe pass of the demo pair on gsm8k 0-2 (full mode, nats).
RECORDED = [
    2.318048,
    1.128637,
    0.012601,
    1.016002,
    2.976944,
    3.014129,
    2.168225,
    1.272352,
    2.431014,
    2.650585,
    1.246653,
    1.903501,
    2.345423,
]


@pytest.fixture(autouse=True)
def _user_config_dir(tmp_path, monkeypatch):
    """Calibrations of the packaged models.yaml go to a temporary user config directory."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


# --- the quantile --------------------------------------------------------------------------------


def test_threshold_sends_exactly_round_rate_times_n_recorded_steps_to_the_large_model():
    n = len(RECORDED)
    for percent in range(5, 100, 5):
        rate = percent / 100
        chosen = threshold_for_rate(RECORDED, rate)
        expected = math.floor(rate * n + 0.5)
        assert (chosen.target_steps, chosen.large_steps, chosen.exact) == (expected, expected, True), rate
        assert large_steps_at(RECORDED, chosen.threshold) == expected
        assert chosen.share == expected / n


def test_threshold_is_a_short_number_in_the_middle_of_the_gap():
    chosen = threshold_for_rate(RECORDED, 0.25)  # 3 of 13 above: between 2.650585 and 2.431014
    assert (chosen.threshold, chosen.large_steps) == (2.5, 3)
    assert short_number_between(1.0, 1.0000004) == pytest.approx(1.0000002)


def test_halves_round_up():
    ten = [float(i) for i in range(10)]
    assert threshold_for_rate(ten, 0.25).large_steps == 3  # 2.5 -> 3
    assert threshold_for_rate(ten, 0.35).large_steps == 4  # 3.5 -> 4
    assert threshold_for_rate(ten, 0.24).large_steps == 2


def test_ties_at_the_boundary_give_the_closest_achievable_count():
    # Achievable counts above a threshold: 0, 1, 4, 5.
    assert (threshold_for_rate([3, 2, 2, 2, 1], 0.4).large_steps, threshold_for_rate([3, 2, 2, 2, 1], 0.4).exact) == (
        1,
        False,
    )
    assert threshold_for_rate([3, 2, 2, 2, 1], 0.6).large_steps == 4
    # Equally close (1 and 3 for a target of 2): the smaller count.
    chosen = threshold_for_rate([3, 2, 2, 1], 0.5)
    assert (chosen.target_steps, chosen.large_steps, chosen.threshold) == (2, 1, 2.5)


def test_rate_zero_is_above_every_entropy_and_rate_one_below():
    assert threshold_for_rate([3.0, 2.0, 1.0], 0.0).threshold == 3.5  # half of OPEN_GAP above the largest
    assert threshold_for_rate([3.0, 2.0, 1.0], 1.0).threshold == 0.5
    # Thresholds are >= 0, so a zero entropy always stays with the small model.
    chosen = threshold_for_rate([0.0, 1.0, 2.0], 1.0)
    assert (chosen.large_steps, chosen.exact) == (2, False)


def test_too_few_steps_says_how_many_were_collected():
    with pytest.raises(
        DataError,
        match=r"^only 4 steps collected from 1 problem: "
        r"a threshold for a large-step share of 0.25 needs at least 10; raise --limit",
    ):
        calibrate.check_enough_steps(4, [0.25], problems=1)
    assert calibrate.steps_needed(0.05) == 20
    assert calibrate.steps_needed(0.9) == 10


# --- Pareto marking and objectives on a hand-made table ------------------------------------------


def _row(label: str, accuracy: float, latency_s: float, *, large_latency_s: float = 10.0) -> dict:
    mode = "glimp" if label.startswith("glimp") else label
    return {
        "label": label,
        "mode": mode,
        "accuracy": accuracy,
        "latency_mean_s": latency_s,
        "latency_vs_large": latency_s / large_latency_s,
    }


TABLE = [
    _row("glimp@0.5", 0.8, 9.0),  # dominated by glimp@1: as accurate, faster
    _row("glimp@1", 0.8, 7.0),
    _row("glimp@2", 0.6, 5.0),
    _row("glimp@3", 0.5, 6.0),  # dominated by glimp@2
    _row("small", 0.4, 3.0),
    _row("large", 0.7, 10.0),  # dominated by glimp@1
]


def test_pareto_marks_rows_nothing_beats_on_both_accuracy_and_latency():
    assert pareto_flags(TABLE) == [False, True, True, False, True, False]
    twins = [_row("glimp@1", 0.5, 2.0), _row("glimp@2", 0.5, 2.0), _row("large", 0.4, 2.0)]
    assert pareto_flags(twins) == [True, True, False]


def test_a_row_whose_problems_all_failed_is_slowest_and_never_chosen():
    failed = {**_row("glimp@9", 0.0, 1.0), "latency_mean_s": None, "latency_vs_large": None}  # no problem could be run
    rows = [failed, _row("glimp@1", 0.5, 2.0), _row("large", 0.6, 4.0)]
    assert pareto_flags(rows) == [False, True, True]
    assert choose(rows, objective="latency", max_latency=0.8, margin=1.0)[0]["label"] == "glimp@1"
    assert choose(rows, objective="accuracy", max_latency=0.8, margin=0.0)[0]["label"] == "glimp@1"


def test_accuracy_objective_takes_the_most_accurate_within_the_latency_budget():
    assert choose(TABLE, objective="accuracy", max_latency=0.8, margin=0.0)[0]["label"] == "glimp@1"
    assert choose(TABLE, objective="accuracy", max_latency=0.6, margin=0.0)[0]["label"] == "glimp@2"
    chosen, rule, reason = choose(TABLE, objective="accuracy", max_latency=0.4, margin=0.0)
    assert chosen is None
    assert reason == f"{rule}: no threshold qualifies (the fastest, glimp@2, takes 0.50x large)"


def test_latency_objective_takes_the_fastest_within_the_margin_of_large():
    assert choose(TABLE, objective="latency", max_latency=0.8, margin=0.0)[0]["label"] == "glimp@1"
    assert choose(TABLE, objective="latency", max_latency=0.8, margin=0.1)[0]["label"] == "glimp@2"
    better_large = [*TABLE[:-1], _row("large", 0.9, 10.0)]
    chosen, _, reason = choose(better_large, objective="latency", max_latency=0.8, margin=0.0)
    assert chosen is None and reason.endswith("no threshold qualifies (the most accurate, glimp@0.5, reaches 80.0%)")


# --- the passes on stepping fake sessions ---------------------------------------------------------


class StepSession:
    """A Session that thinks four steps per problem, then writes '\\boxed{' and, asked for the
    answer, '<answer>}'. One token per character. The small model's probe at step i of a problem is
    uniform over widths[problem][i] of VOCAB tokens; after a step by the large model it uses
    widths_after_large, when given (a context the large model changed)."""

    think = None  # not a reasoning model: no think block

    def __init__(self, name: str, *, widths=None, widths_after_large=None, answers=None):
        self.name = name
        self.widths = widths or {}
        self.widths_after_large = widths_after_large
        self.answers = answers or {}
        self.counters = Counters()
        self.starts: list[str] = []
        self.too_long: set[str] = set()  # problems whose start() raises ContextError
        self._problem = ""
        self._text = ""

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        if problem in self.too_long:
            raise ContextError(f"the problem does not fit model '{self.name}'")
        self.starts.append(problem)
        self._problem, self._text, self.counters = problem, "", Counters()

    @property
    def text(self) -> str:
        return self._text

    def catch_up(self, transcript: str) -> None:
        self.counters.prefill_tokens += len(transcript) - len(self._text)
        self._text = transcript

    def context_room(self) -> int:
        return 1_000_000

    def context_tokens(self) -> int:
        return len(self._text)

    entropy_modes = ENTROPY_MODES

    def probe(self, *, top_k: int) -> FirstToken:
        widths = self.widths_after_large if self.widths_after_large and "large step" in self._text else self.widths
        width = widths[self._problem][self._text.count("\n\n")]
        logits = np.array([0.0] * width + [-np.inf] * (VOCAB - width))
        return FirstToken(token=0, text="t", entropies=initial_token_entropies(logits, top_k=top_k))

    def generate_step(
        self, *, first_token: int | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        steps_done = self._text.count("\n\n")
        if self._text.endswith("\\boxed{"):
            text, finish, stop = self.answers.get(self._problem, "0") + "}", "eos", None
        elif steps_done < 3:
            text, finish, stop = f"{self.name} step {steps_done + 1}.\n\n", "stop", "\n\n"
        else:
            text, finish, stop = "So \\boxed{", "stop", "\\boxed{"
        yield text
        self._text += text
        self.counters.generated_tokens += len(text)
        return StepOutput(text=text, tokens=len(text), finish=finish, stop=stop)


def _data(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "problem": f"problem {i}", "answer": str(10 + i)}) + "\n" for i in range(n))
    )
    return path


def _pair(*, widths_after_large=None):
    """The large model answers every problem correctly, the small one only problem 0."""
    small = StepSession("small", widths=WIDTHS, widths_after_large=widths_after_large, answers={"problem 0": "10"})
    large = StepSession("large", answers={f"problem {i}": str(10 + i) for i in range(3)})
    return small, large


def _plan(tmp_path: Path, **options) -> calibrate.CalibrationPlan:
    return make_plan(_data(tmp_path), settings=SETTINGS, **options)


def _store(tmp_path: Path, *, resume: bool = False):
    return open_store(tmp_path / "out", fingerprint=FINGERPRINT, resume=resume)


def _probe(tmp_path: Path, pair=None, *, resume: bool = False) -> list[dict]:
    small, large = pair or _pair()
    with _store(tmp_path, resume=resume) as store:
        return run_probe(_plan(tmp_path).bench, small=small, large=large, store=store)


def test_probe_pass_records_every_step_in_both_modes(tmp_path):
    records = _probe(tmp_path)
    assert [(r["id"], r["mode"], r["answer_model"]) for r in records] == [(f"p{i}", "small", "small") for i in range(3)]
    for record, widths in zip(records, WIDTHS.values()):
        assert record[PROBE_KEY]["full"] == pytest.approx([math.log(w) for w in widths])
        assert record[PROBE_KEY]["topk"] == pytest.approx([math.log(min(w, 20)) for w in widths])
    stored = [json.loads(line) for line in (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()]
    assert stored == records  # full precision survives JSON


def test_probe_pass_reuses_stored_records(tmp_path):
    first = _probe(tmp_path)
    small, large = _pair()
    assert _probe(tmp_path, (small, large), resume=True) == first
    assert small.starts == []


def test_report_has_both_modes_and_the_threshold_of_the_pairs_mode(tmp_path):
    small, large = _pair()
    with _store(tmp_path) as store:
        report = run_calibration(_plan(tmp_path), small=small, large=large, store=store)
    assert set(report) == {
        "pair",
        "small",
        "large",
        "data",
        "out",
        "entropy_mode",
        "probe",
        "sweep",
        "method",
        "threshold",
        "target_rate",
        "large_share",
        "saved",
    }
    assert (report["pair"], report["small"], report["entropy_mode"], report["method"], report["sweep"]) == (
        "fake",
        "fake-small",
        "full",
        "probe",
        None,
    )
    probe = report["probe"]
    assert (probe["problems"], probe["steps"], probe["target_rate"]) == (3, 12, 0.25)
    full, topk = probe["modes"]["full"], probe["modes"]["topk"]
    # full: ln 64, ln 40, ln 30 above 3.3; topk: four steps tie at ln 20, so 4 is the closest count to 3.
    assert full["threshold"] == {
        "threshold": 3.3,
        "rate": 0.25,
        "steps": 12,
        "target_steps": 3,
        "large_steps": 3,
        "share": 0.25,
        "exact": True,
    }
    assert (topk["threshold"]["threshold"], topk["threshold"]["large_steps"], topk["threshold"]["exact"]) == (
        2.9,
        4,
        False,
    )
    assert (report["threshold"], report["large_share"]) == (3.3, 0.25)
    assert set(full["distribution"]) == {"min", "p10", "p25", "p50", "p75", "p90", "max", "mean"}
    assert full["distribution"]["max"] == round(math.log(64), 6)
    assert sum(b["steps"] for b in full["histogram"]) == 12 and sum(b["large_steps"] for b in full["histogram"]) == 3
    assert full["histogram"][0]["low"] == 0.0 and all(
        b["high"] - b["low"] == pytest.approx(0.5) for b in full["histogram"]
    )


def test_probe_with_too_few_steps_is_a_data_error(tmp_path):
    small, large = _pair()
    plan = make_plan(_data(tmp_path, n=2), settings=SETTINGS)
    with _store(tmp_path) as store, pytest.raises(DataError, match="^only 8 steps collected from 2 problems"):
        run_calibration(plan, small=small, large=large, store=store)


def test_a_problem_that_cannot_be_run_is_skipped_by_the_quantile_and_counted(tmp_path):
    small, large = _pair()
    small.too_long.add("problem 1")
    with _store(tmp_path) as store:
        report = run_calibration(
            make_plan(_data(tmp_path, n=4), settings=SETTINGS), small=small, large=large, store=store
        )
        failed = store.get(("p1", "small", None, None))
    assert (failed["finish_reason"], failed[PROBE_KEY]) == ("error", {"full": [], "topk": []})
    probe = report["probe"]
    assert (probe["problems"], probe["failed"], probe["steps"]) == (3, 1, 12)
    entropies = [math.log(w) for problem in ("problem 0", "problem 2", "problem 3") for w in WIDTHS[problem]]
    assert report["threshold"] == threshold_for_rate(entropies, 0.25).threshold
    out = io.StringIO()
    print_report(Console(file=out, width=300), report)
    assert out.getvalue().startswith(
        'probe: 12 steps from 3 problems (and 1 that could not be run, skipped: see "error" in results.jsonl), '
    )


def test_too_few_steps_counts_the_problems_that_could_not_be_run(tmp_path):
    small, large = _pair()
    small.too_long.add("problem 1")
    plan = make_plan(_data(tmp_path, n=3), settings=SETTINGS)
    message = r'^only 8 steps collected from 2 problems \(1 more could not be run: see "error" in results.jsonl\): '
    with _store(tmp_path) as store, pytest.raises(DataError, match=message):
        run_calibration(plan, small=small, large=large, store=store)


def _sweep(tmp_path: Path, candidates: dict, pair=None) -> tuple[list[dict], list[dict], list[dict]]:
    small, large = pair or _pair()
    plan = _plan(tmp_path, sweep=True, rates=(0.25,))
    with _store(tmp_path) as store:
        probe = run_probe(plan.bench, small=small, large=large, store=store)
        rows = run_sweep(plan, candidates, small=small, large=large, store=store)
        routed = [r for r in store.records if r["mode"] == "glimp"]
    return probe, rows, routed


def test_a_routed_run_reproduces_the_probe_share_when_entropies_do_not_depend_on_the_writer(tmp_path):
    entropies = [math.log(w) for widths in WIDTHS.values() for w in widths]
    at_rate = threshold_for_rate(entropies, 0.25)
    _, rows, _ = _sweep(tmp_path, {at_rate.threshold: 0.25})
    glimp = next(row for row in rows if row["mode"] == "glimp")
    assert glimp["large_step_share"] == glimp["probe_share"] == at_rate.share == 0.25
    assert [row["label"] for row in rows] == ["glimp@3.3", "small", "large"]


def test_a_routed_run_follows_the_rule_on_the_entropies_it_sees(tmp_path):
    # After a large step every probe is uniform over 64 tokens: the routed run sees other entropies.
    after_large = {problem: (64, 64, 64, 64) for problem in WIDTHS}
    probe, rows, routed = _sweep(tmp_path, {3.3: 0.25, 4.7: 0.0}, pair=_pair(widths_after_large=after_large))
    by_label = {row["label"]: row for row in rows}
    # Above every probe entropy (ln 64 = 4.16): the routed run is the probe run, share 0.
    unrouted = [r for r in routed if r["threshold"] == 4.7]
    assert [r["entropies"] for r in unrouted] == [r["entropies"] for r in probe]
    assert by_label["glimp@4.7"]["large_step_share"] == 0.0
    # At the 25% threshold: the share among the run's own entropies, not the probe's 25%.
    at_rate = [r for r in routed if r["threshold"] == 3.3]
    assert [r["large_steps"] for r in at_rate] == [large_steps_at(r["entropies"], 3.3) for r in at_rate] == [3, 2, 0]
    assert (by_label["glimp@3.3"]["probe_share"], by_label["glimp@3.3"]["large_step_share"]) == (0.25, 5 / 12)
    # Up to its first large step a problem's routed entropies are the probe's.
    for routed_record, probe_record in zip(at_rate, probe):
        entropies = routed_record["entropies"]
        first_large = next((i for i, e in enumerate(entropies) if e > 3.3), len(entropies) - 1)
        assert entropies[: first_large + 1] == probe_record["entropies"][: first_large + 1]


def test_sweep_rows_mark_the_pareto_front_and_the_choice(tmp_path):
    small, large = _pair()
    with _store(tmp_path) as store:
        report = run_calibration(
            _plan(tmp_path, sweep=True, rates=(0.25,), thresholds=(5.0,), objective="latency", margin=1.0),
            small=small,
            large=large,
            store=store,
        )
    rows = report["sweep"]["rows"]
    assert [(row["label"], row["target_rate"]) for row in rows] == [
        ("glimp@3.3", 0.25),
        ("glimp@5", None),
        ("small", None),
        ("large", None),
    ]
    assert [row["pareto"] for row in rows] == pareto_flags(rows)
    chosen = [row for row in rows if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["mode"] == "glimp"
    assert (report["method"], report["threshold"], report["large_share"]) == (
        "sweep",
        chosen[0]["threshold"],
        chosen[0]["large_step_share"],
    )


def test_progress_lines_count_the_probe_then_the_sweep_and_report_reused_results_once(tmp_path):
    def run(resume: bool) -> list[str]:
        out = io.StringIO()
        small, large = _pair()
        plan = _plan(tmp_path, sweep=True, rates=(0.25,))
        with _store(tmp_path, resume=resume) as store:
            run_calibration(
                plan,
                small=small,
                large=large,
                store=store,
                display=lambda: BenchDisplay(Console(file=out, width=200), out=Path("runs/x")),
            )
        return out.getvalue().splitlines()

    first = run(resume=False)
    assert [line.split(" id=")[0] for line in first] == [
        *(f"[{i}/3] probe problem {i}/3" for i in (1, 2, 3)),
        *(f"[{3 + i}/9] glimp@3.3 problem {i}/3" for i in (1, 2, 3)),
        *(f"[{6 + i}/9] large problem {i}/3" for i in (1, 2, 3)),
    ]
    assert run(resume=True) == [
        "skipped 3 results already in runs/x/results.jsonl",
        "skipped 6 results already in runs/x/results.jsonl",
    ]


# --- saving and loading ---------------------------------------------------------------------------

CONFIG_WITH_COMMENTS = """\
# my models, by hand
models:
  s:   # the small one
    path: s.gguf
  l:
    path: l.gguf
pairs:
  p:
    small: s
    large: l
    threshold: 2.5   # tuned by eye
  q:
    small: l
    large: l
"""


def _report(**changes) -> dict:
    report = {
        "pair": "p",
        "small": "s",
        "large": "l",
        "data": "/data/dev.jsonl",
        "entropy_mode": "topk",
        "probe": {"problems": 30, "steps": 400},
        "sweep": None,
        "method": "probe",
        "threshold": 1.7,
        "target_rate": 0.25,
        "large_share": 0.25,
        "saved": None,
    }
    return {**report, **changes}


def test_saved_threshold_and_mode_replace_the_pairs_and_models_yaml_is_untouched(tmp_path):
    config_path = tmp_path / "models.yaml"
    config_path.write_text(CONFIG_WITH_COMMENTS)
    saved = save_calibration(_report(), calibration_path(config_path))
    assert saved == tmp_path / "glimp-calibration.yaml"
    assert config_path.read_text() == CONFIG_WITH_COMMENTS
    config = apply_calibration(load_config(config_path))
    assert (config.pair("p").threshold, config.pair("p").entropy) == (1.7, "topk")
    assert (config.pair("q").threshold, config.pair("q").entropy) == (1.0, "full")
    entry = yaml.safe_load(saved.read_text())["pairs"]["p"]
    assert set(entry) == {
        "threshold",
        "entropy",
        "small",
        "large",
        "data",
        "problems",
        "steps",
        "method",
        "target_rate",
        "large_share",
        "date",
    }
    assert saved.read_text().startswith("# glimp calibration:")


def test_saving_keeps_other_pairs_and_replaces_this_one(tmp_path):
    path = tmp_path / "glimp-calibration.yaml"
    save_calibration(_report(pair="q", small="l"), path)
    save_calibration(_report(threshold=1.0), path)
    save_calibration(_report(threshold=2.0), path)
    config_path = tmp_path / "models.yaml"
    config_path.write_text(CONFIG_WITH_COMMENTS)
    config = apply_calibration(load_config(config_path))
    assert (config.pair("p").threshold, config.pair("q").threshold) == (2.0, 1.7)


def test_a_calibration_for_other_models_is_ignored(tmp_path):
    config_path = tmp_path / "models.yaml"
    config_path.write_text(CONFIG_WITH_COMMENTS)
    save_calibration(_report(small="another-small"), calibration_path(config_path))
    assert apply_calibration(load_config(config_path)).pair("p").threshold == 2.5


def test_a_broken_calibration_file_is_a_config_error_naming_it(tmp_path):
    config_path = tmp_path / "models.yaml"
    config_path.write_text(CONFIG_WITH_COMMENTS)
    path = calibration_path(config_path)
    path.write_text("pairs:\n  p:\n    small: s\n    large: l\n    threshold: high\n    entropy: full\n")
    with pytest.raises(
        ConfigError, match=f"^{path}:5: pair 'p': threshold must be a number, got 'high': fix or delete the entry"
    ):
        apply_calibration(load_config(config_path))
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=f"^{path}: expected a mapping 'pairs:'"):
        save_calibration(_report(), path)


def test_the_packaged_config_is_calibrated_in_the_user_config_dir(tmp_path, monkeypatch):
    assert calibration_path(PACKAGED_CONFIG) == tmp_path / "xdg" / "glimp" / "glimp-calibration.yaml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert calibration_path(PACKAGED_CONFIG) == tmp_path / "home" / ".config" / "glimp" / "glimp-calibration.yaml"


# --- bad input through the CLI (no model is loaded) ------------------------------------------------


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    return run_main(monkeypatch, capsys, "calibrate", *args)


@pytest.mark.parametrize(("content", "message"), BAD_DATA, ids=BAD_DATA_IDS)
def test_bad_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys, content, message):
    assert_bad_data_rejected("calibrate", tmp_path, monkeypatch, capsys, content, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-rate", "0"], "Invalid value for '--target-rate': must be a number above 0 and below 1, got '0'"),
        (["--target-rate", "1"], "Invalid value for '--target-rate': must be a number above 0 and below 1, got '1'"),
        (
            ["--target-rate", "1.5"],
            "Invalid value for '--target-rate': must be a number above 0 and below 1, got '1.5'",
        ),
        (
            ["--target-rate", "lots"],
            "Invalid value for '--target-rate': must be a number above 0 and below 1, got 'lots'",
        ),
        (["--sweep", "--rates", "0.2,1"], "Invalid value for '--rates': must be a number above 0 and below 1, got '1'"),
        (["--sweep", "--thresholds", "1,x"], "Invalid value for '--thresholds': must be a number, 0 or more, got 'x'"),
        (
            ["--sweep", "--rates", "0.2", "--max-latency", "0"],
            "Invalid value for '--max-latency': must be a number above 0, got '0'",
        ),
        (
            ["--sweep", "--rates", "0.2", "--margin", "2"],
            "Invalid value for '--margin': must be a number at least 0 and at most 1, got '2'",
        ),
        (
            ["--sweep", "--thresholds", " , "],
            "Invalid value for '--thresholds': must be one or more numbers separated by commas, got ' , '",
        ),
    ],
    ids=[
        "rate-0",
        "rate-1",
        "rate-above-1",
        "rate-not-a-number",
        "bad-rates",
        "bad-thresholds",
        "max-latency",
        "margin",
        "empty-thresholds",
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path, monkeypatch, capsys, args, message):
    code, err = _cli(monkeypatch, capsys, str(_data(tmp_path)), "--out", str(tmp_path / "out"), *args)
    assert code == 2
    assert usage_error(err, "calibrate") == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep"], "--sweep has no thresholds to try: pass --thresholds"),
        (["--rates", "0.2"], "--thresholds and --rates give the candidates of a sweep: add --sweep"),
        (
            ["--sweep", "--rates", "0.2", "--objective", "acuracy"],
            "--objective must be one of accuracy, latency, got 'acuracy' (did you mean 'accuracy'?)",
        ),
        (["--resume", "--force"], "--resume and --force exclude each other"),
    ],
    ids=["sweep-alone", "rates-without-sweep", "objective", "resume-and-force"],
)
def test_bad_option_combinations_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    code, err = _cli(monkeypatch, capsys, str(_data(tmp_path)), "--out", str(tmp_path / "out"), *args)
    assert code == 2
    assert one_error_line(err).startswith(message)
    assert not (tmp_path / "out").exists()


# --- end to end with the demo pair ---------------------------------------------------------------

E2E_CAPS = ("--temperature", "0", "--max-step-tokens", "16", "--thinking-budget", "64")
QUICK_ASK = ("--temperature", "0", "--max-step-tokens", "8", "--thinking-budget", "8")


def _gsm8k() -> Path:
    if not GSM8K.is_file():
        pytest.skip(f"benchmark data not found at {GSM8K}")
    return GSM8K


def _glimp(*args: str, home: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "xdg"), "PYTHONUNBUFFERED": "1"}
    env.pop("GLIMP_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "glimp_cli", *args], env=env, text=True, capture_output=True, timeout=timeout, cwd=home
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The shipped models.yaml, comments and all, with one thread per model (two llama.cpp contexts
    with a thread per core spin against each other on small machines), probed on three gsm8k
    problems with --save --json."""
    home = tmp_path_factory.mktemp("calibrate")
    config = home / "models.yaml"
    config.write_text(
        PACKAGED_CONFIG.read_text(encoding="utf-8").replace("    n_ctx: 4096\n", "    n_ctx: 4096\n    n_threads: 1\n"),
        encoding="utf-8",
    )
    original = config.read_text(encoding="utf-8")
    out = home / "out"
    result = _glimp(
        "calibrate",
        str(_gsm8k()),
        "--limit",
        "3",
        *E2E_CAPS,
        "--config",
        str(config),
        "--out",
        str(out),
        "--save",
        "--json",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    return {
        "home": home,
        "config": config,
        "original": original,
        "out": out,
        "report": json.loads(result.stdout),
        "stderr": result.stderr,
    }


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def test_demo_probe_json_reports_both_modes_and_a_threshold_that_splits_the_steps(demo):
    report, records = demo["report"], _records(demo["out"])
    assert (report["pair"], report["small"], report["large"], report["entropy_mode"], report["method"]) == (
        "demo",
        "smollm2-135m",
        "gemma3-270m",
        "full",
        "probe",
    )
    assert [(r["id"], r["mode"]) for r in records] == [(0, "small"), (1, "small"), (2, "small")]
    probe = report["probe"]
    assert probe["steps"] == sum(r["steps"] for r in records) >= 10
    for mode in ("full", "topk"):
        entropies = probe_entropies(records, mode)
        at_rate = probe["modes"][mode]["threshold"]
        assert len(entropies) == probe["steps"]
        assert at_rate["target_steps"] == math.floor(0.25 * len(entropies) + 0.5)
        assert at_rate["large_steps"] == large_steps_at(entropies, at_rate["threshold"])
        assert sum(b["steps"] for b in probe["modes"][mode]["histogram"]) == len(entropies)
    assert [round(e, 6) for e in probe_entropies(records, "full")] == [e for r in records for e in r["entropies"]]
    assert report["threshold"] == probe["modes"]["full"]["threshold"]["threshold"]
    assert "[3/3] probe problem 3/3 id=2" in demo["stderr"]


def test_demo_save_writes_beside_models_yaml_and_keeps_its_comments(demo):
    saved = demo["home"] / "glimp-calibration.yaml"
    assert demo["report"]["saved"] == str(saved)
    assert demo["config"].read_text(encoding="utf-8") == demo["original"]
    assert "# glimp models.yaml: named models" in demo["original"]
    entry = yaml.safe_load(saved.read_text())["pairs"]["demo"]
    assert (entry["threshold"], entry["entropy"], entry["data"], entry["problems"], entry["steps"]) == (
        demo["report"]["threshold"],
        "full",
        str(GSM8K.resolve()),
        3,
        demo["report"]["probe"]["steps"],
    )


def test_demo_probe_text_shows_histograms_quantiles_and_the_threshold(demo):
    result = _glimp(
        "calibrate",
        str(_gsm8k()),
        "--limit",
        "3",
        *E2E_CAPS,
        "--config",
        str(demo["config"]),
        "--out",
        str(demo["out"]),
        "--resume",
        home=demo["home"],
    )
    assert result.returncode == 0, result.stderr
    out, threshold = result.stdout, demo["report"]["threshold"]
    assert "\x1b[" not in out
    assert "full entropy (the pair's)" in out and "\ntopk entropy" in out
    assert f"┄┄ {threshold:g} nats: small at or below (█), large above (▓)" in out
    assert " mode   min   p10   p25   p50   p75   p90   max  mean  threshold  above  share" in out
    assert f"threshold {threshold:g} nats (full entropy): " in out
    assert "skipped 3 results already in" in result.stderr


def test_demo_ask_and_bench_use_the_saved_threshold_unless_one_is_given(demo):
    threshold, config = demo["report"]["threshold"], str(demo["config"])
    ask = _glimp("ask", NATALIA, "--json", *QUICK_ASK, "--config", config, home=demo["home"])
    assert ask.returncode == 0, ask.stderr
    assert json.loads(ask.stdout.splitlines()[0])["threshold"] == threshold
    given = _glimp("ask", NATALIA, "--json", *QUICK_ASK, "--threshold", "1.5", "--config", config, home=demo["home"])
    assert json.loads(given.stdout.splitlines()[0])["threshold"] == 1.5
    bench = _glimp(
        "bench",
        str(_gsm8k()),
        "--limit",
        "1",
        "--modes",
        "glimp",
        *QUICK_ASK,
        "--config",
        config,
        "--out",
        str(demo["home"] / "bench"),
        "--json",
        home=demo["home"],
    )
    assert bench.returncode == 0, bench.stderr
    assert [c["label"] for c in json.loads(bench.stdout)["conditions"]] == [f"glimp@{threshold:g}"]


def test_demo_too_few_steps_exits_2_saying_how_many(demo):
    result = _glimp(
        "calibrate",
        str(_gsm8k()),
        "--limit",
        "1",
        *E2E_CAPS,
        "--config",
        str(demo["config"]),
        "--out",
        str(demo["home"] / "one"),
        home=demo["home"],
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("[1/1] probe problem 1/1 id=0 ") and len(lines) == 2
    assert (
        lines[1].startswith("glimp: error: only ")
        and "steps collected from 1 problem: " in lines[1]
        and "needs at least 10" in lines[1]
    )


def test_demo_sweep_reproduces_what_the_probe_predicts(demo):
    records = _records(demo["out"])[:3]
    entropies = probe_entropies(records, "full")
    above_all = threshold_for_rate(entropies, 0.0).threshold
    at_rate = threshold_for_rate(entropies, 0.25)
    result = _glimp(
        "calibrate",
        str(_gsm8k()),
        "--limit",
        "3",
        *E2E_CAPS,
        "--config",
        str(demo["config"]),
        "--out",
        str(demo["out"]),
        "--resume",
        "--sweep",
        "--rates",
        "0.25",
        "--thresholds",
        f"{above_all}",
        "--json",
        home=demo["home"],
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["label"]: row for row in report["sweep"]["rows"]}
    assert list(rows) == [f"glimp@{at_rate.threshold:g}", f"glimp@{above_all:g}", "small", "large"]
    assert [row["pareto"] for row in rows.values()] == pareto_flags(list(rows.values()))
    assert rows["small"]["n"] == rows["large"]["n"] == 3
    routed = {(r["id"], r["threshold"]): r for r in _records(demo["out"]) if r["mode"] == "glimp"}
    for probe_record in records:
        # Above every probe entropy the routed run is the probe run: no large step, the same entropies.
        unrouted = routed[(probe_record["id"], above_all)]
        assert (unrouted["large_steps"], unrouted["entropies"]) == (0, probe_record["entropies"])
        # At the 25% threshold: the share among the run's own entropies; the same entropies as the
        # probe up to the first step sent to the large model.
        record = routed[(probe_record["id"], at_rate.threshold)]
        assert record["large_steps"] == large_steps_at(record["entropies"], at_rate.threshold)
        first_large = next(
            (i for i, e in enumerate(record["entropies"]) if e > at_rate.threshold), len(record["entropies"]) - 1
        )
        assert record["entropies"][: first_large + 1] == probe_record["entropies"][: first_large + 1]
    assert rows[f"glimp@{at_rate.threshold:g}"]["probe_share"] == at_rate.share
    assert rows[f"glimp@{above_all:g}"]["large_step_share"] == 0.0


def test_a_save_that_cannot_be_written_still_prints_the_threshold_then_one_error(tmp_path, monkeypatch, capsys):
    import errno

    from glimp_cli import calibration_file, cli
    from glimp_cli.files import write_error

    def full_disk(path, text):
        raise write_error(Path(path), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(cli, "open_pair", lambda small, large: _pair())
    monkeypatch.setattr(calibration_file, "write_atomic", full_disk)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(
        sys, "argv", ["glimp", "calibrate", str(_data(tmp_path)), "--out", str(tmp_path / "out"), "--json", "--save"]
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()
    out, err = capsys.readouterr()
    assert exited.value.code == 1
    assert json.loads(out)["threshold"] is not None and json.loads(out)["saved"] is None
    path = tmp_path / "xdg" / "glimp" / "glimp-calibration.yaml"
    assert err.splitlines()[-1] == f"glimp: error: cannot write {path}: No space left on device"
    assert err.count("glimp: error:") == 1 and "Traceback" not in err
    assert not path.exists()
