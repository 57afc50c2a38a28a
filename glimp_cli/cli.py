"""Thin Typer commands: parse options, build config objects, hand events to a renderer."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

from glimp_cli import backend  # noqa: F401  first: llama.cpp must load before numpy (see backend.py)

import click
import typer
from rich.console import Console
from rich.table import Table

from glimp_cli.bench import parse_number
from glimp_cli.config import Config, ModelSpec, PairSpec, apply_calibration, calibration_path, find_config, load_config
from glimp_cli.entropy import ENTROPY_MODES
from glimp_cli.errors import ConfigError, GlimpError, RunError
from glimp_cli.policy import MODES, make_policy
from glimp_cli.router import RouterSettings, settings_from_pair
from glimp_cli.session import DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Sampling

app = typer.Typer(
    help="glimp: a small and a large GGUF model share one chain of thought. At each step the small "
    "model's first-token entropy decides who writes it (GlimpRouter, arXiv 2601.05110).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="models.yaml to use (default: ./models.yaml, then the one shipped with glimp).")]
PairOpt = Annotated[Optional[str], typer.Option("--pair", help="Named pair from models.yaml (default: its default_pair).")]
SmallOpt = Annotated[Optional[str], typer.Option("--small", help="Small model: a name from models.yaml or a .gguf path.")]
LargeOpt = Annotated[Optional[str], typer.Option("--large", help="Large model: a name from models.yaml or a .gguf path.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of rich output.")]


def resolve_pair(config: Config, *, pair: str | None, small: str | None, large: str | None) -> tuple[PairSpec, ModelSpec, ModelSpec]:
    """The pair from models.yaml with --small/--large applied (names or .gguf paths)."""
    spec = config.pair(pair)
    small_spec = _model_arg(config, small or spec.small)
    large_spec = _model_arg(config, large or spec.large)
    return dataclasses.replace(spec, small=small_spec.name, large=large_spec.name), small_spec, large_spec


def _model_arg(config: Config, value: str) -> ModelSpec:
    if value.endswith(".gguf") or os.sep in value:
        return ModelSpec(name=Path(value).stem, path=str(Path(value).resolve()))
    return config.model(value)


def configure_run(
    config: Config, *, pair: str | None, small: str | None, large: str | None, overrides: dict, sampling: Sampling
) -> tuple[PairSpec, ModelSpec, ModelSpec, RouterSettings]:
    """The pair with --small/--large and the other command-line overrides (None = not given), its models, and the router settings."""
    pair_spec, small_spec, large_spec = resolve_pair(config, pair=pair, small=small, large=large)
    pair_spec = validate_pair_overrides(pair_spec, {k: v for k, v in overrides.items() if v is not None})
    return pair_spec, small_spec, large_spec, settings_from_pair(pair_spec, sampling=sampling)


def open_pair(small_spec: ModelSpec, large_spec: ModelSpec):
    return backend.open_session(small_spec), backend.open_session(large_spec)


@app.command()
def ask(
    problem: Annotated[str, typer.Argument(help="The problem to solve.")],
    pair: PairOpt = None,
    small: SmallOpt = None,
    large: LargeOpt = None,
    threshold: Annotated[Optional[str], typer.Option("--threshold", "-t", help="Entropy threshold in nats; at or below it the small model writes the step.")] = None,
    mode: Annotated[str, typer.Option("--mode", help=f"Routing policy: {', '.join(MODES)}.")] = "glimp",
    rate: Annotated[str, typer.Option("--rate", help="For --mode random: probability that a step goes to the large model.")] = "0.25",
    entropy: Annotated[Optional[str], typer.Option("--entropy", help="Entropy over the full vocabulary (full) or the top 20 tokens, renormalised (topk).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")] = DEFAULT_TEMPERATURE,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = DEFAULT_TOP_P,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (sampling and --mode random).")] = DEFAULT_SEED,
    max_step_tokens: Annotated[Optional[int], typer.Option("--max-step-tokens", help="Cap on one step's tokens.")] = None,
    thinking_budget: Annotated[Optional[int], typer.Option("--thinking-budget", help="Cap on all thinking tokens.")] = None,
    answer_by: Annotated[Optional[str], typer.Option("--answer-by", help="Who writes the final answer: large, small or last.")] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Solve one problem, rendering each step live, coloured by the model that wrote it."""
    from glimp_cli.render import LiveRenderer, write_json_lines
    from glimp_cli.router import route

    cfg = apply_calibration(load_config(find_config(config)))  # a saved `glimp calibrate` threshold; --threshold still wins
    overrides = {
        "threshold": parse_number(threshold, option="--threshold") if threshold is not None else None,
        "entropy": entropy,
        "step_max_tokens": max_step_tokens,
        "thinking_budget": thinking_budget,
        "answer_by": answer_by,
    }
    _, small_spec, large_spec, settings = configure_run(
        cfg, pair=pair, small=small, large=large, overrides=overrides, sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed)
    )
    policy = make_policy(mode, rate=parse_number(rate, option="--rate"))
    small_session, large_session = open_pair(small_spec, large_spec)
    events = route(problem, small=small_session, large=large_session, settings=settings, policy=policy)
    if json_output:
        write_json_lines(events)
        return
    renderer = LiveRenderer(Console(highlight=False), small_name=small_spec.name, large_name=large_spec.name)
    renderer.legend(mode=policy.name, threshold=settings.threshold, entropy_mode=settings.entropy_mode)
    renderer.render(events)


def validate_pair_overrides(pair: PairSpec, overrides: dict) -> PairSpec:
    """Apply command-line overrides to a pair, with the same checks as models.yaml."""
    if overrides.get("entropy", "full") not in ENTROPY_MODES:
        raise ConfigError(f"--entropy must be one of {', '.join(ENTROPY_MODES)}, got '{overrides['entropy']}'")
    if overrides.get("answer_by", "large") not in ("large", "small", "last"):
        raise ConfigError(f"--answer-by must be large, small or last, got '{overrides['answer_by']}'")
    for key in ("step_max_tokens", "thinking_budget"):
        if key in overrides and overrides[key] <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {overrides[key]}")
    return dataclasses.replace(pair, **overrides)


@app.command()
def models(config: ConfigOpt = None, json_output: JsonOpt = False) -> None:
    """List configured models and pairs, and whether each model file is present."""
    from glimp_cli.sources import model_file_status

    cfg = apply_calibration(load_config(find_config(config)))
    rows = [
        {"name": m.name, "source": m.source, "status": model_file_status(m), "n_ctx": m.n_ctx, "n_gpu_layers": m.n_gpu_layers}
        for m in cfg.models.values()
    ]
    pairs = [
        {"name": p.name, "small": p.small, "large": p.large, "threshold": p.threshold, "entropy": p.entropy, "default": p.name == cfg.default_pair}
        for p in cfg.pairs.values()
    ]
    gpu_offload = backend.backend_info()["gpu_offload"]
    if json_output:
        print(json.dumps({"config": str(cfg.path), "gpu_offload": gpu_offload, "models": rows, "pairs": pairs}, indent=2))
        return
    console = Console(highlight=False)
    console.print(f"config: {cfg.path}")
    console.print(f"llama.cpp GPU offload compiled in: {'yes' if gpu_offload else 'no (CPU build: n_gpu_layers is ignored)'}")
    table = Table("model", "source", "file", "n_ctx", "n_gpu_layers", title="models")
    for row in rows:
        status = "[green]ok[/]" if row["status"] == "ok" else f"[red]{row['status']}[/]"
        table.add_row(row["name"], row["source"], status, str(row["n_ctx"]), str(row["n_gpu_layers"]))
    console.print(table)
    table = Table("pair", "small", "large", "threshold", "entropy", title="pairs")
    for row in pairs:
        table.add_row(row["name"] + (" (default)" if row["default"] else ""), row["small"], row["large"], f"{row['threshold']:g}", row["entropy"])
    console.print(table)


@app.command()
def bench(
    data: Annotated[Path, typer.Argument(help="JSONL file, one problem per line.")],
    limit: Annotated[Optional[int], typer.Option("--limit", help="Run at most this many problems.")] = None,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many problems first.")] = 0,
    modes: Annotated[str, typer.Option("--modes", help=f"Comma-separated modes: {', '.join(MODES)}. random runs last, at glimp's large-step share.")] = ",".join(MODES),
    threshold: Annotated[Optional[str], typer.Option("--threshold", "-t", help="glimp threshold(s) in nats, e.g. 0.5,1.0,1.5 (default: the pair's); random matches the first.")] = None,
    rate: Annotated[str, typer.Option("--rate", help="random's large-model probability when glimp is not among --modes.")] = "0.25",
    problem_key: Annotated[Optional[str], typer.Option("--problem-key", help="Record key of the problem text (default: problem, question or prompt).")] = None,
    answer_key: Annotated[Optional[str], typer.Option("--answer-key", help="Record key of the reference answer (default: answer, gold or solution).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: runs/<data file name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run in --out, skipping results already there.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete the results and summaries in --out and start over.")] = False,
    pair: PairOpt = None,
    small: SmallOpt = None,
    large: LargeOpt = None,
    entropy: Annotated[Optional[str], typer.Option("--entropy", help="Entropy over the full vocabulary (full) or the top 20 tokens, renormalised (topk).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")] = DEFAULT_TEMPERATURE,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = DEFAULT_TOP_P,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: each problem's seed derives from it and the problem id, the same in every mode.")] = DEFAULT_SEED,
    max_step_tokens: Annotated[Optional[int], typer.Option("--max-step-tokens", help="Cap on one step's tokens.")] = None,
    thinking_budget: Annotated[Optional[int], typer.Option("--thinking-budget", help="Cap on all thinking tokens.")] = None,
    answer_by: Annotated[Optional[str], typer.Option("--answer-by", help="Who writes glimp's and random's final answer: large, small or last.")] = None,
    config: ConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Run a JSONL benchmark under each routing mode: accuracy, latency and the large model's share."""
    from glimp_cli import bench as benchmark
    from glimp_cli import render_runs
    from glimp_cli.store import open_store

    cfg = apply_calibration(load_config(find_config(config)))  # a saved `glimp calibrate` threshold; --threshold still wins
    overrides = {"entropy": entropy, "step_max_tokens": max_step_tokens, "thinking_budget": thinking_budget, "answer_by": answer_by}
    pair_spec, small_spec, large_spec, settings = configure_run(
        cfg, pair=pair, small=small, large=large, overrides=overrides, sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed)
    )
    plan = benchmark.make_plan(
        data, settings=settings, modes=modes, thresholds=threshold, rate=rate,
        problem_key=problem_key, answer_key=answer_key, offset=offset, limit=limit,
    )
    out = out if out is not None else Path("runs") / data.stem
    fingerprint = benchmark.fingerprint(plan, pair=pair_spec, small=small_spec, large=large_spec)
    with open_store(out, fingerprint=fingerprint, resume=resume, force=force) as store, render_runs.BenchDisplay(Console(stderr=True, highlight=False), out=out) as display:
        display.notes(store.notes)
        small_session, large_session = open_pair(small_spec, large_spec)
        summary = benchmark.run_bench(plan, small=small_session, large=large_session, store=store, on_progress=display)
    if json_output:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        Console(highlight=False).print(render_runs.summary_table(summary))


@app.command()
def calibrate(
    data: Annotated[Path, typer.Argument(help="JSONL file, one problem per line (a development set, not your test set).")],
    limit: Annotated[Optional[int], typer.Option("--limit", help="Run at most this many problems.")] = None,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many problems first.")] = 0,
    target_rate: Annotated[str, typer.Option("--target-rate", help="Share of steps to send to the large model, between 0 and 1 (the paper recommends 0.2-0.3).")] = "0.25",
    sweep: Annotated[bool, typer.Option("--sweep", help="Also run the routed pipeline at each candidate threshold, with large and small as references.")] = False,
    thresholds: Annotated[Optional[str], typer.Option("--thresholds", help="Sweep candidates in nats, e.g. 0.5,1,1.5.")] = None,
    rates: Annotated[Optional[str], typer.Option("--rates", help="Sweep candidates as large-step shares, e.g. 0.1,0.2,0.3: thresholds from the probe's entropies.")] = None,
    objective: Annotated[str, typer.Option("--objective", help="Sweep choice: accuracy (most accurate within --max-latency) or latency (fastest within --margin of large's accuracy).")] = "accuracy",
    max_latency: Annotated[str, typer.Option("--max-latency", help="For --objective accuracy: latency budget as a multiple of the large model's.")] = "0.8",
    margin: Annotated[str, typer.Option("--margin", help="For --objective latency: accuracy (0-1) below the large model's that is accepted.")] = "0",
    save: Annotated[bool, typer.Option("--save", help="Record the threshold in glimp-calibration.yaml for `glimp ask` and `glimp bench` (models.yaml is not changed).")] = False,
    problem_key: Annotated[Optional[str], typer.Option("--problem-key", help="Record key of the problem text (default: problem, question or prompt).")] = None,
    answer_key: Annotated[Optional[str], typer.Option("--answer-key", help="Record key of the reference answer (default: answer, gold or solution).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: runs/calibrate-<data file name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run in --out, reusing results already there.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete the results and summaries in --out and start over.")] = False,
    pair: PairOpt = None,
    small: SmallOpt = None,
    large: LargeOpt = None,
    entropy: Annotated[Optional[str], typer.Option("--entropy", help="Entropy mode the threshold is for: full or topk (both are measured).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")] = DEFAULT_TEMPERATURE,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = DEFAULT_TOP_P,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: each problem's seed derives from it and the problem id.")] = DEFAULT_SEED,
    max_step_tokens: Annotated[Optional[int], typer.Option("--max-step-tokens", help="Cap on one step's tokens.")] = None,
    thinking_budget: Annotated[Optional[int], typer.Option("--thinking-budget", help="Cap on all thinking tokens.")] = None,
    answer_by: Annotated[Optional[str], typer.Option("--answer-by", help="Who writes the swept runs' final answer: large, small or last.")] = None,
    config: ConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Choose the entropy threshold from data: the small model's step entropies, and with --sweep routed runs."""
    from glimp_cli import calibrate as calibration
    from glimp_cli.render_runs import BenchDisplay, print_report
    from glimp_cli.store import open_store

    cfg = load_config(find_config(config))
    overrides = {"entropy": entropy, "step_max_tokens": max_step_tokens, "thinking_budget": thinking_budget, "answer_by": answer_by}
    pair_spec, small_spec, large_spec, settings = configure_run(
        cfg, pair=pair, small=small, large=large, overrides=overrides, sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed)
    )
    plan = calibration.make_plan(
        data, settings=settings, target_rate=target_rate, sweep=sweep, thresholds=thresholds, rates=rates,
        objective=objective, max_latency=max_latency, margin=margin,
        problem_key=problem_key, answer_key=answer_key, offset=offset, limit=limit,
    )
    out = out if out is not None else Path("runs") / f"calibrate-{data.stem}"
    fingerprint = calibration.fingerprint(plan, pair=pair_spec, small=small_spec, large=large_spec)
    err = Console(stderr=True, highlight=False)
    with open_store(out, fingerprint=fingerprint, resume=resume, force=force) as store:
        BenchDisplay(err, out=out).notes(store.notes)
        small_session, large_session = open_pair(small_spec, large_spec)
        report = calibration.run_calibration(
            plan, small=small_session, large=large_session, store=store, display=lambda: BenchDisplay(err, out=out)
        )
    if save and report["threshold"] is not None:
        report["saved"] = str(calibration.save_calibration(report, calibration_path(cfg.path)))
    if json_output:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(Console(highlight=False), report)
    if save and report["saved"] is None:
        raise RunError(f"nothing saved: {report['sweep']['reason']}; relax --max-latency or --margin, or try other thresholds")


@app.command()
def pull(name: Annotated[str, typer.Argument(help="Model name from models.yaml with an `hf:` source.")], config: ConfigOpt = None) -> None:
    """Download an `hf:` model into the Hugging Face cache (the only command that downloads)."""
    from glimp_cli.sources import resolve_model_path

    cfg = load_config(find_config(config))
    print(resolve_model_path(cfg.model(name), download=True))


def main() -> None:
    """Entry point: one red line and exit 2 for user errors, 130 for Ctrl-C."""
    debug = os.environ.get("GLIMP_DEBUG") == "1"
    err = Console(stderr=True, highlight=False)
    try:
        code = app(standalone_mode=False)
    except GlimpError as exc:
        if debug:
            raise
        err.print(f"[red]glimp: error:[/] {exc}", markup=True, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            raise
        err.print(f"[red]glimp: error:[/] {exc.format_message()}", soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
