"""Running `glimp` in-process for bad-input tests (no model is loaded)."""

from __future__ import annotations

import sys

import pytest

from glimp_cli.cli import main


def run_main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """Run `glimp *argv` through main(); return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["glimp", *argv])
    monkeypatch.delenv("GLIMP_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The message of the single `glimp: error:` line on stderr."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("glimp: error: ")
    return lines[0].removeprefix("glimp: error: ")


def usage_error(err: str, command: str) -> str:
    """The message of a usage error as Click prints it: the usage line, a hint, then one `Error:` line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 3, err
    assert lines[0].startswith(f"Usage: glimp {command}".rstrip()) and lines[1].startswith("Try ")
    assert lines[2].startswith("Error: ")
    assert "Traceback" not in err
    return lines[2].removeprefix("Error: ")


# The data-file errors shared by `glimp bench` and `glimp calibrate`: (file content or None, message).
BAD_DATA = [
    (None, "data file not found: {path}"),
    ('{"problem": "q", "answer": "1"}\n{"problem": "q2", \n', "{path}:2: not JSON: "),
    (
        '{"problem": "q", "answer": "1"}\n{"text": "q", "answer": "1"}\n',
        "{path}:2: no problem text: expected 'problem' or 'question' or 'prompt'; the record has 'text', 'answer'",
    ),
    (
        '{"problem": "q", "result": "1"}\n',
        "{path}:1: no answer: expected 'answer' or 'gold' or 'solution'; the record has 'problem', 'result'",
    ),
    ("", "{path}: no problems (the file is empty)"),
]
BAD_DATA_IDS = ["missing-file", "not-json", "no-problem", "no-answer", "empty-file"]


def assert_bad_data_rejected(command: str, tmp_path, monkeypatch, capsys, content: str | None, message: str) -> None:
    """Exit 2, one line naming the file (and line), and no output directory created."""
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    code, err = run_main(monkeypatch, capsys, command, str(path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert one_error_line(err).startswith(message.format(path=path))
    assert not (tmp_path / "out").exists()
