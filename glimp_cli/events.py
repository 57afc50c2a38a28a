"""Typed records the routing loop yields; renderers, bench and calibrate consume them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Probe:
    """The small model's first-token entropy at the start of a step (nats)."""

    step: int
    entropy: float  # in the mode the router uses
    entropy_full: float | None  # both modes where the engine measures them (calibrate reads them)
    entropy_topk: float | None
    token_text: str
    model: str  # chosen writer: "small" | "large"
    threshold: float


@dataclass(frozen=True)
class Delta:
    """Text a model just wrote (streaming; never crosses a stop string)."""

    step: int  # 0 for the final answer
    model: str
    text: str


@dataclass(frozen=True)
class Step:
    """One finished reasoning step."""

    index: int
    model: str
    text: str
    tokens: int
    entropy: float | None  # nats, in the router's mode; None when the step was not probed
    entropy_full: float | None
    entropy_topk: float | None
    seconds: float
    finish: str  # "delimiter" | "eos" | "end_marker" | "answer_marker" | "step_cap" | "budget" | "context"


@dataclass(frozen=True)
class Answer:
    text: str
    model: str
    tokens: int
    seconds: float


@dataclass(frozen=True)
class ModelTotals:
    """Per-model counters for one problem."""

    steps: int
    tokens: int  # generated (thinking + answer)
    prefill_tokens: int  # evaluated but not sampled by this model (prompt, catch-up)
    decode_calls: int  # llama_decode calls after the prompt
    context_tokens: int  # tokens its cache holds at the end
    drafted_tokens: int = 0  # speculative decoding: draft tokens the model verified
    accepted_tokens: int = 0  # of which it sampled the same token
    verify_calls: int = 0  # decode calls that verified a draft (part of decode_calls)
    cached_tokens: int | None = None  # a server's prompt tokens served from its prefix cache; None: not reported

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None


@dataclass(frozen=True)
class Summary:
    """Exactly one per run, last: the finish reason and totals."""

    answer: str
    answer_model: str
    finish_reason: str
    steps: tuple[Step, ...]
    large_step_rate: float
    small: ModelTotals
    large: ModelTotals
    latency_s: float
    mode: str
    threshold: float

    @property
    def generated_tokens(self) -> int:
        return self.small.tokens + self.large.tokens

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.latency_s if self.latency_s > 0 else 0.0


Event = Probe | Delta | Step | Answer | Summary


def event_record(event: Event) -> dict[str, Any]:
    """A JSON-ready dict with a `type` field (the `--json` schema)."""
    if isinstance(event, Summary):
        return summary_record(event)
    return {"type": type(event).__name__.lower(), **dataclasses.asdict(event)}


def summary_record(summary: Summary) -> dict[str, Any]:
    per_model = {"small": summary.small, "large": summary.large}
    return {
        "type": "summary",
        "answer": summary.answer,
        "answer_model": summary.answer_model,
        "finish_reason": summary.finish_reason,
        "mode": summary.mode,
        "threshold": summary.threshold,
        "steps": [
            {
                "model": s.model,
                "entropy": s.entropy,
                "entropy_full": s.entropy_full,
                "entropy_topk": s.entropy_topk,
                "tokens": s.tokens,
                "text": s.text,
                "seconds": round(s.seconds, 6),
                "finish": s.finish,
            }
            for s in summary.steps
        ],
        "large_step_rate": summary.large_step_rate,
        "tokens": {name: t.tokens for name, t in per_model.items()},
        "prefill_tokens": {name: t.prefill_tokens for name, t in per_model.items()},
        "decode_calls": {name: t.decode_calls for name, t in per_model.items()},
        "context_tokens": {name: t.context_tokens for name, t in per_model.items()},
        "drafted_tokens": {name: t.drafted_tokens for name, t in per_model.items()},
        "accepted_tokens": {name: t.accepted_tokens for name, t in per_model.items()},
        "verify_calls": {name: t.verify_calls for name, t in per_model.items()},
        "cached_tokens": {name: t.cached_tokens for name, t in per_model.items()},
        "acceptance_rate": {name: t.acceptance_rate for name, t in per_model.items()},
        "step_counts": {name: t.steps for name, t in per_model.items()},
        "latency_s": round(summary.latency_s, 6),
        "tokens_per_s": round(summary.tokens_per_s, 3),
    }
