"""A scripted stand-in for a model: satisfies glimp_cli.session.Session without llama.cpp.

Each session is driven by a script:
- `steps`: what the model writes, one entry per generate_step call (thinking steps, then the
  answer). An entry is a string (one token per character, so token counts are len(text)) or a
  sequence of token pieces; the EOS marker ends generation like a model's end-of-sequence token.
- `logits`: the next-token logits returned by successive next_token_logits calls (the probes),
  so the router's entropies are known exactly.

The session records what it was asked (catch_up transcripts, generate_step arguments, sampled
tokens) so tests can assert on how the router drove it.

ServedModel and its SleepingSessions stand in for a model on a server: many sessions at once (one
per problem in flight), each call sleeping the server's time, with a thread-safe log.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from glimp_cli.entropy import ENTROPY_MODES, initial_token_entropies
from glimp_cli.generation import Proposal, generate
from glimp_cli.session import Counters, FirstToken, Sampling, StepOutput
from glimp_cli.thinking import ThinkLayout

EOS = object()  # end-of-sequence marker inside a scripted step
EOS_TEXT = "</s>"
UNSCRIPTED_TEXT = "?"  # what sample() proposes when the script has no step left
DEFAULT_PROMPT_TOKENS = 10
DEFAULT_N_CTX = 100_000

LN2 = math.log(2)
LN50 = math.log(50)


def uniform_logits(n: int) -> list[float]:
    """Logits whose softmax is uniform over n tokens: full entropy ln n nats."""
    return [0.0] * n


@dataclass(frozen=True)
class GenerateCall:
    """One generate_step call as the router made it."""

    first_token: int | None
    first_token_text: str | None
    stops: tuple[str, ...]
    max_tokens: int
    text_before: str  # the transcript the session held when it was asked to write


class ScriptedSession:
    """A Session whose logits and generated text come from a script."""

    def __init__(
        self,
        name: str,
        *,
        steps: Sequence[str | Sequence[object]] = (),
        logits: Sequence[Sequence[float]] = (),
        n_ctx: int = DEFAULT_N_CTX,
        prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
        think: ThinkLayout | None = None,
    ) -> None:
        self.name = name
        self.think = think
        self._steps = [list(entry) for entry in steps]  # a str becomes one piece per character
        self._logits = [np.asarray(row, dtype=np.float32) for row in logits]
        self._n_ctx = n_ctx
        self._prompt_tokens = prompt_tokens
        self._vocab: list[object] = []  # token id -> piece (a str or EOS)
        self._text = ""
        self._context_tokens = 0
        self.counters = Counters()
        self.entropy_modes = ENTROPY_MODES
        # Recordings
        self.starts: list[tuple[str, Sampling, int]] = []
        self.catch_ups: list[str] = []
        self.generate_calls: list[GenerateCall] = []
        self.sampled: list[int] = []
        self.logits_calls = 0

    # -- Session protocol -----------------------------------------------------

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        self.starts.append((problem, sampling, reserve))
        self._text = ""
        self._context_tokens = self._prompt_tokens
        self.counters = Counters()

    @property
    def text(self) -> str:
        return self._text

    def catch_up(self, transcript: str) -> None:
        self.catch_ups.append(transcript)
        if not transcript.startswith(self._text):
            raise AssertionError(f"{self.name}: transcript {transcript!r} does not extend its cache {self._text!r}")
        missing = transcript[len(self._text) :]
        self._text = transcript
        self._context_tokens += len(missing)  # one token per character
        self.counters.prefill_tokens += len(missing)

    def context_room(self) -> int:
        return self._n_ctx - self._context_tokens

    def context_tokens(self) -> int:
        return self._context_tokens

    def next_token_logits(self) -> np.ndarray:
        if self.logits_calls >= len(self._logits):
            raise AssertionError(
                f"{self.name}: asked for logits {self.logits_calls + 1} times, scripted {len(self._logits)}"
            )
        row = self._logits[self.logits_calls]
        self.logits_calls += 1
        return row.copy()

    def sample(self) -> int:
        """The first token of the next scripted step (sampling does not consume the script)."""
        piece = self._steps[0][0] if self._steps and self._steps[0] else UNSCRIPTED_TEXT
        token = self._token_id(piece)
        self.sampled.append(token)
        return token

    def token_text(self, token: int) -> str:
        piece = self._vocab[token]
        return EOS_TEXT if piece is EOS else piece

    def probe(self, *, top_k: int) -> FirstToken:
        logits = self.next_token_logits()
        token = self.sample()
        return FirstToken(
            token=token, text=self.token_text(token), entropies=initial_token_entropies(logits, top_k=top_k)
        )

    def generate_step(
        self, *, first_token: int | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        self.generate_calls.append(
            GenerateCall(
                first_token=first_token,
                first_token_text=None if first_token is None else self.token_text(first_token),
                stops=tuple(stops),
                max_tokens=max_tokens,
                text_before=self._text,
            )
        )
        if not self._steps:
            raise AssertionError(f"{self.name}: generate_step call {len(self.generate_calls)} has no scripted step")
        pieces = self._steps.pop(0)
        if first_token is not None:
            # The probe's token is this step's first token: it replaces the script's first piece.
            pieces[:1] = [self._vocab[first_token]]
        return generate(_ScriptedTokens(self, pieces), stops=stops, max_tokens=max_tokens)

    # -- helpers ----------------------------------------------------------------

    def _token_id(self, piece: object) -> int:
        for token, known in enumerate(self._vocab):
            if known is piece or (isinstance(known, str) and known == piece):
                return token
        self._vocab.append(piece)
        return len(self._vocab) - 1


class _ScriptedTokens:
    """The token source of a scripted step: one piece per proposal, EOS ends it."""

    def __init__(self, session: ScriptedSession, pieces: list[object]) -> None:
        self.session = session
        self.pieces = pieces

    def propose(self, limit: int) -> Proposal:
        if not self.pieces:
            raise AssertionError(f"{self.session.name}: scripted step ran out before a stop, EOS or max_tokens")
        piece = self.pieces.pop(0)
        return Proposal((), eos=True) if piece is EOS else Proposal((str(piece).encode("utf-8"),))

    def settle(self, kept: int, tail: bytes) -> None:
        pass

    def commit(self, out: StepOutput) -> None:
        session = self.session
        session._text += out.text
        session._context_tokens += out.tokens
        session.counters.generated_tokens += out.tokens
        session.counters.decode_calls += out.tokens

    def rollback(self) -> None:
        pass


# -- a model on a server: many sessions at once -------------------------------------------------------

STEP_PIECE = "{name} step {index}.\n\n"  # one token per character
FINAL_PIECE = "So \\boxed{"


class ServedModel:
    """What the sessions of one served model share, as a server's sessions do: a delay per call, scripted
    failures, and a thread-safe log (which problems started, how many calls ran at once).

    Every session thinks `steps` steps ("<name> step i." and the delimiter), then writes '\\boxed{' and,
    asked for the answer, `answers[problem]` (else "0") and '}'. The probe before step i of problem
    "problem k" is uniform over probe_widths[(k + i) % len(probe_widths)] tokens: ln(width) nats.
    """

    def __init__(
        self,
        name: str,
        *,
        steps: int = 4,
        delay_s: float = 0.0,
        probe_widths: Sequence[int] = (1,),
        answers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.steps = steps
        self.delay_s = delay_s  # slept in every probe and step: the server's time
        self.probe_widths = probe_widths
        self.answers = answers or {}
        self.fail_at_start: dict[str, BaseException] = {}  # problem text -> what start() raises for it
        self.on_start: dict[int, object] = {}  # n -> called (no arguments) at the n-th start, 1-based
        self.starts: list[tuple[str, int]] = []  # (problem, seed), in the order sessions started them
        self.sessions = 0  # sessions made
        self.max_active = 0  # most calls running at once
        self._active = 0
        self._lock = threading.Lock()

    def session(self) -> SleepingSession:
        with self._lock:
            self.sessions += 1
        return SleepingSession(self)

    def started(self, problem: str, seed: int) -> None:
        with self._lock:
            if problem in self.fail_at_start:
                raise self.fail_at_start[problem]
            self.starts.append((problem, seed))
            hook = self.on_start.get(len(self.starts))
        if hook is not None:
            hook()

    def serve(self) -> None:
        """One call's time on the server."""
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            time.sleep(self.delay_s)
        finally:
            with self._lock:
                self._active -= 1


class SleepingSession:
    """A Session of a ServedModel: one problem's context, used by one thread at a time."""

    think = None
    entropy_modes = ENTROPY_MODES

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.counters = Counters()
        self._problem = ""
        self._number = 0
        self._text = ""

    def start(self, problem: str, *, sampling: Sampling, reserve: int = 0) -> None:
        self.model.started(problem, sampling.seed)
        self._problem, self._text, self.counters = problem, "", Counters()
        last = problem.rsplit(" ", 1)[-1]
        self._number = int(last) if last.isdigit() else 0

    @property
    def text(self) -> str:
        return self._text

    def catch_up(self, transcript: str) -> None:
        if not transcript.startswith(self._text):
            raise AssertionError(f"{self.model.name}: transcript {transcript!r} does not extend {self._text!r}")
        self.counters.prefill_tokens += len(transcript) - len(self._text)
        self._text = transcript

    def context_room(self) -> int:
        return DEFAULT_N_CTX - len(self._text)

    def context_tokens(self) -> int:
        return len(self._text)

    def probe(self, *, top_k: int) -> FirstToken:
        self.model.serve()
        widths = self.model.probe_widths
        width = widths[(self._number + self._text.count("\n\n")) % len(widths)]
        logits = np.array([0.0] * width + [-np.inf] * (max(widths) - width + 1))
        return FirstToken(token=0, text="t", entropies=initial_token_entropies(logits, top_k=top_k))

    def generate_step(
        self, *, first_token: object | None, stops: Sequence[str], max_tokens: int
    ) -> Generator[str, None, StepOutput]:
        self.model.serve()
        done_steps = self._text.count("\n\n")
        if self._text.endswith("\\boxed{"):
            text, finish, stop = self.model.answers.get(self._problem, "0") + "}", "eos", None
        elif done_steps < self.model.steps - 1:
            text, finish, stop = STEP_PIECE.format(name=self.model.name, index=done_steps + 1), "stop", "\n\n"
        else:
            text, finish, stop = FINAL_PIECE, "stop", "\\boxed{"
        if len(text) > max_tokens:
            raise AssertionError(f"{self.model.name}: a step of {len(text)} tokens asked to fit in {max_tokens}")
        yield text
        self._text += text
        self.counters.generated_tokens += len(text)
        return StepOutput(text=text, tokens=len(text), finish=finish, stop=stop)
