"""Tests for glimp_cli.router: the routing loop driven by scripted sessions (no llama.cpp)."""

import dataclasses
import itertools

import numpy as np
import pytest

from glimp_cli.entropy import initial_token_entropy
from glimp_cli.events import Answer, Delta, Probe, Step, Summary
from glimp_cli.policy import make_policy
from glimp_cli.config import PairSpec, router_settings
from glimp_cli.router import ANSWER_PREFIX_RESERVE, route, run
from glimp_cli.session import Sampling
from fakes import EOS, LN2, LN50, ScriptedSession, uniform_logits

CONFIDENT = uniform_logits(2)  # ln 2 ~ 0.693 nats: at or below THRESHOLD
UNSURE = uniform_logits(50)  # ln 50 ~ 3.912 nats: above THRESHOLD
THRESHOLD = 2.0
SETTINGS = router_settings(
    PairSpec("test", "small", "large", threshold=THRESHOLD, answer_stops=("\n",)), sampling=Sampling(seed=0)
)
PROBLEM = "What is 6 * 7?"


def _route(small, large, *, mode="glimp", **overrides):
    settings = dataclasses.replace(SETTINGS, **overrides)
    return list(route(PROBLEM, small=small, large=large, settings=settings, policy=make_policy(mode)))


def _summary(events) -> Summary:
    assert isinstance(events[-1], Summary)
    return events[-1]


def _alternating_pair():
    """Four steps: confident, unsure, confident, unsure; the large model then answers."""
    small = ScriptedSession("small", logits=[CONFIDENT, UNSURE, CONFIDENT, UNSURE], steps=["a1\n\n", "a3\n\n"])
    large = ScriptedSession("large", steps=["B2\n\n", "B4</think>", " 42\nignored"])
    return small, large


# --- routing ---------------------------------------------------------------------------------


def test_threshold_between_entropies_routes_confident_steps_to_small():
    small, large = _alternating_pair()
    summary = _summary(_route(small, large))
    assert [s.model for s in summary.steps] == ["small", "large", "small", "large"]
    assert [s.text for s in summary.steps] == ["a1\n\n", "B2\n\n", "a3\n\n", "B4</think>"]
    assert summary.large_step_rate == 0.5
    assert summary.finish_reason == "end_marker"


def test_probe_events_carry_exact_entropies_and_choices():
    small, large = _alternating_pair()
    probes = [e for e in _route(small, large) if isinstance(e, Probe)]
    assert [p.step for p in probes] == [1, 2, 3, 4]
    assert [p.entropy for p in probes] == pytest.approx([LN2, LN50, LN2, LN50], rel=1e-12)
    assert [p.model for p in probes] == ["small", "large", "small", "large"]
    assert all(p.threshold == THRESHOLD for p in probes)
    assert [s.entropy for s in _summary(_route(*_alternating_pair())).steps] == pytest.approx(
        [LN2, LN50, LN2, LN50], rel=1e-12
    )


def test_entropy_equal_to_threshold_keeps_the_step_small():
    small = ScriptedSession("small", logits=[uniform_logits(4)], steps=["s</think>"])
    large = ScriptedSession("large", steps=["x\n"])
    entropy = initial_token_entropy(np.asarray(uniform_logits(4), dtype=np.float32))  # ln 4, as the router computes it
    summary = _summary(_route(small, large, threshold=entropy))
    assert [s.model for s in summary.steps] == ["small"]


def test_probe_token_is_reused_when_small_keeps_the_step():
    small, large = _alternating_pair()
    events = _route(small, large)
    assert len(small.sampled) == 4  # one probe per step
    assert [c.first_token for c in small.generate_calls] == [small.sampled[0], small.sampled[2]]
    assert [c.first_token_text for c in small.generate_calls] == ["a", "a"]
    assert [p.token_text for p in events if isinstance(p, Probe)][:1] == ["a"]


def test_probe_token_is_never_passed_to_the_large_model():
    small, large = _alternating_pair()
    _route(small, large)
    assert [c.first_token for c in large.generate_calls] == [None, None, None]


def test_large_model_catches_up_on_the_transcript_before_writing():
    small, large = _alternating_pair()
    _route(small, large)
    assert [c.text_before for c in large.generate_calls[:2]] == ["a1\n\n", "a1\n\nB2\n\na3\n\n"]
    assert large.catch_ups[:2] == ["a1\n\n", "a1\n\nB2\n\na3\n\n"]
    assert [c.text_before for c in small.generate_calls] == ["", "a1\n\nB2\n\n"]


def test_thinking_steps_stop_at_delimiter_end_and_answer_markers():
    small, large = _alternating_pair()
    _route(small, large)
    assert large.generate_calls[0].stops == ("\n\n", "</think>", "\\boxed{")
    assert large.generate_calls[-1].stops == ("\n",)  # the answer stops at answer_stops


def test_max_tokens_is_the_step_cap_while_budget_and_room_allow():
    small, large = _alternating_pair()
    _route(small, large, step_max_tokens=12, thinking_budget=1000)
    assert [c.max_tokens for c in small.generate_calls] == [12, 12]
    assert [c.max_tokens for c in large.generate_calls] == [12, 12, SETTINGS.answer_max_tokens]


def test_mode_large_never_probes_the_small_model():
    small = ScriptedSession("small")
    large = ScriptedSession("large", steps=["B1\n\n", "B2</think>", "42\n"])
    events = _route(small, large, mode="large")
    assert not any(isinstance(e, Probe) for e in events)
    assert small.logits_calls == 0
    assert small.sampled == []
    assert small.generate_calls == []
    summary = _summary(events)
    assert [(s.model, s.entropy) for s in summary.steps] == [("large", None), ("large", None)]
    assert summary.large_step_rate == 1.0
    assert summary.mode == "large"


def test_mode_small_writes_every_step_with_the_small_model():
    small = ScriptedSession("small", logits=[UNSURE, UNSURE], steps=["s1\n\n", "s2</think>"])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large, mode="small"))
    assert [s.model for s in summary.steps] == ["small", "small"]
    assert summary.large_step_rate == 0.0
    assert [c.first_token_text for c in small.generate_calls] == ["s", "s"]


def test_random_mode_with_rate_one_sends_every_step_large_without_probing():
    small = ScriptedSession("small")
    large = ScriptedSession("large", steps=["B1\n\n", "B2</think>", "42\n"])
    events = list(route(PROBLEM, small=small, large=large, settings=SETTINGS, policy=make_policy("random", rate=1.0)))
    assert [s.model for s in _summary(events).steps] == ["large", "large"]
    assert small.logits_calls == 0


def test_every_session_starts_with_the_problem_sampling_and_answer_reserve():
    small, large = _alternating_pair()
    _route(small, large, answer_max_tokens=10)
    reserve = 10 + ANSWER_PREFIX_RESERVE
    assert small.starts == [(PROBLEM, SETTINGS.sampling, reserve)]
    assert large.starts == [(PROBLEM, SETTINGS.sampling, reserve)]


# --- stop conditions -------------------------------------------------------------------------


def test_eos_ends_the_thinking():
    small = ScriptedSession("small", logits=[CONFIDENT, CONFIDENT], steps=["a1\n\n", ["a", "2", EOS]])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large))
    assert summary.finish_reason == "eos"
    assert [(s.text, s.finish, s.tokens) for s in summary.steps] == [("a1\n\n", "delimiter", 4), ("a2", "eos", 2)]


def test_eos_with_no_text_ends_the_thinking_without_an_empty_step():
    small = ScriptedSession("small", logits=[CONFIDENT, CONFIDENT], steps=["a1\n\n", [EOS]])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large))
    assert summary.finish_reason == "eos"
    assert [s.text for s in summary.steps] == ["a1\n\n"]


def test_end_marker_ends_the_thinking():
    small = ScriptedSession("small", logits=[CONFIDENT], steps=["done</think>never"])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large))
    assert summary.finish_reason == "end_marker"
    assert [(s.text, s.finish) for s in summary.steps] == [("done</think>", "end_marker")]


def test_answer_marker_hands_the_open_box_to_the_answerer():
    small = ScriptedSession("small", logits=[CONFIDENT], steps=["so \\boxed{never"])
    large = ScriptedSession("large", steps=["42}\n"])
    events = _route(small, large, answer_prefix="\n\nThe answer is")
    summary = _summary(events)
    assert summary.finish_reason == "answer_marker"
    assert summary.steps[0].finish == "answer_marker"
    assert summary.answer == "\\boxed{42}"  # the answer stop "\n" is not part of the answer
    assert summary.answer.startswith("\\boxed{")
    # The answerer continues inside the box: no answer prefix is appended.
    assert large.generate_calls[-1].text_before == "so \\boxed{"


def test_same_step_twice_in_a_row_stops_as_repeat():
    small = ScriptedSession("small", logits=[CONFIDENT] * 2, steps=["same\n\n", "same\n\n", "unused\n\n"])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large))
    assert summary.finish_reason == "repeat"
    assert [s.text for s in summary.steps] == ["same\n\n", "same\n\n"]


def test_blank_steps_in_a_row_are_not_a_repeat():
    small = ScriptedSession("small", logits=[CONFIDENT] * 3, steps=["\n\n", "\n\n", "end</think>"])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large))
    assert summary.finish_reason == "end_marker"
    assert [s.text for s in summary.steps] == ["\n\n", "\n\n", "end</think>"]


def test_same_text_by_different_models_still_counts_as_repeat():
    small = ScriptedSession("small", logits=[CONFIDENT, UNSURE], steps=["same\n\n"])
    large = ScriptedSession("large", steps=["same\n\n", "42\n"])
    summary = _summary(_route(small, large))
    assert summary.finish_reason == "repeat"
    assert [s.model for s in summary.steps] == ["small", "large"]


def test_thinking_budget_cuts_the_step_that_reaches_it():
    small = ScriptedSession("small", logits=[CONFIDENT, CONFIDENT], steps=["abc\n\n", "defghijk\n\n"])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large, thinking_budget=8))
    assert summary.finish_reason == "budget"
    assert [(s.text, s.tokens, s.finish) for s in summary.steps] == [("abc\n\n", 5, "delimiter"), ("def", 3, "budget")]
    assert [c.max_tokens for c in small.generate_calls] == [8, 3]


def test_budget_used_up_exactly_at_a_delimiter_stops_before_another_probe():
    small = ScriptedSession("small", logits=[CONFIDENT], steps=["abc\n\n"])
    large = ScriptedSession("large", steps=["42\n"])
    events = _route(small, large, thinking_budget=5)
    summary = _summary(events)
    assert summary.finish_reason == "budget"
    assert [s.text for s in summary.steps] == ["abc\n\n"]
    assert [p.step for p in events if isinstance(p, Probe)] == [1]
    assert small.logits_calls == 1


def test_step_cap_cuts_the_step_and_thinking_continues():
    small = ScriptedSession("small", logits=[CONFIDENT, CONFIDENT], steps=["abcdef\n\n", ["g", "</think>"]])
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large, step_max_tokens=3))
    assert summary.finish_reason == "end_marker"
    assert [(s.text, s.tokens, s.finish) for s in summary.steps] == [
        ("abc", 3, "step_cap"),
        ("g</think>", 2, "end_marker"),
    ]


def test_step_cut_by_context_room_stops_as_context():
    # room for thinking = n_ctx - prompt - reserve = 55 - 10 - 40 = 5 tokens
    small = ScriptedSession("small", logits=[CONFIDENT], steps=["abcdefgh\n\n"], n_ctx=55)
    large = ScriptedSession("large", steps=["42\n"])
    summary = _summary(_route(small, large, answer_max_tokens=8))
    assert summary.finish_reason == "context"
    assert [(s.text, s.finish) for s in summary.steps] == [("abcde", "context")]
    assert small.generate_calls[0].max_tokens == 5


def test_small_context_full_at_the_probe_stops_as_context():
    small = ScriptedSession("small", logits=[CONFIDENT, CONFIDENT], steps=["abc\n\n"], n_ctx=55)
    large = ScriptedSession("large", steps=["42\n"])
    events = _route(small, large, answer_max_tokens=8)
    summary = _summary(events)
    assert summary.finish_reason == "context"
    assert [s.text for s in summary.steps] == ["abc\n\n"]
    assert small.logits_calls == 1  # the second probe never ran


def test_large_context_full_stops_without_an_orphan_probe():
    small = ScriptedSession("small", logits=[UNSURE], steps=[])
    large = ScriptedSession("large", steps=["42\n"], n_ctx=50)  # room 50 - 10 - 40 = 0
    events = _route(small, large, answer_max_tokens=8)
    summary = _summary(events)
    assert summary.finish_reason == "context"
    assert summary.steps == ()
    assert not any(isinstance(e, Probe) for e in events)


# --- the answer --------------------------------------------------------------------------------


def _two_step_pair(first: str, *, small_answer: str | None = None, large_answer: str | None = None):
    """Step 1 by `first`, step 2 by the other model; each model's answer entry last."""
    logits = [CONFIDENT, UNSURE] if first == "small" else [UNSURE, CONFIDENT]
    small_steps = ["s1\n\n" if first == "small" else "s2</think>"]
    large_steps = ["L2</think>" if first == "small" else "L1\n\n"]
    small = ScriptedSession("small", logits=logits, steps=small_steps + ([small_answer] if small_answer else []))
    large = ScriptedSession("large", steps=large_steps + ([large_answer] if large_answer else []))
    return small, large


@pytest.mark.parametrize(
    ("answer_by", "first", "answerer"),
    [("large", "large", "large"), ("small", "small", "small"), ("last", "small", "large"), ("last", "large", "small")],
)
def test_answer_by_picks_the_answerer(answer_by, first, answerer):
    small, large = _two_step_pair(first, small_answer="S\n", large_answer="L\n")
    summary = _summary(_route(small, large, answer_by=answer_by))
    assert summary.answer_model == answerer
    assert summary.answer == {"small": "S", "large": "L"}[answerer]
    session = small if answerer == "small" else large
    call = session.generate_calls[-1]
    assert (call.first_token, call.stops, call.max_tokens) == (None, ("\n",), SETTINGS.answer_max_tokens)


def test_answer_by_last_without_steps_falls_back_to_large():
    small = ScriptedSession("small", logits=[CONFIDENT], steps=[[EOS]])
    large = ScriptedSession("large", steps=["L\n"])
    summary = _summary(_route(small, large, answer_by="last"))
    assert summary.steps == ()
    assert summary.answer_model == "large"


def test_answer_prefix_is_appended_before_the_answer():
    small, large = _two_step_pair("small", large_answer=" 42\n")
    events = _route(small, large, answer_prefix="\n\nThe answer is")
    assert large.catch_ups[-1] == "s1\n\nL2</think>\n\nThe answer is"
    assert large.generate_calls[-1].text_before == "s1\n\nL2</think>\n\nThe answer is"
    answers = [e for e in events if isinstance(e, Answer)]
    assert [(a.text, a.model, a.tokens) for a in answers] == [(" 42", "large", 4)]


def test_answer_max_tokens_is_limited_by_context_room():
    small = ScriptedSession("small", logits=[CONFIDENT], steps=["ab</think>"], n_ctx=10 + 10 + 40 + 5)
    large = ScriptedSession("large", steps=["12345678\n"], n_ctx=10 + 10 + 5)  # 5 left after the catch-up
    summary = _summary(_route(small, large, answer_max_tokens=8))
    assert large.generate_calls[-1].max_tokens == 4  # room - 1
    assert summary.answer == "1234"


# --- events and summary -------------------------------------------------------------------------


def test_exactly_one_summary_and_it_is_last():
    small, large = _alternating_pair()
    events = _route(small, large)
    assert [i for i, e in enumerate(events) if isinstance(e, Summary)] == [len(events) - 1]


def test_each_step_streams_probe_then_deltas_then_step():
    small, large = _alternating_pair()
    events = _route(small, large)
    thinking = [
        e for e in events if not isinstance(e, (Answer, Summary)) and not (isinstance(e, Delta) and e.step == 0)
    ]
    for index, group in itertools.groupby(thinking, key=lambda e: e.step if not isinstance(e, Step) else e.index):
        group = list(group)
        kinds = [type(e).__name__ for e in group]
        assert kinds[0] == "Probe" and kinds[-1] == "Step" and set(kinds[1:-1]) == {"Delta"}, (index, kinds)
        assert "".join(e.text for e in group[1:-1]) == group[-1].text
        assert {e.model for e in group} == {group[-1].model}
    assert [e.index for e in thinking if isinstance(e, Step)] == [1, 2, 3, 4]


def test_answer_deltas_then_answer_precede_the_summary():
    small, large = _alternating_pair()
    events = _route(small, large)
    answer_index = next(i for i, e in enumerate(events) if isinstance(e, Answer))
    answer_deltas = [e for e in events if isinstance(e, Delta) and e.step == 0]
    assert answer_index == len(events) - 2
    assert all(events.index(d) < answer_index for d in answer_deltas)
    assert "".join(d.text for d in answer_deltas) == events[answer_index].text + "\n" == " 42\n"


def test_summary_totals_match_the_script():
    small, large = _alternating_pair()
    summary = _summary(_route(small, large))
    # small wrote "a1\n\n" + "a3\n\n"; large wrote "B2\n\n" + "B4</think>" and the answer " 42\n"
    assert (summary.small.steps, summary.large.steps) == (2, 2)
    assert (summary.small.tokens, summary.large.tokens) == (8, 4 + 10 + 4)
    assert summary.generated_tokens == 26
    # what each caught up from the other: small read "B2\n\n"; large read both small steps
    assert (summary.small.prefill_tokens, summary.large.prefill_tokens) == (4, 8)
    assert summary.small.context_tokens == 10 + 4 + 4 + 4
    assert summary.large.context_tokens == 10 + 8 + 14 + 4
    assert summary.answer == " 42"
    assert summary.answer_model == "large"
    assert (summary.mode, summary.threshold) == ("glimp", THRESHOLD)
    assert summary.latency_s > 0


def test_run_returns_the_summary_of_route():
    small, large = _alternating_pair()
    summary = run(PROBLEM, small=small, large=large, settings=SETTINGS, policy=make_policy("glimp"))
    assert isinstance(summary, Summary)
    assert [s.model for s in summary.steps] == ["small", "large", "small", "large"]
    assert summary.finish_reason == "end_marker"


def test_same_seed_routes_random_mode_reproducibly():
    def models(seed):
        small = ScriptedSession("small", steps=[f"s{i}\n\n" for i in range(12)] + ["end</think>", "S\n"])
        large = ScriptedSession("large", steps=[f"L{i}\n\n" for i in range(12)] + ["end</think>", "L\n"])
        settings = dataclasses.replace(SETTINGS, sampling=Sampling(seed=seed), answer_by="large")
        summary = run(PROBLEM, small=small, large=large, settings=settings, policy=make_policy("random", rate=0.5))
        return [s.model for s in summary.steps]

    assert models(3) == models(3)
    assert {"small", "large"} <= set(models(3))
