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
