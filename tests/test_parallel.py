"""glimp bench and calibrate with problems in flight at once (--parallel), on sleeping fake sessions that
stand in for served models: the same records as one at a time, nothing lost or written twice when
interrupted or when a problem fails, and the wall time the overlap saves."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from glimp_cli.config import ModelSpec

from cli_helpers import one_error_line, run_main, usage_error
from fakes import ServedModel
from glimp_cli import cli, parallel
from glimp_cli.bench import BenchProgress, make_plan, run_bench, summarize
from glimp_cli.calibrate import make_plan as make_calibration_plan
from glimp_cli.calibrate import run_calibration
from glimp_cli.config import PairSpec, router_settings
from glimp_cli.errors import ConfigError, ContextError, RunError
from glimp_cli.parallel import Cancelled, SessionPairs, check_parallel, run_parallel
from glimp_cli.session import Sampling
from glimp_cli.store import RESULTS_FILE, SUMMARY_JSON, open_store, result_key

SETTINGS = router_settings(
    PairSpec("test", "small", "large", threshold=1.0, answer_stops=()), sampling=Sampling(temperature=0.0, seed=0)
)
FINGERPRINT = {"pair": "fake"}
MODES = ("glimp", "small", "large", "random")
TIMING = ("latency_s",)  # the only record field that differs between runs
N = 12
DELAY_S = 0.002


def _data(tmp_path: Path, n: int = N) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "problem": f"problem {i}", "answer": str(10 + i)}) + "\n" for i in range(n))
    )
    return path


class Served:
    """A served pair: the large model answers every problem, the small one the even-numbered ones."""

    def __init__(self, n: int = N, *, delay_s: float = DELAY_S, steps: int = 4) -> None:
        self.small = ServedModel(
            "small",
            steps=steps,
            delay_s=delay_s,
            probe_widths=(1, 8, 1, 2, 1),
            answers={f"problem {i}": str(10 + i) if i % 2 == 0 else "0" for i in range(n)},
        )
        self.large = ServedModel(
            "large", steps=steps, delay_s=delay_s, answers={f"problem {i}": str(10 + i) for i in range(n)}
        )

    def make(self):
        return self.small.session(), self.large.session()

    @property
    def starts(self) -> list[tuple[str, int]]:
        return self.small.starts + self.large.starts


def _bench(tmp_path, served: Served, *, parallel: int, n: int = N, modes=MODES, resume=False, on_progress=None):
    plan = make_plan(_data(tmp_path, n), settings=SETTINGS, modes=modes, parallel=parallel)
    with open_store(tmp_path / "out", fingerprint=FINGERPRINT, resume=resume) as store:
        summary = run_bench(plan, sessions=SessionPairs(served.make), store=store, on_progress=on_progress)
    return summary, _records(tmp_path / "out")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def _untimed(records: list[dict]) -> dict:
    return {result_key(r): {k: v for k, v in r.items() if k not in TIMING} for r in records}


def _sequential_order(records: list[dict], n: int = N) -> list[dict]:
    """The records in the order a run one problem at a time writes them: by mode, then by problem."""
    return sorted(records, key=lambda r: (MODES.index(r["mode"]), int(r["id"][1:])))


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("glimp-worker")]


# --- the same results ------------------------------------------------------------------------------


def test_four_in_flight_give_the_same_records_as_one_at_a_time(tmp_path):
    _, one = _bench(tmp_path / "one", Served(), parallel=1)
    summary, four = _bench(tmp_path / "four", Served(), parallel=4)
    assert len(four) == len(one) == 4 * N
    assert _untimed(four) == _untimed(one)
    assert len({result_key(r) for r in four}) == 4 * N
    # The summary of those records written in completion order is the one they give in sequential order.
    stored = json.loads((tmp_path / "four" / "out" / SUMMARY_JSON).read_text())
    assert stored == summary
    in_order = summarize(_sequential_order(four), run=FINGERPRINT)
    assert {k: v for k, v in summary.items() if k not in ("planned", "finished", "overhead", "throughput")} == {
        k: v for k, v in in_order.items() if k not in ("overhead", "throughput")
    }


def test_the_summary_is_the_same_for_the_records_in_any_order(tmp_path):
    served = Served()
    served.small.fail_at_start["problem 3"] = ContextError("problem 3 is too long")
    served.small.fail_at_start["problem 7"] = ContextError("problem 7 is too long")
    _, records = _bench(tmp_path, served, parallel=1)
    rng = random.Random(1)
    for record in records:  # latencies of many magnitudes: a plain float sum would depend on the order
        record["latency_s"] = rng.choice([1e-6, 0.1, 3.3, 1e4]) * rng.random()
    expected = summarize(records, run=FINGERPRINT)
    assert [entry["id"] for entry in expected["failed"]] == ["p3", "p7"]
    for _ in range(20):
        shuffled = records[:]
        rng.shuffle(shuffled)
        assert summarize(shuffled, run=FINGERPRINT) == expected


def test_each_in_flight_problem_has_its_own_pair_and_pairs_are_reused(tmp_path):
    served = Served()
    summary, _ = _bench(tmp_path, served, parallel=4)
    assert (served.small.sessions, served.large.sessions) == (4, 4)
    assert served.small.max_active == 4  # four problems did run at once
    assert summary["throughput"]["parallel"] == 4 and summary["throughput"]["problems"] == 4 * N
    # Nothing left to run: no session is made.
    again = Served()
    _bench(tmp_path, again, parallel=4, resume=True)
    assert (again.small.sessions, again.large.sessions, again.starts) == (0, 0, [])


def test_progress_reports_every_result_once_in_completion_order(tmp_path):
    seen: list[BenchProgress] = []
    _, records = _bench(tmp_path, Served(), parallel=4, on_progress=seen.append)
    finished = [p for p in seen if p.status == "finished"]
    assert [p.record for p in finished] == records  # the same order as results.jsonl
    assert [p.done for p in finished] == list(range(1, 4 * N + 1))
    assert sum(p.status == "running" for p in seen) == 4 * N
    small = [p for p in finished if p.condition.mode == "small"]
    assert (small[-1].scored, small[-1].correct) == (N, N // 2)
    assert sorted(p.position for p in small) == list(range(1, N + 1))
    assert not _worker_threads()


# --- interrupts and failures ---------------------------------------------------------------------------


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)  # its handler runs in the main thread, whichever thread sends it
    time.sleep(0.5)  # this problem goes on until the main thread has seen the signal (it looks every POLL_S)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("interrupt", [_ctrl_c, _raise_interrupt], ids=["ctrl-c", "raised-in-a-worker"])
def test_an_interrupt_with_four_in_flight_writes_no_duplicate_and_resume_completes_it(tmp_path, interrupt):
    _, reference = _bench(tmp_path / "reference", Served(), parallel=1)
    served = Served()
    served.small.on_start[18] = interrupt  # in the small condition, with glimp done
    seen: list[BenchProgress] = []
    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, served, parallel=4, on_progress=seen.append)
    assert not _worker_threads()
    records = _records(tmp_path / "out")
    keys = [result_key(r) for r in records]
    assert len(keys) == len(set(keys))
    assert N <= len(records) < 4 * N
    interrupted = served.small.starts[17][0]  # the problem whose start was interrupted: unfinished, not written
    assert (f"p{interrupted.split()[1]}", "small", None, None) not in keys
    assert [p.record for p in seen if p.status == "finished"] == records  # what was reported is what was written
    expected = _untimed(reference)
    assert all(expected[key] == record for key, record in _untimed(records).items())  # whole, finished results
    summary = json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())
    assert (summary["results"], summary["finished"], summary["planned"]) == (len(records), len(records), 4 * N)

    resumed = Served()
    _, records = _bench(tmp_path, resumed, parallel=4, resume=True)
    assert len(records) == 4 * N and len({result_key(r) for r in records}) == 4 * N
    assert _untimed(records) == expected
    assert len(resumed.small.starts) == 4 * N - len(keys)  # only the missing results ran (each starts both models)


def test_results_that_finish_after_an_interrupt_are_reported_and_cancelled_ones_are_not():
    reported = threading.Event()
    results: list[str] = []

    def work(item: str, stop: threading.Event) -> str:
        if item == "first":
            return "first done"
        if item == "interrupt":
            assert reported.wait(5)  # once "first" is reported
            raise KeyboardInterrupt
        assert stop.wait(5)  # the others go on until the interrupt
        if item.startswith("cancelled"):
            raise Cancelled
        return "finished after the interrupt"

    def on_result(item: str, result: str) -> None:
        results.append(result)
        reported.set()

    drawn: list[str] = []

    def items():
        for item in ["first", "interrupt", "cancelled", "finishes anyway", "cancelled when drawn", "never drawn"]:
            drawn.append(item)
            yield item

    with pytest.raises(KeyboardInterrupt):
        run_parallel(items(), work, workers=4, on_result=on_result)
    assert results == ["first done", "finished after the interrupt"]
    assert drawn[-1] == "cancelled when drawn"  # drawn when "first" was done; nothing after the interrupt
    assert not _worker_threads()


def test_a_second_ctrl_c_stops_waiting_for_the_problems_in_flight():
    stubborn_s = 3.0

    def work(item: int, stop: threading.Event) -> int:
        time.sleep(stubborn_s)  # a call that does not look at `stop` (a request until its timeout)
        return item

    for delay_s in (0.2, 0.4):
        threading.Timer(delay_s, signal.raise_signal, (signal.SIGINT,)).start()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_parallel(range(4), work, workers=4, on_result=lambda *_: pytest.fail("nothing finishes before Ctrl-C"))
    assert time.perf_counter() - started < stubborn_s / 2
    for thread in _worker_threads():  # the abandoned calls end by themselves
        thread.join(stubborn_s * 2)
    assert not _worker_threads()


def test_a_failed_problem_in_one_worker_keeps_the_others_results_and_stops_the_run(tmp_path):
    served = Served(delay_s=0.005)
    served.small.fail_at_start["problem 5"] = RunError("the server went away")
    with pytest.raises(RunError, match="the server went away"):
        _bench(tmp_path, served, parallel=4, modes=("small",))
    assert not _worker_threads()
    records = _records(tmp_path / "out")
    started = {problem for problem, _ in served.small.starts}
    # Every problem that started before the failure finished and was written; the failed one was not.
    assert {r["id"] for r in records} == {f"p{problem.split()[1]}" for problem in started}
    assert "p5" not in {r["id"] for r in records}
    assert {f"problem {i}" for i in range(5)} <= started  # those before it in the file had started
    assert json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())["results"] == len(records)


def test_a_problem_that_cannot_be_run_is_a_failed_record_and_the_others_run(tmp_path):
    served = Served()
    served.small.fail_at_start["problem 5"] = ContextError("problem 5 is too long")
    summary, records = _bench(tmp_path, served, parallel=4)
    assert len(records) == 4 * N
    assert [r["mode"] for r in records if r["finish_reason"] == "error"] == ["glimp", "small", "large", "random"]
    assert summary["failed"] == [
        {
            "id": "p5",
            "line": 6,
            "error": "problem 5 is too long",
            "conditions": ["glimp@1", "small", "large", "random@0.205"],  # glimp's share on these problems
        }
    ]


# --- options ---------------------------------------------------------------------------------------------


def test_parallel_below_one_is_refused_by_the_plan_and_the_command_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"^--parallel must be 1 or more, got 0$"):
        make_plan(_data(tmp_path), settings=SETTINGS, parallel=0)
    for command in ("bench", "calibrate"):
        code, err = run_main(monkeypatch, capsys, command, str(_data(tmp_path)), "--parallel", "0")
        assert code == 2
        assert usage_error(err, command).startswith("Invalid value for '--parallel'")


@pytest.mark.parametrize("command", ["bench", "calibrate"])
def test_parallel_with_an_in_process_model_is_one_clear_line_before_any_model_loads(
    command, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(cli, "open_pair", lambda *_: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, command, str(_data(tmp_path)), "--parallel", "4", "--out", str(out))
    assert code == 2
    assert one_error_line(err) == (
        "--parallel 4: model 'smollm2-135m' runs in-process (llama.cpp), and in-process models run one problem "
        "at a time: parallel runs need models served with `url:` in models.yaml (vLLM, SGLang, llama-server), "
        "or --parallel 1"
    )
    assert not out.exists()


def test_parallel_is_allowed_when_both_models_are_served():
    served = ModelSpec(name="big", url="http://127.0.0.1:8000/v1", model="big")
    local = ModelSpec(name="tiny", path="tiny.gguf")
    check_parallel(8, [served, ModelSpec(name="small", url="http://127.0.0.1:8001/v1", model="small")])
    check_parallel(1, [local, served])  # one at a time: any model
    with pytest.raises(ConfigError, match=r"^--parallel 2: model 'tiny' runs in-process"):
        check_parallel(2, [served, local])


def test_bench_command_runs_served_models_four_at_a_time(tmp_path, monkeypatch, capsys):
    served = Served()
    monkeypatch.setattr(parallel, "in_process", lambda spec: False)  # the demo pair stands for served models
    monkeypatch.setattr(cli, "open_pair", lambda small, large: served.make())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code, err = run_main(
        monkeypatch, capsys, "bench", str(_data(tmp_path)), "--parallel", "4", "--out", str(out), "--json",
        "--modes", "glimp,large", "--temperature", "0",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["throughput"]["parallel"] == 4 and summary["throughput"]["problems"] == 2 * N
    assert (served.small.sessions, served.large.sessions) == (4, 4)
    assert len(_records(out)) == 2 * N


# --- wall time -------------------------------------------------------------------------------------------


def test_four_in_flight_take_well_under_the_wall_time_of_one(tmp_path):
    delay_s = 0.02  # per call: 5 calls a problem, so the sleeping dominates the bookkeeping
    walls = {}
    for n_flight in (1, 4):
        started = time.perf_counter()
        summary, records = _bench(
            tmp_path / str(n_flight), Served(8, delay_s=delay_s), parallel=n_flight, n=8, modes=("large",)
        )
        walls[n_flight] = time.perf_counter() - started
        assert len(records) == 8
        assert summary["throughput"]["problems"] == 8 and summary["throughput"]["wall_s"] <= walls[n_flight]
    assert walls[4] / walls[1] < 0.6, walls
    assert 8 * 5 * delay_s <= walls[1]


# --- calibrate -------------------------------------------------------------------------------------------


def _calibrate(tmp_path, served: Served, *, parallel: int) -> dict:
    plan = make_calibration_plan(
        _data(tmp_path), settings=SETTINGS, sweep=True, rates=(0.2, 0.4), thresholds=(0.5,), parallel=parallel
    )
    with open_store(tmp_path / "out", fingerprint=FINGERPRINT) as store:
        return run_calibration(plan, sessions=SessionPairs(served.make), store=store)


def test_calibrate_with_four_in_flight_gives_the_report_of_one_at_a_time(tmp_path):
    one = _calibrate(tmp_path / "one", Served(), parallel=1)
    served = Served()
    four = _calibrate(tmp_path / "four", served, parallel=4)
    assert served.small.max_active == 4
    assert (served.small.sessions, served.large.sessions) == (4, 4)  # both passes share the pairs
    assert four["probe"] == one["probe"]
    latency = ("latency_mean_s", "latency_vs_large")
    rows = [[{k: v for k, v in row.items() if k not in latency} for row in r["sweep"]["rows"]] for r in (one, four)]
    assert rows[0] == rows[1]
    assert [row["label"] for row in rows[1]] == ["glimp@0.3", "glimp@0.5", "glimp@1.4", "small", "large"]
    assert (four["probe"]["problems"], four["probe"]["steps"]) == (N, 4 * N)
