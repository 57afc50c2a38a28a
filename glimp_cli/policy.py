"""Routing policies: pure functions of (entropy, threshold, rng) -> 'small' | 'large'."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from glimp_cli.errors import ConfigError, did_you_mean

Choice = Literal["small", "large"]
MODES: tuple[str, ...] = ("glimp", "small", "large", "random")


def glimp_policy(entropy: float | None, threshold: float, rng: random.Random) -> Choice:
    """GlimpRouter: the small model keeps the step when its first token is confident."""
    return "small" if entropy is not None and entropy <= threshold else "large"


def small_policy(entropy: float | None, threshold: float, rng: random.Random) -> Choice:
    return "small"


def large_policy(entropy: float | None, threshold: float, rng: random.Random) -> Choice:
    return "large"


def random_policy(entropy: float | None, threshold: float, rng: random.Random, *, rate: float) -> Choice:
    """The matched-rate control: large with probability `rate`."""
    return "large" if rng.random() < rate else "small"


@dataclass(frozen=True)
class Policy:
    name: str
    choose: Callable[[float | None, float, random.Random], Choice]
    # Probing costs a small-model evaluation; policies that ignore entropy skip it.
    needs_probe: bool


def make_policy(mode: str, *, rate: float = 0.25) -> Policy:
    """The policy for a `--mode` name."""
    if mode == "glimp":
        return Policy("glimp", glimp_policy, needs_probe=True)
    if mode == "small":
        return Policy("small", small_policy, needs_probe=True)
    if mode == "large":
        return Policy("large", large_policy, needs_probe=False)
    if mode == "random":
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--rate must be between 0 and 1, got {rate}")
        return Policy("random", functools.partial(random_policy, rate=rate), needs_probe=False)
    raise ConfigError(f"unknown mode '{mode}'{did_you_mean(mode, MODES)}; choose one of {', '.join(MODES)}")
