"""The `model` draft source: the pair's small model drafts for the large one from its own cache.

On the tiny Qwen3 and R1-Distill models (tests/tiny_models.py: the real tokenizers and chat templates, the same
designed language in different weights), loaded with the exact settings (flash attention on, no repacked
weights), so that a run with drafts is asserted equal to the run without them, token for token.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from glimp_cli.backend import ModelDrafter, draftable_tokens, open_session
from glimp_cli.config import ModelSpec, PairSpec, router_settings
from glimp_cli.drafting import DecodeCosts, choose_draft_source
from glimp_cli.policy import make_policy
from glimp_cli.router import run
from glimp_cli.session import Sampling

PROBLEM = "What is 6 * 7?"
THRESHOLD = 1.5  # nats, as in test_reasoning_pairs: both models write steps
QWEN_BASE_VOCAB = 151643  # the byte-level BPE ids every Qwen2/2.5/3 model shares; ids above are added tokens
GREEDY = Sampling(temperature=0.0)


def _open(path, name):
    return open_session(ModelSpec(name=name, path=str(path), n_ctx=2048, n_threads=1, flash_attn=True, repack=False))


@pytest.fixture(scope="module")
def tiny(tiny_models):
    """The tiny Qwen3 small and large models and the tiny R1, by their tiny_models names."""
    return {name: _open(getattr(tiny_models, name), name) for name in ("qwen3_small", "qwen3_large", "r1")}


# the added tokens both hold as user-defined text tokens with the same text: <tool_call>, </tool_call> in every
# Qwen2.5/3 vocabulary; <tool_response>, </tool_response>, <think>, </think> in Qwen3's (R1's <think> has another id)
SHARED_ADDED = {"qwen3_large": [151657, 151658, 151665, 151666, 151667, 151668], "r1": [151657, 151658]}
END_LIKE = 128247  # "</s>", an ordinary BPE token that llama.cpp counts as an end of generation


@pytest.mark.parametrize("large_name", ["qwen3_large", "r1"])
def test_qwen_vocabularies_agree_on_the_ordinary_tokens_and_control_tokens_are_never_drafted(tiny, large_name):
    draftable, mismatch = draftable_tokens(tiny["qwen3_small"], tiny[large_name])
    assert mismatch is None
    base = draftable[:QWEN_BASE_VOCAB]
    assert base.sum() == QWEN_BASE_VOCAB - 1 and not base[END_LIKE]
    assert [int(i) for i in draftable.nonzero()[0] if i >= QWEN_BASE_VOCAB] == SHARED_ADDED[large_name]
    for token in (151643, 151644, 151645):  # <|endoftext|>, <|im_start|>, <|im_end|>: control tokens
        assert not draftable[token]


def test_the_demo_pair_has_two_vocabularies_and_says_where_they_differ(demo_pair):
    _, small, large = demo_pair
    draftable, mismatch = draftable_tokens(small, large)
    assert draftable is None
    assert mismatch == "the vocabularies differ: token 238 is 'Ķ' in 'smollm2-135m' and '<0x00>' in 'gemma3-270m'"


def _runs(small, large, *, mode="glimp", sampling=GREEDY, k=3, p_min=0.0):
    """The run without drafts, then with the small model's: (plain, drafted, the small model's state after plain)."""
    settings = router_settings(PairSpec("t", "s", "l", threshold=THRESHOLD), sampling=sampling)
    policy = make_policy(mode)
    large.speculate = None
    plain = run(PROBLEM, small=small, large=large, settings=settings, policy=policy)
    plain_small = small.text, list(small._tokens)
    draftable, _ = draftable_tokens(small, large)
    large.speculate = ModelDrafter(small, draftable=draftable, k=k, p_min=p_min)
    try:
        drafted = run(PROBLEM, small=small, large=large, settings=settings, policy=policy)
    finally:
        large.speculate = None
    return plain, drafted, plain_small


def _written(summary):
    return [(s.model, s.text, s.finish) for s in summary.steps], summary.answer, summary.finish_reason


@pytest.mark.parametrize("large_name", ["qwen3_large", "r1"])
def test_a_routed_run_with_small_model_drafts_is_the_run_without_them(tiny, large_name):
    qwen3_small = tiny["qwen3_small"]
    plain, drafted, plain_small = _runs(qwen3_small, tiny[large_name])
    assert _written(drafted) == _written(plain)
    assert {s.model for s in plain.steps} == {"small", "large"}  # both models wrote steps
    assert drafted.large.tokens == plain.large.tokens and drafted.small.tokens == plain.small.tokens
    assert 0 < drafted.large.accepted_tokens <= drafted.large.drafted_tokens
    assert drafted.large.decode_calls < plain.large.decode_calls
    # the small model's cache kept the large model's tokens it drafted: fewer catch-up (prefill) tokens, and the
    # tokens the catch-ups gave it without drafts (then more: it followed the large model's answer too)
    assert drafted.small.prefill_tokens < plain.small.prefill_tokens
    text, tokens = plain_small
    assert qwen3_small.text.startswith(text) and qwen3_small._tokens[: len(tokens)] == tokens
    assert qwen3_small.text.endswith(drafted.answer)


def test_large_only_with_small_model_drafts_writes_the_large_models_text(tiny):
    plain, drafted, _ = _runs(tiny["qwen3_small"], tiny["qwen3_large"], mode="large")
    assert _written(drafted) == _written(plain)
    assert drafted.small.steps == 0 and drafted.large.verify_calls > 0
    # tokens per large-model call: every verify call yields the accepted drafts and one token of its own
    assert drafted.large.decode_calls < plain.large.decode_calls


@pytest.mark.parametrize("p_min", [0.5, 0.9])
def test_a_probability_bound_drafts_less_and_keeps_the_text(tiny, p_min):
    small, large = tiny["qwen3_small"], tiny["qwen3_large"]
    plain, free, _ = _runs(small, large, mode="large")
    _, bounded, _ = _runs(small, large, mode="large", p_min=p_min)
    assert _written(bounded) == _written(plain) == _written(free)
    assert bounded.large.drafted_tokens < free.large.drafted_tokens
    assert bounded.large.acceptance_rate >= free.large.acceptance_rate


def test_ask_with_auto_speculation_chooses_by_measured_cost_and_says_why(tiny_models, tmp_path):
    args = [
        "ask", PROBLEM, "--json", "--small", str(tiny_models.qwen3_small), "--large", str(tiny_models.qwen3_large),
        "--speculate", "auto", "--temperature", "0", "--thinking-budget", "64", "--threshold", str(THRESHOLD),
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "glimp_cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["type"] == "speculation"
    costs = DecodeCosts(**lines[0]["costs"])
    assert costs.k == 3 and costs.draft_one_s > 0  # the vocabularies agree: the small model was measured too
    # the choice is the one the measured costs give (tested on exact costs in test_speculative)
    expected = choose_draft_source("auto", vocabulary_mismatch=None, costs=costs)
    assert (lines[0]["source"], lines[0]["reason"]) == (expected.source, expected.reason)
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["drafted_tokens"]["small"] == 0
    assert (summary["verify_calls"]["large"] > 0) == (expected.source != "off")
    assert result.stderr == ""  # the exact settings are the defaults when speculating: no note
