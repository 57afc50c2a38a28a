"""benchmarks/diagnostics/calls.py's reading of a run of one-token calls: which positions cost more."""

from __future__ import annotations

import llama_cpp  # noqa: F401  # isort: skip  (before numpy, as everywhere)

from benchmarks.diagnostics import calls


def test_dear_calls_are_the_ones_well_above_the_calls_around_them():
    # from position 250: three calls after the prompt (skipped however dear), steady 1.0, and the
    # two calls at the 256-cell step at 2.9 and 2.75
    seconds = [3.0, 2.5, 1.25] + [1.0] * 3 + [2.9, 2.75] + [1.0] * 20
    assert calls.dear_calls(250, seconds) == [(256, 1.9), (257, 1.75)]


def test_no_dear_calls_in_a_run_that_only_wanders():
    seconds = [1.0 + 0.01 * (i % 7) for i in range(40)]
    assert calls.dear_calls(0, seconds) == []
    assert calls.dear_calls(0, seconds, factor=1.001) != []  # the threshold is what decides


def test_repeated_tokens_fill_any_length_from_a_short_prompt():
    assert calls.repeated_tokens([7, 8, 9], 7) == [7, 8, 9, 7, 8, 9, 7]
    assert calls.repeated_tokens([7, 8, 9], 2) == [7, 8]
