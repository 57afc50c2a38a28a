"""The contract between the router and an inference engine (one per model)."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Sampling:
    temperature: float = DEFAULT_TEMPERATURE  # 0 = greedy
    top_p: float = DEFAULT_TOP_P
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class StepOutput:
    text: str  # exactly what was appended to the session's transcript
    tokens: int  # tokens sampled by the model (EOS not counted)
    finish: str  # "stop" | "eos" | "length"
    stop: str | None = None  # the stop string `text` ends with, when finish == "stop"


@dataclass
class Counters:
    prefill_tokens: int = 0  # evaluated, not sampled by this model: prompt, catch-up, boundary re-tokenization
    decode_calls: int = 0  # llama_decode calls after the prompt's
    generated_tokens: int = 0  # sampled and kept (EOS not counted)
    evaluated_tokens: int = 0  # every token handed to llama_decode, counted independently of the cache
    single_after_batch: int = 0  # one-token decodes right after a multi-token call (a CUDA build rebuilds its graph there)


class Session(Protocol):
    """One model's context: its prompt plus the shared transcript, never re-prefilled."""

    counters: Counters

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        """Reset to this problem's prompt (evaluated lazily) and a fresh sampler; check `reserve` tokens fit after it."""

    @property
    def text(self) -> str:
        """The transcript this session's cache holds (after its prompt)."""

    def catch_up(self, transcript: str) -> None:
        """Append what `transcript` has beyond `self.text`; evaluated in one batch when next needed."""

    def context_room(self) -> int:
        """Tokens that still fit in the context window."""

    def context_tokens(self) -> int:
        """Tokens the context holds (prompt + transcript), evaluated or pending."""

    def next_token_logits(self) -> np.ndarray:
        """A copy of the next-token logits (evaluates pending tokens first)."""

    def sample(self) -> int:
        """Sample the next token from the current logits without evaluating it."""

    def token_text(self, token: int) -> str:
        """The text of one token."""

    def generate_step(
        self, *, first_token: int | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        """Write until a stop string, EOS or max_tokens; yields safe text pieces, returns the step."""
