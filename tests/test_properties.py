"""Property-based tests of the readers of user files: models.yaml, benchmark JSONL and glimp-calibration.yaml.

Whatever a file holds (any text, any bytes, or a well-formed file with any values in its keys), reading it
either succeeds or raises glimp's own GlimpError, which the CLI prints as one line; never anything else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from glimp_cli.calibration_file import CALIBRATION_FILENAME, apply_calibration
from glimp_cli.config import PairSpec, load_config
from glimp_cli.dataset import load_problems
from glimp_cli.errors import GlimpError

PROPERTIES = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

VALID_CONFIG = "models:\n  s:\n    path: s.gguf\n  l:\n    path: l.gguf\npairs:\n  p:\n    small: s\n    large: l\n"
CALIBRATION = {"pairs": {"p": {"small": "s", "large": "l", "threshold": 1.0, "entropy": "full"}}}
PAIR_KEYS = [name for name in PairSpec.__dataclass_fields__ if name not in ("name", "small", "large")]
MODEL_KEYS = [
    "path",
    "package",
    "file",
    "assemble",
    "hf",
    "prompt",
    "system",
    "think_prefix",
    "n_gpu_layers",
    "n_ctx",
    "n_threads",
    "n_batch",
    "flash_attn",
    "repack",
]

# Values YAML and JSON can carry: huge integers, NaN and infinities, lone surrogates, nesting.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=5),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# YAML-looking text: its punctuation, keywords and the keys glimp reads, more often than random text has them.
YAML_PIECES = [":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "#", "&a", "*a", "!!", "|", ">", "'", '"', "?",
               "---", "...", "%YAML", "null", "true", "1", "-1", ".nan", ".inf", "1e400", "\\ud800", "\t", "\x00",
               "\ufeff", "é", "models", "pairs", "default_pair", "path", "threshold", "n_ctx", "small", "large",
               "p", "s", "l"]  # fmt: skip
yaml_like = st.lists(st.sampled_from(YAML_PIECES), max_size=40).map("".join)
JSON_PIECES = ['{', '}', '[', ']', ':', ',', '"', '"problem"', '"answer"', '"id"', '"q"', "1", "-0", "1e999", "NaN",
               "Infinity", "null", "true", "\\ud800", "\\u", "\\", " ", "\n", "\r\n", "\u2028", "\x85", "é",
               "\x00"]  # fmt: skip
json_like = st.lists(st.sampled_from(JSON_PIECES), max_size=40).map("".join)


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    """One directory for every example of a test: each writes its file over the last one's."""
    return tmp_path_factory.mktemp("properties")


def _file(directory: Path, text_or_bytes: str | bytes, name: str) -> Path:
    path = directory / name
    if isinstance(text_or_bytes, bytes):
        path.write_bytes(text_or_bytes)
    else:
        path.write_text(text_or_bytes, encoding="utf-8")
    return path


def _reads_or_glimp_error(read, path: Path) -> None:
    try:
        read(path)
    except GlimpError as exc:
        assert str(exc), "an error without a message"


# --- models.yaml ---------------------------------------------------------------------------------------


@PROPERTIES
@given(st.text() | yaml_like)
@example("[" * 5000)
@example(VALID_CONFIG + "    threshold: " + "9" * 5000 + "\n")
def test_config_text_loads_or_is_a_glimp_error(directory, text):
    _reads_or_glimp_error(load_config, _file(directory, text, "models.yaml"))


@PROPERTIES
@given(st.binary())
@example(b"models:\n  caf\xe9: {}\n")
def test_config_bytes_load_or_are_a_glimp_error(directory, data):
    _reads_or_glimp_error(load_config, _file(directory, data, "models.yaml"))


@PROPERTIES
@given(section=st.sampled_from(["pairs", "models"]), key=st.sampled_from(PAIR_KEYS + MODEL_KEYS), value=values)
@example(section="pairs", key="threshold", value=10**400)
@example(section="models", key="path", value="s\ud800.gguf")
def test_any_value_of_a_config_key_loads_or_is_a_glimp_error(directory, section, key, value):
    config = yaml.safe_load(VALID_CONFIG)
    config[section]["p" if section == "pairs" else "s"][key] = value
    _reads_or_glimp_error(load_config, _file(directory, yaml.safe_dump(config, allow_unicode=False), "models.yaml"))


# --- benchmark JSONL ------------------------------------------------------------------------------------


@PROPERTIES
@given(st.text() | json_like)
@example('{"problem": "q", "answer": ' + "1" * 5000 + "}")
@example("[" * 100_000)
def test_data_text_loads_or_is_a_glimp_error(directory, text):
    _reads_or_glimp_error(load_problems, _file(directory, text, "data.jsonl"))


@PROPERTIES
@given(st.binary())
def test_data_bytes_load_or_are_a_glimp_error(directory, data):
    _reads_or_glimp_error(load_problems, _file(directory, data, "data.jsonl"))


@PROPERTIES
@given(st.dictionaries(st.sampled_from(["problem", "question", "answer", "gold", "id"]), values, max_size=4))
def test_any_record_loads_or_is_a_glimp_error(directory, record):
    line = json.dumps(record)  # escapes lone surrogates as \udxxx; NaN and Infinity as json writes them
    _reads_or_glimp_error(load_problems, _file(directory, line + "\n", "data.jsonl"))


# --- glimp-calibration.yaml --------------------------------------------------------------------------


def _apply_calibration(path: Path) -> None:
    config = load_config(_file(path.parent, VALID_CONFIG, "models.yaml"))
    calibrated = apply_calibration(config, path)
    threshold = calibrated.pair("p").threshold
    assert isinstance(threshold, float) and math.isfinite(threshold) and threshold >= 0


@PROPERTIES
@given(st.text() | yaml_like)
def test_calibration_text_applies_or_is_a_glimp_error(directory, text):
    _reads_or_glimp_error(_apply_calibration, _file(directory, text, CALIBRATION_FILENAME))


@PROPERTIES
@given(st.binary())
def test_calibration_bytes_apply_or_are_a_glimp_error(directory, data):
    _reads_or_glimp_error(_apply_calibration, _file(directory, data, CALIBRATION_FILENAME))


@PROPERTIES
@given(key=st.sampled_from(["threshold", "entropy", "small", "large"]), value=values)
@example(key="threshold", value=10**400)
def test_any_value_of_a_calibration_key_applies_or_is_a_glimp_error(directory, key, value):
    calibration = json.loads(json.dumps(CALIBRATION))
    calibration["pairs"]["p"][key] = value
    _reads_or_glimp_error(
        _apply_calibration, _file(directory, yaml.safe_dump(calibration, allow_unicode=False), CALIBRATION_FILENAME)
    )
