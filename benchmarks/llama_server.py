"""`glimp bench --parallel N` against llama.cpp's own llama-server, which batches concurrent requests.

    python -m benchmarks.llama_server [--data ../shared/data/gsm8k.jsonl] [--limit 16] [--parallel 1,2,4]
                                      [--slots 4] [--threads 1] [--cache ~/.cache/glimp-bench] [--json]

A benchmark step, not a test: it builds `llama-server` from the llama.cpp sources vendored in the
llama-cpp-python sdist of the installed version (the README's CPU flags; skipped when the binary is
there), serves the demo pair with it (one process per model, `--parallel` slots with continuous
batching), and runs `glimp bench --modes glimp --temperature 0 --parallel N` for each N: throughput,
per-problem latency, the servers' cached-token share, and the temperature-0 results that differ from N = 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import yaml

from glimp_cli.config import PACKAGED_CONFIG, load_config
from glimp_cli.gguf_header import read_gguf_header
from glimp_cli.sources import resolve_model_path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k.jsonl"
DEFAULT_CACHE = Path.home() / ".cache" / "glimp-bench"
TEST_SDIST_CACHE = Path.home() / ".cache" / "glimp-tests"  # tests/tiny_models.py keeps the same sdist there
CMAKE_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON")  # the README's
CMAKE_FLAGS += ("-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DCMAKE_BUILD_TYPE=Release")
SLOT_CTX = 4096  # tokens per slot: the demo models' n_ctx (llama-server splits -c among its slots)
START_TIMEOUT_S = 120.0
# The demo pair's settings but for these: a remote small model measures top-k entropy only (2.0 nats of at most
# ln 20 is about where the full-vocabulary 2.5 sits), and caps that keep 16 problems x 4 runs to minutes on 2 cores.
PAIR_OVERRIDES = {"entropy": "topk", "threshold": 2.0, "step_max_tokens": 128, "thinking_budget": 256}


def llama_server_binary(cache: Path, *, jobs: int = 2) -> tuple[Path, float | None]:
    """The llama-server of the installed llama-cpp-python's vendored llama.cpp, built into `cache` when absent;
    returns (binary, build seconds or None when it was there)."""
    release = version("llama-cpp-python")
    root = cache / f"llama.cpp-{release}"
    binary = root / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary, None
    source = root / "src"
    if not (source / "CMakeLists.txt").is_file():
        sdist = _sdist(cache, release)
        top = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdist, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(top)]
            for member in members:
                member.name = member.name[len(top) :]
            archive.extractall(source, members=members, filter="data")
    started = time.perf_counter()
    subprocess.run(["cmake", "-S", str(source), "-B", str(root / "build"), *CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(jobs)], check=True)
    return binary, time.perf_counter() - started


def _sdist(cache: Path, release: str) -> Path:
    name = f"llama_cpp_python-{release}.tar.gz"
    for folder in (TEST_SDIST_CACHE / f"llama-cpp-python-{release}", cache):
        if (folder / name).is_file():
            return folder / name
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, f"llama-cpp-python=={release}", "-d", str(cache)], check=True)
    return cache / name


class LlamaServer:
    """A llama-server process serving one GGUF file as `alias` on a free loopback port."""

    def __init__(self, binary: Path, gguf: Path, *, alias: str, slots: int, threads: int, log: Path) -> None:
        self.alias, self.log = alias, log
        self.port = _free_port()
        command = [
            str(binary), "-m", str(gguf), "--alias", alias, "--host", "127.0.0.1", "--port", str(self.port),
            "-c", str(SLOT_CTX * slots), "-np", str(slots), "--cont-batching", "-t", str(threads),
            "-tb", str(threads), "--swa-full", "--no-webui",
        ]  # fmt: skip  # --swa-full: Gemma 3's sliding-window layers keep the whole prefix, so it can be reused
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server for {self.alias} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"llama-server for {self.alias} did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, urls: dict[str, str]) -> Path:
    """models.yaml with the demo pair served at `urls`: the same prompts (Gemma's `prompt`, SmolLM2's GGUF template
    and system message), a top-k probe (a remote small model measures no other)."""
    config = load_config(PACKAGED_CONFIG)
    demo = config.pairs["demo"]
    models = {}
    for role in ("small", "large"):
        spec = config.model(getattr(demo, role))
        body = {"url": urls[role], "model": spec.name, "n_ctx": SLOT_CTX}
        if spec.system:
            body["system"] = spec.system
        if spec.prompt is not None:
            body["prompt"] = spec.prompt
        else:
            template = folder / f"{spec.name}.jinja"
            template.write_text(read_gguf_header(resolve_model_path(spec))["tokenizer.chat_template"], encoding="utf-8")
            body["chat_template"] = str(template)
        models[f"{spec.name}-served"] = body
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(demo).items() if k != "name"}
    pair = settings | {"small": f"{demo.small}-served", "large": f"{demo.large}-served", **PAIR_OVERRIDES}
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "pairs": {"served": pair}}), encoding="utf-8")
    return path


def bench(config: Path, data: Path, out: Path, *, limit: int, parallel: int) -> dict:
    """One `glimp bench` run: its summary, records (by id) and this run's figures."""
    command = [sys.executable, "-m", "glimp_cli", "bench", str(data), "--config", str(config), "--pair", "served"]
    command += ["--modes", "glimp", "--limit", str(limit), "--temperature", "0", "--parallel", str(parallel)]
    command += ["--out", str(out), "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"glimp bench --parallel {parallel} failed: {result.stderr[-3000:]}")
    summary = json.loads(result.stdout)
    records = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    latencies = sorted(r["latency_s"] for r in records.values())
    condition = summary["conditions"][0]
    return {
        "parallel": parallel,
        "results": len(records),
        "wall_s": summary["throughput"]["wall_s"],
        "problems_per_min": summary["throughput"]["problems_per_min"],
        "latency_median_s": statistics.median(latencies),
        "latency_q1_s": latencies[len(latencies) // 4],
        "latency_q3_s": latencies[(3 * len(latencies)) // 4],
        "latency_max_s": latencies[-1],
        "cached_token_share": condition["cached_token_share"],
        "accuracy": condition["accuracy"],
        "errors": condition["errors"],
        "records": records,
    }


def differences(run: dict, baseline: dict) -> dict:
    """Records whose text differs from the baseline's (answer, steps, routing, tokens), and where they first part:
    the first step whose probe entropy moved, and the largest entropy change before any routing or text differs."""
    differ, first_steps, drift = [], [], 0.0
    for key, record in run["records"].items():
        base = baseline["records"][key]
        fields = ("answer", "steps", "large_steps", "tokens", "finish_reason")
        same_entropies = record["entropies"] == base["entropies"]
        if all(record[f] == base[f] for f in fields) and same_entropies:
            continue
        differ.append(key)
        pairs = list(zip(record["entropies"], base["entropies"], strict=False))
        moved = [i for i, (a, b) in enumerate(pairs) if a != b]
        if moved:
            first_steps.append(moved[0] + 1)
            a, b = pairs[moved[0]]
            if a is not None and b is not None:
                drift = max(drift, abs(a - b))
    return {"differ": len(differ), "ids": differ, "first_step": first_steps, "first_entropy_change": drift}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--parallel", default="1,2,4", help="comma-separated problems in flight")
    parser.add_argument("--slots", type=int, default=4, help="llama-server --parallel (slots of SLOT_CTX tokens)")
    parser.add_argument("--threads", type=int, default=1, help="llama-server -t / -tb, each server (2 servers)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where llama-server is built")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary, build_s = llama_server_binary(args.cache)
    if args.build_only:
        print(json.dumps({"binary": str(binary), "build_s": build_s}))
        return
    config = load_config(PACKAGED_CONFIG)
    demo = config.pairs["demo"]
    levels = [int(n) for n in args.parallel.split(",")]
    with tempfile.TemporaryDirectory(prefix="glimp-llama-server-") as tmp:
        folder = Path(tmp)
        gguf = {role: resolve_model_path(config.model(getattr(demo, role))) for role in ("small", "large")}

        def run(n: int, name: str) -> dict:
            """One bench run on fresh servers: every run starts from empty prefix caches."""
            servers = {
                role: LlamaServer(
                    binary, gguf[role], alias=getattr(demo, role), slots=args.slots, threads=args.threads,
                    log=folder / f"{name}-{role}.log",
                )
                for role in ("small", "large")
            }  # fmt: skip
            try:
                for server in servers.values():
                    server.wait_ready()
                models_yaml = write_config(folder, {role: s.url for role, s in servers.items()})
                return bench(models_yaml, args.data, folder / name, limit=args.limit, parallel=n)
            finally:
                for server in servers.values():
                    server.stop()

        runs = [run(n, f"n{n}") for n in levels]
        again = run(levels[0], "again")  # the control: what differs between two runs one at a time is not batching
    base = runs[0]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "llama_cpp_python": version("llama-cpp-python"),
        "build_s": build_s,
        "slots": args.slots,
        "threads": args.threads,
        "runs": [
            {
                **{k: v for k, v in run.items() if k != "records"},
                "speedup": run["problems_per_min"] / base["problems_per_min"],
                **differences(run, base),
            }
            for run in [*runs, again]
        ],
    }
    report["runs"][-1]["parallel"] = f"{levels[0]} (again)"
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['machine']}; llama-server {args.slots} slots, {args.threads} threads each; build {build_s} s")
    print("| N | problems/min | speed-up | latency median s (IQR, max) | cached share | differ from N=1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in report["runs"]:
        share = "-" if r["cached_token_share"] is None else f"{r['cached_token_share']:.1%}"
        print(
            f"| {r['parallel']} | {r['problems_per_min']:.2f} | {r['speedup']:.2f}x | {r['latency_median_s']:.2f} "
            f"({r['latency_q1_s']:.2f}-{r['latency_q3_s']:.2f}, {r['latency_max_s']:.2f}) | {share} "
            f"| {r['differ']} of {r['results']} (first at steps {r['first_step']}) |"
        )


if __name__ == "__main__":
    main()
