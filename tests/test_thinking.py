"""The think block of reasoning models: the layout from the template, opened once; the router's end and answer."""

import dataclasses

import pytest

from glimp_cli.config import PairSpec, router_settings
from glimp_cli.events import Summary
from glimp_cli.policy import make_policy
from glimp_cli.router import route
from glimp_cli.session import Sampling
from glimp_cli.thinking import ThinkLayout, open_think_block, template_thinks, think_layout
from fakes import EOS, ScriptedSession, uniform_logits

THINK = ThinkLayout(prefix="<think>\n", close="</think>")
# The end of each family's template, as llama.cpp keeps them (models/templates/*.jinja)
QWEN3_TAIL = "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
R1_TAIL = "{{'<｜Assistant｜><think>\\n'}}{% if not enable_thinking %}{{- '</think>' -}}{% endif %}"


def test_a_template_with_a_think_block_makes_a_reasoning_model():
    assert template_thinks(QWEN3_TAIL) and template_thinks(R1_TAIL)
    assert not template_thinks("{{ '<|im_start|>assistant\\n' }}")
    assert not template_thinks(None)
    assert think_layout(think_prefix=None, template=QWEN3_TAIL) == THINK
    assert think_layout(think_prefix=None, template="{{ messages }}") is None


def test_think_prefix_from_models_yaml_wins_over_the_template():
    assert think_layout(think_prefix="", template=QWEN3_TAIL) is None  # switched off
    assert think_layout(think_prefix="<reasoning>\n", template=None) == ThinkLayout("<reasoning>\n", "</reasoning>")
    assert think_layout(think_prefix="<think>", template=None) == ThinkLayout("<think>", "</think>")


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n"),  # Qwen3: the template opens no block
        ("<｜Assistant｜><think>\n", "<｜Assistant｜><think>\n"),  # R1-Distill: the template opened it
        ("<|im_start|>assistant\n<think>", "<|im_start|>assistant\n<think>\n"),  # opened without its newline
    ],
)
def test_the_think_block_is_opened_exactly_once(prompt, expected):
    assert open_think_block(prompt, THINK) == expected
    assert open_think_block(prompt, None) == prompt


SETTINGS = router_settings(PairSpec("test", "small", "large", threshold=2.0), sampling=Sampling(seed=0))


def _run(small, large, **overrides):
    settings = dataclasses.replace(SETTINGS, **overrides)
    events = list(route("6 * 7?", small=small, large=large, settings=settings, policy=make_policy("glimp")))
    assert isinstance(events[-1], Summary)
    return events[-1], large


def test_a_reasoning_answerer_continues_after_the_close_tag_the_thinking_wrote():
    small = ScriptedSession("small", logits=[uniform_logits(2)] * 2, steps=["a\n\n", "b</think>"], think=THINK)
    large = ScriptedSession("large", steps=[[*"\n\n42", EOS]], think=THINK)
    summary, large = _run(small, large, end_markers=(), answer_prefix="Answer:")
    assert summary.finish_reason == "end_marker"  # the close tag ends the thinking though not configured
    assert large.generate_calls[-1].text_before == "a\n\nb</think>" + "Answer:"
    assert summary.answer == "\n\n42"


def test_thinking_cut_by_the_budget_is_closed_for_the_answerer_as_the_original_does():
    small = ScriptedSession("small", logits=[uniform_logits(2)] * 2, steps=["ab\n\n", "cd\n\n"], think=THINK)
    large = ScriptedSession("large", steps=[[*"42", EOS]], think=THINK)
    summary, large = _run(small, large, thinking_budget=8, answer_prefix="")
    assert summary.finish_reason == "budget"
    assert large.generate_calls[-1].text_before == "ab\n\ncd\n\n" + "\n</think>\n\n"
    assert summary.answer == "42"


def test_reasoning_models_do_not_stop_thinking_at_an_answer_marker():
    small = ScriptedSession("small", logits=[uniform_logits(2)], steps=["so \\boxed{4} maybe</think>"], think=THINK)
    large = ScriptedSession("large", steps=[[*"\\boxed{42}", EOS]], think=THINK)
    summary, large = _run(small, large)
    assert [s.text for s in summary.steps] == ["so \\boxed{4} maybe</think>"]
    assert summary.finish_reason == "end_marker"
    assert large.generate_calls[0].stops == ()  # the answer's stops: no think tag, no marker
    assert summary.answer == "\\boxed{42}"


def test_models_without_a_think_block_keep_the_answer_markers_and_prefix():
    small = ScriptedSession("small", logits=[uniform_logits(2)], steps=["so \\boxed{"])
    large = ScriptedSession("large", steps=[[*"42}", EOS]])
    summary, large = _run(small, large, answer_prefix="The answer is")
    assert summary.finish_reason == "answer_marker"
    assert large.generate_calls[-1].text_before == "so \\boxed{"  # no prefix inside the marker
    assert summary.answer == "\\boxed{42}"
