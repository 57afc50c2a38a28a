"""Tests for glimp_cli.store: the output directory, its fingerprint check and crash-safe results."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import one_error_line, run_main
from glimp_cli.errors import ConfigError, DataError, WriteError
from glimp_cli.store import (
    LOCK_FILE,
    RESULTS_FILE,
    RUN_FILE,
    SUMMARY_JSON,
    SUMMARY_MD,
    fingerprint_diff,
    open_store,
    result_key,
)

REPO = Path(__file__).resolve().parents[1]

FINGERPRINT = {"pair": "demo", "sampling": {"temperature": 0.0, "seed": 0}, "router": {"end_markers": ("</think>",)}}


def _record(problem_id, mode="glimp", threshold=1.0, rate=None, **fields):
    return {"id": problem_id, "mode": mode, "threshold": threshold, "rate": rate, "correct": True, **fields}


def _store_with(directory: Path, *records, fingerprint=FINGERPRINT):
    with open_store(directory, fingerprint=fingerprint) as store:
        for record in records:
            store.append(record)


def test_a_new_directory_gets_run_json_with_the_fingerprint(tmp_path):
    out = tmp_path / "runs" / "x"
    with open_store(out, fingerprint=FINGERPRINT) as store:
        assert store.records == []
        assert store.fingerprint["router"]["end_markers"] == ["</think>"]  # as JSON holds it
    run = json.loads((out / RUN_FILE).read_text())
    assert run["fingerprint"] == {
        "pair": "demo",
        "sampling": {"temperature": 0.0, "seed": 0},
        "router": {"end_markers": ["</think>"]},
    }
    assert set(run) == {"fingerprint", "created", "glimp"}


def test_each_appended_record_is_on_disk_before_the_next(tmp_path):
    with open_store(tmp_path, fingerprint=FINGERPRINT) as store:
        store.append(_record(1))
        assert (tmp_path / RESULTS_FILE).read_text().splitlines() == [json.dumps(_record(1))]
        store.append(_record(2))
        assert len((tmp_path / RESULTS_FILE).read_text().splitlines()) == 2
        assert store.get((2, "glimp", 1.0, None)) == _record(2)
        assert store.get((2, "glimp", 1.5, None)) is None


def test_result_key_is_id_mode_threshold_and_rate():
    assert result_key(_record("a", mode="random", threshold=1.0, rate=0.25)) == ("a", "random", 1.0, 0.25)


def test_resume_reads_earlier_results(tmp_path):
    _store_with(tmp_path, _record(1), _record(2))
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert [r["id"] for r in store.records] == [1, 2]
        assert store.notes == ()


def test_results_of_this_run_without_resume_are_refused(tmp_path):
    _store_with(tmp_path, _record(1))
    with pytest.raises(
        DataError, match=r"already holds 1 results of this run: pass --resume to continue it, or --force to start over"
    ):
        open_store(tmp_path, fingerprint=FINGERPRINT)


def test_results_from_other_settings_are_refused_naming_what_differs(tmp_path):
    _store_with(tmp_path, _record(1))
    other = {**FINGERPRINT, "sampling": {"temperature": 0.6, "seed": 0}}
    for resume in (False, True):
        with pytest.raises(DataError) as caught:
            open_store(tmp_path, fingerprint=other, resume=resume)
        assert str(caught.value) == (
            f"{tmp_path} holds results from different settings (sampling.temperature: 0.0 then, 0.6 now): "
            "pass --force to start over, or choose another --out"
        )


def test_force_deletes_results_and_summaries_only(tmp_path):
    _store_with(tmp_path, _record(1))
    for name in (SUMMARY_JSON, SUMMARY_MD, "notes.txt"):
        (tmp_path / name).write_text("x")
    other = {**FINGERPRINT, "pair": "other"}
    with open_store(tmp_path, fingerprint=other, force=True) as store:
        assert store.records == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "notes.txt", RUN_FILE]
    assert json.loads((tmp_path / RUN_FILE).read_text())["fingerprint"]["pair"] == "other"


def test_resume_and_force_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--resume and --force exclude each other"):
        open_store(tmp_path, fingerprint=FINGERPRINT, resume=True, force=True)


def test_results_without_run_json_are_refused(tmp_path):
    (tmp_path / RESULTS_FILE).write_text(json.dumps(_record(1)) + "\n")
    with pytest.raises(DataError, match=r"holds 1 results but .*run\.json is missing"):
        open_store(tmp_path, fingerprint=FINGERPRINT, resume=True)


def test_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(DataError, match=r"--out .*file: not a directory"):
        open_store(path, fingerprint=FINGERPRINT)


def test_a_truncated_last_line_is_dropped_and_the_file_repaired(tmp_path):
    _store_with(tmp_path, _record(1), _record(2))
    results = tmp_path / RESULTS_FILE
    good = results.read_text()
    results.write_text(good + json.dumps(_record(3))[:20])  # killed mid-write
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert [r["id"] for r in store.records] == [1, 2]
        assert store.notes == (f"{results}:3: dropped an incomplete last line; that result will be rerun",)
        assert results.read_text() == good
        store.append(_record(3))
    assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == [1, 2, 3]


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    _store_with(tmp_path, _record(1))
    results = tmp_path / RESULTS_FILE
    results.write_text(results.read_text() + json.dumps(_record(2)))
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert [r["id"] for r in store.records] == [1, 2]
        store.append(_record(3))
    assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == [1, 2, 3]


def test_a_bad_line_before_the_last_is_an_error_with_its_number(tmp_path):
    _store_with(tmp_path, _record(1), _record(2))
    results = tmp_path / RESULTS_FILE
    lines = results.read_text().splitlines()
    results.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(
        DataError, match=r"results\.jsonl:2: not a result record: fix or delete the line, or pass --force"
    ):
        open_store(tmp_path, fingerprint=FINGERPRINT, resume=True)


def test_summaries_are_written_whole(tmp_path):
    with open_store(tmp_path, fingerprint=FINGERPRINT) as store:
        store.write_summary({"results": 0}, "# table\n")
    assert json.loads((tmp_path / SUMMARY_JSON).read_text()) == {"results": 0}
    assert (tmp_path / SUMMARY_MD).read_text() == "# table\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_fingerprint_diff_lists_dotted_keys():
    old = {"a": 1, "b": {"c": 2, "d": [1]}}
    new = {"a": 1, "b": {"c": 3}, "e": "x"}
    assert fingerprint_diff(old, new) == [
        "b.c: 2 then, 3 now",
        "e: '(unset)' then, 'x' now",
        "b.d: [1] then, '(unset)' now",
    ]


# --- one run at a time ---------------------------------------------------------------------------


def _in_use_message(directory: Path) -> str:
    return (
        f"{directory} is in use by another glimp run (it holds {directory / LOCK_FILE}): "
        "wait for that run to end, or choose another --out"
    )


def test_a_second_run_on_an_open_directory_is_refused(tmp_path):
    with open_store(tmp_path, fingerprint=FINGERPRINT) as store:
        store.append(_record(1))
        for options in ({}, {"resume": True}, {"force": True}):
            with pytest.raises(DataError) as caught:
                open_store(tmp_path, fingerprint=FINGERPRINT, **options)
            assert str(caught.value) == _in_use_message(tmp_path)
        kept = [json.loads(line)["id"] for line in (tmp_path / RESULTS_FILE).read_text().splitlines()]
        assert kept == [1]  # the refused --force deleted nothing
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:  # free once closed
        assert [r["id"] for r in store.records] == [1]


def test_a_refused_open_does_not_keep_the_directory_locked(tmp_path):
    _store_with(tmp_path, _record(1))
    with pytest.raises(DataError, match="already holds 1 results"):
        open_store(tmp_path, fingerprint=FINGERPRINT)
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert len(store.records) == 1


def test_force_while_open_deletes_results_but_keeps_the_lock(tmp_path):
    _store_with(tmp_path, _record(1))
    with open_store(tmp_path, fingerprint=FINGERPRINT, force=True) as store:
        assert store.records == [] and not (tmp_path / RESULTS_FILE).exists()
        with pytest.raises(DataError, match="is in use by another glimp run"):
            open_store(tmp_path, fingerprint=FINGERPRINT, force=True)


HOLDER = """
import sys, time
from glimp_cli.store import open_store
fingerprint = {"pair": "demo", "sampling": {"temperature": 0.0, "seed": 0}, "router": {"end_markers": ("</think>",)}}
store = open_store(sys.argv[1], fingerprint=fingerprint)
store.append({"id": 1, "mode": "glimp", "threshold": 1.0, "rate": None, "correct": True})
print("locked", flush=True)
time.sleep(60)
"""


def _holding_process(directory: Path) -> subprocess.Popen:
    """Another process with `directory` open as a store (one record written), waiting to be killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout.readline() == "locked\n"
    return process


def test_a_run_killed_with_sigkill_leaves_the_directory_usable(tmp_path):
    holder = _holding_process(tmp_path)
    try:
        with pytest.raises(DataError) as caught:
            open_store(tmp_path, fingerprint=FINGERPRINT, resume=True)
        assert str(caught.value) == _in_use_message(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert (tmp_path / LOCK_FILE).exists()  # left behind, but no longer held
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert [r["id"] for r in store.records] == [1]


def test_bench_on_a_directory_another_run_holds_exits_2_before_loading_models(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    out = tmp_path / "out"
    holder = _holding_process(out)
    try:
        code, err = run_main(monkeypatch, capsys, "bench", str(data), "--out", str(out), "--resume")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert code == 2
    assert one_error_line(err) == _in_use_message(out)


def test_duplicate_results_are_dropped_on_open_keeping_the_first(tmp_path):
    _store_with(tmp_path, _record(1, correct=True), _record(2), _record(1, mode="small"))
    results = tmp_path / RESULTS_FILE
    with results.open("a") as handle:  # a second run wrote the same results (before runs were locked)
        handle.write(json.dumps(_record(1, correct=False)) + "\n" + json.dumps(_record(2, correct=False)) + "\n")
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        kept = [(r["id"], r["mode"], r["correct"]) for r in store.records]
        assert kept == [(1, "glimp", True), (2, "glimp", True), (1, "small", True)]
        assert store.get((1, "glimp", 1.0, None))["correct"] is True
        assert store.notes == (
            f"{results}: dropped 2 duplicate results (the first record of each problem and mode is kept)",
        )
    rewritten = [json.loads(line) for line in results.read_text().splitlines()]
    assert rewritten == [_record(1), _record(2), _record(1, mode="small")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, RESULTS_FILE, RUN_FILE]  # no temporary file
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert store.notes == ()


def test_duplicates_and_an_incomplete_last_line_are_both_noted(tmp_path):
    _store_with(tmp_path, _record(1))
    results = tmp_path / RESULTS_FILE
    results.write_text(results.read_text() * 2 + '{"id": 2, "mo')
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert [r["id"] for r in store.records] == [1]
        assert store.notes == (
            f"{results}:3: dropped an incomplete last line; that result will be rerun",
            f"{results}: dropped 1 duplicate result (the first record of each problem and mode is kept)",
        )
    assert results.read_text() == json.dumps(_record(1)) + "\n"


# --- writes that fail -------------------------------------------------------------------------------


def _fail_with(errno_code: int):
    def fail(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code))

    return fail


def _full_after(size: int):
    """os.write that writes `size` more bytes, then finds the disk full."""
    real_write, room = os.write, [size]

    def write(fd, data):
        if not room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data[: room[0]]))
        room[0] -= written
        return written

    return write


def test_an_append_on_a_full_disk_names_results_jsonl_and_leaves_no_partial_line(tmp_path, monkeypatch):
    results = tmp_path / RESULTS_FILE
    with open_store(tmp_path, fingerprint=FINGERPRINT) as store:
        store.append(_record(1))
        monkeypatch.setattr(os, "write", _full_after(10))
        with pytest.raises(WriteError) as caught:
            store.append(_record(2))
        monkeypatch.undo()
        assert str(caught.value) == f"cannot write {results}: No space left on device"
        assert [r["id"] for r in store.records] == [1]
    assert results.read_text() == json.dumps(_record(1)) + "\n"


def test_a_half_written_record_that_could_not_be_cut_is_rerun_on_resume(tmp_path, monkeypatch):
    results = tmp_path / RESULTS_FILE
    with open_store(tmp_path, fingerprint=FINGERPRINT) as store:
        store.append(_record(1))
        monkeypatch.setattr(os, "write", _full_after(10))
        monkeypatch.setattr(os, "ftruncate", _fail_with(errno.EIO))
        with pytest.raises(WriteError, match="No space left on device"):
            store.append(_record(2))
        monkeypatch.undo()
    assert results.read_text() == json.dumps(_record(1)) + "\n" + json.dumps(_record(2))[:10]
    with open_store(tmp_path, fingerprint=FINGERPRINT, resume=True) as store:
        assert [r["id"] for r in store.records] == [1]
        assert store.notes == (f"{results}:2: dropped an incomplete last line; that result will be rerun",)
        store.append(_record(2))
    assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == [1, 2]


def test_a_summary_on_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    with open_store(tmp_path, fingerprint=FINGERPRINT) as store:
        monkeypatch.setattr(os, "fsync", _fail_with(errno.ENOSPC))
        with pytest.raises(WriteError) as caught:
            store.write_summary({"results": 0}, "# table\n")
        monkeypatch.undo()
    assert str(caught.value) == f"cannot write {tmp_path / SUMMARY_JSON}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, RUN_FILE]


def test_run_json_on_a_read_only_file_system_is_one_error_and_the_directory_is_unlocked(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _fail_with(errno.EROFS))
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / RUN_FILE}: Read-only file system$"):
        open_store(tmp_path, fingerprint=FINGERPRINT)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
    with open_store(tmp_path, fingerprint=FINGERPRINT):
        pass


def test_an_output_directory_that_cannot_be_created_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "mkdir", _fail_with(errno.EACCES))
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / 'out'}: Permission denied$"):
        open_store(tmp_path / "out", fingerprint=FINGERPRINT)


def test_a_full_disk_during_bench_is_one_line_exit_1_and_keeps_the_results_so_far(tmp_path, monkeypatch, capsys):
    from glimp_cli import cli
    from test_bench import _pair

    data = tmp_path / "data.jsonl"
    problems = ({"id": f"p{i}", "problem": f"problem {i}", "answer": str(10 + i)} for i in range(2))
    data.write_text("".join(json.dumps(problem) + "\n" for problem in problems))
    monkeypatch.setattr(cli, "open_pair", lambda small, large: _pair(2))
    real_fsync, synced = os.fsync, []

    def full_after_three(fd):  # run.json and two results fit; then the disk is full
        synced.append(fd)
        if len(synced) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_three)
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, "bench", str(data), "--out", str(out), "--modes", "small,large")
    assert code == 1
    # The summary, written after the failed append, fails too: the append's error is the one reported.
    assert err.splitlines()[-1] == f"glimp: error: cannot write {out / RESULTS_FILE}: No space left on device"
    assert err.count("glimp: error:") == 1 and "Traceback" not in err
    assert [json.loads(line)["mode"] for line in (out / RESULTS_FILE).read_text().splitlines()] == ["small", "small"]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, RESULTS_FILE, RUN_FILE]
