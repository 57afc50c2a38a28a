"""Every number a user can give glimp, tried with bad values: out of range, not a number, NaN and
infinities, empty. Each is refused before any model loads, with exit code 2, no traceback, and a
message naming the option (command line) or the file, line and key (models.yaml,
glimp-calibration.yaml).

The options come from the commands' declarations and the keys from the config dataclasses, so a new
numeric option or key is tried too (and must declare its range).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import pytest
import typer
import yaml

from cli_helpers import one_error_line, run_main, usage_error
from glimp_cli import cli
from glimp_cli.calibration_file import CALIBRATION_FILENAME
from glimp_cli.config import MODEL_CHECKS, PAIR_CHECKS, Bounds, ModelSpec, PairSpec

COMMANDS = {"ask": cli.ask, "bench": cli.bench, "calibrate": cli.calibrate}


def _short(value: str) -> str:
    return repr(value) if len(value) <= 24 else f"'{value[:8]}...' ({len(value)} characters)"


NOT_NUMBERS = ["abc", "nan", "NaN", "inf", "-inf", "1e999", ""]


@dataclasses.dataclass(frozen=True)
class NumberOption:
    command: str
    name: str  # "--threshold"
    integer: bool
    is_list: bool  # comma-separated numbers
    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False

    def bad_values(self) -> list[str]:
        values = list(NOT_NUMBERS)
        if self.low is not None:
            values.append(f"{self.low:g}" if self.low_open else f"{self.low - (1 if self.integer else 0.001):g}")
        if self.high is not None:
            values.append(f"{self.high:g}" if self.high_open else f"{self.high + (1 if self.integer else 0.001):g}")
        if self.integer:
            values += [
                "1.5",
                "0x10",
                "99999999999999999999999999999" if self.high is not None else "-99999999999999999999",
            ]
        if self.is_list:
            values += [",", " , ", "0.5,abc", "0.5,nan"]
        return values


def _unwrap(hint):
    """(type, typer info) of an Annotated[Optional[T], typer.Option(...)] parameter."""
    base, info = typing.get_args(hint)[:2]
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        base = next(arg for arg in typing.get_args(base) if arg is not type(None))
    return base, info


def number_options() -> list[NumberOption]:
    """Every option of ask, bench and calibrate that takes a number or numbers: its name as Click
    parses it, its type and its declared range (a parser's bounds, or min/max)."""
    found = []
    for command_name, function in COMMANDS.items():
        click_command = typer.main.get_command(cli.app).commands[command_name]
        names = {
            param.name: next(opt for opt in param.opts if opt.startswith("--"))
            for param in click_command.params
            if param.opts[0].startswith("-")
        }
        for param, hint in typing.get_type_hints(function, include_extras=True).items():
            if param not in names:
                continue  # an argument
            base, info = _unwrap(hint)
            parser = getattr(info, "parser", None)
            bounds = getattr(parser, "bounds", None) or getattr(getattr(parser, "element", None), "bounds", None)
            if base is bool or (base not in (int, float) and bounds is None):
                continue  # a flag, a name or a path
            assert base is int or bounds is not None, (
                f"{command_name} {names[param]}: a float option needs a number(...) parser (NaN and inf)"
            )
            if bounds is not None:
                low, high, low_open, high_open = bounds
            else:
                low, high, low_open, high_open = info.min, info.max, False, False
            assert low is not None or high is not None, (
                f"{command_name} {names[param]}: a numeric option must declare its range"
            )
            found.append(
                NumberOption(
                    command_name, names[param], base is int, hasattr(parser, "element"), low, high, low_open, high_open
                )
            )
    return found


NUMBER_OPTIONS = number_options()
CASES = [(option, value) for option in NUMBER_OPTIONS for value in option.bad_values()]


def test_the_options_found_include_every_known_numeric_option():
    found = {(o.command, o.name) for o in NUMBER_OPTIONS}
    shared = {"--temperature", "--top-p", "--seed", "--max-step-tokens", "--thinking-budget"}
    assert {("ask", name) for name in {"--threshold", "--rate", *shared}} <= found
    assert {("bench", name) for name in {"--threshold", "--rate", "--limit", "--offset", *shared}} <= found
    calibrate = {
        "--target-rate",
        "--thresholds",
        "--rates",
        "--max-latency",
        "--margin",
        "--limit",
        "--offset",
        *shared,
    }
    assert {("calibrate", name) for name in calibrate} <= found


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*_):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "open_pair", refuse)


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"id": "p0", "problem": "What is 2 + 3?", "answer": "5"}) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("option", "value"), CASES, ids=[f"{o.command} {o.name}={_short(v)}" for o, v in CASES])
def test_a_bad_number_on_the_command_line_is_refused_naming_the_option(
    tmp_path, monkeypatch, capsys, no_model_loads, option, value
):
    head = (
        ["ask", "What is 2 + 3?"]
        if option.command == "ask"
        else [option.command, str(_data(tmp_path)), "--out", str(tmp_path / "out")]
    )
    code, err = run_main(monkeypatch, capsys, *head, f"{option.name}={value}")
    assert code == 2, err
    assert "Traceback" not in err
    message = usage_error(err, option.command) if err.startswith("Usage:") else one_error_line(err)
    assert option.name in message
    assert not (tmp_path / "out").exists()


# --- models.yaml -------------------------------------------------------------------------------------

CONFIG_HEAD = "models:\n  s:\n    path: s.gguf\n"  # a model key goes on line 4
CONFIG_TAIL = "  l:\n    path: l.gguf\npairs:\n  p:\n    small: s\n    large: l\n"  # a pair key goes on line 10


def _numeric_keys(spec) -> list[tuple[str, Bounds]]:
    checks = PAIR_CHECKS if spec is PairSpec else MODEL_CHECKS
    keys = []
    for field in dataclasses.fields(spec):
        kind = str(field.type).removesuffix(" | None")
        if kind in ("int", "float"):
            assert isinstance(checks.get(field.name), Bounds), (
                f"{spec.__name__}.{field.name}: a numeric key needs a Bounds check"
            )
            keys.append((field.name, checks[field.name]))
    return keys


def _bad_yaml_values(check: Bounds) -> list[str]:
    values = ["abc", ".nan", ".NaN", ".inf", "-.inf", "true", "[1]", "{a: 1}", "'12'"]
    values += [] if check.optional else [""]  # empty: null, allowed where the key may be unset
    values.append(f"{check.low - (0.5 if check.real else 1)}")
    if check.high is not None:
        values.append(str(int(check.high) + 1))
    if check.real:
        values.append("-" + "9" * 400)  # beyond any float
    else:
        values += ["1.5", "1.0e+3"]
    return values


YAML_CASES = [
    (section, key, value)
    for section, spec in (("models", ModelSpec), ("pairs", PairSpec))
    for key, check in _numeric_keys(spec)
    for value in _bad_yaml_values(check)
]


def test_the_keys_found_include_every_known_numeric_key():
    found = {(section, key) for section, key, _ in YAML_CASES}
    assert {
        ("pairs", k) for k in ("threshold", "top_k", "step_max_tokens", "thinking_budget", "answer_max_tokens")
    } <= found
    assert {("models", k) for k in ("n_ctx", "n_batch", "n_threads", "n_gpu_layers")} <= found


@pytest.mark.parametrize(
    ("section", "key", "value"), YAML_CASES, ids=[f"{s}.{k}={_short(v)}" for s, k, v in YAML_CASES]
)
def test_a_bad_number_in_models_yaml_is_one_line_with_file_line_and_key(
    tmp_path, monkeypatch, capsys, section, key, value
):
    if section == "models":
        text, line = CONFIG_HEAD + f"    {key}: {value}\n" + CONFIG_TAIL, 4
    else:
        text, line = CONFIG_HEAD + CONFIG_TAIL + f"    {key}: {value}\n", 10
    config = tmp_path / "models.yaml"
    config.write_text(text, encoding="utf-8")
    code, err = run_main(monkeypatch, capsys, "models", "--config", str(config))
    assert code == 2, err
    message = one_error_line(err)
    assert message.startswith(f"{config}:{line}: ")
    assert key in message


# --- glimp-calibration.yaml -------------------------------------------------------------------------

CALIBRATION_CASES = [
    *[
        ("threshold", value)
        for value in ["-1", "-0.5", "abc", ".nan", ".inf", "-.inf", "", "true", "[1]", "'1.0'", "9" * 400]
    ],
    *[("entropy", value) for value in ["abc", "", "1", "[full]"]],
]


@pytest.mark.parametrize(("key", "value"), CALIBRATION_CASES, ids=[f"{k}={_short(v)}" for k, v in CALIBRATION_CASES])
def test_a_bad_value_in_the_calibration_file_is_one_line_with_file_line_and_key(
    tmp_path, monkeypatch, capsys, key, value
):
    config = tmp_path / "models.yaml"
    config.write_text(CONFIG_HEAD + CONFIG_TAIL, encoding="utf-8")
    entry = {"small": "s", "large": "l", "threshold": 1.5, "entropy": "full"}
    text = yaml.safe_dump({"pairs": {"p": entry}}, sort_keys=False).replace(f"{key}: {entry[key]}", f"{key}: {value}")
    calibration = tmp_path / CALIBRATION_FILENAME
    calibration.write_text(text, encoding="utf-8")
    line = next(
        number for number, text_line in enumerate(text.splitlines(), start=1) if text_line.startswith(f"    {key}:")
    )
    code, err = run_main(monkeypatch, capsys, "models", "--config", str(config))
    assert code == 2, err
    message = one_error_line(err)
    assert message.startswith(f"{calibration}:{line}: pair 'p': {key} ")
    assert message.endswith("fix or delete the entry")
