"""glimp performance benchmark: routing overhead against llama-cpp-python alone, on the demo pair.

    python benchmarks/perf.py [--problems 10] [--tokens 256] [--repeats 3] [--json]

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
from glimp_cli.session import Counters, Sampling

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k.jsonl"
PROMPT = "Write a long story about a robot who learns to paint. Describe every day of its first month."
GREEDY = Sampling(temperature=0.0, seed=0)


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
    """llama-cpp-python's own greedy loop from the problem's text, as glimp's starts:
    (seconds for prompt + n_tokens, seconds per token after the first)."""
    llm = session._llm
    llm.reset()
    started = time.perf_counter()
    prompt = session.prompt_tokens(problem)
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


def decode_overhead(pair, small, large, n_tokens: int, repeats: int) -> dict:
    """Figure 1: the same prompt and token count, glimp's loop against llama-cpp-python's (medians)."""
    results = {}
    for role, session in (("small", small), ("large", large)):
        settings = dataclasses.replace(
            settings_from_pair(pair, sampling=GREEDY),
            step_max_tokens=n_tokens, thinking_budget=n_tokens, answer_by="small", answer_max_tokens=0,
            # one long step: nothing but the token count (or EOS) ends it
            delimiter="\x00", end_markers=(), answer_markers=(),
        )
        glimp_s, alone_s, per_token, tokens = [], [], [], 0
        for _ in range(repeats):
            summary, seconds = timed_route(PROMPT, small, large, settings, make_policy(role))
            tokens = sum(s.tokens for s in summary.steps)
            glimp_s.append(seconds)
            total, token_s = llama_alone(session, PROMPT, tokens)
            alone_s.append(total)
            per_token.append(token_s)
        glimp_tps, alone_tps = tokens / statistics.median(glimp_s), tokens / statistics.median(alone_s)
        results[role] = {
            "tokens": tokens, "glimp_tps": glimp_tps, "llama_cpp_tps": alone_tps, "ratio": glimp_tps / alone_tps,
            "decode_s_per_token": statistics.median(per_token),  # sample + decode, llama-cpp-python alone
            "decode_depth": len(session.prompt_tokens(PROMPT)) + tokens / 2,  # mean position of those tokens
        }
    return results


def call_costs(session, *, repeats: int, small_batch: int = 16, batch: int = 128, deep: int = 1024) -> dict:
    """llama_decode costs for one model (medians): a multi-token call of n tokens at depth d costs
    a + n * (b + slope * d); the first one-token call after it costs `switch` more than the next
    (a CUDA build rebuilds its graph when the batch shape changes)."""
    llm = session._llm
    prompt = session.prompt_tokens(PROMPT)
    tokens = (prompt * (deep // len(prompt) + 3))[: deep + batch + 2]

    def timed_eval(at: int, n: int) -> float:
        started = time.perf_counter()
        llm.eval(tokens[at : at + n])
        llama_cpp.llama_synchronize(llm.ctx)  # decode is asynchronous on a GPU
        return time.perf_counter() - started

    def median_times(depth: int, n: int) -> tuple[float, float, float]:
        """(n tokens after a batch of `depth`, one token after them, one more token)."""
        runs = []
        for _ in range(repeats):
            llm.n_tokens = 0
            llm.eval(tokens[:depth])  # the context the measured calls attend to
            llama_cpp.llama_synchronize(llm.ctx)
            runs.append((timed_eval(depth, n), timed_eval(depth + n, 1), timed_eval(depth + n + 1, 1)))
        return tuple(statistics.median(r[i] for r in runs) for i in range(3))

    shallow = 64
    few, first_single, steady_single = median_times(shallow, small_batch)
    many, _, _ = median_times(shallow, batch)
    per_token = (many - few) / (batch - small_batch)
    _, _, deep_single = median_times(deep, small_batch)
    return {
        "per_call_s": max(few - small_batch * per_token, 0.0),
        "per_token_s": per_token,
        "switch_s": max(first_single - steady_single, 0.0),
        # attention makes each token dearer the deeper it sits in the context
        "slope_s_per_token_per_position": max(0.0, (deep_single - steady_single) / (deep - shallow)),
        "measured_at": shallow,
    }


def predicted_seconds(summary: Summary, counters: dict[str, Counters], costs: dict) -> float:
    """The cost model, per model: each generated token costs one llama-cpp-python decode step
    (sample + eval, figure 1); each other llama_decode call (prompt, catch-up) costs a + b * tokens;
    each one-token call right after such a call costs `switch`; and attention adds `slope` per token
    per position of depth, beyond the depths at which those costs were measured."""
    total = 0.0
    for role, totals in (("small", summary.small), ("large", summary.large)):
        c = costs[role]
        if totals.prefill_tokens == 0:
            continue  # never used
        batch_calls = max(0, totals.decode_calls - totals.tokens) + 1  # + the prompt's call
        context = totals.context_tokens
        # every position of the final context was evaluated once: sum of depths = context^2 / 2
        depth = context * context / 2 - totals.tokens * c["decode_depth"] - totals.prefill_tokens * c["measured_at"]
        total += (
            totals.tokens * c["decode_s_per_token"]
            + batch_calls * c["per_call_s"]
            + totals.prefill_tokens * c["per_token_s"]
            + counters[role].single_after_batch * c["switch_s"]
            + c["slope_s_per_token_per_position"] * depth
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


def headline(pair, small, large, problems, costs, repeats: int) -> dict:
    """Figures 2-5 on routed gsm8k runs; each (problem, mode) runs `repeats` times, timed by the median."""
    threshold = threshold_for_rate(pair, small, large, problems, 0.25)
    settings = dataclasses.replace(settings_from_pair(pair, sampling=GREEDY), threshold=threshold)
    measured = {"glimp": 0.0, "large": 0.0}
    ideal = {"glimp": 0.0, "large": 0.0}
    fits, steps, large_steps, prefill, escalations, runs = [], 0, 0, {}, [], []
    for index, problem in enumerate(problems):
        for mode in ("glimp", "large"):
            latencies = []
            for _ in range(repeats):  # greedy: the same run each time, only its timing varies
                summary = run(problem, small=small, large=large, settings=settings, policy=make_policy(mode))
                latencies.append(summary.latency_s)
            latency = statistics.median(latencies)
            counters = {"small": dataclasses.replace(small.counters), "large": dataclasses.replace(large.counters)}
            predicted = predicted_seconds(summary, counters, costs)
            measured[mode] += latency
            ideal[mode] += predicted
            runs.append({
                "problem": index, "mode": mode, "latency_s": latency, "predicted_s": predicted,
                "steps": "".join(s.model[0] for s in summary.steps),
                **{f"{role}_{name}": getattr(c, name) for role, c in counters.items() for name in vars(c)},
            })
            if mode == "glimp":
                fits.append(latency / predicted)
                steps += len(summary.steps)
                large_steps += sum(s.model == "large" for s in summary.steps)
                for role, session in (("small", small), ("large", large)):
                    prefill.setdefault(role, []).append(counters[role].evaluated_tokens / max(1, session.context_tokens()))
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
        "runs": runs,
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
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; figures use the median (5 at least for figure 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()

    config = load_config(args.config)
    pair = config.pair(args.pair)
    small, large = open_session(config.model(pair.small)), open_session(config.model(pair.large))
    report = {"machine": machine()}
    report["decode"] = decode_overhead(pair, small, large, args.tokens, max(5, args.repeats))
    costs = {
        role: {**call_costs(session, repeats=max(5, args.repeats)), **{k: report["decode"][role][k] for k in ("decode_s_per_token", "decode_depth")}}
        for role, session in (("small", small), ("large", large))
    }
    report["costs"] = costs
    report["headline"] = headline(pair, small, large, gsm8k_problems(args.data, args.problems), costs, args.repeats)
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
    for role, c in report["costs"].items():
        console.print(
            f"costs, {role}: {c['decode_s_per_token'] * 1e3:.3f} ms per generated token; other calls "
            f"{c['per_call_s'] * 1e3:.3f} ms + {c['per_token_s'] * 1e6:.1f} us per token; "
            f"first one-token call after them +{c['switch_s'] * 1e3:.3f} ms; "
            f"+{c['slope_s_per_token_per_position'] * 1e9:.1f} ns per token per position of depth"
        )
    m = report["machine"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}, GPU offload compiled in: {m['gpu_offload']}")
    console.print(f"llama.cpp: {m['system_info']}")


if __name__ == "__main__":
    sys.exit(main())
