"""Tests for glimp_cli.store: the output directory, its fingerprint check and crash-safe results."""

import json
from pathlib import Path

import pytest

from glimp_cli.errors import ConfigError, DataError
from glimp_cli.store import RESULTS_FILE, RUN_FILE, SUMMARY_JSON, SUMMARY_MD, fingerprint_diff, open_store, result_key

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
    assert run["fingerprint"] == {"pair": "demo", "sampling": {"temperature": 0.0, "seed": 0}, "router": {"end_markers": ["</think>"]}}
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
    with pytest.raises(DataError, match=r"already holds 1 results of this run: pass --resume to continue it, or --force to start over"):
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", RUN_FILE]
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
    with pytest.raises(DataError, match=r"results\.jsonl:2: not a result record: fix or delete the line, or pass --force"):
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
    assert fingerprint_diff(old, new) == ["b.c: 2 then, 3 now", "e: '(unset)' then, 'x' now", "b.d: [1] then, '(unset)' now"]
