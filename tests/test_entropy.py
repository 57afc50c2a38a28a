"""Tests for glimp_cli.entropy: initial-token entropy in nats from raw logits."""

import math
import random
import warnings

import numpy as np
import pytest

from glimp_cli.entropy import DEFAULT_TOP_K, full_entropy, initial_token_entropy, topk_entropy


def _reference_entropy(logits: list[float]) -> float:
    """Entropy (nats) of softmax(logits), with math only: the test's independent oracle."""
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = math.fsum(weights)
    return -math.fsum(w / total * math.log(w / total) for w in weights if w > 0.0)


def _hundred_logits(seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, 3.0) for _ in range(100)]


@pytest.mark.parametrize("n", [1, 2, 3, 20, 50, 1000])
def test_uniform_logits_have_full_entropy_ln_n(n):
    assert full_entropy(np.zeros(n)) == pytest.approx(math.log(n), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("n", "k"), [(2, 2), (20, 20), (5, 20), (50, 100)])
def test_uniform_logits_have_topk_entropy_ln_n_when_k_covers_them(n, k):
    assert topk_entropy(np.full(n, 3.5), k=k) == pytest.approx(math.log(n), rel=1e-12)


def test_uniform_over_more_than_k_tokens_has_topk_entropy_ln_k():
    assert topk_entropy(np.zeros(1000), k=20) == pytest.approx(math.log(20), rel=1e-12)
    assert topk_entropy(np.zeros(1000)) == pytest.approx(math.log(DEFAULT_TOP_K), rel=1e-12)


@pytest.mark.parametrize("mode", ["full", "topk"])
def test_one_token_with_all_others_masked_has_zero_entropy(mode):
    logits = np.array([-np.inf, 4.0, -np.inf, -np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masked entries must not raise "invalid value" warnings
        assert initial_token_entropy(logits, mode=mode, top_k=2) == 0.0


def test_two_tokens_with_logits_0_and_ln3_have_the_entropy_of_a_quarter_and_three_quarters():
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623351446188083 nats
    assert full_entropy(np.array([0.0, math.log(3.0)])) == pytest.approx(expected, rel=1e-12)
    assert topk_entropy(np.array([0.0, math.log(3.0)]), k=2) == pytest.approx(expected, rel=1e-12)


def test_topk_entropy_is_the_entropy_of_the_k_largest_renormalised():
    logits = _hundred_logits()
    largest = sorted(logits, reverse=True)[:20]
    expected = _reference_entropy(largest)
    assert topk_entropy(np.array(logits), k=20) == pytest.approx(expected, rel=1e-12)
    # and it is not the full entropy: the tail matters
    assert full_entropy(np.array(logits)) == pytest.approx(_reference_entropy(logits), rel=1e-12)
    assert abs(expected - _reference_entropy(logits)) > 1e-3


def test_topk_ignores_the_order_of_the_logits():
    logits = _hundred_logits()
    shuffled = logits[:]
    random.Random(1).shuffle(shuffled)
    assert topk_entropy(np.array(shuffled), k=20) == pytest.approx(topk_entropy(np.array(logits), k=20), rel=1e-12)


@pytest.mark.parametrize("mode", ["full", "topk"])
@pytest.mark.parametrize("shift", [-1000.0, -3.5, 42.0, 1e4])
def test_adding_a_constant_to_every_logit_leaves_the_entropy_unchanged(mode, shift):
    logits = np.array(_hundred_logits())
    base = initial_token_entropy(logits, mode=mode)
    assert initial_token_entropy(logits + shift, mode=mode) == pytest.approx(base, rel=1e-9)


@pytest.mark.parametrize("mode", ["full", "topk"])
def test_huge_logits_give_a_finite_exact_entropy(mode):
    logits = np.array([1e4, 1e4, 1e4 - 1e3, -1e4])  # exp() of any of these alone overflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entropy = initial_token_entropy(logits, mode=mode, top_k=3)
    assert math.isfinite(entropy)
    assert entropy == pytest.approx(math.log(2), rel=1e-12)  # the others have probability ~e^-1000


def test_float32_logits_give_the_float64_entropy():
    logits = _hundred_logits()
    as32 = np.array(logits, dtype=np.float32)
    rounded = [float(x) for x in as32]  # the oracle sees the same float32-rounded values
    full = full_entropy(as32)
    assert isinstance(full, float)
    assert full == pytest.approx(_reference_entropy(rounded), rel=1e-12)
    assert topk_entropy(as32, k=20) == pytest.approx(_reference_entropy(sorted(rounded, reverse=True)[:20]), rel=1e-12)


def test_entropy_is_returned_as_a_python_float():
    assert type(initial_token_entropy(np.zeros(3, dtype=np.float32))) is float
    assert type(initial_token_entropy(np.zeros(30, dtype=np.float32), mode="topk")) is float


def test_initial_token_entropy_dispatches_on_mode():
    logits = np.array(_hundred_logits())
    assert initial_token_entropy(logits) == full_entropy(logits)
    assert initial_token_entropy(logits, mode="full") == full_entropy(logits)
    assert initial_token_entropy(logits, mode="topk", top_k=5) == topk_entropy(logits, k=5)


def test_unknown_entropy_mode_raises_value_error():
    with pytest.raises(ValueError, match="unknown entropy mode 'top20'"):
        initial_token_entropy(np.zeros(3), mode="top20")


QWEN_VOCAB = 151_936  # Qwen3's padded vocabulary (R1-Distill-Qwen-32B's is 152,064)


def test_entropy_over_a_qwen_sized_vocabulary_matches_the_reference():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(QWEN_VOCAB) * 4.0).astype(np.float32)  # float32, as llama.cpp returns them
    values = [float(v) for v in logits]
    assert full_entropy(logits) == pytest.approx(_reference_entropy(values), rel=1e-9)
    top = sorted(values)[-20:]
    assert topk_entropy(logits, k=20) == pytest.approx(_reference_entropy(top), rel=1e-9)
    # padding rows of a GGUF vocabulary can be masked: they change nothing
    padded = np.concatenate([logits, np.full(128, -np.inf, dtype=np.float32)])
    assert full_entropy(padded) == pytest.approx(full_entropy(logits), rel=1e-12)
