"""The contract between the router and an inference engine (one session per model)."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from glimp_cli.thinking import ThinkLayout

DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Sampling:
    temperature: float = DEFAULT_TEMPERATURE  # 0 = greedy
    top_p: float = DEFAULT_TOP_P
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class FirstToken:
    """A probe's result: the first token of the next step, not yet part of the transcript."""

    token: object  # opaque: only the session that made it continues from it (generate_step)
    text: str
    entropies: Mapping[str, float]  # nats, by entropy mode; the modes the session supports


@dataclass(frozen=True)
class StepOutput:
    text: str  # exactly what was appended to the session's transcript
    tokens: int  # tokens sampled by the model (EOS not counted)
    finish: str  # "stop" | "eos" | "length"
    stop: str | None = None  # the stop string `text` ends with, when finish == "stop"


@dataclass
class Counters:
    prefill_tokens: int = 0  # evaluated, not sampled by this model: prompt, catch-up, boundary re-tokenization
    decode_calls: int = 0  # engine calls after the prompt's (llama_decode for llama.cpp)
    generated_tokens: int = 0  # sampled and kept (EOS not counted)
    evaluated_tokens: int = 0  # every token handed to the engine, counted independently of the cache
    drafted_tokens: int = 0  # speculative decoding: draft tokens handed to the model to verify
    accepted_tokens: int = 0  # of which the model sampled the same token (kept unless a stop string cut them)
    verify_calls: int = 0  # engine calls that verified a draft (also counted in decode_calls)
    cached_tokens: int | None = None  # a server's prompt tokens served from its prefix cache; None: none reported

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens; None when nothing was drafted."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None


class Session(Protocol):
    """One model's context: its prompt plus the shared transcript, never re-prefilled."""

    counters: Counters
    entropy_modes: tuple[str, ...]  # what probe() can measure: "full" (whole vocabulary), "topk"
    think: ThinkLayout | None  # a reasoning model: its prompt opens the think block; None: no think block

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        """Reset to this problem's prompt and a fresh sampler; check `reserve` tokens fit after it."""

    @property
    def text(self) -> str:
        """The transcript this session's cache holds (after its prompt)."""

    def catch_up(self, transcript: str) -> None:
        """Append what `transcript` has beyond `self.text` (evaluated when next needed)."""

    def context_room(self) -> int:
        """Tokens that still fit in the context window."""

    def context_tokens(self) -> int:
        """Tokens the context holds (prompt + transcript), evaluated or pending."""

    def probe(self, *, top_k: int) -> FirstToken:
        """Sample the next token and measure the entropy of its distribution in every supported mode
        (topk: over the top_k most likely tokens, renormalised); the transcript does not change."""

    def generate_step(
        self, *, first_token: object | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        """Write until a stop string, EOS or max_tokens, starting with a probe's token if given;
        yields safe text pieces, returns the step."""
