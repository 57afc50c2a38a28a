"""Speculative decoding: drafted tokens verified by the model in one batch give the model's own text.

The demo models are loaded with flash attention on and repacked CPU weights off: then each row of a verify
batch holds exactly the logits of one token decoded alone, so "the same text as without drafts" is asserted
token for token, cache state included. One thread each: the machine is shared.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys

import llama_cpp  # isort: skip
import pytest
from rich.console import Console

from glimp_cli import backend, bench, cli
from glimp_cli.backend import ModelDrafter, draftable_tokens, open_session
from glimp_cli.config import PairSpec, load_config, override_pair, router_settings
from glimp_cli.drafting import DecodeCosts, NgramDrafter, Speculation, choose_draft_source
from glimp_cli.errors import ConfigError
from glimp_cli.events import ModelTotals, Summary, summary_record
from glimp_cli.policy import make_policy
from glimp_cli.render import LiveRenderer, acceptance_cell
from glimp_cli.router import run
from glimp_cli.session import Sampling

from cli_helpers import one_error_line, run_main
from step_helpers import write
from conftest import NATALIA, gsm8k_problem

GREEDY = Sampling(temperature=0.0)
EXACT = {"n_threads": 1, "flash_attn": True, "repack": False}  # a batch's rows equal one token's logits


# -- the n-gram drafter (no model) --------------------------------------------------------------------


def test_ngram_drafts_what_followed_the_latest_earlier_occurrence():
    context = [1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3]
    assert NgramDrafter(k=3).draft(context, limit=3) == [7, 5, 1]


def test_the_longest_matching_ngram_wins_over_a_more_recent_shorter_one():
    # (4, 2, 3) occurred at the start; (2, 3) occurred more recently, followed by 6, 6
    context = [4, 2, 3, 8, 8, 1, 2, 3, 6, 6, 4, 2, 3]
    assert NgramDrafter(k=3).draft(context, limit=3) == [8, 8, 1]


def test_no_draft_below_the_shortest_ngram():
    context = [5, 6, 7, 5]  # only the single token 5 occurred before
    assert NgramDrafter(k=3).draft(context, limit=3) == []
    assert NgramDrafter(k=3, min_ngram=1).draft(context, limit=3) == [6, 7, 5]


def test_a_draft_is_cut_to_k_and_to_the_limit():
    context = [1, 2, 3, 4, 5, 6, 1, 2]
    assert NgramDrafter(k=3).draft(context, limit=8) == [3, 4, 5]
    assert NgramDrafter(k=3).draft(context, limit=1) == [3]
    assert NgramDrafter(k=3).draft(context, limit=0) == []
    assert NgramDrafter(k=5).draft(context, limit=8) == [3, 4, 5, 6, 1]


def reference_draft(context: list[int], *, k: int, low: int, high: int) -> list[int]:
    """The n-gram draft by scanning the whole context (what the incremental index must equal)."""
    for n in range(min(high, len(context) - 1), low - 1, -1):
        gram = context[len(context) - n :]
        for after in range(len(context) - 1, n - 1, -1):
            if context[after - n : after] == gram:
                return context[after : after + k]
    return []


@pytest.mark.parametrize("seed", range(5))
def test_the_incremental_index_drafts_as_a_scan_of_the_whole_context_through_cuts_and_resets(seed):
    rng = random.Random(seed)
    drafter = NgramDrafter(k=3)
    context: list[int] = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.05:
            context = []
            drafter.reset()
        elif roll < 0.2 and context:
            del context[rng.randrange(len(context)) :]
            drafter.truncate(len(context))
        else:
            context += [rng.randrange(4) for _ in range(rng.randint(1, 5))]
        assert drafter.draft(context, limit=3) == reference_draft(context, k=3, low=2, high=3)


def test_auto_picks_the_small_model_where_the_vocabularies_agree_and_prompt_lookup_elsewhere():
    differ = "the vocabularies differ: token 0 is 'a' in 's' and 'b' in 'l'"
    assert choose_draft_source("auto", vocabulary_mismatch=None) == Speculation(
        "model", "auto: the vocabularies agree, so the small model drafts"
    )
    assert choose_draft_source("auto", vocabulary_mismatch=differ) == Speculation(
        "ngram", f"auto: prompt lookup, since {differ}"
    )


# A draft cycle's expected tokens at 80% acceptance and k = 3: (1 - 0.8^4) / 0.2
CYCLE_TOKENS = (1 - 0.8**4) / 0.2  # 2.952


def test_expected_speedup_of_a_draft_cycle_from_measured_costs():
    cpu = DecodeCosts(target_one_s=0.05, target_batch_s=0.15, draft_one_s=0.02, k=3)
    # model: the verify batch and four small-model decodes (three drafts, one for the target's own token)
    assert cpu.speedup("model", acceptance=0.8) == pytest.approx(CYCLE_TOKENS * 0.05 / (0.15 + 4 * 0.02))
    assert cpu.speedup("ngram", acceptance=0.8) == pytest.approx(CYCLE_TOKENS * 0.05 / 0.15)
    assert cpu.speedup("model", acceptance=1.0) == pytest.approx((1 - 0.999**4) / 0.001 * 0.05 / 0.23)
    assert DecodeCosts(0.05, 0.15, None, k=3).speedup("model", acceptance=0.8) == 0.0


def test_auto_drafts_only_where_the_measured_costs_say_it_pays():
    # a GPU-like target: a verify batch costs about one token, the small model a fifth of it
    gpu = DecodeCosts(target_one_s=0.020, target_batch_s=0.022, draft_one_s=0.004, k=3)
    chosen = choose_draft_source("auto", vocabulary_mismatch=None, costs=gpu)
    assert chosen.source == "model" and chosen.costs == gpu
    assert chosen.reason == (
        "auto: model drafts (measured large model 20.0 ms a token, 22.0 ms a 4-token verify batch, small model "
        "4.0 ms a token; expected speed-up model 1.55x, ngram 2.68x)"
    )
    differ = "the vocabularies differ: token 0 is 'a' in 's' and 'b' in 'l'"
    assert choose_draft_source("auto", vocabulary_mismatch=differ, costs=gpu).source == "ngram"
    # this CPU's Qwen2.5-Coder pair: a 4-token batch costs ~3 tokens, the small model ~0.45 of one
    cpu = DecodeCosts(target_one_s=0.0539, target_batch_s=0.1531, draft_one_s=0.0229, k=3)
    off = choose_draft_source("auto", vocabulary_mismatch=None, costs=cpu)
    assert off.source == "off"
    assert off.reason.startswith("auto: no drafts, none is expected to be faster (measured large model 53.9 ms")
    assert off.reason.endswith("expected speed-up model 0.65x, ngram 1.04x)")
    assert off.legend_text == off.reason  # auto says why it drafts nothing
    assert Speculation("off", "speculative decoding is off").legend_text is None
    # prompt lookup where model drafts do not pay but a matched lookup draft does
    cheap_batch = DecodeCosts(target_one_s=0.05, target_batch_s=0.1, draft_one_s=0.04, k=3)
    assert choose_draft_source("auto", vocabulary_mismatch=None, costs=cheap_batch).source == "ngram"
    assert choose_draft_source("model", vocabulary_mismatch=None, costs=cpu).source == "model"  # as asked


def test_decode_costs_leave_the_sessions_as_they_were(demo_pair):
    _, small, large = demo_pair
    greedy = Sampling(temperature=0.0)
    before = {}
    for session in (small, large):
        session.start(NATALIA, sampling=greedy)
        before[session.name] = session.next_token_logits()
    costs = backend.decode_costs(small, large, k=3)
    assert costs.k == 3 and costs.target_one_s > 0 and costs.target_batch_s > 0 and costs.draft_one_s > 0
    for session in (small, large):
        assert session.evaluated_tokens() == 0
        session.start(NATALIA, sampling=greedy)
        assert (session.next_token_logits() == before[session.name]).all()  # bit for bit
    assert backend.decode_costs(None, large, k=1).draft_one_s is None


def test_explicit_sources_are_taken_as_asked():
    differ = "the vocabularies differ: token 0 is 'a' in 's' and 'b' in 'l'"
    assert choose_draft_source("ngram", vocabulary_mismatch=None).source == "ngram"
    assert choose_draft_source("model", vocabulary_mismatch=None).source == "model"
    assert choose_draft_source("off", vocabulary_mismatch=differ).source == "off"


class ScriptedLogits:
    """The parts of a LlamaSession a ModelDrafter uses, with scripted next-token logits."""

    name = "scripted"

    def __init__(self, rows):
        self.rows = iter(rows)
        self._tokens, self._text = [7, 7], ""

    def catch_up(self, transcript):
        self._text = transcript

    def next_token_logits(self):
        return next(self.rows)

    def _append_own(self, token):
        self._tokens.append(token)

    def _cut(self, length):
        del self._tokens[length:]

    def context_tokens(self):
        return len(self._tokens)

    def evaluated_tokens(self):
        return len(self._tokens)  # pending tokens are of no concern here


def logits_with(token: int, p: float, *, vocab: int = 4):
    """Logits whose most likely token is `token`, with probability p (the rest shared evenly)."""
    import numpy as np

    probs = np.full(vocab, (1 - p) / (vocab - 1))
    probs[token] = p
    return np.log(probs).astype(np.float32)


@pytest.mark.parametrize(
    ("p_min", "expected"), [(0.0, [0, 1, 2]), (0.5, [0, 1]), (0.61, [0]), (0.95, [])]
)  # fmt: skip
def test_a_model_draft_stops_at_the_first_token_below_the_probability_bound(p_min, expected):
    import numpy as np

    session = ScriptedLogits([logits_with(0, 0.9), logits_with(1, 0.6), logits_with(2, 0.4), logits_with(3, 0.99)])
    drafter = ModelDrafter(session, draftable=np.ones(4, dtype=bool), k=3, p_min=p_min)
    drafter.begin_step("so far", context_length=5)
    assert drafter.draft([1] * 5, limit=10) == expected
    assert session._tokens == [7, 7, *expected] and session._text == "so far"


def test_a_model_draft_stops_before_a_token_that_is_not_draftable():
    import numpy as np

    session = ScriptedLogits([logits_with(0, 0.9), logits_with(2, 0.9)])
    drafter = ModelDrafter(session, draftable=np.array([True, True, False, True]), k=3, p_min=0.0)
    drafter.begin_step("", context_length=5)
    assert drafter.draft([1] * 5, limit=10) == [0]
    # the target's tokens after the step's start are followed: its own draft that the target kept stays
    session.rows = iter([logits_with(3, 0.9)] * 3)
    assert drafter.draft([1] * 5 + [0, 9], limit=2) == [3, 3]
    assert session._tokens == [7, 7, 0, 9, 3, 3]


# -- settings, summary and table ------------------------------------------------------------------------


def test_the_speculate_pair_key_is_checked_in_models_yaml_and_on_the_command_line(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  s:\n    path: s.gguf\n  l:\n    path: l.gguf\n"
        "pairs:\n  p:\n    small: s\n    large: l\n    speculate: lookup\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:10: speculate must be one of off, auto, model, ngram, got 'lookup'"
    pair = PairSpec(name="p", small="s", large="l")
    assert pair.speculate == "off"
    assert override_pair(pair, {"speculate": "ngram"}, names={}).speculate == "ngram"
    with pytest.raises(ConfigError) as error:
        override_pair(pair, {"speculate": "small"}, names={"speculate": "--speculate"})
    assert str(error.value) == "--speculate must be one of off, auto, model, ngram, got 'small'"


def test_summary_json_and_table_carry_the_draft_counters():
    large = ModelTotals(
        steps=2, tokens=40, prefill_tokens=9, decode_calls=20, context_tokens=60,
        drafted_tokens=51, accepted_tokens=38, verify_calls=17,
    )  # fmt: skip
    small = ModelTotals(steps=1, tokens=5, prefill_tokens=9, decode_calls=5, context_tokens=60)
    assert large.acceptance_rate == 38 / 51 and small.acceptance_rate is None
    assert acceptance_cell(large) == "38/51 (75%)" and acceptance_cell(small) == "-"
    summary = Summary(
        answer="5", answer_model="large", finish_reason="eos", steps=(), large_step_rate=0.0,
        small=small, large=large, latency_s=1.0, mode="large", threshold=1.0,
    )  # fmt: skip
    record = summary_record(summary)
    assert record["drafted_tokens"] == {"small": 0, "large": 51}
    assert record["accepted_tokens"] == {"small": 0, "large": 38}
    assert record["verify_calls"] == {"small": 0, "large": 17}
    assert record["acceptance_rate"] == {"small": None, "large": 38 / 51}


# -- real models -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact(demo_config):
    """(pair, small session, large session, a second session on the large model's file) for exact verification."""
    pair = demo_config.pair("demo")
    large = dataclasses.replace(demo_config.model(pair.large), **EXACT)
    small = dataclasses.replace(demo_config.model(pair.small), **EXACT)
    sessions = open_session(small), open_session(large), open_session(large)
    yield (pair, *sessions)
    for session in sessions:
        session.speculate = None


@pytest.fixture(scope="module")
def small_twins(demo_config):
    """Two sessions on the small (chat) model's file: it ends its answers with an end-of-generation token."""
    pair = demo_config.pair("demo")
    small = dataclasses.replace(demo_config.model(pair.small), **EXACT)
    return open_session(small), open_session(small)


class RecordingDrafter:
    """A drafter that records its drafts (and can raise on a given call)."""

    def __init__(self, inner, *, raise_on_call: int | None = None) -> None:
        self.inner, self.k = inner, inner.k
        self.drafts: list[list[int]] = []
        self.raise_on_call = raise_on_call

    def draft(self, context, *, limit):
        if self.raise_on_call is not None and len(self.drafts) + 1 == self.raise_on_call:
            self.drafts.append([])
            raise KeyboardInterrupt
        out = self.inner.draft(context, limit=limit)
        self.drafts.append(list(out))
        return out

    def reset(self):
        self.inner.reset()

    def truncate(self, length):
        self.inner.truncate(length)

    def begin_step(self, transcript, *, context_length):
        self.inner.begin_step(transcript, context_length=context_length)

    def end_step(self, text):
        self.inner.end_step(text)


class ScriptedDrafter:
    """Drafts the model's known continuation, with the token at `wrong` (0-based in each draft) altered."""

    def __init__(self, reference: list[int], *, prompt_len: int, wrong: int | None, k: int = 3) -> None:
        self.reference, self.prompt_len, self.wrong, self.k = reference, prompt_len, wrong, k
        self.drafts: list[list[int]] = []

    def draft(self, context, *, limit):
        at = len(context) - self.prompt_len
        out = list(self.reference[at : at + min(self.k, limit)])
        if self.wrong is not None and self.wrong < len(out):
            out[self.wrong] += 1
        self.drafts.append(out)
        return out

    def reset(self):
        pass

    def truncate(self, length):
        pass

    def begin_step(self, transcript, *, context_length):
        pass

    def end_step(self, text):
        pass


def cached_positions(session) -> int:
    memory = llama_cpp.llama_get_memory(session._llm.ctx)
    return llama_cpp.llama_memory_seq_pos_max(memory, 0) + 1


def assert_cache_is_exact(session) -> None:
    """The KV cache holds the first evaluated_tokens() tokens and nothing else; the transcript is what it holds."""
    n = session.evaluated_tokens()
    assert cached_positions(session) == n <= session.context_tokens()
    assert list(session._llm.input_ids[:n]) == session._tokens[:n]
    assert session.held_text() == session.text


def state(session) -> tuple:
    """What must not depend on speculation: transcript, tokens, what the cache holds, the next logits."""
    return session.text, list(session._tokens), session.evaluated_tokens(), session.next_token_logits().tobytes()


_DRAFTABLE: dict[tuple[int, int], object] = {}


def twin_drafter(twin, target, problem, *, k=3, p_min=0.0):
    """A model drafter on `twin` (a second session on a file with the target's vocabulary), started on the
    problem as the router starts the small model; p_min 0: every draft holds k tokens."""
    twin.start(problem, sampling=GREEDY)
    key = id(twin), id(target)
    if key not in _DRAFTABLE:
        draftable, mismatch = draftable_tokens(twin, target)
        assert mismatch is None
        _DRAFTABLE[key] = draftable
    return ModelDrafter(twin, draftable=_DRAFTABLE[key], k=k, p_min=p_min)


def with_drafter(session, drafter):
    """The session verifies this drafter's drafts; returns the drafter."""
    session.speculate = drafter
    return drafter


@pytest.mark.parametrize(("mode", "problem"), [("glimp", 1), ("large", 2)])
def test_temperature_zero_runs_are_identical_with_ngram_drafts(exact, mode, problem):
    pair, small, large, _ = exact
    settings = router_settings(pair, sampling=GREEDY)
    text = gsm8k_problem(problem)
    large.speculate = None
    plain = run(text, small=small, large=large, settings=settings, policy=make_policy(mode))
    plain_cache = large.text, large.evaluated_tokens()
    with_drafter(large, NgramDrafter(k=3))
    drafted = run(text, small=small, large=large, settings=settings, policy=make_policy(mode))
    large.speculate = None
    assert [(s.model, s.text, s.finish) for s in drafted.steps] == [(s.model, s.text, s.finish) for s in plain.steps]
    assert drafted.answer == plain.answer and drafted.finish_reason == plain.finish_reason
    assert (large.text, large.evaluated_tokens()) == plain_cache  # the same tokens are evaluated and pending
    assert 0 < drafted.large.accepted_tokens < drafted.large.drafted_tokens  # some drafts kept, some rejected
    assert drafted.large.decode_calls < plain.large.decode_calls
    assert drafted.large.tokens == plain.large.tokens
    assert_cache_is_exact(large)


def test_a_drafter_on_the_same_model_file_has_every_draft_accepted(exact):
    _, _, large, twin = exact
    problem = gsm8k_problem(1)
    large.speculate = None
    large.start(problem, sampling=GREEDY)
    plain = write(large, max_tokens=27)
    large.start(problem, sampling=GREEDY)
    drafter = with_drafter(large, RecordingDrafter(twin_drafter(twin, large, problem)))
    out = write(large, max_tokens=27)
    large.speculate = None
    assert out == plain and out.tokens == 27
    # the first token is sampled from the prompt's logits; then 6 batches of k + 1 = 4 tokens, then 1 draft + 1
    assert [len(d) for d in drafter.drafts] == [3] * 6 + [1]
    counters = large.counters
    assert (counters.verify_calls, counters.drafted_tokens, counters.accepted_tokens) == (7, 19, 19)
    assert_cache_is_exact(large)
    # the drafter's session now holds the step as its own transcript: its drafts were kept and evaluated but its
    # last draft and the target's token after it, which are pending, as a catch-up would leave them
    assert twin.text == large.text == out.text
    assert twin._tokens == large._tokens
    assert twin.evaluated_tokens() == len(twin._tokens) - 2
    assert_cache_is_exact(twin)
    twin_catch_up_free = twin.counters.prefill_tokens
    twin.catch_up(large.text)  # the next probe's catch-up: nothing to add
    assert twin.counters.prefill_tokens == twin_catch_up_free and twin._tokens == large._tokens


@pytest.mark.parametrize("wrong", [0, 1, 2])
def test_a_rejection_at_any_draft_position_keeps_the_models_text(exact, wrong):
    _, _, large, _ = exact
    large.speculate = None
    large.start(NATALIA, sampling=GREEDY)
    plain = write(large, max_tokens=30)
    prompt_len = len(large.prompt_tokens(NATALIA))
    reference = large._tokens[prompt_len:]
    drafter = with_drafter(large, ScriptedDrafter(reference, prompt_len=prompt_len, wrong=wrong))
    large.start(NATALIA, sampling=GREEDY)
    out = write(large, max_tokens=30)
    large.speculate = None
    assert out == plain
    # each batch keeps the drafts before the wrong one, then the model's own token in its place
    assert [len(d) for d in drafter.drafts] == expected_draft_lengths(30, wrong=wrong)
    counters = large.counters
    assert counters.verify_calls == len(drafter.drafts)
    assert counters.drafted_tokens == sum(len(d) for d in drafter.drafts)
    assert counters.accepted_tokens == sum(min(wrong, len(d)) for d in drafter.drafts)
    assert_cache_is_exact(large)


def expected_draft_lengths(max_tokens: int, *, wrong: int, k: int = 3) -> list[int]:
    """The drafts' lengths when each batch keeps `wrong` drafts and one token of the model's own."""
    lengths, sampled = [], 1  # the first token is sampled from the prompt's logits, without a draft
    while sampled < max_tokens:
        room = min(k, max_tokens - sampled - 1)  # a draft leaves room for the model's own token
        if room <= 0:
            sampled += 1
            continue
        lengths.append(room)
        sampled += min(wrong, room) + 1
    return lengths


@pytest.mark.parametrize("cut", [False, True], ids=["stop-at-token-end", "stop-inside-token"])
def test_a_stop_string_inside_an_accepted_run_leaves_the_cache_as_without_drafts(exact, cut):
    _, _, large, twin = exact
    large.speculate = None
    large.start(NATALIA, sampling=GREEDY)
    write(large, max_tokens=12)
    prompt_len = len(large.prompt_tokens(NATALIA))
    pieces = [large._piece_bytes(t) for t in large._tokens[prompt_len:]]
    # tokens 1-4 come from the first batch, 5-8 from the second (5, 6, 7 drafted): the stop ends in token 6
    if cut and len(pieces[6]) < 2:
        pytest.skip("token 6 of this build's text is one byte: nothing to cut")
    stop = b"".join(pieces[:6]) + (pieces[6][:1] if cut else pieces[6])
    stops = (stop.decode("utf-8"),)

    def two_steps(make_drafter):
        large.start(NATALIA, sampling=GREEDY)
        large.speculate = make_drafter()
        first = write(large, stops=stops, max_tokens=20)
        after_first = state(large)
        assert_cache_is_exact(large)
        second = write(large, max_tokens=8)
        return first, after_first, second, state(large)

    plain = two_steps(lambda: None)
    drafted = two_steps(lambda: RecordingDrafter(twin_drafter(twin, large, NATALIA)))
    drafter = large.speculate
    large.speculate = None
    assert twin.text == large.text
    assert_cache_is_exact(twin)
    assert drafted[0].text == stop.decode("utf-8") and drafted[0].finish == "stop"
    assert drafted == plain
    assert [len(d) for d in drafter.drafts[:2]] == [3, 3]  # the stop came inside the second batch's drafts


def test_an_end_of_generation_token_inside_a_draft_ends_the_step_as_without_drafts(small_twins):
    target, twin = small_twins
    target.speculate = None
    target.start(NATALIA, sampling=GREEDY)
    plain = write(target, max_tokens=400)
    plain_state = state(target)
    assert plain.finish == "eos"
    prompt_len = len(target.prompt_tokens(NATALIA))
    reference = target._tokens[prompt_len:] + [target._llm.token_eos()]
    # every draft is right; k is chosen so that the end falls inside a draft, not on a batch's bonus token
    k = next(k for k in range(3, 10) if plain.tokens % (k + 1) != 0)
    scripted = ScriptedDrafter(reference, prompt_len=prompt_len, wrong=None, k=k)
    for make in (lambda: scripted, lambda: RecordingDrafter(twin_drafter(twin, target, NATALIA))):
        target.start(NATALIA, sampling=GREEDY)
        with_drafter(target, make())
        assert write(target, max_tokens=400) == plain
        target.speculate = None
        # the logits after the last token are read from its row of the batch
        assert state(target) == plain_state
        assert_cache_is_exact(target)
    assert target.is_eos(scripted.drafts[-1][-1])  # the target accepted the drafts before it, then sampled it


@pytest.mark.parametrize("where", ["between-batch-and-settle", "drafter-raises"])
def test_an_interrupted_verified_step_leaves_both_caches_consistent(exact, where):
    _, _, large, twin = exact
    large.speculate = None
    large.start(NATALIA, sampling=GREEDY)
    whole = write(large, max_tokens=16)
    prompt = len(large.prompt_tokens(NATALIA))
    large.start(NATALIA, sampling=GREEDY)
    drafter = RecordingDrafter(
        twin_drafter(twin, large, NATALIA), raise_on_call=2 if where == "drafter-raises" else None
    )
    with_drafter(large, drafter)
    if where == "drafter-raises":
        with pytest.raises(KeyboardInterrupt):
            write(large, max_tokens=16)
    else:
        # piece 1 is the first token; pieces 2-5 come from one batch: stop after piece 3, inside it
        assert write(large, max_tokens=16, stop_after=3) is None
    assert large.counters.verify_calls == 1
    # the step's tokens are gone, and so is the prompt's last one, whose logits the batch overwrote
    assert large.text == "" and large.context_tokens() == prompt
    assert large.evaluated_tokens() == prompt - 1 == cached_positions(large)
    # the drafter's session is back at the step's start: its prompt, nothing of the step
    assert twin.text == "" and twin._tokens == large._tokens
    assert cached_positions(twin) == twin.evaluated_tokens()
    drafter.raise_on_call = None
    assert write(large, max_tokens=16) == whole
    large.speculate = None
    assert_cache_is_exact(large)
    assert cached_positions(twin) == twin.evaluated_tokens()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_sampled_step_with_drafts_is_the_same_draw_as_without(exact, seed):
    """At temperature > 0 the rows are sampled in order from the model's own chain: with equal logits, the same
    seed draws the same tokens, whatever the drafts (so the distribution is the model's)."""
    _, _, large, twin = exact
    sampling = Sampling(temperature=0.8, top_p=0.95, seed=seed)
    large.speculate = None
    large.start(NATALIA, sampling=sampling)
    plain = write(large, max_tokens=30)
    results = []
    for make in (lambda: NgramDrafter(k=3), lambda: twin_drafter(twin, large, NATALIA)):
        large.start(NATALIA, sampling=sampling)
        with_drafter(large, make())
        results.append((write(large, max_tokens=30), large.counters.drafted_tokens, large.counters.accepted_tokens))
        large.speculate = None
        assert_cache_is_exact(large)
    assert [out for out, _, _ in results] == [plain, plain]
    # the greedy drafter's guesses are checked against sampled tokens: some rejected
    _, drafted, accepted = results[1]
    assert 0 < accepted < drafted


def test_the_ask_legend_names_the_draft_source_only_when_speculating():
    lines = []
    for speculation in (None, Speculation("off", "off"), Speculation("ngram", "auto: prompt lookup, since x")):
        console = Console(record=True, width=200)
        LiveRenderer(console, small_name="s", large_name="l").legend(
            mode="glimp", threshold=1.0, entropy_mode="full", speculation=speculation
        )
        lines.append(console.export_text().strip())
    assert lines[0] == lines[1] == "■ small = s   ■ large = l   mode glimp · threshold 1 nats (full entropy)"
    assert lines[2] == lines[0] + " · large model verifies ngram drafts (auto: prompt lookup, since x)"


def test_bench_sums_the_large_models_drafts_per_mode_and_names_the_rate_under_its_table():
    def record(problem_id, drafts):
        base = {
            "id": problem_id, "correct": True, "finish_reason": "eos", "latency_s": 1.0, "steps": 2,
            "large_steps": 2, "tokens": {"small": 0, "large": 10},
        }  # fmt: skip
        return {**base, "drafts": drafts} if drafts else base

    records = [
        record(1, {"drafted": 8, "accepted": 6, "verify_calls": 3}),
        record(2, {"drafted": 2, "accepted": 0, "verify_calls": 1}),
        record(3, None),  # no draft found in this problem
    ]
    drafted = bench._condition_summary(bench.Condition("large"), records, {})
    plain = bench._condition_summary(bench.Condition("small"), [record(1, None)], {})
    assert drafted["draft_acceptance"] == 0.6 and plain["draft_acceptance"] is None
    summary = {
        "pair": "demo", "small": "s", "large": "l", "results": 4, "sampling": {},
        "conditions": [drafted, plain],
    }  # fmt: skip
    assert bench.summary_caption(summary).endswith(" · large-model drafts accepted: large 60%")


def test_a_bad_speculate_option_is_one_line_before_any_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(cli, "open_pair", lambda *_: pytest.fail("a model was loaded"))
    code, err = run_main(monkeypatch, capsys, "ask", "What is 2 + 3?", "--speculate", "lookup")
    assert code == 2
    assert one_error_line(err) == "--speculate must be one of off, auto, model, ngram, got 'lookup'"


def test_ask_with_ngram_speculation_reports_the_large_models_drafts_in_json(tmp_path):
    args = ["ask", NATALIA, "--json", "--mode", "large", "--speculate", "ngram", "--temperature", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "glimp_cli", *args, "--max-step-tokens", "16", "--thinking-budget", "24"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["verify_calls"]["small"] == summary["drafted_tokens"]["small"] == 0
    assert summary["verify_calls"]["large"] > 0
    drafted, accepted = summary["drafted_tokens"]["large"], summary["accepted_tokens"]["large"]
    assert summary["acceptance_rate"] == {"small": None, "large": accepted / drafted}


def test_speculation_without_the_exact_settings_says_how_to_get_them(capsys):
    import types

    from glimp_cli.cli import speculate_with
    from glimp_cli.config import ModelSpec

    def session(name, **settings):
        return types.SimpleNamespace(spec=ModelSpec(name=name, path=f"{name}.gguf", **settings), speculate=None)

    pair = PairSpec(name="p", small="s", large="big", speculate="ngram")
    small, loose = session("s"), session("big", flash_attn=True, repack=True)
    assert speculate_with(small, loose, pair).source == "ngram"
    assert isinstance(loose.speculate, NgramDrafter) and small.speculate is None
    assert capsys.readouterr().err == (
        "glimp: note: drafts are verified in batches; for the greedy text exactly as without them, give 'big' "
        "flash_attn: true and repack: false in models.yaml (the defaults when speculating)\n"
    )
    exact = session("big", flash_attn=True, repack=False)
    speculate_with(small, exact, pair)  # the small model's settings do not matter to prompt lookup
    off = session("big")
    speculate_with(small, off, dataclasses.replace(pair, speculate="off"))
    assert exact.speculate is not None and off.speculate is None and capsys.readouterr().err == ""


def test_unset_flash_attention_and_repacking_default_to_the_exact_settings_only_when_speculating():
    from glimp_cli.config import ModelSpec, speculation_settings

    unset = ModelSpec(name="m", path="m.gguf")
    assert (unset.flash_attn, unset.repack) == (None, None)
    on = speculation_settings(unset, speculating=True)
    off = speculation_settings(unset, speculating=False)
    assert (on.flash_attn, on.repack, off.flash_attn, off.repack) == (True, False, False, True)
    chosen = ModelSpec(name="m", path="m.gguf", flash_attn=False, repack=True)
    assert speculation_settings(chosen, speculating=True) == chosen
    pair, small, large = cli.resolve_pair(load_config(cli.find_config(None)), pair="demo", small=None, large=None,
                                          overrides={"speculate": "auto"})  # fmt: skip
    assert pair.speculate == "auto" and (large.flash_attn, large.repack, small.flash_attn, small.repack) == (
        True, False, True, False,
    )  # fmt: skip


FALSE_ALARM = 0.001  # the chance that the distribution test fails a correct implementation on a given seed set
SEEDS = 80  # steps per sample


def chi_square(first, second, *, categories: int) -> float:
    """Pearson's chi-square of the 2 x C table of two samples of category codes (C: the categories seen)."""
    import numpy as np

    table = np.stack([np.bincount(first, minlength=categories), np.bincount(second, minlength=categories)])
    table = table[:, table.sum(axis=0) > 0].astype(float)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def same_distribution_p(first: list, second: list, *, permutations: int = 2000) -> float:
    """The permutation p-value of chi_square: how often relabelling the pooled samples gives a statistic as large."""
    import numpy as np

    names = sorted(set(first) | set(second))
    pooled = np.array([names.index(value) for value in first + second])
    split, categories = len(first), len(names)
    observed = chi_square(pooled[:split], pooled[split:], categories=categories)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(permutations):
        shuffled = rng.permutation(pooled)
        hits += chi_square(shuffled[:split], shuffled[split:], categories=categories) >= observed
    return (hits + 1) / (permutations + 1)


def step_openings(large, seeds, *, temperature=0.8, drafter=None) -> list[str]:
    """The second and third text pieces of a step sampled at each seed (the first is sampled before any draft).

    Each step is abandoned after its third piece (rolled back, as Ctrl-C would): the prompt stays evaluated, so
    a draw costs a few decodes, not a prompt.
    """
    openings = []
    large.speculate = drafter
    try:
        for seed in seeds:
            large._make_sampler(Sampling(temperature=temperature, top_p=0.95, seed=seed))
            step = large.generate_step(first_token=None, stops=(), max_tokens=8)
            pieces = [next(step) for _ in range(3)]
            step.close()
            openings.append("".join(pieces[1:]))
    finally:
        large.speculate = None
    assert large.text == ""  # every step was rolled back
    return openings


def test_sampled_steps_with_drafts_follow_the_models_own_distribution(exact):
    """Steps drawn with drafts at one set of seeds and without at another: the same distribution (permutation
    chi-square, false-alarm rate FALSE_ALARM); and the test tells a hotter temperature apart (it can fail)."""
    _, _, large, twin = exact
    large.speculate = None
    large.start(NATALIA, sampling=GREEDY)
    plain = step_openings(large, range(SEEDS))
    drafted = step_openings(large, range(SEEDS, 2 * SEEDS), drafter=twin_drafter(twin, large, NATALIA, p_min=0.0))
    assert large.counters.verify_calls >= SEEDS  # each drafted step's second piece came from a verify batch
    assert same_distribution_p(plain, drafted) > FALSE_ALARM
    hotter = step_openings(large, range(2 * SEEDS, 3 * SEEDS), temperature=2.0)
    assert same_distribution_p(plain, hotter) <= FALSE_ALARM


def test_a_served_large_model_cannot_verify_drafts_and_a_served_small_model_cannot_draft(monkeypatch):
    import types

    from glimp_cli.cli import speculate_with
    from glimp_cli.config import ModelSpec

    def session(name, **source):
        return types.SimpleNamespace(spec=ModelSpec(name=name, **source), name=name, speculate=None)

    local = {"path": "m.gguf", "flash_attn": True, "repack": False}
    served = {"url": "http://127.0.0.1:9/v1", "model": "m"}
    with pytest.raises(ConfigError) as error:
        speculate_with(session("s", **local), session("big", **served), PairSpec("p", "s", "big", speculate="ngram"))
    assert str(error.value) == (
        "speculate: ngram: drafts are verified by in-process models only; 'big' is served at a url "
        "(set speculate: off for this pair)"
    )
    small, large = session("s", **served), session("big", **local)
    measured = []

    def costs(drafter, target, *, k):
        measured.append((drafter, target, k))
        return DecodeCosts(target_one_s=0.05, target_batch_s=0.1, draft_one_s=None, k=k)

    monkeypatch.setattr(backend, "decode_costs", costs)
    auto = speculate_with(small, large, PairSpec("p", "s", "big", speculate="auto"))
    assert measured == [(None, large, 3)]  # a served small model is not measured: it cannot draft
    assert auto.source == "ngram"
    assert auto.reason == (
        "auto: ngram drafts (measured large model 50.0 ms a token, 100.0 ms a 4-token verify batch; expected "
        "speed-up ngram 1.48x; no model drafts: 's' is served at a url: only an in-process small model drafts)"
    )
    assert isinstance(large.speculate, NgramDrafter)
    with pytest.raises(ConfigError) as error:
        speculate_with(small, large, PairSpec("p", "s", "big", speculate="model"))
    assert str(error.value) == (
        "--speculate model: 's' is served at a url: only an in-process small model drafts; use ngram (or auto, "
        "which falls back to it)"
    )
