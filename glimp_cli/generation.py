"""The generation core: one step of text from any token source.

A token source proposes tokens (one per decode, a verified batch of drafted tokens, or the
chunks of a server's stream) and keeps or drops them as it is told. Everything else exists once, here:
stop strings, the delimiter-crossing rule (a token whose text runs past a stop string is never
kept; the part of its text before the cut is kept as text instead), incremental UTF-8 output,
and roll-back of an abandoned step. mlx-lm's generate_step / speculative_generate_step pair, on
one yield contract under stream_generate, is the model.
"""

from __future__ import annotations

import codecs
from collections.abc import Generator, Sequence
from typing import NamedTuple, Protocol

from glimp_cli.errors import RunError
from glimp_cli.session import StepOutput
from glimp_cli.stops import StopScan


class Proposal(NamedTuple):
    """What a source offers next: the text of each token in order, and whether generation ends after them."""

    pieces: tuple[bytes, ...]
    eos: bool = False  # an end-of-generation token follows (it is not counted or kept)
    last: bool = False  # the source has no more tokens (a server stopped at max_tokens): the step ends, "length"


class TokenSource(Protocol):
    """Where one step's tokens come from; the source owns the cache that holds them."""

    def propose(self, limit: int) -> Proposal:
        """Up to `limit` next tokens (at least one, unless eos)."""

    def settle(self, kept: int, tail: bytes) -> None:
        """Keep the first `kept` tokens of the last proposal, then `tail` as text (the part of a
        token before a stop string's end, to be re-tokenized); the rest of the proposal is dropped."""

    def commit(self, out: StepOutput) -> None:
        """The step is finished: its text is now part of the transcript."""

    def rollback(self) -> None:
        """The step was abandoned: leave the cache and transcript as they were before it."""


def generate(source: TokenSource, *, stops: Sequence[str], max_tokens: int) -> Generator[str, None, StepOutput]:
    """Write until a stop string, the end of generation or max_tokens; yields text pieces that no
    later token can change (never past a stop string), returns the step."""
    scan = StopScan(stops)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    emitted = 0
    sampled = 0
    finish, stop = "length", None
    completed = False
    try:
        while sampled < max_tokens and finish == "length":
            proposal = source.propose(max_tokens - sampled)
            if not proposal.pieces and not (proposal.eos or proposal.last):
                raise RunError(f"{type(source).__name__} proposed no token (internal error)")
            kept, tail = 0, b""
            for piece in proposal.pieces:
                sampled += 1
                found = scan.push(piece)
                if found is not None:
                    before_cut, stop_bytes = found
                    if before_cut == len(piece):
                        kept += 1
                    else:
                        tail = piece[:before_cut]
                    finish, stop = "stop", stop_bytes.decode("utf-8")
                    break
                kept += 1
                safe = scan.safe_end()
                if safe > emitted:
                    yield decoder.decode(bytes(scan.body[emitted:safe]))
                    emitted = safe
            else:
                if proposal.eos:
                    finish = "eos"
            source.settle(kept, tail)
            if proposal.last and finish == "length":
                break
        body = bytes(scan.body)
        if emitted < len(body):
            rest = decoder.decode(body[emitted:], final=True)
            if rest:
                yield rest
        out = StepOutput(text=body.decode("utf-8", errors="replace"), tokens=sampled, finish=finish, stop=stop)
        source.commit(out)
        completed = True
        return out
    finally:
        if not completed:
            source.rollback()
