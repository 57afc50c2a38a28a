"""A benchmark's output directory: run.json (settings fingerprint), results.jsonl (append-only), summaries."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from glimp_cli import __version__
from glimp_cli.errors import ConfigError, DataError

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
MAX_DIFFS_SHOWN = 3

ResultKey = tuple[Any, ...]  # (id, mode, threshold, rate)


def result_key(record: dict[str, Any]) -> ResultKey:
    """What identifies a result: problem id, mode, threshold (nats) and, for random, the rate."""
    return (record["id"], record["mode"], record.get("threshold"), record.get("rate"))


class ResultStore:
    """An open output directory. append() writes one record per line and flushes it at once."""

    def __init__(
        self, directory: Path, records: list[dict[str, Any]], *, fingerprint: dict[str, Any], notes: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        self.records = records  # every record in results.jsonl, oldest first
        self.fingerprint = fingerprint  # the settings in run.json
        self.notes = notes  # what opening the directory repaired, for the user
        self._by_key = {result_key(r): r for r in records}
        self._handle = None

    @property
    def results_path(self) -> Path:
        return self.directory / RESULTS_FILE

    def get(self, key: ResultKey) -> dict[str, Any] | None:
        """The record stored under this key, if any."""
        return self._by_key.get(key)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record; it is on disk (flushed) when this returns."""
        if self._handle is None:
            self._handle = open(self.results_path, "a", encoding="utf-8")
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.records.append(record)
        self._by_key[result_key(record)] = record

    def write_summary(self, summary: dict[str, Any], markdown: str) -> None:
        _write_atomic(self.directory / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        _write_atomic(self.directory / SUMMARY_MD, markdown)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_store(directory: str | os.PathLike[str], *, fingerprint: dict[str, Any], resume: bool = False, force: bool = False) -> ResultStore:
    """Open (or create) an output directory for a run with these settings.

    Refuses a directory holding results from other settings, or from this run without `resume`;
    `force` deletes earlier results and summaries (nothing else).
    """
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: --resume continues a run, --force starts it over")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"--out {directory}: not a directory")
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as run.json will hold them
    results, run_file = directory / RESULTS_FILE, directory / RUN_FILE
    if force:
        for name in (RESULTS_FILE, SUMMARY_JSON, SUMMARY_MD):
            (directory / name).unlink(missing_ok=True)
    records, keep_bytes, notes = _read_results(results) if results.exists() else ([], 0, ())
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
            raise DataError(f"{directory} already holds {len(records)} results of this run: pass --resume to continue it, or --force to start over")
    if results.exists():
        _repair(results, keep_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    if not records:
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        _write_atomic(run_file, json.dumps({"fingerprint": fingerprint, "created": created, "glimp": __version__}, indent=2) + "\n")
    return ResultStore(directory, records, fingerprint=fingerprint, notes=notes)


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


def _read_results(path: Path) -> tuple[list[dict[str, Any]], int, tuple[str, ...]]:
    """(records, bytes to keep, notes). An unreadable last line (a write cut short) is dropped; any other is an error."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    records: list[dict[str, Any]] = []
    keep = 0
    for line_no, raw in enumerate(lines, start=1):
        if raw.strip():
            record = _parse_result(raw)
            if record is None:
                if line_no == len(lines):
                    return records, keep, (f"{path}:{line_no}: dropped an incomplete last line; that result will be rerun",)
                raise DataError(f"{path}:{line_no}: not a result record: fix or delete the line, or pass --force to start over")
            records.append(record)
        keep += len(raw)
    return records, keep, ()


def _parse_result(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(record, dict) or "id" not in record or "mode" not in record:
        return None
    return record


def _repair(path: Path, keep_bytes: int) -> None:
    """Cut a dropped last line, and end the file with a newline so that appends start a fresh line."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        if keep_bytes < size:
            handle.truncate(keep_bytes)
        if keep_bytes:
            handle.seek(keep_bytes - 1)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing (a Ctrl-C mid-write leaves the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
