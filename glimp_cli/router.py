"""The GlimpRouter loop: probe the small model's first token, route the step, repeat."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from glimp_cli.errors import ConfigError
from glimp_cli.events import Answer, Delta, Event, ModelTotals, Probe, Step, Summary
from glimp_cli.policy import Policy
from glimp_cli.session import Sampling, Session, StepOutput

ANSWER_PREFIX_RESERVE = 32  # tokens kept free for the answer prefix


@dataclass(frozen=True)
class RouterSettings:
    """Everything the loop needs besides the models; built by config.router_settings(), overridden with replace()."""

    threshold: float  # nats: entropy <= threshold -> the small model writes the step
    entropy_mode: str  # "full" | "topk"
    top_k: int
    delimiter: str
    end_markers: tuple[str, ...]
    answer_markers: tuple[str, ...]
    answer_prefix: str
    answer_stops: tuple[str, ...]
    answer_by: str  # "large" | "small" | "last"
    step_max_tokens: int
    thinking_budget: int
    answer_max_tokens: int
    sampling: Sampling

    @property
    def reserve(self) -> int:
        """Context kept free for the final answer."""
        return self.answer_max_tokens + ANSWER_PREFIX_RESERVE


def route(problem: str, *, small: Session, large: Session, settings: RouterSettings, policy: Policy) -> Iterator[Event]:
    """Think step by step with two models, then answer. Yields events; the last one is the Summary."""
    started = time.perf_counter()
    if policy.needs_probe and settings.entropy_mode not in small.entropy_modes:
        raise ConfigError(
            f"entropy mode '{settings.entropy_mode}' is not available from the small model's engine "
            f"(it measures {', '.join(small.entropy_modes)}): set entropy to one of those"
        )
    sessions = {"small": small, "large": large}
    settings = _with_think_close(settings, sessions.values())  # before the stop strings are built
    for session in sessions.values():
        session.start(problem, sampling=settings.sampling, reserve=settings.reserve)
    rng = random.Random(settings.sampling.seed)
    stops = (settings.delimiter, *settings.end_markers, *settings.answer_markers)
    transcript = ""
    steps: list[Step] = []
    finish_reason = None
    thinking_tokens = 0

    while finish_reason is None:
        index = len(steps) + 1
        step_started = time.perf_counter()
        first = None
        budget_left = settings.thinking_budget - thinking_tokens
        if budget_left <= 0:  # before probing: a probe costs a small-model evaluation
            finish_reason = "budget"
            break
        if policy.needs_probe:
            small.catch_up(transcript)
            if small.context_room() <= settings.reserve:
                finish_reason = "context"
                break
            first = small.probe(top_k=settings.top_k)
        entropies = first.entropies if first is not None else {}  # nats, by mode
        entropy = entropies.get(settings.entropy_mode)
        choice = policy.choose(entropy, settings.threshold, rng)

        writer = sessions[choice]
        writer.catch_up(transcript)
        room = writer.context_room() - settings.reserve
        max_tokens = min(settings.step_max_tokens, budget_left, room)
        if max_tokens <= 0:  # the budget was checked above: only the context can be full
            finish_reason = "context"
            break
        # Yielded only once the step will be written: no Probe for a step cut off before it starts.
        if first is not None:
            yield Probe(
                step=index,
                entropy=entropy,
                entropy_full=entropies.get("full"),
                entropy_topk=entropies.get("topk"),
                token_text=first.text,
                model=choice,
                threshold=settings.threshold,
            )
        first_token = first.token if first is not None and choice == "small" else None  # kept only by its own session
        out = yield from _stream(
            writer.generate_step(first_token=first_token, stops=stops, max_tokens=max_tokens), step=index, model=choice
        )
        thinking_tokens += out.tokens
        transcript += out.text
        step_finish = _step_finish(out, settings, limits=(settings.step_max_tokens, budget_left, room))
        repeated = bool(steps) and bool(out.text.strip()) and out.text == steps[-1].text
        if out.text or out.finish != "eos":
            steps.append(
                Step(
                    index=index,
                    model=choice,
                    text=out.text,
                    tokens=out.tokens,
                    entropy=entropy,
                    entropy_full=entropies.get("full"),
                    entropy_topk=entropies.get("topk"),
                    seconds=time.perf_counter() - step_started,
                    finish=step_finish,
                )
            )
            yield steps[-1]
        if step_finish not in ("delimiter", "step_cap"):
            finish_reason = step_finish
        elif repeated:
            finish_reason = "repeat"

    answer = yield from _answer(transcript, steps, finish_reason, sessions, settings)
    latency = time.perf_counter() - started
    large_steps = sum(1 for s in steps if s.model == "large")
    yield Summary(
        answer=answer.text,
        answer_model=answer.model,
        finish_reason=finish_reason,
        steps=tuple(steps),
        large_step_rate=large_steps / len(steps) if steps else 0.0,
        small=_totals(small, steps, "small"),
        large=_totals(large, steps, "large"),
        latency_s=latency,
        mode=policy.name,
        threshold=settings.threshold,
    )


def run(problem: str, **kwargs) -> Summary:
    """Drain route() and return its Summary."""
    summary = None
    for event in route(problem, **kwargs):
        summary = event
    assert isinstance(summary, Summary)
    return summary


def _with_think_close(settings: RouterSettings, sessions) -> RouterSettings:
    """The settings for reasoning models: the thinking ends at their think-close tag (whichever model writes
    it, as one added token or as text), not at an answer marker, which they write after it."""
    closes = [s.think.close for s in sessions if s.think is not None]
    if not closes:
        return settings
    extra = tuple(dict.fromkeys(c for c in closes if c not in settings.end_markers))
    return dataclasses.replace(settings, end_markers=settings.end_markers + extra, answer_markers=())


def _stream(pieces: Generator[str, None, StepOutput], *, step: int, model: str) -> Generator[Delta, None, StepOutput]:
    """Pass a session's text pieces on as Delta events; return its StepOutput."""
    while True:
        try:
            piece = next(pieces)
        except StopIteration as done:
            return done.value
        yield Delta(step=step, model=model, text=piece)


def _step_finish(out: StepOutput, settings: RouterSettings, *, limits: tuple[int, int, int]) -> str:
    """Why a step ended, in the loop's vocabulary."""
    if out.finish == "eos":
        return "eos"
    if out.finish == "stop":
        if out.stop == settings.delimiter:
            return "delimiter"
        return "end_marker" if out.stop in settings.end_markers else "answer_marker"
    step_cap, budget_left, room = limits
    if out.tokens >= budget_left:
        return "budget"
    if out.tokens >= room:
        return "context"
    return "step_cap"


def _answer(
    transcript: str, steps: list[Step], finish_reason: str, sessions: dict[str, Session], settings: RouterSettings
) -> Generator[Event, None, Answer]:
    """The final answer, written after the thinking by the configured model."""
    name = settings.answer_by if settings.answer_by != "last" else (steps[-1].model if steps else "large")
    answerer = sessions[name]
    started = time.perf_counter()
    lead, prefix = "", settings.answer_prefix
    if finish_reason == "answer_marker":
        # The thinking stopped inside "\boxed{": the answerer continues from there.
        lead = next(m for m in settings.answer_markers if transcript.endswith(m))
        prefix = ""
    elif answerer.think is not None:
        # A reasoning model answers after its think block: closed by the thinking, or here for it (the original's
        # "\n</think>\n\n" when the budget ran out).
        prefix = ("" if finish_reason == "end_marker" else answerer.think.forced_close) + settings.answer_prefix
    answerer.catch_up(transcript + prefix)
    max_tokens = max(0, min(settings.answer_max_tokens, answerer.context_room() - 1))
    out = yield from _stream(
        answerer.generate_step(first_token=None, stops=settings.answer_stops, max_tokens=max_tokens), step=0, model=name
    )
    text = out.text[: -len(out.stop)] if out.stop else out.text  # the stop string ends the answer; not part of it
    answer = Answer(text=lead + text, model=name, tokens=out.tokens, seconds=time.perf_counter() - started)
    yield answer
    return answer


def _totals(session: Session, steps: list[Step], name: str) -> ModelTotals:
    counters = session.counters
    return ModelTotals(
        steps=sum(1 for s in steps if s.model == name),
        tokens=counters.generated_tokens,
        prefill_tokens=counters.prefill_tokens,
        decode_calls=counters.decode_calls,
        context_tokens=session.context_tokens(),
        drafted_tokens=counters.drafted_tokens,
        accepted_tokens=counters.accepted_tokens,
        verify_calls=counters.verify_calls,
        cached_tokens=counters.cached_tokens,
    )
