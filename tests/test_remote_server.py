"""The demo pair behind real llama_cpp.server processes on loopback (one per model): `glimp ask` and `glimp bench`
with remote/remote and local/remote pairs, compared with the in-process pair, and the server failing under them.
Loads llama.cpp models: run under the shared CPU lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_helpers import one_error_line, run_main
from conftest import GSM8K, NATALIA
from glimp_cli.config import PACKAGED_CONFIG, load_config
from glimp_cli.gguf_header import read_gguf_header
from glimp_cli.sources import resolve_model_path
from tests.remote_servers import LlamaServer

pytest.importorskip("llama_cpp.server.app", reason="llama_cpp.server needs the test extra (fastapi, uvicorn, ...)")

SMALL, LARGE = "smollm2-135m", "gemma3-270m"
PAIR_KEYS = {"threshold": 2.0, "entropy": "topk", "answer_prefix": "\n\nThe answer is", "answer_stops": ["\n"]}
PAIR_KEYS |= {"answer_max_tokens": 16, "step_max_tokens": 64, "thinking_budget": 96}


@pytest.fixture(scope="module")
def demo_files():
    config = load_config(PACKAGED_CONFIG)
    return config, {name: resolve_model_path(config.model(name)) for name in (SMALL, LARGE)}


@pytest.fixture(scope="module")
def servers(demo_files, tmp_path_factory):
    """llama_cpp.server for each demo model, started once for the module and stopped after it."""
    _, files = demo_files
    log_dir = tmp_path_factory.mktemp("server-logs")
    started = {name: LlamaServer(alias=name, gguf=path) for name, path in files.items()}
    try:
        for server in started.values():
            server.start(log_dir=log_dir)
        yield started
    finally:
        for server in started.values():
            server.stop()


def remote_model(spec, *, url: str, template_dir: Path, gguf: Path, **keys) -> dict:
    """A url model that renders its prompt as the in-process one does: the same `prompt`, or its GGUF's template."""
    body = {"url": url, "model": spec.name, **keys}
    if spec.system:
        body["system"] = spec.system
    if spec.prompt is not None:
        body["prompt"] = spec.prompt
    else:
        template = template_dir / f"{spec.name}.jinja"
        template.write_text(read_gguf_header(gguf)["tokenizer.chat_template"], encoding="utf-8")
        body["chat_template"] = str(template)
    return body


def write_config(tmp_path, demo_files, urls: dict[str, str], **remote_keys) -> str:
    """Local and remote copies of the demo models; pairs local, remote, mixed (local small, remote large)."""
    config, files = demo_files
    models = {}
    for name in (SMALL, LARGE):
        spec = config.model(name)
        local = {"package": spec.package, "n_ctx": 4096}
        local |= {"file": spec.file} if spec.file else {"assemble": True}
        local |= {"system": spec.system} if spec.system else {"prompt": spec.prompt}
        models[name] = local
        models[f"{name}-remote"] = remote_model(
            spec, url=urls[name], template_dir=tmp_path, gguf=files[name], **remote_keys
        )
    pairs = {
        "local": {"small": SMALL, "large": LARGE, **PAIR_KEYS},
        "remote": {"small": f"{SMALL}-remote", "large": f"{LARGE}-remote", **PAIR_KEYS},
        "mixed": {"small": SMALL, "large": f"{LARGE}-remote", **PAIR_KEYS},
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "pairs": pairs}), encoding="utf-8")
    return str(path)


def glimp_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run `glimp *argv` in this process: (exit code, stdout, stderr)."""
    from glimp_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["glimp", *argv])
    monkeypatch.delenv("GLIMP_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def ask(monkeypatch, capsys, config: str, pair: str, problem: str) -> dict:
    """`glimp ask --json --temperature 0`'s summary."""
    code, out, err = glimp_main(
        monkeypatch, capsys, "ask", problem, "--config", config, "--pair", pair, "--temperature", "0", "--json"
    )
    assert code == 0, err
    return json.loads(out.splitlines()[-1])


def routing(summary: dict) -> list[tuple[str, str, float]]:
    return [(step["model"], step["text"], round(step["entropy"], 6)) for step in summary["steps"]]


def urls_of(servers) -> dict[str, str]:
    return {name: server.url for name, server in servers.items()}


def test_a_remote_pair_writes_what_the_in_process_pair_writes_at_temperature_zero(
    servers, demo_files, tmp_path, monkeypatch, capsys
):
    config = write_config(tmp_path, demo_files, urls_of(servers))
    problem = "What is 15 + 27?"
    local = ask(monkeypatch, capsys, config, "local", problem)
    remote = ask(monkeypatch, capsys, config, "remote", problem)
    mixed = ask(monkeypatch, capsys, config, "mixed", problem)
    # the same llama.cpp build and the same tokens: the same logits, entropies, decisions and text
    assert routing(remote) == routing(mixed) == routing(local)
    assert remote["answer"] == mixed["answer"] == local["answer"] == " \\boxed{42}."
    assert remote["tokens"] == local["tokens"]
    assert remote["steps"][0]["entropy_full"] is None  # a remote small model measures top-k only


def test_a_remote_run_agrees_until_a_model_sampled_other_tokens_than_its_text_reads_as(
    servers, demo_files, tmp_path, monkeypatch, capsys
):
    """The in-process session keeps the tokens each model sampled; a server re-tokenizes the text it is sent. On
    this problem the small model's second step is 38 sampled tokens whose text tokenizes to 37 (a non-canonical
    split): both runs agree up to there, and the third probe reads different contexts."""
    config = write_config(tmp_path, demo_files, urls_of(servers))
    local = ask(monkeypatch, capsys, config, "local", NATALIA)
    remote = ask(monkeypatch, capsys, config, "remote", NATALIA)
    assert routing(remote)[:2] == routing(local)[:2]
    assert [s["model"] for s in local["steps"][:2]] == ["large", "small"]
    assert local["steps"][1]["tokens"] == remote["steps"][1]["tokens"] == 38
    assert routing(remote)[2] != routing(local)[2]


def test_bench_on_a_mixed_pair_records_every_problem_and_mode(servers, demo_files, tmp_path):
    config = write_config(tmp_path, demo_files, urls_of(servers))
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"problem": p, "answer": a}) + "\n"
            for p, a in [("What is 15 + 27?", "42"), ("What is 2 + 3?", "5")]
        )
    )
    out = tmp_path / "out"
    result = glimp(
        "bench",
        str(data),
        "--config",
        config,
        "--pair",
        "mixed",
        "--modes",
        "glimp,large",
        "--out",
        str(out),
        "--temperature",
        "0",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["mode"]) for r in records) == [(1, "glimp"), (1, "large"), (2, "glimp"), (2, "large")]
    assert all(r["tokens"]["large"] > 0 for r in records if r["mode"] == "large")


def test_bench_with_two_problems_in_flight_writes_what_one_at_a_time_writes(demo_files, tmp_path):
    """llama_cpp.server computes one request at a time, but it holds one cache: problems in flight evict each other's
    prefix, so it re-evaluates more of each prompt at once, and its logits (logits_all, which its log-probs need)
    depend on how many tokens a batch holds (up to ~1 logit on these models). With --n_batch 1 every token is its own
    batch: at temperature 0 two problems in flight then give exactly the records of one at a time."""
    if not GSM8K.is_file():
        pytest.skip(f"benchmark data not found at {GSM8K}")
    _, files = demo_files
    servers = {name: LlamaServer(alias=name, gguf=path, options=("--n_batch", "1")) for name, path in files.items()}
    try:
        for server in servers.values():
            server.start(log_dir=tmp_path)
        config = write_config(tmp_path, demo_files, urls_of(servers))
        common = ("--config", config, "--pair", "remote", "--modes", "glimp,large", "--limit", "3")
        runs = {}
        for parallel in (1, 2):
            out = tmp_path / f"parallel-{parallel}"
            result = glimp(
                "bench", str(GSM8K), *common, "--temperature", "0", "--parallel", str(parallel), "--out", str(out),
                "--json",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
            runs[parallel] = ({(r["id"], r["mode"]): r for r in records}, json.loads(result.stdout), len(records))
    finally:
        for server in servers.values():
            server.stop()
    (one, _, _), (two, summary, lines) = runs[1], runs[2]
    assert lines == len(two) == 6 and sorted(two) == [(i, mode) for i in range(3) for mode in ("glimp", "large")]
    assert {key: without_latency(r) for key, r in two.items()} == {key: without_latency(r) for key, r in one.items()}
    assert all(r["finish_reason"] != "error" and r["tokens"]["large"] > 0 for r in two.values())
    # llama_cpp.server does not report its prefix cache: no count, no share (not 0)
    assert {count for r in two.values() for count in r["cached_tokens"].values()} == {None}
    assert [(c["label"], c["cached_token_share"]) for c in summary["conditions"]] == [
        ("glimp@2", None),
        ("large", None),
    ]
    assert summary["throughput"]["parallel"] == 2


def without_latency(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "latency_s"}


def test_a_server_killed_mid_bench_keeps_the_finished_results_and_resume_finishes(demo_files, tmp_path):
    _, files = demo_files
    server = LlamaServer(alias=LARGE, gguf=files[LARGE])
    server.start(log_dir=tmp_path)
    try:
        config = write_config(tmp_path, demo_files, {SMALL: "http://127.0.0.1:9/v1", LARGE: server.url}, timeout_s=20)
        data = tmp_path / "data.jsonl"
        data.write_text(
            "".join(json.dumps({"problem": f"What is {n} + 3?", "answer": str(n + 3)}) + "\n" for n in range(4))
        )
        out = tmp_path / "out"
        args = (
            "bench",
            str(data),
            "--config",
            config,
            "--pair",
            "mixed",
            "--modes",
            "large",
            "--out",
            str(out),
            "--temperature",
            "0",
        )
        process = subprocess.Popen(
            glimp_command(*args), env=glimp_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        results = out / "results.jsonl"
        deadline = time.monotonic() + 240
        while not (results.is_file() and results.read_text().count("\n") >= 1):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.05)
        server.kill()
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1, stderr
        line = one_error_line(last_error(stderr))
        assert re.fullmatch(
            rf"model '{LARGE}-remote' \('{LARGE}' at {re.escape(server.url)}\): "
            r"(the stream broke off .*|cannot connect \(Connection refused\), 3 tries"
            r"|the stream from server .* ended before the completion did .*)",
            line,
        ), line
        finished = results.read_text().splitlines()
        assert 1 <= len(finished) < 4
        server.start(log_dir=tmp_path)  # the server restarted: --resume runs only what is left
        resumed = glimp(*args, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert sorted(r["id"] for r in records) == [1, 2, 3, 4]
        assert records[: len(finished)] == [json.loads(line) for line in finished]
    finally:
        server.stop()


def test_a_model_name_the_server_does_not_serve_is_one_line_and_exit_1(
    servers, demo_files, tmp_path, monkeypatch, capsys
):
    urls = urls_of(servers)
    config = write_config(tmp_path, demo_files, urls)
    text = Path(config).read_text().replace(f"model: {LARGE}\n", "model: gemma3-27b\n")
    Path(config).write_text(text)
    code, err = run_main(monkeypatch, capsys, "ask", "What is 2 + 3?", "--config", config, "--pair", "remote")
    assert code == 1
    assert one_error_line(err) == (
        f"model '{LARGE}-remote': server {urls[LARGE]} does not serve 'gemma3-27b'; it serves: {LARGE} "
        "(set 'model' in models.yaml)"
    )


def test_glimp_models_shows_each_servers_reachability_and_served_model(
    servers, demo_files, tmp_path, monkeypatch, capsys
):
    config = write_config(tmp_path, demo_files, {SMALL: servers[SMALL].url, LARGE: "http://127.0.0.1:9/v1"})
    code, out, err = glimp_main(monkeypatch, capsys, "models", "--config", config, "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["models"]}
    small, large = rows[f"{SMALL}-remote"], rows[f"{LARGE}-remote"]
    assert (small["reachable"], small["served"], small["engine"], small["status"]) == (
        True,
        [SMALL],
        "llama_cpp.server",
        "ok",
    )
    assert (large["reachable"], large["served"]) == (False, [])
    assert large["status"] == "unreachable: Connection refused"


def last_error(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if line.startswith("glimp: error: "))


def glimp_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GLIMP_DEBUG", None)
    return env


def glimp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "glimp_cli", *args]


def glimp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(glimp_command(*args), env=glimp_env(), text=True, capture_output=True, timeout=600)


def test_calibrate_on_a_remote_pair_picks_a_threshold_from_server_probes(servers, demo_files, tmp_path):
    config = write_config(tmp_path, demo_files, urls_of(servers))
    data = tmp_path / "dev.jsonl"
    problems = [(NATALIA, "72"), ("Tom has 3 boxes with 5 apples each. How many apples does he have?", "15")]
    data.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in problems))
    result = glimp(
        "calibrate", str(data), "--config", config, "--pair", "remote", "--target-rate", "0.5", "--thinking-budget",
        "256", "--out", str(tmp_path / "calibration"), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    probe = report["probe"]
    assert (report["entropy_mode"], probe["problems"], probe["failed"]) == ("topk", 2, 0)
    assert probe["modes"]["full"]["distribution"] is None  # a remote small model measures top-k only
    assert report["threshold"] == probe["modes"]["topk"]["threshold"]["threshold"]
