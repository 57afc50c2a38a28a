"""Qwen3 and R1-Distill pairs, proven on tiny models with the real tokenizers and chat templates (tests/tiny_models.py).

Token ids are the families' real ones (tokenizer_config.json of Qwen/Qwen3-0.6B and of
deepseek-ai/DeepSeek-R1-Distill-Qwen-32B, cited in tests/tiny_models.py).
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import sys

import jinja2.sandbox
import pytest

from glimp_cli.config import ModelSpec, PairSpec, router_settings
from glimp_cli.events import Answer, Step, Summary
from glimp_cli.generation import Proposal, generate
from glimp_cli.policy import make_policy
from glimp_cli.router import route
from glimp_cli.session import Sampling

PROBLEM = "What is 6 * 7?"
QWEN3_THINK, QWEN3_CLOSE, QWEN3_IM_END = 151667, 151668, 151645
R1_THINK, R1_CLOSE, R1_EOS, R1_BOS = 151648, 151649, 151643, 151646
THRESHOLD = 1.5  # nats: the tiny models' steps open at 0.4-1.1 after "\n\n" and 2.0-2.3 after ".\n\n"
SAMPLED = Sampling(temperature=0.6, top_p=0.95, seed=1)


def _open(path, name):
    from glimp_cli.backend import open_session

    return open_session(ModelSpec(name=name, path=str(path), n_ctx=2048, n_threads=1))


@pytest.fixture(scope="module")
def qwen3_small(tiny_models):
    return _open(tiny_models.qwen3_small, "qwen3-small")


@pytest.fixture(scope="module")
def qwen3_large(tiny_models):
    return _open(tiny_models.qwen3_large, "qwen3-large")


@pytest.fixture(scope="module")
def r1(tiny_models):
    return _open(tiny_models.r1, "r1")


def _render(template: str, *, bos: str, eos: str) -> str:
    """The chat template rendered independently of glimp (the Hugging Face way: sandboxed Jinja)."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(
        messages=[{"role": "user", "content": PROBLEM}],
        add_generation_prompt=True,
        enable_thinking=True,
        bos_token=bos,
        eos_token=eos,
    )


def test_qwen3_prompt_is_its_template_with_the_think_block_opened_once(tiny_models, qwen3_small):
    rendered = _render(tiny_models.qwen3_template, bos="<|endoftext|>", eos="<|im_end|>")
    assert rendered == f"<|im_start|>user\n{PROBLEM}<|im_end|>\n<|im_start|>assistant\n"  # opens no think block
    expected = rendered + "<think>\n"
    assert qwen3_small.render_prompt(PROBLEM) == expected
    tokens = qwen3_small.prompt_tokens(PROBLEM)
    assert tokens == qwen3_small._llm.tokenize(expected.encode(), add_bos=False, special=True)
    assert tokens.count(QWEN3_THINK) == 1 and tokens[-2:] == [QWEN3_THINK, 198]  # "<think>", "\n"
    assert tokens[0] == 151644  # <|im_start|>: Qwen3 adds no BOS


def test_r1_prompt_is_its_template_rendered_with_thinking_on(tiny_models, r1):
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    rendered = _render(tiny_models.r1_template, bos=bos, eos=eos)
    assert rendered == f"{bos}<｜User｜>{PROBLEM}<｜Assistant｜><think>\n"  # the template opened the block itself
    naive = rendered[: -len("<think>\n")] + "<think>\n</think>"  # without enable_thinking: thinking switched off
    assert (
        jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        .from_string(tiny_models.r1_template)
        .render(messages=[{"role": "user", "content": PROBLEM}], add_generation_prompt=True, bos_token=bos)
        == naive
    )
    assert r1.render_prompt(PROBLEM) == rendered
    tokens = r1.prompt_tokens(PROBLEM)
    assert tokens == r1._llm.tokenize(rendered.encode(), add_bos=False, special=True)
    assert tokens.count(R1_THINK) == 1 and tokens.count(R1_BOS) == 1 and tokens[0] == R1_BOS
    assert R1_CLOSE not in tokens


def _route(small, large, *, settings=None, mode="glimp"):
    settings = settings or router_settings(PairSpec("t", "s", "l", threshold=THRESHOLD), sampling=SAMPLED)
    return route(PROBLEM, small=small, large=large, settings=settings, policy=make_policy(mode))


@pytest.mark.parametrize("large_name", ["qwen3_large", "r1"])
def test_both_models_hold_the_same_transcript_text_at_every_step(request, qwen3_small, large_name):
    large = request.getfixturevalue(large_name)
    transcript, steps = "", []
    for event in _route(qwen3_small, large):
        if isinstance(event, Step):
            transcript += event.text
            steps.append(event)
            for session in (qwen3_small, large):
                session.catch_up(transcript)  # what the router does before the next use, done early
                assert session.held_text() == transcript
        summary = event
    assert isinstance(summary, Summary)
    assert {s.model for s in steps} == {"small", "large"}  # routed both ways
    assert summary.finish_reason == "end_marker" and transcript.endswith("</think>")
    assert not transcript.startswith("<think>")  # the prompts opened the block; nobody writes it again


def test_the_close_tag_written_as_a_token_by_one_family_is_the_others_close_token(qwen3_small, r1):
    summary = next(e for e in _route(qwen3_small, r1) if isinstance(e, Summary))
    thinking = "".join(s.text for s in summary.steps)
    assert summary.finish_reason == "end_marker" and thinking.count("</think>") == 1
    qwen3_small.catch_up(thinking)  # the large model holds it already, and its answer after it
    assert r1.text.startswith(thinking)
    for session, close in ((qwen3_small, QWEN3_CLOSE), (r1, R1_CLOSE)):
        held = session._tokens[session._prompt_len :]
        assert held.count(close) == 1  # one added token, in each family's own id


class _Pieces:
    """A token source that proposes given token texts one at a time."""

    def __init__(self, pieces):
        self.pieces = list(pieces)

    def propose(self, limit):
        return Proposal((self.pieces.pop(0),))

    def settle(self, kept, tail):
        pass

    def commit(self, out):
        pass

    def rollback(self):
        pass


def test_the_close_tag_ends_the_thinking_when_it_arrives_as_text(qwen3_small, r1):
    for session in (qwen3_small, r1):
        # "</think>" spelled with ordinary BPE tokens, as a model may sample it
        parts = (b"so 42", b"</", b"think", b">", b" more")
        tokens = [t for part in parts for t in session._llm.tokenize(part, add_bos=False, special=False)]
        assert all(t < 151643 for t in tokens)  # no added token among them
        pieces = [session._piece_bytes(t) for t in tokens]
        step = generate(_Pieces(pieces), stops=("\n\n", "</think>"), max_tokens=50)
        decoder = codecs.getincrementaldecoder("utf-8")()
        with pytest.raises(StopIteration) as done:
            while True:
                decoder.decode(next(step).encode())
        assert (done.value.value.text, done.value.value.stop) == ("so 42</think>", "</think>")


def _answer_layout(small, large, **overrides):
    settings = dataclasses.replace(
        router_settings(PairSpec("t", "s", "l", threshold=THRESHOLD), sampling=SAMPLED), **overrides
    )
    events = list(_route(small, large, settings=settings))
    summary, answer = events[-1], next(e for e in events if isinstance(e, Answer))
    thinking = "".join(s.text for s in summary.steps)
    return summary, answer, thinking


@pytest.mark.parametrize("large_name", ["qwen3_large", "r1"])
def test_the_answer_follows_the_close_tag_the_thinking_wrote_and_ends_at_the_end_of_turn(
    request, qwen3_small, large_name
):
    large = request.getfixturevalue(large_name)
    summary, answer, thinking = _answer_layout(qwen3_small, large)
    assert summary.finish_reason == "end_marker" and thinking.endswith("</think>")
    assert large.held_text() == thinking + answer.text  # nothing between: the model continues after </think>
    assert 0 < answer.tokens < 256  # ended by its end-of-turn token, not by answer_max_tokens
    assert "<|im_end|>" not in answer.text and "<｜end▁of▁sentence｜>" not in answer.text


@pytest.mark.parametrize("large_name", ["qwen3_large", "r1"])
def test_a_thinking_cut_by_the_budget_is_closed_for_the_answerer(request, qwen3_small, large_name):
    large = request.getfixturevalue(large_name)
    summary, answer, thinking = _answer_layout(qwen3_small, large, thinking_budget=20)
    assert summary.finish_reason == "budget" and "</think>" not in thinking
    assert large.held_text() == thinking + "\n</think>\n\n" + answer.text
    assert answer.tokens < 256


@pytest.mark.parametrize(("name", "eot"), [("qwen3_small", QWEN3_IM_END), ("r1", R1_EOS)])
def test_each_familys_end_of_turn_token_ends_generation(request, name, eot):
    session = request.getfixturevalue(name)
    assert session._llm.token_eos() == eot and session.is_eos(eot)
    session.start(PROBLEM, sampling=SAMPLED)
    session.catch_up("So 42.\n\n</think>\n\n")
    step = session.generate_step(first_token=None, stops=(), max_tokens=200)
    with pytest.raises(StopIteration) as done:
        while True:
            next(step)
    assert done.value.value.finish == "eos" and done.value.value.tokens < 200


# -- the commands, end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_config(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-config")
    model = "    path: {}\n    n_ctx: 2048\n    n_threads: 1\n"
    pair = "    small: {}\n    large: {}\n    threshold: 1.5\n    thinking_budget: 400\n"
    text = (
        "models:\n"
        + "".join(
            f"  {name}:\n" + model.format(path)
            for name, path in (
                ("qwen3-small", tiny_models.qwen3_small),
                ("qwen3-large", tiny_models.qwen3_large),
                ("r1", tiny_models.r1),
            )
        )
        + "pairs:\n"
        + "  qwen3:\n"
        + pair.format("qwen3-small", "qwen3-large")
        + "  mixed:\n"
        + pair.format("qwen3-small", "r1")
    )
    (folder / "models.yaml").write_text(text, encoding="utf-8")
    data = folder / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in (("What is 6 * 7?", "42"), ("2+2?", "4"))),
        encoding="utf-8",
    )
    return folder


def _main(monkeypatch, *argv: str) -> None:
    """Run `glimp *argv` in this process; it must succeed."""
    from glimp_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["glimp", *argv])
    try:
        main()
    except SystemExit as exited:
        assert exited.code in (0, None)


@pytest.mark.parametrize("pair", ["qwen3", "mixed"])
def test_ask_runs_end_to_end_on_a_reasoning_pair(tiny_config, monkeypatch, capsys, pair):
    monkeypatch.chdir(tiny_config)
    _main(monkeypatch, "ask", PROBLEM, "--pair", pair, "--json", "--seed", "1")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["finish_reason"] in ("end_marker", "budget")
    assert {s["model"] for s in summary["steps"]} == {"small", "large"}
    assert all(s["entropy_topk"] is not None and s["entropy_full"] is not None for s in summary["steps"])


def test_ask_on_two_bare_files_needs_no_models_yaml_entry(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = ("--small", str(tiny_models.qwen3_small), "--large", str(tiny_models.r1))
    _main(monkeypatch, "ask", PROBLEM, *files, "--json", "--seed", "1", "--threshold", "1.5")
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["finish_reason"] == "end_marker"  # the think layout came from the files' own templates
    assert summary["steps"][-1]["text"].endswith("</think>")


def test_bench_and_calibrate_run_end_to_end_on_the_mixed_pair(tiny_config, monkeypatch, capsys):
    monkeypatch.chdir(tiny_config)
    out = tiny_config / "runs"
    _main(monkeypatch, "bench", "data.jsonl", "--pair", "mixed", "--modes", "glimp,large", "--out", str(out / "b"))
    records = [json.loads(line) for line in (out / "b" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["mode"]) for r in records) == [(1, "glimp"), (1, "large"), (2, "glimp"), (2, "large")]
    assert all(r["finish_reason"] in ("end_marker", "budget") for r in records)
    capsys.readouterr()
    _main(monkeypatch, "calibrate", "data.jsonl", "--pair", "qwen3", "--out", str(out / "c"), "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["probe"]["problems"] == 2 and result["probe"]["steps"] > 2
