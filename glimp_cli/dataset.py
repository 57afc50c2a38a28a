"""Benchmark problems from a JSONL file, with errors that name the file, line and keys."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimp_cli.checker import extract_answer, gold_answer
from glimp_cli.errors import ConfigError, DataError, lone_surrogate

PROBLEM_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("answer", "gold", "solution")
ID_KEY = "id"
MAX_KEYS_SHOWN = 8


@dataclass(frozen=True)
class Problem:
    id: str | int  # the record's `id`, else its line number
    text: str
    gold: str  # the reference answer as the checker compares it
    line: int  # 1-based line in the data file


def load_problems(
    path: str | os.PathLike[str],
    *,
    problem_key: str | None = None,
    answer_key: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[Problem]:
    """Read every record of a JSONL file (so any bad line is reported), then return records [offset, offset+limit).

    Args:
        problem_key / answer_key: the one key to read; None tries PROBLEM_KEYS / ANSWER_KEYS in order.
    """
    if offset < 0:
        raise ConfigError(f"--offset must be 0 or more, got {offset}")
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be positive, got {limit}")
    path = Path(path)
    problems: list[Problem] = []
    first_line_of: dict[str | int, int] = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        problem = _parse_record(
            line, where=f"{path}:{line_no}", line_no=line_no, problem_key=problem_key, answer_key=answer_key
        )
        if problem.id in first_line_of:
            raise DataError(
                f"{path}:{line_no}: duplicate id {problem.id!r} (first on line {first_line_of[problem.id]})"
            )
        first_line_of[problem.id] = line_no
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems (the file is empty)")
    selected = problems[offset : None if limit is None else offset + limit]
    if not selected:
        raise DataError(f"{path}: --offset {offset} leaves no problems (the file has {len(problems)})")
    return selected


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex digest of a file's bytes (identifies the data set in run.json)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        # JSON Lines ends records at "\n" only: str.splitlines() also splits at U+2028, U+0085 and
        # other characters that JSON strings may hold raw, and would miscount the lines.
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc


def _parse_record(line: str, *, where: str, line_no: int, problem_key: str | None, answer_key: str | None) -> Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise DataError(f"{where}: not JSON: {str(exc).split(':')[0]}") from None
    except RecursionError:
        raise DataError(f"{where}: not JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    text = _field(record, (problem_key,) if problem_key else PROBLEM_KEYS, where=where, noun="problem text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the problem text must be a non-empty string, got {text!r}")
    raw_gold = _field(record, (answer_key,) if answer_key else ANSWER_KEYS, where=where, noun="answer")
    finite = not isinstance(raw_gold, float) or math.isfinite(raw_gold)  # json reads NaN and Infinity
    if isinstance(raw_gold, bool) or not isinstance(raw_gold, (str, int, float)) or not finite:
        raise DataError(f"{where}: the answer must be a string or a finite number, got {raw_gold!r}")
    problem_id = record.get(ID_KEY, line_no)
    if isinstance(problem_id, bool) or not isinstance(problem_id, (str, int)):
        raise DataError(f"{where}: 'id' must be a string or an integer, got {problem_id!r}")
    for noun, value in (("the problem text", text), ("the answer", raw_gold), ("'id'", problem_id)):
        surrogate = lone_surrogate(value) if isinstance(value, str) else None
        if surrogate:  # an unpaired \ud800-\udfff escape: it cannot be tokenized, printed or stored
            raise DataError(f"{where}: {noun} holds a lone surrogate, {surrogate}, which is not text: fix the record")
    gold = gold_answer(str(raw_gold))
    if "\\boxed" in gold or "\\fbox" in gold:  # a worked solution: its boxed result is the answer
        gold = extract_answer(gold) or gold
    if not gold:
        raise DataError(f"{where}: the answer is empty")
    return Problem(id=problem_id, text=text, gold=gold, line=line_no)


def _field(record: dict[str, Any], keys: tuple[str, ...], *, where: str, noun: str) -> Any:
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    wanted = " or ".join(f"'{k}'" for k in keys)
    shown = ", ".join(f"'{k}'" for k in list(record)[:MAX_KEYS_SHOWN]) + (
        ", ..." if len(record) > MAX_KEYS_SHOWN else ""
    )
    hint = " (set --problem-key)" if noun == "problem text" else " (set --answer-key)"
    raise DataError(f"{where}: no {noun}: expected {wanted}; the record has {shown or 'no keys'}{hint}")
