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
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp  # first: numpy loaded before llama.cpp can break its OpenMP on some machines

from cost_model import AFTER_BATCH, KV_STEP, Call, by_kind, inside_seconds, kv_cells, priced_calls  # beside this file

from glimp_cli.backend import backend_info, open_session
from glimp_cli.config import PACKAGED_CONFIG, load_config
from glimp_cli.errors import GlimpError
from glimp_cli.events import Step, Summary
from glimp_cli.policy import make_policy
from glimp_cli.router import route, run, settings_from_pair
from glimp_cli.session import Sampling

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k.jsonl"
PROMPT = "Write a long story about a robot who learns to paint. Describe every day of its first month."
GREEDY = Sampling(temperature=0.0, seed=0)


class CallLog:
    """Times every llama_decode call, and every call that reads its results, while installed
    (`with CallLog(...) as log:`) and recording.

    glimp's loop and llama-cpp-python's own both reach llama.cpp through these functions, so both
    are timed the same way (the wrapper costs about a microsecond a call). On a GPU llama_decode
    returns before the work is done and the first read waits for it, so the reads count as
    llama.cpp's time too. What a run spends outside them is Python: the routing, tokenizing,
    events, and llama-cpp-python's own loop.
    """

    MODULES = (llama_cpp, llama_cpp.llama_cpp)  # glimp calls the first, llama-cpp-python the second
    READS = {"llama_sampler_sample": 1, "llama_get_logits": 0, "llama_get_logits_ith": 0}  # where ctx is

    def __init__(self, sessions: dict) -> None:
        self._models = {_address(s._llm.ctx): role for role, s in sessions.items()}
        self._calls: list[Call] | None = None
        self._originals = {name: getattr(llama_cpp, name) for name in ("llama_decode", *self.READS)}

    def __enter__(self) -> CallLog:
        decode = self._originals["llama_decode"]

        def timed_decode(ctx, batch):
            started = time.perf_counter()
            code = decode(ctx, batch)
            if self._calls is not None:
                self._calls.append(Call(self._models[_address(ctx)], batch.n_tokens, batch.pos[0], time.perf_counter() - started))
            return code

        def timed_read(name: str, ctx_at: int):
            read = self._originals[name]

            def timed(*args):
                started = time.perf_counter()
                result = read(*args)
                if self._calls is not None:
                    self._calls.append(Call(self._models[_address(args[ctx_at])], 0, -1, time.perf_counter() - started, name))
                return result

            return timed

        wrappers = {"llama_decode": timed_decode, **{name: timed_read(name, at) for name, at in self.READS.items()}}
        for module in self.MODULES:
            for name, wrapper in wrappers.items():
                setattr(module, name, wrapper)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.MODULES:
            for name, original in self._originals.items():
                setattr(module, name, original)

    @contextlib.contextmanager
    def recording(self):
        """Collect the calls made inside the block into the list it yields."""
        self._calls = calls = []
        try:
            yield calls
        finally:
            self._calls = None


def _address(ctx) -> int:
    return getattr(ctx, "value", ctx)


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
    (seconds for prompt + n_tokens, seconds per token once past the first AFTER_BATCH one-token
    calls after the prompt, which cost more on a GPU)."""
    llm = session._llm
    llm.reset()
    started = time.perf_counter()
    prompt = session.prompt_tokens(problem)
    steady_from = started
    generated = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        generated += 1
        if generated == AFTER_BATCH + 1:  # its decode is the first steady one
            steady_from = time.perf_counter()
        if generated >= n_tokens:
            break
    ended = time.perf_counter()
    return ended - started, (ended - steady_from) / max(1, generated - AFTER_BATCH - 1)


REFERENCE_TOKENS = 32
# the shortest multi-token call measured: a catch-up on a step of a few tokens ("So,", "Step 1:")
TINY = 4


def repeated_tokens(tokens: list[int], n: int) -> list[int]:
    """`n` tokens: `tokens` over and over (text for calls at any position; only the count matters)."""
    return (tokens * (n // len(tokens) + 1))[:n]


def reference_s_per_token(session, repeats: int) -> float:
    """llama-cpp-python's own time per generated token (sample + decode) over a short greedy run
    (median): how fast this machine runs the model right now. A shared machine drifts (14% in a
    minute on the 2-core VM this was written on), so every cost is stored at one reference speed
    and rescaled to the speed measured around the runs it predicts."""
    return statistics.median(llama_alone(session, PROMPT, REFERENCE_TOKENS)[1] for _ in range(repeats))


@contextlib.contextmanager
def greedy_sampler():
    """A llama.cpp greedy sampler for the timed calls that read a batch's logits, freed afterwards."""
    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        yield sampler
    finally:
        llama_cpp.llama_sampler_free(sampler)


def timed_eval(llm, tokens: list[int], sampler=None) -> float:
    """Seconds for one llama_decode of `tokens` at the context's end, with a sample of its logits by
    `sampler` where given (a multi-token call is priced with it), waiting for the GPU (decode is
    asynchronous there)."""
    started = time.perf_counter()
    llm.eval(tokens)
    if sampler is not None:
        llama_cpp.llama_sampler_sample(sampler, llm.ctx, -1)
    llama_cpp.llama_synchronize(llm.ctx)
    return time.perf_counter() - started


def reference_batch_s(session, repeats: int) -> float:
    """Seconds for the reference prompt in one multi-token call from position 0, with the sample
    that reads its logits (median): the level of multi-token calls right now, which drifts apart
    from that of one-token calls (by 3-8% within a run on the 2-core VM)."""
    llm = session._llm
    tokens = session.prompt_tokens(PROMPT)
    times = []
    with greedy_sampler() as greedy:
        for _ in range(repeats):
            llm.n_tokens = 0
            times.append(timed_eval(llm, tokens, greedy))
    return statistics.median(times)


def decode_overhead(pair, small, large, log: CallLog, n_tokens: int, repeats: int) -> dict:
    """Figure 1: the same prompt and token count, glimp's loop against llama-cpp-python's (medians);
    also the share of each loop's time spent outside llama.cpp's calls."""
    results = {}
    for role, session in (("small", small), ("large", large)):
        settings = dataclasses.replace(
            settings_from_pair(pair, sampling=GREEDY),
            step_max_tokens=n_tokens, thinking_budget=n_tokens, answer_by="small", answer_max_tokens=0,
            # one long step: nothing but the token count (or EOS) ends it
            delimiter="\x00", end_markers=(), answer_markers=(),
        )
        glimp_s, alone_s, outside, tokens = [], [], {"glimp": [], "llama_cpp": []}, 0
        for _ in range(repeats):
            with log.recording() as calls:
                summary, seconds = timed_route(PROMPT, small, large, settings, make_policy(role))
            tokens = sum(s.tokens for s in summary.steps)
            glimp_s.append(seconds)
            outside["glimp"].append((seconds - inside_seconds(calls)) / seconds)
            with log.recording() as calls:
                total, _ = llama_alone(session, PROMPT, tokens)
            alone_s.append(total)
            outside["llama_cpp"].append((total - inside_seconds(calls)) / total)
        glimp_tps, alone_tps = tokens / statistics.median(glimp_s), tokens / statistics.median(alone_s)
        results[role] = {
            "tokens": tokens, "glimp_tps": glimp_tps, "llama_cpp_tps": alone_tps, "ratio": glimp_tps / alone_tps,
            "outside_share": {loop: statistics.median(v) for loop, v in outside.items()},
        }
    return results


def call_costs(session, *, repeats: int, batch: int = 16, depths: tuple[int, ...] = (64, 256, 512, 1024)) -> dict:
    """Costs for one model, measured together (medians over `repeats` rounds). A generated token
    costs llama-cpp-python's own time per token (its loop, as in figure 1, over a short run, once
    past the calls that follow the prompt) at the depth it was measured at, plus what a steady
    one-token llama_decode costs more at the token's own depth (`single_curve`, over the KV cells
    attended: attention over a longer context). The first AFTER_BATCH one-token calls after a
    multi-token call cost `after_batch_s` more, one by one, and the two calls at each KV step
    `kv_step_s` more (a CUDA build runs them without its graph, then captures it). A multi-token
    call of n tokens from position d, with the sample that reads its logits, costs what such a
    call of n tokens from position 0 costs (`batch_curve`: each round's prompt-like calls, a
    `batch`-token catch-up after one-token calls, and a TINY-token one after more of them, as
    short as the other model's shortest steps) + `batch_depth_s` * n * d."""
    llm = session._llm
    prompt = session.prompt_tokens(PROMPT)
    deep = max(depths)
    singles = AFTER_BATCH + 5
    tokens = repeated_tokens(prompt, max(deep, KV_STEP) + batch + 2 * singles + TINY + 8)

    def timed(at: int, n: int) -> float:
        return timed_eval(llm, tokens[at : at + n], greedy if n > 1 else None)

    def timed_calls(depth: int) -> tuple[float, float, list[float], float, float]:
        """(`depth` tokens from position 0, a `batch`-token catch-up after the one-token calls that
        follow them, the first AFTER_BATCH of those less a steady one, the mean of the steady ones,
        a TINY-token catch-up after as many one-token calls again)."""
        llm.n_tokens = 0
        first = timed(0, depth)
        times = [timed(depth + i, 1) for i in range(singles)]
        steady = statistics.mean(times[AFTER_BATCH:])
        catch_up = timed(depth + singles, batch)
        for i in range(singles):
            timed(depth + singles + batch + i, 1)
        tiny = timed(depth + 2 * singles + batch, TINY)
        return first, catch_up, [t - steady for t in times[:AFTER_BATCH]], steady, tiny

    def timed_kv_step() -> list[float]:
        """What the one-token calls at KV_STEP and the one after it cost more than steady ones."""
        first = KV_STEP - AFTER_BATCH - 1  # the calls after the batch, then one steady call before the step
        llm.n_tokens = 0
        timed(0, first)
        times = {p: timed(p, 1) for p in range(first, KV_STEP + 6)}
        steady = statistics.mean(t for p, t in times.items() if p == KV_STEP - 1 or p >= KV_STEP + 2)
        return [times[KV_STEP] - steady, times[KV_STEP + 1] - steady]

    # every configuration once per round, so that the machine's drift (seconds to minutes) shifts
    # all of them together; the reference runs around the rounds give the level
    before = reference_s_per_token(session, max(1, repeats // 2)), reference_batch_s(session, max(1, repeats // 2))
    with greedy_sampler() as greedy:  # timed's
        rounds = [({depth: timed_calls(depth) for depth in depths}, timed_kv_step()) for _ in range(repeats)]
    after = reference_s_per_token(session, max(1, repeats // 2)), reference_batch_s(session, max(1, repeats // 2))

    def median(index: int, depth: int, minus: int | None = None) -> float:
        """Median over the rounds of one timing, less the same timing at depth `minus` in the same round."""
        return statistics.median(r[depth][index] - (r[minus][index] if minus else 0.0) for r, _ in rounds)

    shallow = min(depths)
    per_position = median(1, deep, shallow) / (batch * (deep - shallow))  # `batch` tokens, deeper by deep - shallow
    first_batch = median(1, shallow) - per_position * batch * (shallow + singles)  # `batch` tokens from position 0
    # TINY tokens from position 0, over every depth of every round (its depth term is small)
    first_tiny = statistics.median(r[d][4] - per_position * TINY * (d + 2 * singles + batch) for r, _ in rounds for d in depths)
    calls_from_zero = [d for d in depths if d <= llm.n_batch]  # longer ones are split into n_batch calls
    steady_at = AFTER_BATCH + (singles - AFTER_BATCH - 1) / 2  # mean offset of the steady calls
    return {
        "decode_s_per_token": (before[0] + after[0]) / 2,
        "batch_reference_s": (before[1] + after[1]) / 2,  # the level the batch costs were measured at
        # mean position of the reference run's timed (steady) decodes
        "decode_depth": len(prompt) + AFTER_BATCH + (REFERENCE_TOKENS - AFTER_BATCH - 2) / 2,
        # what a steady one-token call costs more at each depth than at the shallowest
        "single_curve": [(kv_cells(d + steady_at), median(3, d, shallow)) for d in depths],
        "batch_curve": sorted([(TINY, first_tiny), (batch, first_batch)] + [(d, median(0, d)) for d in calls_from_zero]),
        "batch_depth_s": max(0.0, per_position),
        # over every depth of every round: where the batch ended does not matter
        "after_batch_s": [statistics.median(r[d][2][k] for r, _ in rounds for d in depths) for k in range(AFTER_BATCH)],
        "kv_step_s": [statistics.median(step[k] for _, step in rounds) for k in range(2)],
    }


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


_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """One line on stderr per part of the benchmark, with the seconds since it started."""
    print(f"[{time.perf_counter() - _STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


def headline(pair, small, large, problems, costs, log: CallLog, repeats: int) -> dict:
    """Figures 2-5 on routed gsm8k runs; each (problem, mode) runs `repeats` times, timed by the median,
    between two reference runs of each model that rescale its costs to the machine's speed then."""
    progress("figure 5: finding the threshold that sends ~25% of steps to the large model")
    threshold = threshold_for_rate(pair, small, large, problems, 0.25)
    settings = dataclasses.replace(settings_from_pair(pair, sampling=GREEDY), threshold=threshold)
    measured = {"glimp": 0.0, "large": 0.0}
    ideal = {"glimp": 0.0, "large": 0.0}
    outside = {"glimp": 0.0, "large": 0.0}
    fits, steps, large_steps, prefill, escalations, runs = {"glimp": [], "large": []}, 0, 0, {}, [], []
    sessions = {"small": small, "large": large}

    def speed_now() -> dict[str, float]:
        """Each model's speed now relative to when its costs were measured (medians of 3 reference
        runs each), for its one-token calls ("small") and its multi-token calls ("small batch")."""
        speed = {}
        for role, session in sessions.items():
            speed[role] = reference_s_per_token(session, 3) / costs[role]["decode_s_per_token"]
            speed[f"{role} batch"] = reference_batch_s(session, 3) / costs[role]["batch_reference_s"]
        return speed

    before = speed_now()
    for index, problem in enumerate(problems):
        progress(f"figures 2-5: problem {index + 1}/{len(problems)}")
        for mode in ("glimp", "large"):
            timed = []
            for _ in range(repeats):  # greedy: the same calls each time, only their timing varies
                with log.recording() as calls:
                    summary = run(problem, small=small, large=large, settings=settings, policy=make_policy(mode))
                timed.append((summary.latency_s, calls))
            latency, calls = sorted(timed, key=lambda t: t[0])[len(timed) // 2]  # the median run
            counters = {role: dataclasses.replace(session.counters) for role, session in sessions.items()}
            contexts = {role: session.context_tokens() for role, session in sessions.items()}
            after = speed_now()  # the runs are bracketed by reference runs
            speed, before = {key: (before[key] + after[key]) / 2 for key in before}, after
            priced = priced_calls(calls, costs, speed)
            predicted, outside_s = sum(p.predicted_s for p in priced), latency - inside_seconds(calls)
            measured[mode] += latency
            ideal[mode] += predicted
            outside[mode] += outside_s
            runs.append({
                "problem": index, "mode": mode, "latency_s": latency, "predicted_s": predicted,
                "outside_s": outside_s, "speed": speed, "calls": by_kind(priced),
                # every decode with the reads of its results, for analysis after the fact:
                # [model, tokens, position, measured s]
                "call_list": [[c.model, c.tokens, c.position, round(p.measured_s, 7)] for c, p in zip((c for c in calls if c.tokens > 0), priced)],
                "steps": "".join(s.model[0] for s in summary.steps),
                **{f"{role}_{name}": getattr(c, name) for role, c in counters.items() for name in vars(c)},
            })
            fits[mode].append(latency / predicted)
            if mode == "glimp":
                steps += len(summary.steps)
                large_steps += sum(s.model == "large" for s in summary.steps)
                for role in sessions:
                    prefill.setdefault(role, []).append(counters[role].evaluated_tokens / max(1, contexts[role]))
                escalations.append(probe_cost(summary))
    escalated = sum(e[1] for e in escalations)
    return {
        "threshold": threshold,
        "large_step_share": large_steps / max(1, steps),
        "measured_ratio": measured["glimp"] / measured["large"],
        "ideal_ratio": ideal["glimp"] / ideal["large"],
        "glimp_s": measured["glimp"],
        "large_s": measured["large"],
        "cost_model_fit": max(fits["glimp"]),
        "cost_model_fit_mean": statistics.mean(fits["glimp"]),
        # the same fit for the large model's own runs: no routing, so their spread is the machine's
        "control_fit": max(fits["large"]),
        "control_fit_mean": statistics.mean(fits["large"]),
        "outside_share": {mode: outside[mode] / measured[mode] for mode in measured},
        "speed_range": {key: (min(r["speed"][key] for r in runs), max(r["speed"][key] for r in runs)) for key in before},
        "outside_ms_per_step": 1e3 * outside["glimp"] / max(1, steps),
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
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; figures use the median (5 at least for figure 1 and the call costs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    for name in ("problems", "tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more")
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file (gsm8k-style JSON Lines with a 'problem' field per line)")

    config = load_config(args.config)
    pair = config.pair(args.pair)
    small, large = open_session(config.model(pair.small)), open_session(config.model(pair.large))
    report = {"machine": machine()}

    def save() -> None:  # after each part, so that an interrupted run keeps what it measured
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    with CallLog({"small": small, "large": large}) as log:
        progress("figure 1: decode loops")
        report["decode"] = decode_overhead(pair, small, large, log, args.tokens, max(5, args.repeats))
        save()
        progress("call costs of each model")
        costs = {
            role: call_costs(session, repeats=max(5, args.repeats))
            for role, session in (("small", small), ("large", large))
        }
        report["costs"] = costs
        save()
        report["headline"] = headline(pair, small, large, gsm8k_problems(args.data, args.problems), costs, log, args.repeats)
    save()
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
    table.add_row(
        "4. cost-model fit: measured / predicted (worst problem)",
        f"{h['cost_model_fit']:.3f} (mean {h['cost_model_fit_mean']:.3f}; large-only runs {h['control_fit']:.3f}, mean {h['control_fit_mean']:.3f})",
        "<= 1.05",
    )
    table.add_row(
        f"5. glimp / large latency at {h['large_step_share']:.0%} large steps (threshold {h['threshold']:.2f})",
        f"{h['measured_ratio']:.3f} (ideal {h['ideal_ratio']:.3f}; {h['glimp_s']:.1f} s vs {h['large_s']:.1f} s)",
        "within 5% of ideal",
    )
    console = Console()
    console.print(table)
    console.print(
        "time outside llama.cpp's decode and sampler calls (Python): "
        + ", ".join(f"figure 1 {role}: glimp {d[role]['outside_share']['glimp']:.2%} vs llama-cpp-python {d[role]['outside_share']['llama_cpp']:.2%}" for role in ("small", "large"))
        + f"; routed runs {h['outside_share']['glimp']:.2%} ({h['outside_ms_per_step']:.2f} ms per step), large-only runs {h['outside_share']['large']:.2%}"
    )
    console.print(
        "machine speed during the headline, relative to when the costs were measured (the costs are rescaled "
        "per problem): " + ", ".join(f"{role} x{lo:.3f}-{hi:.3f}" for role, (lo, hi) in h["speed_range"].items())
    )
    for role, c in report["costs"].items():
        console.print(
            f"costs, {role}: {c['decode_s_per_token'] * 1e3:.3f} ms per generated token at position {c['decode_depth']:.0f}; "
            "one-token call " + ", ".join(f"{t * 1e3:+.2f} ms over {p:.0f} KV cells" for p, t in c["single_curve"])
            + "; calls of n tokens from position 0 " + ", ".join(f"{t * 1e3:.1f} ms for {n}" for n, t in c["batch_curve"])
            + f", +{c['batch_depth_s'] * 1e9:.1f} ns per token per position of depth; "
            "first one-token calls after them " + ", ".join(f"{t * 1e3:+.2f}" for t in c["after_batch_s"]) + " ms; "
            f"at each {KV_STEP}-cell KV step " + ", ".join(f"{t * 1e3:+.2f}" for t in c["kv_step_s"]) + " ms"
        )
    m = report["machine"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}, GPU offload compiled in: {m['gpu_offload']}")
    console.print(f"llama.cpp: {m['system_info']}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GlimpError as exc:  # bad config or model file: one line, as glimp itself prints it
        sys.exit(f"error: {exc}")
