"""Integration tests on the real demo models: the caches hold exactly the transcript."""

from __future__ import annotations

import dataclasses
import math

import llama_cpp  # isort: skip
import pytest

from glimp_cli.entropy import full_entropy, initial_token_entropy, topk_entropy
from glimp_cli.policy import make_policy
from glimp_cli.config import router_settings
from glimp_cli.router import run
from glimp_cli.session import Sampling

from conftest import NATALIA, gsm8k_problem
from step_helpers import crossing_offset, reference_continuation, write

GREEDY = Sampling(temperature=0.0)


def reference_entropy(logits, k=None) -> float:
    """Entropy in nats computed with plain Python floats, independently of glimp_cli.entropy."""
    values = sorted((float(x) for x in logits), reverse=True)
    if k is not None:
        values = values[:k]
    top = values[0]
    log_z = top + math.log(math.fsum(math.exp(v - top) for v in values))
    return -math.fsum(math.exp(v - log_z) * (v - log_z) for v in values)


def thinking_text(summary) -> str:
    return "".join(step.text for step in summary.steps)


def test_probe_entropy_matches_independent_reference_on_real_logits(demo_pair):
    pair, small, _ = demo_pair
    small.start(NATALIA, sampling=GREEDY)
    logits = small.next_token_logits()
    assert logits.shape == (49152,)
    assert full_entropy(logits) == pytest.approx(reference_entropy(logits), rel=1e-9, abs=1e-12)
    assert topk_entropy(logits, k=20) == pytest.approx(reference_entropy(logits, k=20), rel=1e-9, abs=1e-12)
    assert initial_token_entropy(logits, mode="topk") <= math.log(20) + 1e-12
    # the logits are a copy: a later decode does not change them
    before = logits.copy()
    small.sample()
    small.catch_up(" x")
    small.next_token_logits()
    assert (logits == before).all()


def test_probe_measures_both_entropies_and_returns_the_sampled_token_without_keeping_it(demo_pair):
    _, small, _ = demo_pair
    small.start(NATALIA, sampling=GREEDY)
    logits = small.next_token_logits()
    first = small.probe(top_k=20)
    assert set(first.entropies) == set(small.entropy_modes) == {"full", "topk"}
    assert first.entropies["full"] == pytest.approx(reference_entropy(logits), rel=1e-9, abs=1e-12)
    assert first.entropies["topk"] == pytest.approx(reference_entropy(logits, k=20), rel=1e-9, abs=1e-12)
    assert first.token == int(logits.argmax()) and first.text == small.token_text(first.token)
    assert small.text == "" and small.context_tokens() == len(small.prompt_tokens(NATALIA))
    # the probe's token is the step's first token when the small model keeps the step
    step = small.generate_step(first_token=first.token, stops=(), max_tokens=1)
    with pytest.raises(StopIteration) as done:
        while True:
            next(step)
    assert done.value.value.text == first.text


def assert_is_the_models_own_continuation(summary, session, problem: str, role: str) -> None:
    """The steps, joined, are what llama-cpp-python generates alone, split at the delimiter."""
    assert len(summary.steps) >= 3 and {s.model for s in summary.steps} == {role}
    thinking = thinking_text(summary)
    reference, tokens = reference_continuation(session, problem, sum(s.tokens for s in summary.steps))
    crossing = crossing_offset(session, tokens, "\n\n")
    if crossing is not None:  # this llama.cpp build's text crosses "\n\n": equal up to the roll-back
        assert thinking[:crossing] == reference[:crossing]
        return
    assert thinking == reference
    parts = reference.split("\n\n")
    assert [s.text for s in summary.steps] == [part + "\n\n" for part in parts[:-1]] + (
        [parts[-1]] if parts[-1] else []
    )


# Problem 5: in the README's CPU build, 8 small steps ending in EOS and 3 large steps ending at
# "\boxed{"; the assertions hold for any build.
PROBLEM = 5


def test_small_mode_is_the_small_models_own_greedy_continuation(demo_pair):
    pair, small, large = demo_pair
    problem = gsm8k_problem(PROBLEM)
    summary = run(
        problem, small=small, large=large, settings=router_settings(pair, sampling=GREEDY), policy=make_policy("small")
    )
    assert_is_the_models_own_continuation(summary, small, problem, "small")


def test_large_mode_is_the_large_models_own_greedy_continuation(demo_pair):
    pair, small, large = demo_pair
    problem = gsm8k_problem(PROBLEM)
    summary = run(
        problem, small=small, large=large, settings=router_settings(pair, sampling=GREEDY), policy=make_policy("large")
    )
    assert_is_the_models_own_continuation(summary, large, problem, "large")
    assert (
        summary.small.tokens == 0 and summary.small.decode_calls == 0 and summary.small.prefill_tokens == 0
    )  # never probed


def test_routed_texts_agree_with_reference_up_to_the_first_delimiter_crossing(demo_pair):
    pair, small, large = demo_pair
    # "e" as the step delimiter: tokens such as " sell" run past it, so steps end mid-token
    settings = dataclasses.replace(router_settings(pair, sampling=GREEDY), delimiter="e", thinking_budget=60)
    summary = run(NATALIA, small=small, large=large, settings=settings, policy=make_policy("small"))
    thinking = thinking_text(summary)
    reference, tokens = reference_continuation(small, NATALIA, 60)
    crossing = crossing_offset(small, tokens, "e")
    assert crossing is not None
    assert thinking[:crossing] == reference[:crossing]
    assert all(step.text.endswith("e") for step in summary.steps[:-1])
    # after the roll-back the cache still holds exactly the transcript
    assert small.held_text() == thinking
    n = small.evaluated_tokens()
    assert list(small._llm.input_ids[:n]) == small._tokens[:n]


def test_probe_token_is_reused_when_every_step_is_delegated(demo_pair):
    pair, small, large = demo_pair
    settings = dataclasses.replace(router_settings(pair, sampling=GREEDY), threshold=math.inf)
    summary = run(gsm8k_problem(PROBLEM), small=small, large=large, settings=settings, policy=make_policy("glimp"))
    assert summary.small.steps == len(summary.steps) >= 3
    # one decode per generated token, none per step; after EOS every kept token was evaluated,
    # otherwise the last one is still pending (nobody needed the logits after it)
    pending = 0 if summary.finish_reason == "eos" else 1
    assert summary.small.decode_calls == summary.small.tokens - pending
    assert summary.small.tokens == sum(s.tokens for s in summary.steps)


def test_escalated_steps_cost_the_small_model_one_catch_up_each(demo_pair):
    pair, small, large = demo_pair
    settings = dataclasses.replace(router_settings(pair, sampling=GREEDY), threshold=-math.inf)
    summary = run(gsm8k_problem(PROBLEM), small=small, large=large, settings=settings, policy=make_policy("glimp"))
    assert summary.large_step_rate == 1.0
    assert summary.small.tokens == 0
    # the first probe reads the prompt's logits; each later probe evaluates the previous step in one call
    assert summary.small.decode_calls == len(summary.steps) - 1
    assert thinking_text(summary) == thinking_text(
        run(gsm8k_problem(PROBLEM), small=small, large=large, settings=settings, policy=make_policy("large"))
    )


def test_mixed_run_caches_hold_the_same_transcript_and_nothing_is_prefilled_twice(demo_pair):
    pair, small, large = demo_pair
    settings = dataclasses.replace(router_settings(pair, sampling=GREEDY), threshold=2.0, answer_by="small")
    summary = run(gsm8k_problem(4), small=small, large=large, settings=settings, policy=make_policy("glimp"))
    models = [s.model for s in summary.steps]
    assert "small" in models and "large" in models
    thinking = thinking_text(summary)
    for session in (small, large):
        session.catch_up(thinking if session is large else session.text)
        assert session.held_text().startswith(thinking)
        n = session.evaluated_tokens()
        assert list(session._llm.input_ids[:n]) == session._tokens[:n]
        assert session.counters.prefill_tokens <= n <= session.context_tokens()
    # the small model wrote the answer after the transcript, and its cache holds that too
    if summary.finish_reason == "answer_marker":
        expected = thinking + summary.answer[len("\\boxed{") :]
    else:
        expected = thinking + pair.answer_prefix + summary.answer
    assert small.text == small.held_text() == expected


def test_same_seed_reproduces_a_sampled_run(demo_pair):
    pair, small, large = demo_pair
    settings = dataclasses.replace(
        router_settings(pair, sampling=Sampling(temperature=0.6, top_p=0.95, seed=7)), thinking_budget=80
    )
    first = run(NATALIA, small=small, large=large, settings=settings, policy=make_policy("glimp"))
    second = run(NATALIA, small=small, large=large, settings=settings, policy=make_policy("glimp"))
    assert [(s.model, s.text) for s in first.steps] == [(s.model, s.text) for s in second.steps]
    assert first.answer == second.answer


def test_prefill_and_decode_counters_are_exact_on_a_scripted_run(demo_pair):
    """The counts the performance benchmark relies on, recomputed independently."""
    pair, small, large = demo_pair
    problem = gsm8k_problem(PROBLEM)
    settings = dataclasses.replace(router_settings(pair, sampling=GREEDY), threshold=math.inf)
    summary = run(problem, small=small, large=large, settings=settings, policy=make_policy("glimp"))
    thinking = thinking_text(summary)
    _, tokens = reference_continuation(small, problem, summary.small.tokens)
    if crossing_offset(small, tokens, "\n\n") is not None:
        pytest.skip("this llama.cpp build's greedy text crosses the delimiter: the prefill adds re-tokenized text")
    prompt = len(small.prompt_tokens(problem))
    pending = 0 if summary.finish_reason == "eos" else 1
    # small: its prompt is its only prefill; each generated token is one decode call
    assert summary.small.prefill_tokens == prompt
    assert summary.small.decode_calls == summary.small.tokens - pending
    assert small.counters.evaluated_tokens == small.evaluated_tokens() == prompt + summary.small.tokens - pending
    # large: its prompt, then the whole transcript plus the answer prefix in one call
    caught_up = large._llm.tokenize((thinking + pair.answer_prefix).encode(), add_bos=False, special=True)
    assert summary.large.prefill_tokens == len(large.prompt_tokens(problem)) + len(caught_up)
    # that first call is the prompt's; then one call per answer token, except a last one that
    # ended at the answer stop "\n" (never evaluated) rather than at EOS (not a token)
    stopped = large.text.endswith("\n")
    assert summary.large.decode_calls == summary.large.tokens - (1 if stopped else 0)
    assert large.counters.evaluated_tokens == large.evaluated_tokens() <= large.context_tokens()


def cached_positions(session) -> int:
    """Positions the model's KV cache holds for its sequence, read from llama.cpp itself."""
    memory = llama_cpp.llama_get_memory(session._llm.ctx)
    return llama_cpp.llama_memory_seq_pos_max(memory, 0) + 1


def test_an_abandoned_step_leaves_the_cache_exactly_as_before_it(demo_pair):
    _, small, _ = demo_pair
    small.start(NATALIA, sampling=GREEDY)
    whole = write(small, max_tokens=12).text
    small.start(NATALIA, sampling=GREEDY)
    pieces = []
    assert write(small, max_tokens=12, stop_after=6, pieces=pieces) is None
    partial = "".join(pieces)
    assert whole.startswith(partial) and len(partial) < len(whole)
    prompt = len(small.prompt_tokens(NATALIA))
    # the step's tokens are gone from the cache, and so is the prompt's last one, whose logits the
    # step overwrote: it is evaluated again before the next sample
    assert small.text == "" and small.evaluated_tokens() == prompt - 1 == cached_positions(small)
    assert small.context_tokens() == prompt
    assert write(small, max_tokens=12).text == whole
    assert cached_positions(small) == small.evaluated_tokens() == prompt + 11  # the 12th token is pending
