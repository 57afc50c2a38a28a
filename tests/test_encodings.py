"""Text that is not UTF-8, and terminals that cannot show every character: one clear line or a
replacement with one warning, never a traceback. Real subprocesses (the encodings are the process's);
no model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import one_error_line, run_main

REPO = Path(__file__).resolve().parents[1]
CONFIG = "models:\n  s:\n    path: s.gguf\n  l:\n    path: l.gguf\npairs:\n  {pair}:\n    small: s\n    large: l\n"
ASCII_TERMINALS = {
    "PYTHONIOENCODING=ascii": {"PYTHONIOENCODING": "ascii"},
    "LC_ALL=C without UTF-8 mode": {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
}


def glimp(*args: str | bytes, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GLIMP_DEBUG", "PYTHONIOENCODING", "LC_ALL", "LANG", "PYTHONUTF8")
    }
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    environ["XDG_CONFIG_HOME"] = str(cwd / "xdg")
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "glimp_cli", *args], capture_output=True, cwd=cwd, env=environ, timeout=120
    )


def _config(tmp_path: Path, pair: str) -> Path:
    """A models.yaml whose two model files exist (so that `glimp models` shows short, untruncated rows)."""
    for name in ("s", "l"):
        (tmp_path / f"{name}.gguf").write_bytes(b"GGUF" + bytes(60))
    config = tmp_path / "models.yaml"
    config.write_text(CONFIG.format(pair=pair), encoding="utf-8")
    return config


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `glimp: error:` line of a run that exited 2, without a traceback."""
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glimp: error: "), stderr
    return lines[0].removeprefix("glimp: error: ")


def test_a_models_yaml_that_is_not_utf8_names_its_line_and_byte(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_bytes(CONFIG.format(pair="p").encode() + b"    # caf\xe9 (Latin-1)\n")
    assert (
        error_line(glimp("models", "--config", str(config), cwd=tmp_path))
        == f"{config}:10: not UTF-8 text (byte 0xe9): save the file as UTF-8"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["ask", b"caf\xe9?"],
            "argument 2, 'caf\\xe9?', is not UTF-8 (byte 0xe9): pass problems, names and file names as UTF-8",
        ),
        (
            ["ask", "x", "--pair", b"d\xffmo"],
            "argument 4 (the value of --pair), 'd\\xffmo', is not UTF-8 (byte 0xff): ",
        ),
        (["bench", b"\xff.jsonl"], "argument 2, '\\xff.jsonl', is not UTF-8 (byte 0xff): "),
    ],
    ids=["problem", "option-value", "file-name"],
)
def test_an_argument_that_is_not_utf8_is_refused_naming_it(tmp_path, args, message):
    assert error_line(glimp(*args, cwd=tmp_path)).startswith(message)


def test_utf8_arguments_under_a_c_locale_are_read_as_utf8(tmp_path):
    # Without UTF-8 mode, Python decodes the command line as ASCII: 'é' would arrive as two lone surrogates.
    result = glimp("ask", "x", "--pair", "démo", env=ASCII_TERMINALS["LC_ALL=C without UTF-8 mode"], cwd=tmp_path)
    assert "unknown pair 'd\\xe9mo' (did you mean 'demo'?)" in error_line(result)


def test_a_lone_surrogate_escape_in_benchmark_json_names_file_and_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"problem": "fine", "answer": "1"}\n{"problem": "half an emoji \\ud83d", "answer": "2"}\n', encoding="utf-8"
    )
    for command in ("bench", "calibrate"):
        message = error_line(glimp(command, str(data), "--out", str(tmp_path / "out"), cwd=tmp_path))
        assert message == (
            f"{data}:2: the problem text holds a lone surrogate, \\ud83d at character 15, "
            "which is not text: fix the record"
        )
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env", ASCII_TERMINALS.values(), ids=ASCII_TERMINALS.keys())
def test_an_ascii_terminal_gets_question_marks_and_one_warning(tmp_path, env):
    config = _config(tmp_path, "démo-€")
    result = glimp("models", "--config", str(config), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| d?mo-? (default) | s " in result.stdout.decode("ascii")
    assert result.stderr.decode("ascii").splitlines() == [
        "glimp: warning: 2 character(s) could not be shown in this terminal's encoding "
        "(ascii) and were printed as '?': "
        "set PYTHONIOENCODING=utf-8 or a UTF-8 locale to see them"
    ]


@pytest.mark.parametrize("env", ASCII_TERMINALS.values(), ids=ASCII_TERMINALS.keys())
def test_json_on_an_ascii_terminal_escapes_every_character(tmp_path, env):
    config = _config(tmp_path, "démo-€")
    result = glimp("models", "--json", "--config", str(config), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert json.loads(result.stdout.decode("ascii"))["pairs"][0]["name"] == "démo-€"


@pytest.mark.parametrize("env", ASCII_TERMINALS.values(), ids=ASCII_TERMINALS.keys())
def test_an_error_on_an_ascii_terminal_is_one_line(tmp_path, env):
    config = _config(tmp_path, "démo-€")
    message = error_line(glimp("ask", "x", "--pair", "démo", "--config", str(config), env=env, cwd=tmp_path))
    assert (
        message == f"{config}: unknown pair 'd\\xe9mo' (did you mean 'd\\xe9mo-\\u20ac'?); configured: d\\xe9mo-\\u20ac"
    )


def test_an_error_naming_a_value_with_line_breaks_stays_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "models.yaml"
    config.write_text(CONFIG.format(pair="p") + '    "top\\nk\\u2028": 1\n', encoding="utf-8")
    code, err = run_main(monkeypatch, capsys, "models", "--config", str(config))
    assert code == 2
    assert one_error_line(err) == f"{config}:10: unknown key 'top\\nk\\u2028' in pair 'p' (did you mean 'top_k'?)"
