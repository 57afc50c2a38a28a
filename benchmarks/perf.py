"""glimp performance benchmark: routing overhead against llama-cpp-python alone, on the demo pair.

    python benchmarks/perf.py [--problems 10] [--tokens 256] [--json]

Prints five figures with their targets (see README, "Performance"):
1. decode-loop overhead (tokens/s of glimp --mode small|large over llama-cpp-python's own loop)
2. prefill discipline (tokens evaluated / tokens in the final context, per model)
3. probe cost (small-model decode calls beyond its own tokens, per escalated step)
4. cost-model fit (measured wall time / time predicted from per-call and per-token costs)
5. headline: glimp latency / large-only latency on gsm8k at ~25% large steps, against the ideal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp  # first: numpy loaded before llama.cpp can break its OpenMP on some machines

from glimp_cli.backend import backend_info, open_session
from glimp_cli.config import PACKAGED_CONFIG, load_config
from glimp_cli.events import Step, Summary
from glimp_cli.policy import make_policy
from glimp_cli.router import route, run, settings_from_pair
from glimp_cli.session import Sampling

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k.jsonl"
PROMPT = "Write a long story about a robot who learns to paint. Describe every day of its first month."
GREEDY = Sampling(temperature=0.0, seed=0)
REPEATS = 3


def timed_route(problem, small, large, settings, policy) -> tuple[Summary, float]:
    """Run a problem; also return the wall time until the last thinking step (answer excluded)."""
    started = time.perf_counter()
    thinking_done = started
    summary = None
    for event in route(problem, small=small, large=large, settings=settings, policy=policy):
        if isinstance(event, Step):
            thinking_done = time.perf_counter()
        elif isinstance(event, Summary):
            summary = event
    return summary, thinking_done - started


def llama_alone(session, problem: str, n_tokens: int) -> tuple[float, float]:
    """llama-cpp-python's own greedy loop: (seconds for prompt + n_tokens, seconds per token after the first)."""
    llm = session._llm
    prompt = session.prompt_tokens(problem)
    llm.reset()
    started = time.perf_counter()
    first = started
    generated = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        generated += 1
        if generated == 1:
            first = time.perf_counter()
        if generated >= n_tokens:
            break
    ended = time.perf_counter()
    return ended - started, (ended - first) / max(1, generated - 1)


def decode_overhead(pair, small, large, n_tokens: int) -> dict:
    """Figure 1: the same prompt and token count, glimp's loop against llama-cpp-python's."""
    results = {}
    for role, session in (("small", small), ("large", large)):
        settings = dataclasses.replace(
            settings_from_pair(pair, sampling=GREEDY),
            step_max_tokens=n_tokens, thinking_budget=n_tokens, answer_by="small", answer_max_tokens=0,
            # one long step: nothing but the token count (or EOS) ends it
            delimiter="\x00", end_markers=(), answer_markers=(),
        )
        glimp_s, alone_s, per_token, tokens = [], [], [], 0
        for _ in range(REPEATS):
            summary, seconds = timed_route(PROMPT, small, large, settings, make_policy(role))
            tokens = sum(s.tokens for s in summary.steps)
            glimp_s.append(seconds)
            total, token_s = llama_alone(session, PROMPT, tokens)
            alone_s.append(total)
            per_token.append(token_s)
        glimp_tps, alone_tps = tokens / min(glimp_s), tokens / min(alone_s)
        results[role] = {
            "tokens": tokens, "glimp_tps": glimp_tps, "llama_cpp_tps": alone_tps, "ratio": glimp_tps / alone_tps,
            "decode_s_per_token": min(per_token),  # sample + decode, llama-cpp-python alone
        }
    return results


def call_costs(session, *, batch: int = 128, deep: int = 1024, repeats: int = 5) -> dict:
    """llama_decode costs for one model: time(n tokens at depth d) = a + n * (b + slope * d)."""
    llm = session._llm
    prompt = session.prompt_tokens(PROMPT)
    tokens = (prompt * (deep // len(prompt) + 2))[: deep + batch]

    def best(depth: int, n: int) -> float:
        times = []
        for _ in range(repeats):
            llm.n_tokens = 0
            llm.eval(tokens[:depth])  # the context the measured call attends to
            llama_cpp.llama_synchronize(llm.ctx)
            started = time.perf_counter()
            llm.eval(tokens[depth : depth + n])
            llama_cpp.llama_synchronize(llm.ctx)  # decode is asynchronous on a GPU
            times.append(time.perf_counter() - started)
        return min(times)

    shallow = 64
    one, many = best(shallow, 1), best(shallow, batch)
    per_token = (many - one) / (batch - 1)
    # attention makes each token dearer the deeper it sits in the context
    slope = max(0.0, (best(deep, 1) - one) / (deep - shallow))
    return {"per_call_s": max(one - per_token, 0.0), "per_token_s": per_token, "slope_s_per_token_per_position": slope, "measured_at": shallow}


def predicted_seconds(summary: Summary, costs: dict) -> float:
    """The cost model: each generated token costs one llama-cpp-python decode step (sample + eval,
    measured in figure 1 at a shallow depth); each other llama_decode call (prompt, catch-up) costs
    a + b * tokens; every evaluated token costs `slope` more per position of depth, taken at the
    middle of the model's final context."""
    total = 0.0
    for role, totals in (("small", summary.small), ("large", summary.large)):
        c = costs[role]
        if totals.prefill_tokens == 0:
            continue  # never used
        batch_calls = max(0, totals.decode_calls - totals.tokens) + 1  # + the prompt's call
        depth_extra = c["slope_s_per_token_per_position"] * max(0.0, totals.context_tokens / 2 - c["measured_at"])
        total += (
            totals.tokens * (c["decode_s_per_token"] + depth_extra)
            + batch_calls * c["per_call_s"]
            + totals.prefill_tokens * (c["per_token_s"] + depth_extra)
        )
    return total


def gsm8k_problems(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["problem"] for _, line in zip(range(n), handle)]


def threshold_for_rate(pair, small, large, problems, rate: float) -> float:
    """The entropy quantile that sends `rate` of the small model's step starts to the large model."""
    entropies = []
    settings = settings_from_pair(pair, sampling=GREEDY)
    for problem in problems:
        entropies += [s.entropy for s in run(problem, small=small, large=large, settings=settings, policy=make_policy("small")).steps]
    entropies.sort()
    return entropies[min(len(entropies) - 1, int(round((1 - rate) * len(entropies))))]


def headline(pair, small, large, problems, costs) -> dict:
    threshold = threshold_for_rate(pair, small, large, problems, 0.25)
    settings = dataclasses.replace(settings_from_pair(pair, sampling=GREEDY), threshold=threshold)
    measured = {"glimp": 0.0, "large": 0.0}
    ideal = {"glimp": 0.0, "large": 0.0}
    fits, steps, large_steps, prefill, escalations = [], 0, 0, {}, []
    for problem in problems:
        for mode in ("glimp", "large"):
            summary = run(problem, small=small, large=large, settings=settings, policy=make_policy(mode))
            measured[mode] += summary.latency_s
            ideal[mode] += predicted_seconds(summary, costs)
            if mode == "glimp":
                fits.append(summary.latency_s / predicted_seconds(summary, costs))
                steps += len(summary.steps)
                large_steps += sum(s.model == "large" for s in summary.steps)
                for role in ("small", "large"):
                    session = small if role == "small" else large
                    prefill.setdefault(role, []).append(session.counters.evaluated_tokens / max(1, session.context_tokens()))
                escalations.append(probe_cost(summary))
    escalated = sum(e[1] for e in escalations)
    return {
        "threshold": threshold,
        "large_step_share": large_steps / max(1, steps),
        "measured_ratio": measured["glimp"] / measured["large"],
        "ideal_ratio": ideal["glimp"] / ideal["large"],
        "glimp_s": measured["glimp"],
        "large_s": measured["large"],
        "cost_model_fit": max(fits),
        "cost_model_fit_mean": statistics.mean(fits),
        "prefill_ratio": {role: max(v) for role, v in prefill.items()},
        "probe_calls_per_escalation": sum(e[0] for e in escalations) / escalated if escalated else None,
        "escalated_steps": escalated,
    }


def probe_cost(summary: Summary) -> tuple[int, int]:
    """(extra small-model decode calls, escalated steps followed by a probe) for one routed run."""
    steps = summary.steps
    last = steps[-1] if steps else None
    pending_end = 1 if last is not None and last.model == "small" and last.finish != "eos" else 0
    extra = summary.small.decode_calls - summary.small.tokens + pending_end
    escalated = sum(1 for s in steps[:-1] if s.model == "large")
    return extra, escalated


def machine() -> dict:
    info = backend_info()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
        **info,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=10, help="gsm8k problems for the headline figure")
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated for the decode-loop figure")
    parser.add_argument("--config", type=Path, default=PACKAGED_CONFIG, help="models.yaml with the pair to measure")
    parser.add_argument("--pair", default="demo", help="pair name in the config")
    parser.add_argument("--data", type=Path, default=GSM8K, help="gsm8k-style JSONL for the headline figure")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()

    config = load_config(args.config)
    pair = config.pair(args.pair)
    small, large = open_session(config.model(pair.small)), open_session(config.model(pair.large))
    report = {"machine": machine()}
    report["decode"] = decode_overhead(pair, small, large, args.tokens)
    costs = {role: {**call_costs(session), "decode_s_per_token": report["decode"][role]["decode_s_per_token"]} for role, session in (("small", small), ("large", large))}
    report["costs"] = costs
    report["headline"] = headline(pair, small, large, gsm8k_problems(args.data, args.problems), costs)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    d, h = report["decode"], report["headline"]
    table = Table("figure", "measured", "target", title="glimp performance (demo pair)")
    for role in ("small", "large"):
        r = d[role]
        table.add_row(f"1. decode loop, {role}: glimp / llama-cpp-python", f"{r['ratio']:.3f} ({r['glimp_tps']:.1f} vs {r['llama_cpp_tps']:.1f} tok/s, {r['tokens']} tokens)", ">= 0.97")
    for role, value in h["prefill_ratio"].items():
        table.add_row(f"2. prefill discipline, {role}: evaluated / context", f"{value:.3f}", "<= 1.02")
    probe = h["probe_calls_per_escalation"]
    table.add_row("3. probe cost: small decode calls per escalated step", "n/a" if probe is None else f"{probe:.3f} ({h['escalated_steps']} escalations)", "1 (0 per delegated)")
    table.add_row("4. cost-model fit: measured / predicted (worst problem)", f"{h['cost_model_fit']:.3f} (mean {h['cost_model_fit_mean']:.3f})", "<= 1.05")
    table.add_row(
        f"5. glimp / large latency at {h['large_step_share']:.0%} large steps (threshold {h['threshold']:.2f})",
        f"{h['measured_ratio']:.3f} (ideal {h['ideal_ratio']:.3f}; {h['glimp_s']:.1f} s vs {h['large_s']:.1f} s)",
        "within 5% of ideal",
    )
    console = Console()
    console.print(table)
    m = report["machine"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}, GPU offload compiled in: {m['gpu_offload']}")
    console.print(f"llama.cpp: {m['system_info']}")


if __name__ == "__main__":
    sys.exit(main())
