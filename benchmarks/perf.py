"""glimp's speed next to llama.cpp's own: the decode loop, routed latency against its ideal, time outside llama.cpp.

    python -m benchmarks.perf [--problems 10] [--tokens 256] [--repeats 3] [--figures decode,headline,speculation]
                              [--json]

1. decode loop: tokens/s of glimp --mode small (then large) over llama-cpp-python's own loop, same prompt and tokens;
2. headline: glimp at the threshold that sends ~25% of steps to the large model against --mode large on gsm8k
   (greedy), next to the ideal ratio: each run's tokens at llama-cpp-python's own rates, measured in the same run;
3. the share of the routed runs' time spent outside llama.cpp's calls, from a log of every call.
Figures are medians over --repeats with their range: the machine's noise is reported, not modelled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp  # isort: skip  # before numpy, as in glimp_cli.backend

from glimp_cli.backend import ModelDrafter, backend_info, draftable_tokens, open_session
from glimp_cli.calibrate import threshold_for_rate
from glimp_cli.cli import speculate_with
from glimp_cli.config import PACKAGED_CONFIG, load_config, router_settings, speculation_settings
from glimp_cli.dataset import load_problems
from glimp_cli.errors import GlimpError
from glimp_cli.events import ModelTotals
from glimp_cli.policy import make_policy
from glimp_cli.router import RouterSettings, run
from glimp_cli.session import Sampling

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k.jsonl"
DECODE_PROMPT = "Write a long story about a robot who learns to paint. Describe every day of its first month."
GREEDY = Sampling(temperature=0.0, seed=0)
LARGE_STEP_RATE = 0.25  # the headline's share of the small model's steps sent to the large model
REFERENCE_TOKENS = 256  # llama-cpp-python's own loop, timed for the ideal's rates
# A CUDA build runs the first one-token calls after a multi-token call without its CUDA graph, then
# captures one: a steady time per token starts after them.
WARM_UP_TOKENS = 3
FIGURES = ("decode", "headline", "speculation")


@dataclasses.dataclass(frozen=True)
class Call:
    """One timed llama.cpp call: a llama_decode of `tokens` tokens from `position`, or a read of its results."""

    model: str
    tokens: int  # 0 for a read
    position: int
    seconds: float
    function: str = "llama_decode"


class CallLog:
    """Times every llama_decode call, and every call that reads its results, while installed and recording.

    glimp's loop and llama-cpp-python's both reach llama.cpp through these functions, so both are timed
    alike (about a microsecond a call). On a GPU llama_decode returns early and the first read waits for
    it, so the reads count as llama.cpp's time. The rest of a run is Python.
    """

    MODULES = (llama_cpp, llama_cpp.llama_cpp)  # glimp calls the first, llama-cpp-python the second
    READS = {"llama_sampler_sample": 1, "llama_get_logits": 0, "llama_get_logits_ith": 0}  # where ctx is

    def __init__(self, sessions: dict) -> None:
        self._models = {_address(s._llm.ctx): role for role, s in sessions.items()}
        self._calls: list[Call] | None = None
        self._originals = {name: getattr(llama_cpp, name) for name in ("llama_decode", *self.READS)}

    def __enter__(self) -> CallLog:
        for module in self.MODULES:
            for name, original in self._originals.items():
                setattr(module, name, self._timed(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for module in self.MODULES:
            for name, original in self._originals.items():
                setattr(module, name, original)

    def _timed(self, name: str, original):
        ctx_at = self.READS.get(name, 0)

        def timed(*args):
            started = time.perf_counter()
            result = original(*args)
            if self._calls is not None:
                seconds, model = time.perf_counter() - started, self._models[_address(args[ctx_at])]
                if name == "llama_decode":
                    self._calls.append(Call(model, args[1].n_tokens, args[1].pos[0], seconds))
                else:
                    self._calls.append(Call(model, 0, -1, seconds, name))
            return result

        return timed

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


def outside_share(calls: list[Call], seconds: float) -> float:
    """The share of `seconds` spent outside the logged llama.cpp calls."""
    return 1.0 - sum(c.seconds for c in calls) / seconds


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclasses.dataclass(frozen=True)
class Rates:
    """One model's speed in llama-cpp-python's own loop, in seconds per token."""

    decode_s: float  # a generated token (sample + one-token decode), past the first WARM_UP_TOKENS
    prefill_s: float  # a token of the prompt, evaluated in one call (with the first sample)


def llama_alone(session, problem: str, n_tokens: int) -> tuple[float, Rates]:
    """llama-cpp-python's own greedy loop from the problem's prompt, as glimp's starts: (seconds, its rates)."""
    llm = session._llm
    llm.reset()
    started = time.perf_counter()
    prompt = session.prompt_tokens(problem)
    first = steady_from = started
    generated = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        generated += 1
        if generated == 1:
            first = time.perf_counter()
        if generated == WARM_UP_TOKENS + 1:  # its decode is the first steady one
            steady_from = time.perf_counter()
        if generated >= n_tokens:
            break
    ended = time.perf_counter()
    steady_s = (ended - steady_from) / max(1, generated - WARM_UP_TOKENS - 1)
    return ended - started, Rates(decode_s=steady_s, prefill_s=(first - started) / len(prompt))


def ideal_seconds(totals: dict[str, ModelTotals], rates: dict[str, Rates]) -> float:
    """A run's tokens at llama-cpp-python's own rates: each model's generated tokens at its decode rate, and
    the tokens it evaluated without sampling them (prompt, catch-ups) at its prefill rate."""
    return sum(t.tokens * rates[role].decode_s + t.prefill_tokens * rates[role].prefill_s for role, t in totals.items())


def decode_loops(small, large, settings: RouterSettings, log: CallLog, *, n_tokens: int, repeats: int) -> dict:
    """Figure 1: one prompt and token count through glimp's loop, then llama-cpp-python's, `repeats` times."""
    # one long step that only the token count (or EOS) ends, and no answer
    long_step = dataclasses.replace(
        settings,
        step_max_tokens=n_tokens,
        thinking_budget=n_tokens,
        answer_by="small",
        answer_max_tokens=0,
        delimiter="\x00",
        end_markers=(),
        answer_markers=(),
    )
    figures = {}
    for role, session in (("small", small), ("large", large)):
        glimp_tps, alone_tps, outside = [], [], {"glimp": [], "llama_cpp": []}
        for _ in range(repeats):
            with log.recording() as calls:
                summary = run(DECODE_PROMPT, small=small, large=large, settings=long_step, policy=make_policy(role))
            outside["glimp"].append(outside_share(calls, summary.latency_s))
            tokens = summary.generated_tokens
            with log.recording() as calls:
                alone_s, _ = llama_alone(session, DECODE_PROMPT, tokens)
            outside["llama_cpp"].append(outside_share(calls, alone_s))
            glimp_tps.append(tokens / summary.latency_s)
            alone_tps.append(tokens / alone_s)
        figures[role] = {
            "tokens": tokens,
            "ratio": spread([g / a for g, a in zip(glimp_tps, alone_tps)]),  # each glimp run against the one after it
            "glimp_tps": spread(glimp_tps),
            "llama_cpp_tps": spread(alone_tps),
            "outside_share": {loop: spread(shares) for loop, shares in outside.items()},
        }
    return figures


def find_threshold(problems, small, large, settings: RouterSettings) -> float:
    """The threshold that sends LARGE_STEP_RATE of the small model's steps to the large model."""
    small_only = make_policy("small")
    entropies = [
        step.entropy
        for problem in problems
        for step in run(problem.text, small=small, large=large, settings=settings, policy=small_only).steps
    ]
    return threshold_for_rate(entropies, LARGE_STEP_RATE).threshold


def headline(problems, small, large, settings: RouterSettings, log: CallLog, *, repeats: int) -> dict:
    """Figures 2 and 3: glimp at that threshold against --mode large, `repeats` passes over the problems."""
    progress(f"headline: the threshold for {LARGE_STEP_RATE:.0%} large steps (--mode small on each problem)")
    routed = dataclasses.replace(settings, threshold=find_threshold(problems, small, large, settings))
    sessions = {"small": small, "large": large}
    references: dict[str, list[Rates]] = {role: [] for role in sessions}
    runs = []  # (pass, mode, summary, seconds inside llama.cpp)
    for index in range(repeats + 1):
        for role, session in sessions.items():  # before and after each pass: they drift with the machine
            references[role].append(llama_alone(session, problems[0].text, REFERENCE_TOKENS)[1])
        if index == repeats:
            break
        progress(f"headline: pass {index + 1}/{repeats} over {len(problems)} problems")
        for problem in problems:
            for mode in ("glimp", "large"):  # interleaved: a slow minute slows both
                with log.recording() as calls:
                    summary = run(problem.text, small=small, large=large, settings=routed, policy=make_policy(mode))
                runs.append((index, mode, summary, sum(c.seconds for c in calls)))
    rates = {
        role: Rates(statistics.median(r.decode_s for r in rs), statistics.median(r.prefill_s for r in rs))
        for role, rs in references.items()
    }

    def per_pass(mode: str, value) -> list[float]:
        """value(summary, inside_s) summed over each pass's runs in `mode`."""
        return [sum(value(s, inside) for i, m, s, inside in runs if (i, m) == (n, mode)) for n in range(repeats)]

    seconds = {mode: per_pass(mode, lambda s, _: s.latency_s) for mode in ("glimp", "large")}
    ideal = {
        mode: per_pass(mode, lambda s, _: ideal_seconds({"small": s.small, "large": s.large}, rates))
        for mode in seconds
    }
    outside = {mode: per_pass(mode, lambda s, inside: s.latency_s - inside) for mode in seconds}
    steps = per_pass("glimp", lambda s, _: len(s.steps))[0]
    large_steps = per_pass("glimp", lambda s, _: sum(step.model == "large" for step in s.steps))[0]
    measured = [g / la for g, la in zip(seconds["glimp"], seconds["large"])]
    ideal_ratio = [g / la for g, la in zip(ideal["glimp"], ideal["large"])]
    return {
        "threshold": routed.threshold,
        "large_step_share": large_steps / steps,
        "seconds": {mode: spread(s) for mode, s in seconds.items()},
        "ratio": spread(measured),
        "ideal_ratio": spread(ideal_ratio),
        "ratio_over_ideal": spread([m / i for m, i in zip(measured, ideal_ratio)]),
        # how far each mode's own runs are from their ideal (the large-only runs: a control without routing)
        "seconds_over_ideal": {mode: spread([s / i for s, i in zip(seconds[mode], ideal[mode])]) for mode in seconds},
        "outside_share": {mode: spread([o / s for o, s in zip(outside[mode], seconds[mode])]) for mode in seconds},
        "outside_ms_per_step": spread([1e3 * o / steps for o in outside["glimp"]]),
        "rates": {role: dataclasses.asdict(r) for role, r in rates.items()},
        # the timings behind the figures: each pass's totals, and every reference run (before each pass, after the last)
        "passes": {f"{mode}_s": seconds[mode] for mode in seconds} | {f"ideal_{mode}_s": ideal[mode] for mode in ideal},
        "references": {role: [dataclasses.asdict(r) for r in rs] for role, rs in references.items()},
    }


def speculation(problems, config, pair, settings: RouterSettings, *, repeats: int) -> dict:
    """Figure 4: each problem in every configuration in turn (a slow minute slows them all), `repeats` passes.

    Configurations: large and glimp without and with the pair's drafts (model where the vocabularies agree, else
    ngram), all loaded with the exact settings
    (flash attention on, repack off) that speculation needs; large alone with llama.cpp's default (faster CPU)
    settings, the baseline a user without speculation has; and large with a draft from its own file.
    """
    exact = {
        role: speculation_settings(config.model(getattr(pair, role)), speculating=True) for role in ("small", "large")
    }
    default = speculation_settings(config.model(pair.large), speculating=False)
    small, large, twin = open_session(exact["small"]), open_session(exact["large"]), open_session(exact["large"])
    large_default = open_session(default)
    # the pair's drafts whatever they cost (auto would measure and may pick none): model where the vocabularies agree
    drafts = "model" if draftable_tokens(small, large)[1] is None else "ngram"
    source = speculate_with(small, large, dataclasses.replace(pair, speculate=drafts))
    drafter, large.speculate = large.speculate, None
    draftable, _ = draftable_tokens(twin, large)
    twin_drafter = ModelDrafter(twin, draftable=draftable, k=pair.draft_tokens, p_min=0.0)
    routed = dataclasses.replace(settings, threshold=find_threshold(problems, small, large, settings))
    configurations = {  # name: (small, large, its drafter, policy, settings)
        "large (default settings)": (small, large_default, None, "large", settings),
        "large": (small, large, None, "large", settings),
        f"large + {source.source} drafts": (small, large, drafter, "large", settings),
        "large + own-file drafts": (twin, large, twin_drafter, "large", settings),
        "glimp": (small, large, None, "glimp", routed),
        f"glimp + {source.source} drafts": (small, large, drafter, "glimp", routed),
    }
    results: dict[str, list] = {name: [] for name in configurations}  # per pass: the summaries
    for index in range(repeats):
        progress(f"speculation: pass {index + 1}/{repeats} over {len(problems)} problems")
        for name in configurations:
            results[name].append([])
        for problem in problems:
            for name, (s, la, d, mode, how) in configurations.items():
                la.speculate = d
                try:
                    summary = run(problem.text, small=s, large=la, settings=how, policy=make_policy(mode))
                finally:
                    la.speculate = None
                results[name][-1].append(summary)

    def texts(summaries) -> list:
        return [([st.text for st in x.steps], x.answer) for x in summaries]

    baseline = {"large": results["large"][0], "glimp": results["glimp"][0]}
    figures = {}
    for name, passes in results.items():
        seconds = [sum(x.latency_s for x in summaries) for summaries in passes]
        totals = [x.large for x in passes[0]]
        drafted, accepted = sum(t.drafted_tokens for t in totals), sum(t.accepted_tokens for t in totals)
        calls = sum(t.decode_calls for t in totals)
        reference = baseline["glimp" if name.startswith("glimp") else "large"]
        figures[name] = {
            "seconds": spread(seconds),
            "ratio": spread([a / b for a, b in zip(seconds, [sum(x.latency_s for x in p) for p in results["large"]])]),
            "acceptance": accepted / drafted if drafted else None,
            "large_tokens_per_call": sum(t.tokens for t in totals) / calls if calls else None,
            "verify_calls": sum(t.verify_calls for t in totals),
            "differing_texts": sum(a != b for a, b in zip(texts(passes[0]), texts(reference))),
        }
    return {
        "source": dataclasses.asdict(source),
        "draft_tokens": pair.draft_tokens,
        "draft_p_min": pair.draft_p_min,
        "threshold": routed.threshold,
        "problems": len(problems),
        "configurations": figures,
    }


_STARTED = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), **backend_info()}


def print_report(report: dict) -> None:
    def figure(s: dict, form: str = ".3f") -> str:
        return f"{s['median']:{form}} ({s['min']:{form}}-{s['max']:{form}})"

    print(f"glimp performance: medians (min-max) of {report['repeats']} repeats")
    d, h = report.get("decode"), report.get("headline")
    for role in ("small", "large") if d else ():
        r = d[role]
        print(
            f"1. decode loop, {role}, glimp / llama-cpp-python [>= 0.97]: {figure(r['ratio'])}; "
            f"{r['glimp_tps']['median']:.1f} vs {r['llama_cpp_tps']['median']:.1f} tok/s ({r['tokens']} tokens)"
        )
    if h:
        print(
            f"2. glimp / large latency at {h['large_step_share']:.0%} large steps (threshold {h['threshold']:g}): "
            f"{figure(h['ratio'])}; ideal {figure(h['ideal_ratio'])}, measured / ideal "
            f"{figure(h['ratio_over_ideal'])}; {h['seconds']['glimp']['median']:.1f} s vs "
            f"{h['seconds']['large']['median']:.1f} s"
        )
        print(
            f"   latency over its ideal, routed runs [<= 1.05]: {figure(h['seconds_over_ideal']['glimp'])}; "
            f"large-only runs {figure(h['seconds_over_ideal']['large'])}"
        )
        print(
            f"3. time outside llama.cpp, routed runs [<= 2%]: {figure(h['outside_share']['glimp'], '.2%')}, "
            f"{figure(h['outside_ms_per_step'], '.2f')} ms per step; large-only runs "
            f"{figure(h['outside_share']['large'], '.2%')}"
        )
    for role in ("small", "large") if d else ():
        outside = d[role]["outside_share"]
        print(
            f"   decode loop, {role}: glimp {figure(outside['glimp'], '.2%')}, "
            f"llama-cpp-python {figure(outside['llama_cpp'], '.2%')}"
        )
    if "speculation" in report:
        sp = report["speculation"]
        print(
            f"4. speculation ({sp['source']['source']}: {sp['source']['reason']}; k = {sp['draft_tokens']}), "
            f"{sp['problems']} problems, latency over large's (same settings):"
        )
        for name, f in sp["configurations"].items():
            acceptance = "-" if f["acceptance"] is None else f"{f['acceptance']:.0%}"
            print(
                f"   {name:28} {figure(f['ratio'])}  {f['seconds']['median']:6.1f} s  drafts accepted {acceptance:>4}"
                f"  large tokens/call {f['large_tokens_per_call']:.2f}  texts differing {f['differing_texts']}"
            )
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, llama-cpp-python {m['llama_cpp_python']}, "
        f"GPU offload {m['gpu_offload']}; {m['system_info']}"
    )


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=positive_int, default=10, help="gsm8k problems for the headline")
    parser.add_argument("--tokens", type=positive_int, default=256, help="tokens generated for the decode loop")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timings of each figure (median and range)")
    parser.add_argument("--config", type=Path, default=PACKAGED_CONFIG, help="models.yaml with the pair")
    parser.add_argument("--pair", default="demo", help="pair name in the config")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="gsm8k-style JSON Lines")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--figures",
        type=lambda text: text.split(","),
        default=list(FIGURES),
        help=f"which figures, comma-separated: {','.join(FIGURES)}",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.figures if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure {unknown[0]!r}; expected some of {','.join(FIGURES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config)
    pair = config.pair(args.pair)
    problems = load_problems(args.data, limit=args.problems)
    settings = router_settings(pair, sampling=GREEDY)  # the only place the pair's routing settings are read
    report = {"pair": args.pair, "repeats": args.repeats, "machine": machine()}
    if "decode" in args.figures or "headline" in args.figures:
        small, large = open_session(config.model(pair.small)), open_session(config.model(pair.large))
        with CallLog({"small": small, "large": large}) as log:
            if "decode" in args.figures:
                progress("decode loops")
                report["decode"] = decode_loops(small, large, settings, log, n_tokens=args.tokens, repeats=args.repeats)
            if "headline" in args.figures:
                report["headline"] = headline(problems, small, large, settings, log, repeats=args.repeats)
        del small, large  # the speculation figure loads its own sessions
    if "speculation" in args.figures:
        report["speculation"] = speculation(problems, config, pair, settings, repeats=args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GlimpError as exc:  # a bad config, pair, model or data file: one line, as glimp prints it
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
