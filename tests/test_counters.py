"""Exact counters of routed runs on the real demo pair, where the benchmark used to estimate them.

Prefill discipline: every token enters each model's cache once. Probe cost: a delegated step reuses the
probe's token; an escalated step costs the small model one catch-up call, at the next probe. Each relation is
computed from the run's own events, so it holds for any llama.cpp build.
"""

from __future__ import annotations

import dataclasses
import math

import llama_cpp  # isort: skip
import pytest

from glimp_cli.events import Probe, Step
from glimp_cli.policy import make_policy
from glimp_cli.config import router_settings
from glimp_cli.router import route
from glimp_cli.session import Sampling

from conftest import gsm8k_problem

GREEDY = Sampling(temperature=0.0)
# (gsm8k problem, threshold in nats): runs with steps by both models, and escalations a probe follows
MIXED = [(4, 2.0), (5, 2.5)]


@dataclasses.dataclass(frozen=True)
class Cache:
    """One model's cache right after a run."""

    counted: int  # tokens handed to llama_decode, counted as each call was made
    evaluated: int  # the session's own count of the tokens in its cache
    positions: int  # positions llama.cpp's cache holds, read from llama.cpp itself
    context: int  # tokens the session holds, evaluated or pending
    evaluated_in_order: bool  # the cache's tokens are the context's first ones


def cache_after_run(session) -> Cache:
    memory = llama_cpp.llama_get_memory(session._llm.ctx)
    n = session.evaluated_tokens()
    return Cache(
        counted=session.counters.evaluated_tokens,
        evaluated=n,
        positions=llama_cpp.llama_memory_seq_pos_max(memory, 0) + 1,
        context=session.context_tokens(),
        evaluated_in_order=list(session._llm.input_ids[:n]) == session._tokens[:n],
    )


@pytest.fixture(scope="module", params=MIXED, ids=lambda p: f"problem {p[0]} at {p[1]} nats")
def mixed_run(request, demo_pair):
    """(events, {model: its cache after the run}) of a routed run with steps by both models."""
    pair, small, large = demo_pair
    problem, threshold = request.param
    settings = dataclasses.replace(router_settings(pair, sampling=GREEDY), threshold=threshold)
    policy = make_policy("glimp")
    events = list(route(gsm8k_problem(problem), small=small, large=large, settings=settings, policy=policy))
    return events, {"small": cache_after_run(small), "large": cache_after_run(large)}


def test_small_model_decodes_its_own_tokens_once_plus_one_catch_up_per_escalated_step(demo_pair, mixed_run):
    _, small, _ = demo_pair
    events, _ = mixed_run
    summary = events[-1]
    assert {s.model for s in summary.steps} == {"small", "large"} and summary.finish_reason != "context"
    probes_and_steps = [e for e in events if isinstance(e, (Probe, Step))]
    # a probe after a large step evaluates that step's text: one call per n_batch of its tokens
    catch_ups = sum(
        math.ceil(len(small._llm.tokenize(before.text.encode(), add_bos=False, special=True)) / small.spec.n_batch)
        for before, after in zip(probes_and_steps, probes_and_steps[1:])
        if isinstance(before, Step) and before.model == "large" and before.text and isinstance(after, Probe)
    )
    assert catch_ups >= 1
    # a delegated step costs one call per token it writes, its probe's token included: each token is
    # evaluated when the next one is sampled, the last one by the next probe. Without a next probe
    # (and without EOS, which is sampled after it) that last token is still pending.
    last = probes_and_steps[-1]
    pending = 1 if isinstance(last, Step) and last.model == "small" and last.finish != "eos" else 0
    assert summary.small.decode_calls == summary.small.tokens - pending + catch_ups


def test_every_token_enters_each_models_cache_once(mixed_run):
    events, caches = mixed_run
    summary = events[-1]
    for role, totals in (("small", summary.small), ("large", summary.large)):
        cache = caches[role]
        assert cache.counted == cache.evaluated == cache.positions
        assert totals.prefill_tokens < cache.counted <= cache.context == totals.context_tokens
        assert cache.evaluated_in_order
