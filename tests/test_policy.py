"""Tests for glimp_cli.policy: routing choices and the --mode / --rate parsing."""

import math
import random

import pytest

from glimp_cli.errors import ConfigError
from glimp_cli.policy import MODES, glimp_policy, large_policy, make_policy, random_policy, small_policy

THRESHOLD = 1.5
DRAWS = 10_000


def test_glimp_keeps_the_step_small_at_the_threshold():
    assert glimp_policy(THRESHOLD, THRESHOLD, random.Random(0)) == "small"


def test_glimp_keeps_the_step_small_below_the_threshold():
    assert glimp_policy(0.0, THRESHOLD, random.Random(0)) == "small"


def test_glimp_escalates_just_above_the_threshold():
    assert glimp_policy(math.nextafter(THRESHOLD, math.inf), THRESHOLD, random.Random(0)) == "large"


def test_glimp_escalates_without_an_entropy():
    assert glimp_policy(None, THRESHOLD, random.Random(0)) == "large"


def test_glimp_does_not_draw_from_the_rng():
    rng = random.Random(5)
    glimp_policy(0.1, THRESHOLD, rng)
    glimp_policy(9.0, THRESHOLD, rng)
    assert rng.random() == random.Random(5).random()


@pytest.mark.parametrize("entropy", [None, 0.0, THRESHOLD, 99.0])
def test_small_and_large_policies_are_constant(entropy):
    assert small_policy(entropy, THRESHOLD, random.Random(0)) == "small"
    assert large_policy(entropy, THRESHOLD, random.Random(0)) == "large"


def test_random_policy_is_reproducible_with_a_seeded_rng():
    rng_a, rng_b = random.Random(11), random.Random(11)
    sequence_a = [random_policy(None, THRESHOLD, rng_a, rate=0.3) for _ in range(200)]
    sequence_b = [random_policy(None, THRESHOLD, rng_b, rate=0.3) for _ in range(200)]
    assert sequence_a == sequence_b
    assert {"small", "large"} == set(sequence_a)


def test_random_policy_escalates_exactly_when_the_draw_is_below_the_rate():
    draws = random.Random(3)
    expected = ["large" if draws.random() < 0.4 else "small" for _ in range(100)]
    rng = random.Random(3)
    assert [random_policy(0.0, THRESHOLD, rng, rate=0.4) for _ in range(100)] == expected


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.9])
def test_random_policy_escalates_at_the_requested_rate(rate):
    rng = random.Random(1234)
    large = sum(random_policy(None, THRESHOLD, rng, rate=rate) == "large" for _ in range(DRAWS))
    # Binomial(10,000, rate): standard deviation sqrt(rate * (1 - rate) / n) <= 0.005; five of them
    # (<= 0.025) keeps a correct policy inside with probability > 1 - 1e-6, and a seeded rng makes it fixed.
    tolerance = 5 * math.sqrt(rate * (1 - rate) / DRAWS)
    assert abs(large / DRAWS - rate) <= tolerance


@pytest.mark.parametrize(("rate", "expected"), [(0.0, "small"), (1.0, "large")])
def test_random_policy_at_rate_zero_or_one_is_constant(rate, expected):
    rng = random.Random(0)
    assert {random_policy(None, THRESHOLD, rng, rate=rate) for _ in range(1000)} == {expected}


@pytest.mark.parametrize(
    ("mode", "needs_probe"), [("glimp", True), ("small", True), ("large", False), ("random", False)]
)
def test_make_policy_names_each_mode_and_flags_whether_it_probes(mode, needs_probe):
    policy = make_policy(mode)
    assert policy.name == mode
    assert policy.needs_probe is needs_probe


def test_make_policy_covers_every_listed_mode():
    assert [make_policy(mode).name for mode in MODES] == list(MODES)


def test_make_policy_random_uses_the_requested_rate():
    always = make_policy("random", rate=1.0)
    never = make_policy("random", rate=0.0)
    rng = random.Random(0)
    assert [always.choose(0.0, THRESHOLD, rng) for _ in range(50)] == ["large"] * 50
    assert [never.choose(99.0, THRESHOLD, rng) for _ in range(50)] == ["small"] * 50


def test_make_policy_glimp_chooses_by_entropy():
    policy = make_policy("glimp")
    assert policy.choose(THRESHOLD, THRESHOLD, random.Random(0)) == "small"
    assert policy.choose(THRESHOLD + 0.01, THRESHOLD, random.Random(0)) == "large"


def test_unknown_mode_suggests_the_closest_one():
    with pytest.raises(ConfigError) as raised:
        make_policy("glim")
    assert str(raised.value) == "unknown mode 'glim' (did you mean 'glimp'?); choose one of glimp, small, large, random"


def test_unknown_mode_without_a_close_match_lists_the_modes():
    with pytest.raises(ConfigError) as raised:
        make_policy("xyz")
    assert str(raised.value) == "unknown mode 'xyz'; choose one of glimp, small, large, random"


@pytest.mark.parametrize("rate", [-0.01, 1.01, 2.0, float("nan")])
def test_random_rate_outside_zero_to_one_is_rejected(rate):
    with pytest.raises(ConfigError, match="--rate must be between 0 and 1"):
        make_policy("random", rate=rate)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_random_rate_bounds_are_accepted(rate):
    assert make_policy("random", rate=rate).name == "random"
