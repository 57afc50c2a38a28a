"""Remote models against the recorded response shapes of vLLM, SGLang and llama-server (they cannot run here):
the request bodies glimp sends, and the parsing of log-probs, usage, stop reasons and streams. The session
tests go through the real openai client and HTTP, against a loopback server replaying the recorded bodies."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from cli_helpers import one_error_line, run_main
from glimp_cli.cli import main
from glimp_cli.config import ModelSpec, load_config
from glimp_cli.errors import ConfigError
from glimp_cli.remote import (
    RemoteError,
    context_length,
    engine_of,
    finish_of,
    open_remote_session,
    parse_chunk,
    parse_usage,
    probe_body,
    probe_entropy,
    render_chat_template,
    step_body,
)
from glimp_cli.session import Sampling
from tests.remote_servers import Reply, free_port, recorded, replay_server

PROMPT = "Q: {problem}\nA:"
GREEDY = Sampling(temperature=0.0, top_p=1.0, seed=7)


def sse_chunks(name: str) -> list[dict]:
    events = [line.removeprefix("data: ") for line in recorded(name).splitlines() if line.startswith("data: ")]
    return [json.loads(event) for event in events if event != "[DONE]"]


def plain_topk_entropy(logprobs: list[float]) -> float:
    p = np.exp(np.asarray(logprobs) - np.max(logprobs))
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


RAW_TOP4 = [-0.3566749, -1.6094379, -2.3025851, -3.2188758]


# -- parsing -------------------------------------------------------------------------------------------------------


def test_probe_entropy_is_the_renormalised_top_k_entropy_of_each_engines_probe():
    expected = plain_topk_entropy(RAW_TOP4)
    vllm = parse_chunk(json.loads(recorded("vllm_probe.json")))
    llama_server = parse_chunk(json.loads(recorded("llama_server_probe.json")))
    assert vllm.top_logprobs == llama_server.top_logprobs == tuple(RAW_TOP4)
    assert probe_entropy(vllm.top_logprobs, top_k=20, temperature=0.6, tempered=False) == pytest.approx(expected, 1e-12)


def test_sglang_log_probs_after_temperature_are_scaled_back_to_the_raw_entropy():
    sglang = parse_chunk(json.loads(recorded("sglang_probe.json")))
    tempered = probe_entropy(sglang.top_logprobs, top_k=20, temperature=0.6, tempered=True)
    assert tempered == pytest.approx(plain_topk_entropy(RAW_TOP4), abs=1e-6)
    untouched = probe_entropy(sglang.top_logprobs, top_k=20, temperature=0.6, tempered=False)
    assert untouched < tempered - 0.1  # read as raw, the sharpened distribution would look easier


def test_the_sampled_token_added_beyond_the_top_k_is_left_out():
    # vLLM and llama_cpp.server add the sampled token to the top-k dict: k + 1 entries
    assert probe_entropy([-0.1, -2.5, -9.0], top_k=2, temperature=1.0, tempered=False) == pytest.approx(
        plain_topk_entropy([-0.1, -2.5])
    )


def test_finish_tells_a_stop_string_from_the_end_of_generation_on_each_engine():
    def final(name):
        return next(c["choices"][0] for c in sse_chunks(name) if c["choices"] and c["choices"][0]["finish_reason"])

    assert finish_of(final("vllm_step_stop.txt")) == ("stop", "\n\n")
    assert finish_of(final("vllm_step_eos.txt")) == ("eos", None)
    assert finish_of(final("sglang_step_stop.txt")) == ("stop", "\n\n")
    assert finish_of(final("sglang_step_eos.txt")) == ("eos", None)  # matched_stop: the EOS token id
    assert finish_of(final("llama_server_step_eos.txt")) == ("eos", None)  # sent no stop strings
    assert finish_of({"finish_reason": "length", "stop_reason": None}) == ("length", None)


def test_usage_carries_the_cached_prompt_tokens_of_each_engine():
    assert parse_usage(json.loads(recorded("vllm_probe.json"))).cached_tokens == 80
    assert parse_usage(json.loads(recorded("sglang_probe.json"))).cached_tokens == 64
    assert parse_usage(json.loads(recorded("llama_server_probe.json"))).cached_tokens == 95
    timings_only = {"usage": {"prompt_tokens": 40, "completion_tokens": 3}, "timings": {"cache_n": 38}}
    assert parse_usage(timings_only).cached_tokens == 38
    assert parse_usage(sse_chunks("vllm_step_eos.txt")[-1]).cached_tokens is None  # prompt_tokens_details: null


def test_the_usage_chunk_that_ends_a_stream_is_read_without_a_choice():
    chunk = parse_chunk(sse_chunks("vllm_step_stop.txt")[-1])
    assert (chunk.text, chunk.finish, chunk.usage.completion_tokens, chunk.usage.cached_tokens) == ("", None, 9, 96)


def test_an_error_inside_a_stream_is_malformed():
    with pytest.raises(ValueError, match="preempted"):
        parse_chunk(sse_chunks("sglang_stream_error.txt")[-1])


def test_the_engine_and_context_come_from_the_models_listing():
    vllm = json.loads(recorded("vllm_models.json"))
    llama_server = json.loads(recorded("llama_server_models.json"))
    assert engine_of(vllm, "Qwen/Qwen3-4B") == "vllm"
    assert engine_of(llama_server, "qwen3-4b") == "llama-server"
    assert engine_of({"data": [{"id": "m", "owned_by": "me"}]}, "m") == "llama_cpp.server"
    assert engine_of({"data": [{"id": "m", "owned_by": "someone"}]}, "m") == "openai-compatible"
    assert context_length(vllm, "Qwen/Qwen3-4B") == 32768
    assert context_length(llama_server, "qwen3-4b") is None


# -- request bodies ---------------------------------------------------------------------------------------------------


def test_probe_body_asks_one_token_with_the_top_k_log_probs():
    body = probe_body("P", model="m", sampling=Sampling(temperature=0.6, top_p=0.95, seed=3), top_k=20, engine="vllm")
    assert body == {
        "model": "m",
        "prompt": "P",
        "max_tokens": 1,
        "logprobs": 20,
        "temperature": 0.6,
        "top_p": 0.95,
        "seed": 3,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
    }


def test_stop_strings_go_only_to_engines_that_say_which_one_matched():
    for engine in ("vllm", "sglang"):
        body = step_body("P", model="m", sampling=GREEDY, stops=["\n\n", "</think>"], max_tokens=64, engine=engine)
        assert body["stop"] == ["\n\n", "</think>"]
        assert (body["stream"], body["stream_options"], body["max_tokens"]) == (True, {"include_usage": True}, 64)
    for engine in ("llama-server", "llama_cpp.server", "openai-compatible"):
        body = step_body("P", model="m", sampling=GREEDY, stops=["\n\n"], max_tokens=64, engine=engine)
        assert "stop" not in body


def test_llama_cpp_servers_get_the_neutral_values_of_their_default_samplers():
    body = step_body("P", model="m", sampling=GREEDY, stops=[], max_tokens=8, engine="llama_cpp.server")
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)
    plain = step_body("P", model="m", sampling=GREEDY, stops=[], max_tokens=8, engine="openai-compatible")
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty"} & set(plain)


def test_chat_template_renders_with_thinking_on_and_no_bos():
    template = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% if enable_thinking %}<think>\n{% endif %}{% endif %}"
    )
    assert render_chat_template(template, messages=[{"role": "user", "content": "2+2?"}]) == (
        "<user>2+2?<assistant><think>\n"
    )


# -- models.yaml -----------------------------------------------------------------------------------------------------


def write_config(tmp_path, model_body: str) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  big:\n" + model_body + "  small:\n    path: s.gguf\n"
        "pairs:\n  p:\n    small: small\n    large: big\n",
        encoding="utf-8",
    )
    return str(path)


def test_a_url_model_loads_with_its_server_keys(tmp_path):
    config = load_config(
        write_config(
            tmp_path,
            "    url: http://gpu-box:8000/v1\n    model: Qwen/Qwen3-32B\n    api_key_env: VLLM_KEY\n"
            "    chat_template: qwen3.jinja\n    timeout_s: 30\n",
        )
    )
    spec = config.model("big")
    assert (spec.remote, spec.model, spec.api_key_env, spec.timeout_s) == (True, "Qwen/Qwen3-32B", "VLLM_KEY", 30.0)
    assert spec.source == "http://gpu-box:8000/v1 (Qwen/Qwen3-32B)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "    url: http://h/v1\n    path: x.gguf\n    model: m\n",
            "needs exactly one of path, package, hf, url, parts (has path, url)",
        ),
        ("    url: http://h/v1\n    prompt: 'Q: {problem}'\n", "has a url: add 'model'"),
        ("    url: http://h/v1\n    model: m\n", "set 'prompt' (a template with {problem}) or 'chat_template'"),
        ("    url: h:8000\n    model: m\n    prompt: '{problem}'\n", "url must start with http:// or https://"),
        ("    path: x.gguf\n    model: m\n", "'model' goes with 'url' only"),
        (
            "    url: http://h/v1\n    model: m\n    prompt: '{problem}'\n    timeout_s: 0\n",
            "timeout_s must be a finite number, 0.001 or more",
        ),
    ],
)
def test_url_model_mistakes_name_the_line_and_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match="models.yaml:3: |models.yaml:[0-9]+: ") as caught:
        load_config(write_config(tmp_path, body))
    assert message in str(caught.value)


def test_an_api_key_in_models_yaml_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "    url: http://h/v1\n    model: m\n    api_key: sk-SECRET123\n"))
    assert "never put an API key in models.yaml: set api_key_env" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config(
            write_config(
                tmp_path, "    url: http://h/v1\n    model: m\n    prompt: '{problem}'\n    api_key_env: sk-SECRET123\n"
            )
        )
    assert "api_key_env must name an environment variable" in str(caught.value)
    assert "SECRET" not in str(caught.value)


# -- sessions over HTTP, against replayed responses ----------------------------------------------------------


def remote_spec(url: str, **keys) -> ModelSpec:
    return ModelSpec(name="big", url=url, model="Qwen/Qwen3-4B", prompt=PROMPT, think_prefix="", **keys)


def test_a_vllm_step_continues_the_probe_token_and_gets_its_stop_string_back():
    with replay_server(recorded("vllm_models.json")) as server:
        server.replies = [Reply(recorded("vllm_probe.json")), Reply(recorded("vllm_step_stop.txt"))]
        session = open_remote_session(remote_spec(server.url))
        session.start("What is 3 * 4?", sampling=GREEDY)
        first = session.probe(top_k=20)
        pieces = []
        steps = session.generate_step(first_token=first.token, stops=["\n\n", "</think>"], max_tokens=64)
        while True:
            try:
                pieces.append(next(steps))
            except StopIteration as done:
                out = done.value
                break
    prompt = "Q: What is 3 * 4?\nA:"
    assert (session.engine, session.context_room()) == ("vllm", 32768 - 106)
    assert first.text == " First" and first.entropies["topk"] == pytest.approx(plain_topk_entropy(RAW_TOP4), 1e-9)
    assert "".join(pieces) == out.text == session.text == " First, 3 * 4 = 12.\n\n"
    assert (out.finish, out.stop, out.tokens) == ("stop", "\n\n", 10)  # the server's 9 + the probe's token
    probe_request, step_request = server.requests
    assert (probe_request["prompt"], probe_request["max_tokens"], probe_request["logprobs"]) == (prompt, 1, 20)
    assert (step_request["prompt"], step_request["stop"], step_request["max_tokens"]) == (
        prompt + " First",
        ["\n\n", "</think>"],
        63,
    )
    assert (session.counters.cached_tokens, session.counters.prefill_tokens) == (80 + 96, 16 + 1)


def test_an_sglang_end_of_generation_ends_the_step_without_a_stop_string():
    with replay_server(recorded("vllm_models.json").replace('"vllm"', '"sglang"')) as server:
        server.replies = [Reply(recorded("sglang_step_eos.txt"))]
        session = open_remote_session(remote_spec(server.url))
        session.start("Done?", sampling=GREEDY)
        out = drain(session.generate_step(first_token=None, stops=["\n\n"], max_tokens=64))
    assert (session.engine, out.text, out.finish, out.stop, out.tokens) == ("sglang", " Done.", "eos", None, 1)


def test_an_error_inside_an_sglang_stream_is_one_line_naming_the_server_and_model():
    with replay_server(recorded("vllm_models.json").replace('"vllm"', '"sglang"')) as server:
        server.replies = [Reply(recorded("sglang_stream_error.txt"))]
        session = open_remote_session(remote_spec(server.url))
        session.start("x", sampling=GREEDY)
        with pytest.raises(RemoteError) as caught:
            drain(session.generate_step(first_token=None, stops=["\n\n"], max_tokens=64))
    assert str(caught.value) == (
        f"model 'big' ('Qwen/Qwen3-4B' at {server.url}): the server reported an error: "
        "Generation aborted: the request was preempted."
    )
    assert session.text == ""  # the step was rolled back


def test_a_stream_cut_off_before_its_finish_is_a_remote_error():
    cut = "\n\n".join(recorded("vllm_step_stop.txt").split("\n\n")[:2]) + "\n\n"
    with replay_server(recorded("vllm_models.json")) as server:
        server.replies = [Reply(cut)]
        session = open_remote_session(remote_spec(server.url))
        session.start("x", sampling=GREEDY)
        with pytest.raises(RemoteError, match="the stream from server .* ended before the completion did"):
            drain(session.generate_step(first_token=None, stops=["\n\n"], max_tokens=64))


def test_a_llama_cpp_server_stream_ended_by_another_request_names_the_server_option():
    """llama_cpp.server (interrupt_requests, on by default) sends [DONE] mid-completion when another request waits."""
    interrupted = "\n\n".join(recorded("vllm_step_stop.txt").split("\n\n")[:2]) + "\n\ndata: [DONE]\n\n"
    with replay_server(recorded("vllm_models.json").replace('"vllm"', '"me"')) as server:
        server.replies = [Reply(interrupted)]
        session = open_remote_session(remote_spec(server.url))
        session.start("x", sampling=GREEDY)
        with pytest.raises(RemoteError) as caught:
            drain(session.generate_step(first_token=None, stops=["\n\n"], max_tokens=64))
    assert str(caught.value) == (
        f"model 'big': the stream from server {server.url} ended before the completion did "
        "(llama_cpp.server ends a stream when another request comes in: start it with "
        "--interrupt_requests False to run problems in parallel; or the server stopped or restarted?)"
    )


def test_a_server_slower_than_the_timeout_fails_after_bounded_retries():
    with replay_server(recorded("vllm_models.json")) as server:
        session = open_remote_session(remote_spec(server.url, timeout_s=0.5))
        server.replies = [Reply(recorded("vllm_probe.json"), delay_s=2.0) for _ in range(3)]
        session.start("x", sampling=GREEDY)
        started = time.monotonic()
        with pytest.raises(RemoteError) as caught:
            session.probe(top_k=20)
        elapsed = time.monotonic() - started
    assert str(caught.value) == (
        f"model 'big' ('Qwen/Qwen3-4B' at {server.url}): no answer within 0.5 s (timeout_s in models.yaml), 3 tries"
    )
    assert len(server.requests) == 3 and elapsed < 8


def test_a_stream_that_stalls_past_the_timeout_is_a_remote_error():
    with replay_server(recorded("vllm_models.json")) as server:
        session = open_remote_session(remote_spec(server.url, timeout_s=0.5))
        server.replies = [Reply(recorded("vllm_step_stop.txt"), chunk_delay_s=1.0)]
        session.start("x", sampling=GREEDY)
        with pytest.raises(RemoteError) as caught:
            drain(session.generate_step(first_token=None, stops=["\n\n"], max_tokens=64))
    assert str(caught.value) == (
        f"model 'big' ('Qwen/Qwen3-4B' at {server.url}): the stream stalled for more than 0.5 s "
        "(timeout_s in models.yaml)"
    )
    assert session.text == ""


def test_a_model_the_server_does_not_serve_is_named_with_what_it_serves():
    with replay_server(recorded("vllm_models.json")) as server:
        with pytest.raises(RemoteError) as caught:
            open_remote_session(ModelSpec(name="big", url=server.url, model="Qwen/Qwen3-8B", prompt=PROMPT))
    assert str(caught.value) == (
        f"model 'big': server {server.url} does not serve 'Qwen/Qwen3-8B'; it serves: Qwen/Qwen3-4B "
        "(set 'model' in models.yaml)"
    )


def test_a_server_that_is_not_running_fails_quickly():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        open_remote_session(remote_spec(url))
    assert str(caught.value) == (
        f"model 'big' ('Qwen/Qwen3-4B' at {url}): cannot connect (Connection refused), 3 tries"
    )
    assert time.monotonic() - started < 6


def test_an_unset_api_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("GLIMP_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="api_key_env names GLIMP_TEST_KEY, which is not set"):
        open_remote_session(remote_spec("http://127.0.0.1:9/v1", api_key_env="GLIMP_TEST_KEY"))


def drain(steps):
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def test_a_single_log_prob_is_a_certain_token():
    assert probe_entropy([-0.01], top_k=20, temperature=0.6, tempered=False) == 0.0


# -- the command line, with servers that fail (no model is loaded here) -----------------------------------------------


def remote_pair_config(tmp_path, small_url: str, large_url: str, *, entropy: str = "topk", timeout_s: float = 5) -> str:
    path = tmp_path / "models.yaml"
    keys = f"    model: Qwen/Qwen3-4B\n    prompt: 'Q: {{problem}}'\n    timeout_s: {timeout_s}\n"
    path.write_text(
        f"models:\n  s:\n    url: {small_url}\n{keys}  l:\n    url: {large_url}\n{keys}"
        f"pairs:\n  p:\n    small: s\n    large: l\n    entropy: {entropy}\n",
        encoding="utf-8",
    )
    return str(path)


def test_ask_against_a_server_that_is_not_started_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, err = run_main(monkeypatch, capsys, "ask", "2 + 3?", "--config", remote_pair_config(tmp_path, url, url))
    assert code == 1
    assert one_error_line(err) == f"model 's' ('Qwen/Qwen3-4B' at {url}): cannot connect (Connection refused), 3 tries"


def test_ask_against_a_server_slower_than_its_timeout_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    with replay_server(recorded("vllm_models.json")) as server:
        server.replies = [Reply(recorded("vllm_probe.json"), delay_s=1.5) for _ in range(3)]
        config = remote_pair_config(tmp_path, server.url, server.url, timeout_s=0.5)
        code, err = run_main(monkeypatch, capsys, "ask", "2 + 3?", "--config", config)
    assert code == 1
    assert one_error_line(err) == (
        f"model 's' ('Qwen/Qwen3-4B' at {server.url}): no answer within 0.5 s (timeout_s in models.yaml), 3 tries"
    )


def test_entropy_full_on_a_remote_small_model_names_it_as_remote(tmp_path, monkeypatch, capsys):
    url = "http://127.0.0.1:9/v1"
    code, err = run_main(
        monkeypatch, capsys, "ask", "2 + 3?", "--config", remote_pair_config(tmp_path, url, url, entropy="full")
    )
    assert code == 2
    assert one_error_line(err) == (
        f"entropy full needs the whole vocabulary's logits, but the small model 's' is remote ({url}), where glimp "
        "reads the top-20 log-probs only: use --entropy topk, or entropy: topk for pair 'p'"
    )


def test_pull_of_a_url_model_says_there_is_nothing_to_pull(tmp_path, monkeypatch, capsys):
    url = "http://127.0.0.1:9/v1"
    monkeypatch.setattr(sys, "argv", ["glimp", "pull", "l", "--config", remote_pair_config(tmp_path, url, url)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"model 'l' is served at {url}: nothing to pull\n"


def test_glimp_models_shows_an_unreachable_server_as_a_row(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setattr(sys, "argv", ["glimp", "models", "--config", remote_pair_config(tmp_path, url, url)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert out.count("unreachable: Connection refused") == 2
