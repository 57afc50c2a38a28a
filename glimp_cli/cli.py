"""Thin Typer commands: parse options (numbers are parsed here), build config objects, hand events to a renderer."""

from __future__ import annotations

import codecs
from collections.abc import Callable
import math
import os
import sys
import unicodedata
from pathlib import Path
from typing import Annotated, Optional

from glimp_cli import backend  # noqa: F401  first: llama.cpp must load before numpy (see backend.py)

import dataclasses

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from glimp_cli.calibration_file import apply_calibration, calibration_path, save_calibration
from glimp_cli.config import (
    DEFAULT_N_CTX,
    Config,
    ModelSpec,
    PairSpec,
    check_sampling,
    find_config,
    load_config,
    override_pair,
    router_settings,
    speculation_settings,
)
from glimp_cli.drafting import NgramDrafter, Speculation, choose_draft_source
from glimp_cli.errors import ConfigError, GlimpError, RunError, WriteError, did_you_mean, lone_surrogate
from glimp_cli.parallel import DEFAULT_PARALLEL, PARALLEL_CHECK, MakeSessions, SessionPairs, check_parallel
from glimp_cli.policy import MODES, make_policy
from glimp_cli.render import json_text
from glimp_cli.router import RouterSettings
from glimp_cli.session import DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Sampling

app = typer.Typer(
    help="glimp: a small and a large GGUF model share one chain of thought. At each step the small "
    "model's first-token entropy decides who writes it (GlimpRouter, arXiv 2601.05110).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- number and list parsers: command-line text is parsed here, the core gets floats and tuples ------
# Each raises typer.BadParameter, which Typer (and its bundled or separate Click) prints as a usage
# error naming the option: "Error: Invalid value for '--rate': must be ..., got '1.5'".


def number(*, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """A parser for a finite number within bounds (NaN and infinities refused)."""
    if low is not None and high is not None:
        allowed = (
            f"a number {'above' if low_open else 'at least'} {low:g} and {'below' if high_open else 'at most'} {high:g}"
        )
    elif low is not None:
        allowed = f"a number above {low:g}" if low_open else f"a number, {low:g} or more"
    else:
        allowed = "a number"

    def parse(value: object) -> float:
        if isinstance(value, float):
            return value
        try:
            parsed = float(str(value).strip())
        except ValueError:
            raise typer.BadParameter(f"must be {allowed}, got {value!r}") from None
        too_low = low is not None and (parsed <= low if low_open else parsed < low)
        too_high = high is not None and (parsed >= high if high_open else parsed > high)
        if not math.isfinite(parsed) or too_low or too_high:
            raise typer.BadParameter(f"must be {allowed}, got {value!r}")
        return parsed

    parse.bounds = (low, high, low_open, high_open)  # for the tests that try values out of range
    return parse


def number_list(parse_number):
    """A parser for comma-separated numbers ('0.5, 1,1.5'): empty parts and repeats dropped, order kept."""

    def parse(value: object) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        numbers: list[float] = []
        for part in (p for p in str(value).split(",") if p.strip()):
            parsed = parse_number(part)
            if parsed not in numbers:
                numbers.append(parsed)
        if not numbers:
            raise typer.BadParameter(f"must be one or more numbers separated by commas, got {value!r}")
        return Numbers(numbers)

    parse.element = parse_number
    return parse


def mode_list(value: object) -> tuple[str, ...]:
    """Comma-separated routing modes ('glimp,small'), repeats dropped."""
    if isinstance(value, tuple):
        return value
    modes: list[str] = []
    for name in (part.strip() for part in str(value).split(",")):
        if name not in MODES:
            raise typer.BadParameter(
                f"unknown mode {name!r}{did_you_mean(name, MODES)}; choose from {', '.join(MODES)}"
            )
        if name not in modes:
            modes.append(name)
    return Modes(modes)


class Numbers(tuple):
    """Comma-separated numbers from the command line (shown so in --help)."""


class Modes(tuple):
    """Comma-separated routing modes from the command line (shown so in --help)."""


NON_NEGATIVE = number(low=0.0)
SHARE = number(low=0.0, high=1.0)  # a probability, ends included
OPEN_SHARE = number(low=0.0, high=1.0, low_open=True, high_open=True)  # a large-step share to aim for


# -- options shared by several commands, declared once ----------------------------------------------

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="models.yaml to use (default: ./models.yaml, then the one shipped with glimp)."),
]
PairOpt = Annotated[
    Optional[str], typer.Option("--pair", help="Named pair from models.yaml (default: its default_pair).")
]
SmallOpt = Annotated[
    Optional[str], typer.Option("--small", help="Small model: a name from models.yaml or a .gguf path.")
]
LargeOpt = Annotated[
    Optional[str], typer.Option("--large", help="Large model: a name from models.yaml or a .gguf path.")
]
EntropyOpt = Annotated[
    Optional[str],
    typer.Option("--entropy", help="Entropy over the full vocabulary (full) or the top-k tokens, renormalised (topk)."),
]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", parser=NON_NEGATIVE, help="Sampling temperature; 0 is greedy.")
]
TopPOpt = Annotated[
    float,
    typer.Option(
        "--top-p", parser=number(low=0.0, high=1.0, low_open=True), help="Nucleus sampling mass, above 0 and at most 1."
    ),
]
MAX_SEED = 2**32 - 1  # llama.cpp's samplers take a 32-bit seed: a larger one would wrap onto a smaller one
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        min=0,
        max=MAX_SEED,
        help="Random seed (0 to 4294967295) for sampling and --mode random; "
        "a benchmark derives each problem's seed from it and the problem id.",
    ),
]
MaxStepTokensOpt = Annotated[Optional[int], typer.Option("--max-step-tokens", min=1, help="Cap on one step's tokens.")]
ThinkingBudgetOpt = Annotated[
    Optional[int], typer.Option("--thinking-budget", min=1, help="Cap on all thinking tokens.")
]
AnswerByOpt = Annotated[
    Optional[str], typer.Option("--answer-by", help="Who writes the final answer: large, small or last.")
]
SpeculateOpt = Annotated[
    Optional[str],
    typer.Option(
        "--speculate",
        help="Drafts the large model verifies in one call each: off; model (the small model drafts; its vocabulary "
        "must agree with the large one's); ngram (prompt lookup); auto (model where the vocabularies agree, else "
        "ngram). Default: the pair's.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of rich output.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Run at most this many problems.")]
OffsetOpt = Annotated[int, typer.Option("--offset", min=0, help="Skip this many problems first.")]
ProblemKeyOpt = Annotated[
    Optional[str],
    typer.Option("--problem-key", help="Record key of the problem text (default: problem, question or prompt)."),
]
AnswerKeyOpt = Annotated[
    Optional[str],
    typer.Option("--answer-key", help="Record key of the reference answer (default: answer, gold or solution)."),
]
OutOpt = Annotated[
    Optional[Path], typer.Option("--out", help="Output directory (default: runs/<command>-<data file name>).")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue a run in --out, reusing results already there.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Delete the results and summaries in --out and start over.")]
ParallelOpt = Annotated[
    int,
    typer.Option(
        "--parallel",
        min=int(PARALLEL_CHECK.low),
        help="Problems in flight at once, each on its own sessions: for models served with `url:` "
        "(in-process models run one at a time).",
    ),
]

# The command-line option of each pair or sampling key, for error messages.
OPTION_NAMES = {
    "threshold": "--threshold",
    "entropy": "--entropy",
    "step_max_tokens": "--max-step-tokens",
    "thinking_budget": "--thinking-budget",
    "answer_by": "--answer-by",
    "speculate": "--speculate",
    "temperature": "--temperature",
    "top_p": "--top-p",
}


# -- from options to a configured run ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The options that choose the models and routing settings (shared by ask, bench and calibrate)."""

    config: Path | None
    pair: str | None
    small: str | None
    large: str | None
    entropy: str | None
    temperature: float
    top_p: float
    seed: int
    max_step_tokens: int | None
    thinking_budget: int | None
    answer_by: str | None
    threshold: float | None = None
    speculate: str | None = None

    def configure(self, *, calibrated: bool = True) -> tuple[Config, PairSpec, ModelSpec, ModelSpec, RouterSettings]:
        """The config (with saved calibrations unless told not to), the pair with the overrides, its models
        and the router settings; every value checked before any model loads."""
        config = load_config(find_config(self.config))
        if calibrated:  # a saved `glimp calibrate` threshold; --threshold still wins
            config = apply_calibration(config)
        overrides = {
            "threshold": self.threshold,
            "entropy": self.entropy,
            "step_max_tokens": self.max_step_tokens,
            "thinking_budget": self.thinking_budget,
            "answer_by": self.answer_by,
            "speculate": self.speculate,
        }
        pair, small, large = resolve_pair(
            config, pair=self.pair, small=self.small, large=self.large, overrides=overrides
        )
        if small.remote and pair.entropy == "full":
            # the router would refuse it too (the session measures topk only); here it is said before any request
            raise ConfigError(
                f"entropy full needs the whole vocabulary's logits, but the small model '{small.name}' is remote "
                f"({small.url}), where glimp reads the top-20 log-probs only: use --entropy topk, or entropy: topk "
                f"for pair '{pair.name}'"
            )
        sampling = check_sampling(
            Sampling(temperature=self.temperature, top_p=self.top_p, seed=self.seed), names=OPTION_NAMES
        )
        return config, pair, small, large, router_settings(pair, sampling=sampling)


FILES_PAIR = "files"  # the pair of two .gguf files given without --pair
PROMPT_ROOM_TOKENS = 1024  # a model file's context: the thinking budget and the answer, plus this for the prompt


def resolve_pair(
    config: Config,
    *,
    pair: str | None,
    small: str | None,
    large: str | None,
    overrides: dict[str, object] | None = None,
) -> tuple[PairSpec, ModelSpec, ModelSpec]:
    """The pair from models.yaml with the command line's overrides and --small/--large (names or .gguf paths).

    Two .gguf files without --pair take glimp's own routing defaults (the original implementation's settings:
    8192 thinking tokens, 512-token steps), not the default pair's, which suit the demo models.
    """
    if pair is None and small is not None and large is not None and _is_file(small) and _is_file(large):
        spec = PairSpec(name=FILES_PAIR, small=small, large=large)
    else:
        spec = config.pair(pair)
    spec = override_pair(spec, overrides or {}, names=OPTION_NAMES)
    speculating = spec.speculate != "off"
    small_spec = speculation_settings(_model_arg(config, small or spec.small, pair=spec), speculating=speculating)
    large_spec = speculation_settings(_model_arg(config, large or spec.large, pair=spec), speculating=speculating)
    return dataclasses.replace(spec, small=small_spec.name, large=large_spec.name), small_spec, large_spec


def _is_file(value: str) -> bool:
    return value.endswith(".gguf") or os.sep in value


def _model_arg(config: Config, value: str, *, pair: PairSpec) -> ModelSpec:
    """A model named in models.yaml, or a .gguf file with a context that holds the pair's thinking and answer."""
    if _is_file(value):
        n_ctx = max(DEFAULT_N_CTX, pair.thinking_budget + pair.answer_max_tokens + PROMPT_ROOM_TOKENS)
        return ModelSpec(name=Path(value).stem, path=str(Path(value).resolve()), n_ctx=n_ctx)
    return config.model(value)


def open_pair(small_spec: ModelSpec, large_spec: ModelSpec):
    return open_model(small_spec), open_model(large_spec)


def open_model(spec: ModelSpec):
    """A session on the model: in-process (llama.cpp), or on its server for a url model."""
    if spec.remote:
        from glimp_cli.remote import open_remote_session

        return open_remote_session(spec)
    return backend.open_session(spec)


def session_maker(
    pair: PairSpec,
    small_spec: ModelSpec,
    large_spec: ModelSpec,
    *,
    on_speculation: Callable[[Speculation], None] = lambda speculation: None,
) -> MakeSessions:
    """Makes (small, large) session pairs, the large one speculating as the pair says: one per problem in flight.
    The first pair's draft source (the same for every pair) goes to `on_speculation`."""
    made = 0

    def make():
        nonlocal made
        small_session, large_session = open_pair(small_spec, large_spec)
        speculation = speculate_with(small_session, large_session, pair, quiet=made > 0)
        if made == 0:
            on_speculation(speculation)
        made += 1
        return small_session, large_session

    return make


def speculate_with(small_session, large_session, pair: PairSpec, *, quiet: bool = False) -> Speculation:
    """The large model verifies drafts from the pair's draft source (in its steps and the answer it writes);
    returns the source and why it was chosen (quiet: without the note on inexact settings, said once already)."""
    if pair.speculate != "off" and large_session.spec.remote:
        raise ConfigError(
            f"speculate: {pair.speculate}: drafts are verified by in-process models only; '{large_session.name}' is "
            "served at a url (set speculate: off for this pair)"
        )
    draftable, mismatch = None, None
    if pair.speculate in ("auto", "model"):
        if small_session.spec.remote:
            mismatch = f"'{small_session.name}' is served at a url: only an in-process small model drafts"
        else:
            draftable, mismatch = backend.draftable_tokens(small_session, large_session)
        if mismatch is not None and pair.speculate == "model":
            raise ConfigError(f"--speculate model: {mismatch}; use ngram (or auto, which falls back to it)")
    costs = None
    if pair.speculate == "auto":  # drafts only where their measured cost says they pay
        drafter = small_session if mismatch is None else None
        costs = backend.decode_costs(drafter, large_session, k=pair.draft_tokens)
    speculation = choose_draft_source(pair.speculate, vocabulary_mismatch=mismatch, costs=costs)
    if speculation.source == "model":
        large_session.speculate = backend.ModelDrafter(
            small_session, draftable=draftable, k=pair.draft_tokens, p_min=pair.draft_p_min
        )
    elif speculation.source == "ngram":
        large_session.speculate = NgramDrafter(k=pair.draft_tokens)
    verifying = {"off": (), "ngram": (large_session,), "model": (small_session, large_session)}[speculation.source]
    inexact = [session.spec for session in verifying if not session.spec.flash_attn or session.spec.repack]
    if inexact and not quiet:
        # llama.cpp's rows of a verify batch match one-token decodes only so (measured on the CPU backend)
        names = " and ".join(f"'{spec.name}'" for spec in inexact)
        print(
            f"glimp: note: drafts are verified in batches; for the greedy text exactly as without them, give "
            f"{names} flash_attn: true and repack: false in models.yaml (the defaults when speculating)",
            file=sys.stderr,
        )
    return speculation


# -- commands --------------------------------------------------------------------------------------


@app.command()
def ask(
    problem: Annotated[str, typer.Argument(help="The problem to solve.")],
    pair: PairOpt = None,
    small: SmallOpt = None,
    large: LargeOpt = None,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            "--threshold",
            "-t",
            parser=NON_NEGATIVE,
            help="Entropy threshold in nats; at or below it the small model writes the step.",
        ),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help=f"Routing policy: {', '.join(MODES)}.")] = "glimp",
    rate: Annotated[
        float,
        typer.Option(
            "--rate", parser=SHARE, help="For --mode random: probability that a step goes to the large model."
        ),
    ] = 0.25,
    entropy: EntropyOpt = None,
    temperature: TemperatureOpt = DEFAULT_TEMPERATURE,
    top_p: TopPOpt = DEFAULT_TOP_P,
    seed: SeedOpt = DEFAULT_SEED,
    max_step_tokens: MaxStepTokensOpt = None,
    thinking_budget: ThinkingBudgetOpt = None,
    answer_by: AnswerByOpt = None,
    speculate: SpeculateOpt = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Solve one problem, rendering each step live, coloured by the model that wrote it."""
    from glimp_cli.render import LiveRenderer, write_json_lines
    from glimp_cli.router import route

    if not problem.strip():
        raise ConfigError('the problem is empty: pass its text, e.g. glimp ask "What is 2 + 3?"')
    options = RunOptions(
        config,
        pair,
        small,
        large,
        entropy,
        temperature,
        top_p,
        seed,
        max_step_tokens,
        thinking_budget,
        answer_by,
        threshold,
        speculate=speculate,
    )
    _, pair_spec, small_spec, large_spec, settings = options.configure()
    policy = make_policy(mode, rate=rate)
    small_session, large_session = open_pair(small_spec, large_spec)
    speculation = speculate_with(small_session, large_session, pair_spec)
    events = route(problem, small=small_session, large=large_session, settings=settings, policy=policy)
    if json_output:
        if speculation.legend_text is not None:
            print(json_text({"type": "speculation", **dataclasses.asdict(speculation)}))
        write_json_lines(events)
        return
    renderer = LiveRenderer(Console(highlight=False), small_name=small_spec.name, large_name=large_spec.name)
    renderer.legend(
        mode=policy.name,
        threshold=settings.threshold,
        entropy_mode=settings.entropy_mode,
        speculation=speculation,
    )
    renderer.render(events)


@app.command()
def models(config: ConfigOpt = None, json_output: JsonOpt = False) -> None:
    """List configured models and pairs, whether each model file is present, and whether each pair fits in memory."""
    from glimp_cli.fit import COMPUTE_ALLOWANCE_BYTES, DOES_NOT_FIT, FITS, format_bytes, pair_fit
    from glimp_cli.memory import estimate_spec, free_memory
    from glimp_cli.sources import model_file_status

    cfg = apply_calibration(load_config(find_config(config)))
    gpu_offload = backend.backend_info()["gpu_offload"]
    memory = free_memory(gpu_offload=gpu_offload)
    estimates, rows = {}, []
    for m in cfg.models.values():
        if m.remote:
            rows.append(remote_row(m))
            estimates[m.name] = None
            continue
        status = model_file_status(m)
        estimate, note = None, ("not downloaded" if m.hf else "no file")
        if status == "ok":
            try:
                estimate, note = estimate_spec(m), None
            except GlimpError as exc:
                note = str(exc)
        estimates[m.name] = estimate
        rows.append(
            {
                "name": m.name,
                "source": m.source,
                "status": status,
                "n_ctx": m.n_ctx,
                "n_gpu_layers": m.n_gpu_layers,
                "type_k": m.type_k,
                "type_v": m.type_v,
                "file_bytes": estimate.file_bytes if estimate else None,
                "kv_cache_bytes": estimate.kv_cache_bytes if estimate else None,
                "compute_bytes": estimate.compute_bytes if estimate else None,
                "estimate_note": note,
            }
        )
    pairs = []
    for p in cfg.pairs.values():
        fit = pair_fit([estimates[p.small], estimates[p.large]], memory)
        pairs.append(
            {
                "name": p.name,
                "small": p.small,
                "large": p.large,
                "threshold": p.threshold,
                "entropy": p.entropy,
                "default": p.name == cfg.default_pair,
                "needed_bytes": fit.needed_bytes,
                "free_bytes": fit.free_bytes,
                "fit": fit.verdict,
            }
        )
    if json_output:
        memory_json = {"kind": memory.kind, "free_bytes": memory.free_bytes, "total_bytes": memory.total_bytes}
        listing = {"config": str(cfg.path), "gpu_offload": gpu_offload, "memory": {**memory_json, "note": memory.note}}
        print(json_text({**listing, "models": rows, "pairs": pairs}, indent=2))
        return
    console = Console(highlight=False)
    console.print(f"config: {cfg.path}", markup=False)
    console.print(
        f"llama.cpp GPU offload compiled in: {'yes' if gpu_offload else 'no (CPU build: n_gpu_layers is ignored)'}"
    )
    if memory.free_bytes is not None:
        free, total = format_bytes(memory.free_bytes), format_bytes(memory.total_bytes or 0)
        console.print(f"{memory.note}: {free} of {total}", markup=False)
    else:
        console.print(memory.note, markup=False)
    table = Table("model", "source", "file", "n_ctx", "n_gpu_layers", "KV cache", title="models")
    notes = []
    for row in rows:
        if row.get("url"):
            served = ", ".join(row["served"]) or "-"
            file = f"[green]{row['engine']}[/]" if row["status"] == "ok" else f"[red]{escape(row['status'])}[/]"
            kv = escape(f"server serves: {served}")
        elif row["status"] != "ok":
            file, kv = f"[red]{escape(row['status'])}[/]", escape(row["estimate_note"])
        elif row["file_bytes"] is None:
            file, kv = "[green]ok[/]", "?"
            notes.append(f"{row['name']}: no estimate: {row['estimate_note']}")
        else:
            file = f"[green]{format_bytes(row['file_bytes'])}[/]"
            kv = f"{format_bytes(row['kv_cache_bytes'])} {row['type_k']}/{row['type_v']}"
        layers = "-" if row["n_gpu_layers"] is None else str(row["n_gpu_layers"])
        table.add_row(escape(row["name"]), escape(row["source"]), file, str(row["n_ctx"]), layers, kv)
    console.print(table)
    for note in notes:
        console.print(note, markup=False, soft_wrap=True)
    table = Table("pair", "small", "large", "threshold", "entropy", "memory", title="pairs")
    for row in pairs:
        name = escape(row["name"]) + (" (default)" if row["default"] else "")
        colour = {FITS: "green", DOES_NOT_FIT: "red"}.get(row["fit"], "yellow")
        needs = f" ({format_bytes(row['needed_bytes'])})" if row["needed_bytes"] is not None else ""
        fit = f"[{colour}]{row['fit']}[/]{needs}"
        table.add_row(name, escape(row["small"]), escape(row["large"]), f"{row['threshold']:g}", row["entropy"], fit)
    console.print(table)
    console.print(
        "memory: what the pair needs, both files + KV caches at n_ctx + compute buffers (a batch's logits, or its "
        f"attention scores without flash_attn, + {format_bytes(COMPUTE_ALLOWANCE_BYTES)} per model)"
        + (", all layers on the GPU" if gpu_offload else ""),
        markup=False,
    )


def remote_row(spec: ModelSpec) -> dict[str, object]:
    """`glimp models`' row for a url model: whether its server answers and the model names it serves."""
    from glimp_cli.remote import server_status

    status = server_status(spec)
    return {
        "name": spec.name,
        "source": spec.source,
        "url": spec.url,
        "model": spec.model,
        "status": status["note"] or "ok",
        "reachable": status["reachable"],
        "served": status["served"],
        "engine": status["engine"],
        "n_ctx": spec.n_ctx,
        "n_gpu_layers": None,
        "type_k": None,
        "type_v": None,
        "file_bytes": None,
        "kv_cache_bytes": None,
        "compute_bytes": None,
        "estimate_note": "served remotely",
    }


@app.command()
def bench(
    data: Annotated[Path, typer.Argument(help="JSONL file, one problem per line.")],
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    modes: Annotated[
        Modes,
        typer.Option(
            "--modes",
            parser=mode_list,
            help=f"Comma-separated modes: {', '.join(MODES)}. random runs last, at glimp's large-step share.",
        ),
    ] = Modes(MODES),
    threshold: Annotated[
        Optional[Numbers],
        typer.Option(
            "--threshold",
            "-t",
            parser=number_list(NON_NEGATIVE),
            help="glimp threshold(s) in nats, e.g. 0.5,1.0,1.5 (default: the pair's); random matches the first.",
        ),
    ] = None,
    rate: Annotated[
        float,
        typer.Option("--rate", parser=SHARE, help="random's large-model probability when glimp is not among --modes."),
    ] = 0.25,
    problem_key: ProblemKeyOpt = None,
    answer_key: AnswerKeyOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    pair: PairOpt = None,
    small: SmallOpt = None,
    large: LargeOpt = None,
    entropy: EntropyOpt = None,
    temperature: TemperatureOpt = DEFAULT_TEMPERATURE,
    top_p: TopPOpt = DEFAULT_TOP_P,
    seed: SeedOpt = DEFAULT_SEED,
    max_step_tokens: MaxStepTokensOpt = None,
    thinking_budget: ThinkingBudgetOpt = None,
    answer_by: AnswerByOpt = None,
    speculate: SpeculateOpt = None,
    parallel: ParallelOpt = DEFAULT_PARALLEL,
    config: ConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Run a JSONL benchmark under each routing mode: accuracy, latency and the large model's share."""
    from glimp_cli import bench as benchmark
    from glimp_cli import render_runs
    from glimp_cli.store import open_store

    options = RunOptions(
        config, pair, small, large, entropy, temperature, top_p, seed, max_step_tokens, thinking_budget, answer_by,
        speculate=speculate,
    )  # fmt: skip
    _, pair_spec, small_spec, large_spec, settings = options.configure()
    check_parallel(parallel, (small_spec, large_spec))
    plan = benchmark.make_plan(
        data, settings=settings, modes=modes, thresholds=threshold, rate=rate,
        problem_key=problem_key, answer_key=answer_key, offset=offset, limit=limit, parallel=parallel,
    )  # fmt: skip
    out = out if out is not None else Path("runs") / data.stem
    fingerprint = benchmark.fingerprint(plan, pair=pair_spec, small=small_spec, large=large_spec)
    err = Console(stderr=True, highlight=False)
    with (
        open_store(out, fingerprint=fingerprint, resume=resume, force=force) as store,
        render_runs.BenchDisplay(err, out=out) as display,
    ):
        display.notes(store.notes)
        make = session_maker(pair_spec, small_spec, large_spec, on_speculation=display.speculation)
        sessions = SessionPairs(make)  # opened as problems need them
        summary = benchmark.run_bench(plan, sessions=sessions, store=store, on_progress=display)
    if json_output:
        print(json_text(summary, indent=2))
    else:
        render_runs.print_summary(Console(highlight=False), summary)


@app.command()
def calibrate(
    data: Annotated[
        Path, typer.Argument(help="JSONL file, one problem per line (a development set, not your test set).")
    ],
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    target_rate: Annotated[
        float,
        typer.Option(
            "--target-rate",
            parser=OPEN_SHARE,
            help="Share of steps to send to the large model, between 0 and 1 (the paper recommends 0.2-0.3).",
        ),
    ] = 0.25,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Also run the routed pipeline at each candidate threshold, with large and small as references.",
        ),
    ] = False,
    thresholds: Annotated[
        Optional[Numbers],
        typer.Option(
            "--thresholds", parser=number_list(NON_NEGATIVE), help="Sweep candidates in nats, e.g. 0.5,1,1.5."
        ),
    ] = None,
    rates: Annotated[
        Optional[Numbers],
        typer.Option(
            "--rates",
            parser=number_list(OPEN_SHARE),
            help="Sweep candidates as large-step shares, e.g. 0.1,0.2,0.3: thresholds from the probe's entropies.",
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="Sweep choice: accuracy (most accurate within --max-latency) "
            "or latency (fastest within --margin of large's accuracy).",
        ),
    ] = "accuracy",
    max_latency: Annotated[
        float,
        typer.Option(
            "--max-latency",
            parser=number(low=0.0, low_open=True),
            help="For --objective accuracy: latency budget as a multiple of the large model's.",
        ),
    ] = 0.8,
    margin: Annotated[
        float,
        typer.Option(
            "--margin",
            parser=SHARE,
            help="For --objective latency: accuracy (0-1) below the large model's that is accepted.",
        ),
    ] = 0.0,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="Record the threshold in glimp-calibration.yaml for `glimp ask` and `glimp bench` "
            "(models.yaml is not changed).",
        ),
    ] = False,
    problem_key: ProblemKeyOpt = None,
    answer_key: AnswerKeyOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    pair: PairOpt = None,
    small: SmallOpt = None,
    large: LargeOpt = None,
    entropy: EntropyOpt = None,
    temperature: TemperatureOpt = DEFAULT_TEMPERATURE,
    top_p: TopPOpt = DEFAULT_TOP_P,
    seed: SeedOpt = DEFAULT_SEED,
    max_step_tokens: MaxStepTokensOpt = None,
    thinking_budget: ThinkingBudgetOpt = None,
    answer_by: AnswerByOpt = None,
    speculate: SpeculateOpt = None,
    parallel: ParallelOpt = DEFAULT_PARALLEL,
    config: ConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Choose the entropy threshold from data: the small model's step entropies, and with --sweep routed runs."""
    from glimp_cli import calibrate as calibration
    from glimp_cli.render_runs import BenchDisplay, print_report
    from glimp_cli.store import open_store

    options = RunOptions(
        config, pair, small, large, entropy, temperature, top_p, seed, max_step_tokens, thinking_budget, answer_by,
        speculate=speculate,
    )  # fmt: skip
    cfg, pair_spec, small_spec, large_spec, settings = options.configure(calibrated=False)
    check_parallel(parallel, (small_spec, large_spec))
    plan = calibration.make_plan(
        data, settings=settings, target_rate=target_rate, sweep=sweep, thresholds=thresholds, rates=rates,
        objective=objective, max_latency=max_latency, margin=margin,
        problem_key=problem_key, answer_key=answer_key, offset=offset, limit=limit, parallel=parallel,
    )  # fmt: skip
    out = out if out is not None else Path("runs") / f"calibrate-{data.stem}"
    fingerprint = calibration.fingerprint(plan, pair=pair_spec, small=small_spec, large=large_spec)
    err = Console(stderr=True, highlight=False)
    with open_store(out, fingerprint=fingerprint, resume=resume, force=force) as store:
        BenchDisplay(err, out=out).notes(store.notes)
        sessions = SessionPairs(session_maker(pair_spec, small_spec, large_spec))  # opened as problems need them
        report = calibration.run_calibration(
            plan, sessions=sessions, store=store, display=lambda: BenchDisplay(err, out=out)
        )
    save_error = None
    if save and report["threshold"] is not None:
        try:
            report["saved"] = str(save_calibration(report, calibration_path(cfg.path)))
        except WriteError as exc:  # the threshold is still printed, then the error
            save_error = exc
    if json_output:
        print(json_text(report, indent=2))
    else:
        print_report(Console(highlight=False), report)
    if save_error is not None:
        raise save_error
    if save and report["saved"] is None:
        raise RunError(
            f"nothing saved: {report['sweep']['reason']}; relax --max-latency or --margin, or try other thresholds"
        )


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Model name from models.yaml with an `hf:` or `parts:` source.")],
    config: ConfigOpt = None,
) -> None:
    """Download an `hf:` model into the Hugging Face cache (the only command that downloads), or assemble a
    `parts:` model from its installed part packages now rather than on first use."""
    from glimp_cli.sources import resolve_model_path

    cfg = load_config(find_config(config))
    spec = cfg.model(name)
    if spec.remote:
        print(f"model '{spec.name}' is served at {spec.url}: nothing to pull")
        return
    print(resolve_model_path(spec, download=True))


def main() -> None:
    """Entry point: usage errors as Click prints them (exit 2), one red line for glimp's own errors
    (exit 2 or 1), 130 for Ctrl-C."""
    debug = os.environ.get("GLIMP_DEBUG") == "1"
    replaced = tolerate_unencodable_output()
    err = Console(stderr=True, highlight=False)
    try:
        code = app(args=utf8_arguments(sys.argv[1:]), prog_name="glimp", standalone_mode=False)
    except GlimpError as exc:
        if debug:
            raise
        err.print(f"[red]glimp: error:[/] {escape(one_line(str(exc)))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:
        # Typer bundles its own copy of Click in some versions and uses the click package in others:
        # their exceptions are recognised by name, whichever is installed.
        kinds = {kind.__name__ for kind in type(exc).__mro__}
        if "Abort" in kinds:  # Click's form of Ctrl-C
            err.print("interrupted", markup=False)
            sys.exit(130)
        if "ClickException" not in kinds or debug:
            raise
        exc.show()  # usage line, then "Error: ...", as Click prints it
        sys.exit(exc.exit_code)
    finally:
        if replaced:
            err.print(
                f"glimp: warning: {len(replaced)} character(s) could not be shown in this terminal's encoding "
                f"({sys.stdout.encoding}) and were printed as '?': "
                "set PYTHONIOENCODING=utf-8 or a UTF-8 locale to see them",
                markup=False,
                soft_wrap=True,
            )
    sys.exit(code if isinstance(code, int) else 0)


def utf8_arguments(arguments: list[str]) -> list[str]:
    """The command line as UTF-8 text, or a ConfigError naming an argument that is not UTF-8.

    Python hands over bytes it could not decode as lone surrogates, which fail later, when the text is
    tokenized, printed or stored. Under a C or POSIX locale without UTF-8 mode, valid UTF-8 arrives so
    too: it is decoded here.
    """
    decoded = []
    for position, argument in enumerate(arguments, start=1):
        if lone_surrogate(argument):
            raw = os.fsencode(argument)
            try:
                argument = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                option = arguments[position - 2] if position > 1 and arguments[position - 2].startswith("-") else None
                raise ConfigError(
                    f"argument {position}{f' (the value of {option})' if option else ''}, "
                    f"'{raw.decode('utf-8', 'backslashreplace')}', is not UTF-8 (byte 0x{raw[exc.start]:02x}): "
                    "pass problems, names and file names as UTF-8"
                ) from None
        decoded.append(argument)
    return decoded


UNENCODABLE_OUTPUT = "glimp-count-and-replace"


def tolerate_unencodable_output() -> list[str]:
    """Make stdout print a character its encoding lacks (an ASCII or Latin-1 terminal: '■', '€') as '?'
    instead of raising, and stderr as a backslash escape; returns the list that collects the characters
    replaced on stdout, for one warning at the end."""
    replaced: list[str] = []

    def replace(exc: UnicodeError):
        if not isinstance(exc, UnicodeEncodeError):
            raise exc
        replaced.extend(exc.object[exc.start : exc.end])
        return "?" * (exc.end - exc.start), exc.end

    codecs.register_error(UNENCODABLE_OUTPUT, replace)  # registered again per call: this call's list
    for stream, errors in ((sys.stdout, UNENCODABLE_OUTPUT), (sys.stderr, "backslashreplace")):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=errors)
    return replaced


def one_line(message: str) -> str:
    """The message with line breaks and other control characters escaped (a name or value from a file may
    hold them): an error is one line."""
    return "".join(
        ascii(char)[1:-1] if char != "\t" and unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") else char
        for char in message
    )
