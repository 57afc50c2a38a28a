"""What single llama.cpp calls cost: the one-token calls after a multi-token call, and along the context.

    python -m benchmarks.diagnostics.calls [--depths 64,256,512,1024] [--positions 1100] [--rounds 3] [--json]

A CUDA build runs the first one-token call after its graph changes without a CUDA graph and
captures a new graph on the second, so after every multi-token call (a prompt, a catch-up on the
other model's text) and at every 256-cell step of the KV cache two calls cost more (on an H100,
+1.75 and +1.5 ms on a 1.2 ms call of the small demo model). This shows them, per model of the
pair, on the current machine (see README, "Performance", and docs/performance-history.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp  # isort: skip  # before numpy, as in glimp_cli.backend

from glimp_cli.backend import backend_info, open_session
from glimp_cli.config import PACKAGED_CONFIG, load_config
from glimp_cli.errors import GlimpError

PROMPT = "Write a long story about a robot who learns to paint. Describe every day of its first month."
SINGLES = 12  # one-token calls timed after each multi-token call
AFTER_BATCH = 3  # the first one-token calls after a multi-token call, dearer on a CUDA build


def repeated_tokens(tokens: list[int], n: int) -> list[int]:
    """`n` tokens: `tokens` over and over (text for calls at any position; only the count matters)."""
    return (tokens * (n // len(tokens) + 1))[:n]


def timed_eval(llm, tokens: list[int]) -> float:
    """Seconds for one llama_decode of `tokens` at the context's end, waiting for a GPU to finish it."""
    started = time.perf_counter()
    llm.eval(tokens)
    llama_cpp.llama_synchronize(llm.ctx)
    return time.perf_counter() - started


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), **backend_info()}


def after_batch(session, depths: list[int], rounds: int) -> dict[int, list[float]]:
    """For each depth: the median seconds of a call of `depth` tokens from position 0, then of each
    of the SINGLES one-token calls after it."""
    llm = session._llm
    prompt = session.prompt_tokens(PROMPT)
    tokens = repeated_tokens(prompt, max(depths) + SINGLES)
    result = {}
    for depth in depths:
        timed = []
        for _ in range(rounds):
            llm.n_tokens = 0
            batch = timed_eval(llm, tokens[:depth])
            timed.append([batch] + [timed_eval(llm, [tokens[depth + i]]) for i in range(SINGLES)])
        result[depth] = [statistics.median(t[i] for t in timed) for i in range(SINGLES + 1)]
    return result


def along_context(session, positions: int) -> tuple[int, list[float]]:
    """(first position, seconds of each one-token call from the end of the prompt to `positions`)."""
    llm = session._llm
    prompt = session.prompt_tokens(PROMPT)
    if positions <= len(prompt) + AFTER_BATCH:
        raise SystemExit(
            f"error: --positions {positions} ends inside the prompt of model '{session.name}' "
            f"({len(prompt)} tokens): raise it"
        )
    tokens = repeated_tokens(prompt, positions)
    llm.n_tokens = 0
    timed_eval(llm, prompt)
    return len(prompt), [timed_eval(llm, [tokens[p]]) for p in range(len(prompt), positions)]


def dear_calls(first: int, seconds: list[float], *, window: int = 16, factor: float = 1.5) -> list[tuple[int, float]]:
    """(position, extra seconds) of the calls that cost over `factor` times the median of the
    `window` calls around them, the calls just after a multi-token one excepted: those are
    `after_batch`'s. The extra is over that median."""
    dear = []
    for i, t in enumerate(seconds):
        if i < AFTER_BATCH:
            continue
        around = seconds[max(AFTER_BATCH, i - window // 2) : i + window // 2 + 1]
        typical = statistics.median(around)
        if t > factor * typical:
            dear.append((first + i, t - typical))
    return dear


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        message = f"expected token counts separated by commas, like 64,256: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if any(n < 2 for n in sizes):
        raise argparse.ArgumentTypeError(f"a multi-token call has 2 tokens or more: {text!r}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics.calls", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=PACKAGED_CONFIG, help="models.yaml with the pair to measure")
    parser.add_argument("--pair", default="demo", help="pair name in the config")
    parser.add_argument(
        "--depths", type=_sizes, default="64,256,512,1024", help="sizes of the multi-token calls, comma-separated"
    )
    parser.add_argument(
        "--positions", type=int, default=1100, help="one-token calls along the context up to this position"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timings of each call after a batch; the median is shown")
    parser.add_argument("--json", action="store_true", help="print the timings as JSON")
    args = parser.parse_args()
    depths = args.depths
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")

    config = load_config(args.config)
    pair = config.pair(args.pair)
    report = {"machine": machine()}
    for role in ("small", "large"):
        session = open_session(config.model(getattr(pair, role)))
        first, seconds = along_context(session, args.positions)
        report[role] = {
            "after_batch_s": {str(d): t for d, t in after_batch(session, depths, args.rounds).items()},
            "along_context": {"first_position": first, "seconds": seconds},
            "dear_calls": dear_calls(first, seconds),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for role in ("small", "large"):
        r = report[role]
        print(
            f"{role}: one-token calls after a multi-token call of n tokens from position 0 "
            f"(ms, medians of {args.rounds})"
        )
        for depth, times in r["after_batch_s"].items():
            steady = statistics.median(times[1 + AFTER_BATCH :])  # past the call and the calls after it
            then = " ".join(f"{t * 1e3:5.2f}" for t in times[1:7])
            print(f"  n={depth:>5}: call {times[0] * 1e3:7.2f}; then {then} ...; steady {steady * 1e3:.2f}")
        seconds = r["along_context"]["seconds"]
        dear = ", ".join(f"{p} (+{extra * 1e3:.2f} ms)" for p, extra in r["dear_calls"]) or "no position"
        print(
            f"  along the context, from position {r['along_context']['first_position']}: "
            f"median {statistics.median(seconds) * 1e3:.2f} ms; dearer calls at {dear}"
        )
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, llama-cpp-python {m['llama_cpp_python']}, "
        f"GPU offload compiled in: {m['gpu_offload']}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GlimpError as exc:  # bad config or model file: one line, as glimp itself prints it
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
