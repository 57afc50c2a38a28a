"""models.yaml -> frozen dataclasses, with errors that name the file, line and key."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glimp_cli.drafting import DEFAULT_DRAFT_P_MIN, DEFAULT_DRAFT_TOKENS, MAX_DRAFT_TOKENS, SPECULATE_MODES
from glimp_cli.entropy import ENTROPY_MODES
from glimp_cli.errors import ConfigError, did_you_mean, lone_surrogate
from glimp_cli.fit import DEFAULT_KV_CACHE_TYPE, KV_CACHE_TYPES, is_quantized
from glimp_cli.router import RouterSettings
from glimp_cli.session import Sampling

CONFIG_FILENAME = "models.yaml"
PACKAGED_CONFIG = Path(__file__).with_name(CONFIG_FILENAME)
DEFAULT_N_CTX = 4096
DEFAULT_STEP_MAX_TOKENS = 512
DEFAULT_THINKING_BUDGET = 8192
DEFAULT_ANSWER_MAX_TOKENS = 256
DEFAULT_THRESHOLD = 1.0
ANSWER_BY = ("large", "small", "last")
DEFAULT_TIMEOUT_S = 120.0  # seconds a server may stay silent before a request to it fails (models.yaml: timeout_s)
URL_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class ModelSpec:
    """One model: a GGUF file and its llama.cpp options, or a model on a server. Exactly one of path / package /
    hf / url."""

    name: str
    path: str | None = None  # a .gguf file (relative to the config file)
    package: str | None = None  # an installed Python distribution shipping the file
    file: str | None = None  # path of the .gguf inside `package`
    assemble: bool = False  # `package` builds the file with its assemble() function
    hf: str | None = None  # "owner/repo/file.gguf", downloaded only when asked
    parts: tuple[str, ...] = ()  # part packages whose pieces, in order, are the file (glimp_cli.parts)
    size: int | None = None  # with parts: the assembled file's size in bytes
    sha256: str | None = None  # with parts: the assembled file's checksum
    extra: str | None = None  # with parts: glimp's pip extra that installs them (named in the error)
    url: str | None = None  # an OpenAI-compatible server ("http://host:8000/v1"): glimp_cli.remote
    model: str | None = None  # with url: the model name the server serves
    api_key_env: str | None = None  # with url: the environment variable holding the server's API key
    chat_template: str | None = None  # with url: a .jinja chat template file (relative to the config file)
    timeout_s: float = DEFAULT_TIMEOUT_S  # with url: seconds the server may stay silent in a request
    tempered_logprobs: bool | None = None  # with url: the server's log-probs are after temperature; None: by engine
    prompt: str | None = None  # template with {problem}; else the GGUF chat template (url: chat_template)
    system: str | None = None  # system message for the chat template
    think_prefix: str | None = None  # opens the think block ("<think>\n"; "" none); unset: from the chat template
    n_gpu_layers: int = -1  # -1: all layers on the GPU when a GPU backend is compiled in
    n_ctx: int = DEFAULT_N_CTX
    n_threads: int | None = None  # None: all cores, up to 8
    n_batch: int = 512
    flash_attn: bool | None = None  # unset: on where the pair speculates (see speculation_settings), else off
    type_k: str = DEFAULT_KV_CACHE_TYPE  # KV cache type of keys (llama.cpp's --cache-type-k): f16, q8_0, q4_0, ...
    type_v: str = DEFAULT_KV_CACHE_TYPE  # of values; a quantized one needs flash_attn
    # llama.cpp's repacked CPU weights: faster, but a batch's rows then differ slightly from one token's logits,
    # which makes speculative decoding inexact; exact with flash_attn: true and repack: false (the defaults where
    # the pair speculates; unset elsewhere: repacked)
    repack: bool | None = None
    base_dir: str = "."  # directory of the config file, for relative paths

    @property
    def source(self) -> str:
        if self.path:
            return self.path
        if self.package:
            return f"{self.package}:{self.file}" if self.file else f"{self.package} (assembled)"
        if self.url:
            return f"{self.url} ({self.model})"
        if self.parts:
            return f"{len(self.parts)} part packages ({self.parts[0]}, ...)"
        return f"hf:{self.hf}"

    @property
    def remote(self) -> bool:
        """Served by an OpenAI-compatible server, not loaded in-process."""
        return self.url is not None


@dataclass(frozen=True)
class PairSpec:
    """A small/large pair and its routing settings: the one home of their defaults (checks: PAIR_CHECKS)."""

    name: str
    small: str
    large: str
    threshold: float = DEFAULT_THRESHOLD  # nats
    entropy: str = "full"  # "full" | "topk"
    top_k: int = 20
    delimiter: str = "\n\n"
    end_markers: tuple[str, ...] = ("</think>",)
    answer_markers: tuple[str, ...] = ("\\boxed{",)
    answer_prefix: str = ""  # text that asks for the final answer after the thinking
    answer_stops: tuple[str, ...] = ()
    answer_by: str = "large"  # "large" | "small" | "last"
    step_max_tokens: int = DEFAULT_STEP_MAX_TOKENS
    thinking_budget: int = DEFAULT_THINKING_BUDGET
    answer_max_tokens: int = DEFAULT_ANSWER_MAX_TOKENS
    speculate: str = "off"  # drafts verified by the large model: "off" | "auto" | "model" | "ngram" (prompt lookup)
    draft_tokens: int = DEFAULT_DRAFT_TOKENS  # the most tokens one draft holds (k)
    draft_p_min: float = DEFAULT_DRAFT_P_MIN  # a model draft stops below this probability of its next token


@dataclass(frozen=True)
class Config:
    models: dict[str, ModelSpec]
    pairs: dict[str, PairSpec]
    default_pair: str
    path: Path = field(default=PACKAGED_CONFIG)

    def pair(self, name: str | None) -> PairSpec:
        name = name or self.default_pair
        if name not in self.pairs:
            raise ConfigError(
                f"{self.path}: unknown pair '{name}'{did_you_mean(name, self.pairs)}; "
                f"configured: {', '.join(self.pairs)}"
            )
        return self.pairs[name]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ConfigError(
                f"{self.path}: unknown model '{name}'{did_you_mean(name, self.models)}; "
                f"configured: {', '.join(self.models)}"
            )
        return self.models[name]


# -- the checks of every setting, shared by models.yaml and the command line ---------------------

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it (the allowed range), or None


@dataclass(frozen=True)
class Bounds:
    """The check of a number setting: an integer in [low, high], or a finite real number (`real`) in [low, high]
    (high None: no upper bound)."""

    low: float
    high: float | None = None
    real: bool = False  # a float setting: NaN and infinities refused
    optional: bool = False  # None (unset: a default chosen later) passes

    def __call__(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if self.real:
            try:
                ok = math.isfinite(value) and value >= self.low and (self.high is None or value <= self.high)
            except OverflowError:  # an integer beyond any float
                ok = False
            if ok:
                return None
            if self.high is None:
                return f"must be a finite number, {self.low:g} or more"
            return f"must be a finite number from {self.low:g} to {self.high:g}"
        if self.low <= value and (self.high is None or value <= self.high):
            return None
        return f"must be {self.low} or more" if self.high is None else f"must be from {self.low} to {self.high}"


def one_of(choices: tuple[str, ...]) -> Check:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


PAIR_CHECKS: dict[str, Check] = {
    "threshold": Bounds(0.0, real=True),  # nats
    "entropy": one_of(ENTROPY_MODES),
    "top_k": Bounds(1),
    "delimiter": not_empty,
    "answer_by": one_of(ANSWER_BY),
    "step_max_tokens": Bounds(1),
    "thinking_budget": Bounds(1),
    "answer_max_tokens": Bounds(1),
    "speculate": one_of(SPECULATE_MODES),
    "draft_tokens": Bounds(1, MAX_DRAFT_TOKENS),
    "draft_p_min": Bounds(0.0, 1.0, real=True),
}
MIN_N_CTX = 256  # room for a prompt, a step and an answer; below it llama.cpp or the first step fails
MAX_LLAMA_INT = 2**31 - 1  # llama.cpp keeps these in 32-bit fields: a larger value would wrap silently
MODEL_CHECKS: dict[str, Check] = {
    "prompt": lambda value: (
        None if value is None or "{problem}" in value else "must contain {problem} (where the problem goes)"
    ),
    "n_gpu_layers": Bounds(-1, MAX_LLAMA_INT),
    "n_ctx": Bounds(MIN_N_CTX, MAX_LLAMA_INT),
    "n_threads": Bounds(1, MAX_LLAMA_INT, optional=True),
    "n_batch": Bounds(1, MAX_LLAMA_INT),
    "type_k": one_of(tuple(KV_CACHE_TYPES)),
    "type_v": one_of(tuple(KV_CACHE_TYPES)),
    "url": lambda value: (
        None if value is None or value.startswith(URL_SCHEMES) else "must start with http:// or https://"
    ),
    "timeout_s": Bounds(0.001, real=True),  # seconds
    "size": Bounds(1, optional=True),  # bytes
    "sha256": lambda value: (
        None if value is None or re.fullmatch(r"[0-9a-f]{64}", value) else "must be 64 lowercase hex digits"
    ),
}
SAMPLING_CHECKS: dict[str, Check] = {
    "temperature": Bounds(0.0, real=True),
    "top_p": lambda value: None if 0.0 < value <= 1.0 else "must be above 0 and at most 1",
}


def override_pair(pair: PairSpec, overrides: Mapping[str, Any], *, names: Mapping[str, str]) -> PairSpec:
    """The pair with command-line values for its keys (None: not given), checked as models.yaml is.

    Args:
        names: the option that set each key, for the error message (e.g. "--max-step-tokens").
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    check_values(PAIR_CHECKS, given, label=lambda key: names.get(key, key))
    return dataclasses.replace(pair, **given)


def check_sampling(sampling: Sampling, *, names: Mapping[str, str]) -> Sampling:
    """The sampling settings, or a ConfigError naming the option whose value is out of range."""
    values = {key: getattr(sampling, key) for key in SAMPLING_CHECKS}
    check_values(SAMPLING_CHECKS, values, label=lambda key: names.get(key, key))
    return sampling


def check_values(checks: Mapping[str, Check], values: Mapping[str, Any], *, label: Callable[[str], str]) -> None:
    """A ConfigError for the first value its check refuses: '<label(key)> <what is wrong>, got <value>'."""
    for key, value in values.items():
        check = checks.get(key)
        problem = check(value) if check is not None else None
        if problem:
            raise ConfigError(f"{label(key)} {problem}, got {value!r}")


def speculation_settings(spec: ModelSpec, *, speculating: bool) -> ModelSpec:
    """The model with its unset flash_attn and repack filled in: where the pair speculates, the settings under
    which a verify batch's rows equal one token's logits (so drafts never change the greedy text), else
    llama.cpp's faster defaults (no flash attention on the CPU, repacked weights)."""
    flash_attn = spec.flash_attn if spec.flash_attn is not None else speculating
    repack = spec.repack if spec.repack is not None else not speculating
    return dataclasses.replace(spec, flash_attn=flash_attn, repack=repack)


def router_settings(pair: PairSpec, *, sampling: Sampling) -> RouterSettings:
    """What the routing loop needs from a pair (the router does not read config)."""
    return RouterSettings(
        threshold=pair.threshold,
        entropy_mode=pair.entropy,
        top_k=pair.top_k,
        delimiter=pair.delimiter,
        end_markers=pair.end_markers,
        answer_markers=pair.answer_markers,
        answer_prefix=pair.answer_prefix,
        answer_stops=pair.answer_stops,
        answer_by=pair.answer_by,
        step_max_tokens=pair.step_max_tokens,
        thinking_budget=pair.thinking_budget,
        answer_max_tokens=pair.answer_max_tokens,
        sampling=sampling,
    )


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config FILE, else ./models.yaml, else the one shipped with glimp."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    local = Path.cwd() / CONFIG_FILENAME
    return local if local.is_file() else PACKAGED_CONFIG


def load_config(path: str | os.PathLike[str]) -> Config:
    """Parse and validate a models.yaml."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}): save the file as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
        lines = key_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML does not parse: {problem}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: YAML does not parse: nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ConfigError(f"{path}: YAML does not parse: {str(exc).split(':')[0]}") from None
    return _build_config(raw, lines, path)


def key_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Line number (1-based) of every mapping key, by its key path."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*prefix, str(key_node.value))
            lines[key_path] = key_node.start_mark.line + 1
            lines.update(key_lines(value_node, key_path))
    return lines


_TOP_KEYS = ("models", "pairs", "default_pair")
_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelSpec) if f.name not in ("name", "base_dir")}
_PAIR_FIELDS = {f.name: f for f in dataclasses.fields(PairSpec) if f.name != "name"}


def _build_config(raw: Any, lines: dict[tuple[str, ...], int], path: Path) -> Config:
    def where(*key_path: str) -> str:
        line = lines.get(key_path)
        return f"{path}:{line}" if line else str(path)

    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'models' and 'pairs'")
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where(key)}: unknown key '{key}'{did_you_mean(str(key), _TOP_KEYS)}")
    models = {
        name: _build_model(name, body, where, path.absolute().parent)
        for name, body in _section(raw, "models", where).items()
    }
    pairs = {name: _build_pair(name, body, where, models) for name, body in _section(raw, "pairs", where).items()}
    if not pairs:
        raise ConfigError(f"{path}: no pairs configured")
    default_pair = str(raw.get("default_pair") or next(iter(pairs)))
    if default_pair not in pairs:
        raise ConfigError(f"{where('default_pair')}: unknown pair '{default_pair}'{did_you_mean(default_pair, pairs)}")
    return Config(models=models, pairs=pairs, default_pair=default_pair, path=path)


def _section(raw: dict[str, Any], key: str, where) -> dict[str, Any]:
    body = raw.get(key) or {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where(key)}: '{key}' must be a mapping of names")
    for name in map(str, body):
        surrogate = lone_surrogate(name)
        if surrogate:
            raise ConfigError(
                f"{where(key, name)}: the name {name!r} holds a lone surrogate, {surrogate}, which is not text"
            )
    return {str(k): v for k, v in body.items()}


def _coerce(value: Any, fld: dataclasses.Field, place: str) -> Any:
    kind = str(fld.type)  # annotations are strings here (postponed evaluation)
    base = kind.removesuffix(" | None")
    if value is None and base != kind:
        return None
    if base == "tuple[str, ...]":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{place}: '{fld.name}' must be a list of strings, got {value!r}")
        _check_text(value, fld.name, place)
        return tuple(value)
    expected = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}[base]
    if not isinstance(value, expected) or (base in ("int", "float") and isinstance(value, bool)):
        noun = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[base]
        raise ConfigError(f"{place}: '{fld.name}' must be {noun}, got {value!r}")
    if base == "str":
        _check_text([value], fld.name, place)
    if base == "float":
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(
                f"{place}: '{fld.name}' must be a finite number, got an integer beyond any float"
            ) from None
    return value


def _check_text(values: list[str], name: str, place: str) -> None:
    """A ConfigError for a string with a lone surrogate (a YAML "\\ud800" escape): it cannot be written out."""
    for value in values:
        surrogate = lone_surrogate(value)
        if surrogate:
            raise ConfigError(f"{place}: '{name}' holds a lone surrogate, {surrogate}, which is not text")


def _fields_of(body: Any, fields: dict[str, dataclasses.Field], key_path: tuple[str, ...], where) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ConfigError(f"{where(*key_path)}: '{key_path[-1]}' must be a mapping")
    values = {}
    for key, value in body.items():
        key = str(key)
        if key not in fields:
            raise ConfigError(
                f"{where(*key_path, key)}: unknown key '{key}' "
                f"in {key_path[0][:-1]} '{key_path[1]}'{did_you_mean(key, fields)}"
            )
        values[key] = _coerce(value, fields[key], where(*key_path, key))
    return values


def _build_model(name: str, body: Any, where, base_dir: Path) -> ModelSpec:
    if isinstance(body, dict) and "api_key" in body:  # before the unknown-key check: a clearer message
        raise ConfigError(
            f"{where('models', name, 'api_key')}: model '{name}': never put an API key in models.yaml: set "
            "api_key_env to the name of an environment variable that holds it"
        )
    values = _fields_of(body, _MODEL_FIELDS, ("models", name), where)
    sources = [k for k in ("path", "package", "hf", "url", "parts") if values.get(k)]
    if len(sources) != 1:
        raise ConfigError(
            f"{where('models', name)}: model '{name}' needs exactly one of path, package, hf, url, parts "
            f"(has {', '.join(sources) or 'none'})"
        )
    check_values(MODEL_CHECKS, values, label=lambda key: f"{where('models', name, key)}: {key}")
    _check_remote_keys(name, values, where)
    _check_parts_keys(name, values, where)
    if values.get("package") and not (values.get("file") or values.get("assemble")):
        raise ConfigError(
            f"{where('models', name)}: model '{name}' names a package: add 'file' (path inside it) or 'assemble: true'"
        )
    type_v = values.get("type_v", DEFAULT_KV_CACHE_TYPE)
    if is_quantized(type_v) and not values.get("flash_attn", False):
        # llama-cpp-python turns flash attention off, not to "auto", when flash_attn is false: llama.cpp then refuses
        # a quantized V cache (it fails to create the context).
        raise ConfigError(
            f"{where('models', name, 'type_v')}: model '{name}': type_v {type_v} (a quantized V cache) needs "
            "flash attention: set flash_attn: true"
        )
    return ModelSpec(name=name, base_dir=str(base_dir), **values)


REMOTE_ONLY_KEYS = ("model", "api_key_env", "chat_template", "timeout_s", "tempered_logprobs")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_remote_keys(name: str, values: dict[str, Any], where) -> None:
    """A url model names its served model and has a way to build its prompt; the url keys go with url only."""
    if not values.get("url"):
        _refuse_keys_without("url", REMOTE_ONLY_KEYS, name, values, where)
        return
    if not values.get("model"):
        raise ConfigError(
            f"{where('models', name)}: model '{name}' has a url: add 'model', the model name the server serves "
            "(GET <url>/models lists them)"
        )
    env = values.get("api_key_env")
    if env is not None and not ENV_NAME.fullmatch(env):
        # the value is not echoed: it may be the key itself
        raise ConfigError(
            f"{where('models', name, 'api_key_env')}: model '{name}': api_key_env must name an environment "
            "variable (letters, digits, _), such as VLLM_API_KEY; never put the key itself in models.yaml"
        )
    if values.get("prompt") is None and not values.get("chat_template"):
        raise ConfigError(
            f"{where('models', name)}: model '{name}' is served at {values['url']}: glimp renders its prompt as "
            "text, so set 'prompt' (a template with {problem}) or 'chat_template' (a .jinja file, e.g. the "
            "model's tokenizer_config.json chat_template) for it"
        )


PARTS_ONLY_KEYS = ("size", "sha256", "extra")


def _check_parts_keys(name: str, values: dict[str, Any], where) -> None:
    """A parts model pins its assembled file by size and sha256 (nothing unverified is ever used)."""
    if not values.get("parts"):
        _refuse_keys_without("parts", PARTS_ONLY_KEYS, name, values, where)
        return
    missing = [key for key in ("size", "sha256") if values.get(key) is None]
    if missing:
        raise ConfigError(
            f"{where('models', name)}: model '{name}' has parts: add {' and '.join(missing)} "
            "(of the assembled file), so that a changed part is refused"
        )


def _refuse_keys_without(source: str, keys: tuple[str, ...], name: str, values: dict[str, Any], where) -> None:
    """A ConfigError for the first of `keys` set on a model without `source` (they mean nothing without it)."""
    for key in keys:
        if key in values:
            raise ConfigError(f"{where('models', name, key)}: model '{name}': '{key}' goes with '{source}' only")


def _build_pair(name: str, body: Any, where, models: dict[str, ModelSpec]) -> PairSpec:
    values = _fields_of(body, _PAIR_FIELDS, ("pairs", name), where)
    for role in ("small", "large"):
        model = values.get(role)
        if not model:
            raise ConfigError(f"{where('pairs', name)}: pair '{name}' needs '{role}'")
        if model not in models:
            raise ConfigError(f"{where('pairs', name, role)}: unknown model '{model}'{did_you_mean(model, models)}")
    check_values(PAIR_CHECKS, values, label=lambda key: f"{where('pairs', name, key)}: {key}")
    return PairSpec(name=name, **values)
