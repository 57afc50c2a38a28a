"""A benchmark's output directory: run.json (settings fingerprint), results.jsonl (append-only), summaries.

One run at a time: a lock file is held while the store is open (released by the OS if the run is killed).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import filelock

from glimp_cli import __version__
from glimp_cli.errors import ConfigError, DataError
from glimp_cli.files import append_text, write_atomic, write_error

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
LOCK_FILE = "glimp.lock"
MAX_DIFFS_SHOWN = 3

ResultKey = tuple[Any, ...]  # (id, mode, threshold, rate)


def result_key(record: dict[str, Any]) -> ResultKey:
    """What identifies a result: problem id, mode, threshold (nats) and, for random, the rate."""
    return (record["id"], record["mode"], record.get("threshold"), record.get("rate"))


class ResultStore:
    """An open output directory, locked against other runs. append() writes one record per line and syncs it."""

    def __init__(
        self,
        directory: Path,
        records: list[dict[str, Any]],
        *,
        fingerprint: dict[str, Any],
        notes: tuple[str, ...] = (),
        lock: filelock.BaseFileLock | None = None,
    ) -> None:
        self.directory = directory
        self.records = records  # every record in results.jsonl, oldest first, one per key
        self.fingerprint = fingerprint  # the settings in run.json
        self.notes = notes  # what opening the directory repaired, for the user
        self._by_key = {result_key(r): r for r in records}
        self._lock = lock

    @property
    def results_path(self) -> Path:
        return self.directory / RESULTS_FILE

    def get(self, key: ResultKey) -> dict[str, Any] | None:
        """The record stored under this key, if any."""
        return self._by_key.get(key)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record; it is on disk when this returns, or not at all (WriteError)."""
        append_text(self.results_path, json.dumps(record, ensure_ascii=False) + "\n")
        self.records.append(record)
        self._by_key[result_key(record)] = record

    def write_summary(self, summary: dict[str, Any], markdown: str) -> None:
        write_atomic(self.directory / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        write_atomic(self.directory / SUMMARY_MD, markdown)

    def close(self) -> None:
        """Let other runs use the directory."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_store(
    directory: str | os.PathLike[str], *, fingerprint: dict[str, Any], resume: bool = False, force: bool = False
) -> ResultStore:
    """Open (or create) an output directory for a run with these settings, and lock it until the store is closed.

    Refuses a directory another glimp run holds, one holding results from other settings, or from this run
    without `resume`; `force` deletes earlier results and summaries (nothing else).
    """
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: --resume continues a run, --force starts it over")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"--out {directory}: not a directory")
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as run.json will hold them
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(directory, exc) from exc
    lock = _lock(directory)
    try:
        records, notes = _open_locked(directory, fingerprint=fingerprint, resume=resume, force=force)
    except BaseException:
        lock.release()
        raise
    return ResultStore(directory, records, fingerprint=fingerprint, notes=notes, lock=lock)


def _lock(directory: Path) -> filelock.BaseFileLock:
    """The directory's lock, taken without waiting: a second run on it is refused, not queued."""
    path = directory / LOCK_FILE
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise DataError(
            f"{directory} is in use by another glimp run (it holds {path}): "
            "wait for that run to end, or choose another --out"
        ) from None
    except OSError as exc:
        raise write_error(path, exc) from exc
    return lock


def _open_locked(
    directory: Path, *, fingerprint: dict[str, Any], resume: bool, force: bool
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """(records, notes) of a locked directory, checked against the settings and repaired."""
    results, run_file = directory / RESULTS_FILE, directory / RUN_FILE
    if force:
        for name in (RESULTS_FILE, SUMMARY_JSON, SUMMARY_MD):
            try:
                (directory / name).unlink(missing_ok=True)
            except OSError as exc:
                raise write_error(directory / name, exc) from exc
    records, repaired, notes = _read_results(results) if results.exists() else ([], None, ())
    if records:
        if not run_file.exists():
            raise DataError(
                f"{results} holds {len(records)} results but {run_file} is missing, so their settings are unknown: "
                "pass --force to start over, or choose another --out"
            )
        diffs = fingerprint_diff(_read_run(run_file).get("fingerprint", {}), fingerprint)
        if diffs:
            shown = "; ".join(diffs[:MAX_DIFFS_SHOWN]) + ("; ..." if len(diffs) > MAX_DIFFS_SHOWN else "")
            raise DataError(
                f"{directory} holds results from different settings ({shown}): "
                "pass --force to start over, or choose another --out"
            )
        if not resume:
            raise DataError(
                f"{directory} already holds {len(records)} results of this run: "
                "pass --resume to continue it, or --force to start over"
            )
    if repaired is not None:
        write_atomic(results, repaired)
    if not records:
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        run = {"fingerprint": fingerprint, "created": created, "glimp": __version__}
        write_atomic(run_file, json.dumps(run, indent=2) + "\n")
    return records, notes


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old then, new now' for every dotted key whose value differs, in the new fingerprint's order."""
    before, after = _flatten(old), _flatten(new)
    keys = [*after, *(key for key in before if key not in after)]
    return [
        f"{key}: {before.get(key, '(unset)')!r} then, {after.get(key, '(unset)')!r} now"
        for key in keys
        if before.get(key) != after.get(key)
    ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _read_run(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}): pass --force to start over, or choose another --out") from None
    if not isinstance(run, dict):
        raise DataError(f"{path}: expected a JSON object: pass --force to start over, or choose another --out")
    return run


def _read_results(path: Path) -> tuple[list[dict[str, Any]], str | None, tuple[str, ...]]:
    """(records, the repaired file's text or None if it needs no repair, notes).

    An unreadable last line (a write cut short) is dropped; any other is an error. A result stored twice
    (two runs wrote to the directory before it was locked) keeps its first record.
    """
    lines = path.read_bytes().splitlines(keepends=True)
    records: list[dict[str, Any]] = []
    kept: list[str] = []
    seen: set[ResultKey] = set()
    duplicates = 0
    notes: list[str] = []
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = _parse_result(raw)
        if record is None:
            if line_no == len(lines):
                notes.append(f"{path}:{line_no}: dropped an incomplete last line; that result will be rerun")
                break
            raise DataError(
                f"{path}:{line_no}: not a result record: fix or delete the line, or pass --force to start over"
            )
        key = result_key(record)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        records.append(record)
        kept.append(raw.decode("utf-8").rstrip("\r\n") + "\n")
    if duplicates:
        notes.append(
            f"{path}: dropped {duplicates} duplicate result{'s' if duplicates > 1 else ''} "
            "(the first record of each problem and mode is kept)"
        )
    text = "".join(kept)
    return records, (None if text.encode("utf-8") == b"".join(lines) else text), tuple(notes)


def _parse_result(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(record, dict) or "id" not in record or "mode" not in record:
        return None
    return record
