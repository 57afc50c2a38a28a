"""Draft tokens for speculative decoding: guesses at a model's next tokens, which the model then verifies.

A drafter only proposes; the verified token source (backend.VerifiedDrafts) samples the target model at
every drafted position and keeps a draft token only where the sample equals it, so a bad guess costs time,
never a different text. Model-free drafters live here; a drafter that runs a model lives in the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_DRAFT_TOKENS = 3  # k, the paper's (and llama.cpp's lookup examples use 3 to 8)
MAX_DRAFT_TOKENS = 64  # a verify batch of k + 1 rows of logits
# A model drafter stops when its next token's probability falls below this (llama.cpp's --draft-p-min default)
DEFAULT_DRAFT_P_MIN = 0.75
NGRAM_MAX = 3  # the longest n-gram looked up
NGRAM_MIN = 2  # the shortest n-gram that makes a draft: a single matching token guessed too often wrongly
# --speculate and the pair key `speculate`: auto picks model where the vocabularies agree, else ngram
SPECULATE_MODES = ("off", "auto", "model", "ngram")
DRAFT_SOURCES = ("model", "ngram")


@dataclass(frozen=True)
class Speculation:
    """The draft source a run uses ("off", "model" or "ngram") and why (shown in the legend and --json)."""

    source: str
    reason: str


def choose_draft_source(mode: str, *, vocabulary_mismatch: str | None) -> Speculation:
    """The source for a `speculate` setting, given what (if anything) keeps the small model from drafting.

    Args:
        vocabulary_mismatch: None where the two vocabularies agree token for token, else how they differ.
    """
    if mode == "off":
        return Speculation("off", "speculative decoding is off")
    if mode == "ngram":
        return Speculation("ngram", "prompt lookup in the large model's own context, as asked")
    if mode == "model":
        return Speculation("model", "the small model drafts: the vocabularies agree, as asked")
    if mode == "auto":
        if vocabulary_mismatch is None:
            return Speculation("model", "auto: the vocabularies agree, so the small model drafts")
        return Speculation("ngram", f"auto: prompt lookup, since {vocabulary_mismatch}")
    raise ValueError(f"unknown speculate mode {mode!r}; expected one of {', '.join(SPECULATE_MODES)}")


class Drafter(Protocol):
    """Guesses the next tokens of a context (prompt + transcript, as token ids)."""

    k: int  # the most tokens one draft holds

    def draft(self, context: Sequence[int], *, limit: int) -> list[int]:
        """Up to min(k, limit) guessed tokens that follow `context`; [] when there is no good guess."""

    def reset(self) -> None:
        """A new problem: forget earlier contexts."""

    def truncate(self, length: int) -> None:
        """The context was cut back to its first `length` tokens (a roll-back, a stop inside a draft)."""

    def begin_step(self, transcript: str, *, context_length: int) -> None:
        """The target starts a step after `transcript`; its context then holds `context_length` tokens."""

    def end_step(self, text: str | None) -> None:
        """The step ended with `text` appended to the transcript; None: it was rolled back."""


class NgramDrafter:
    """Prompt lookup: the tokens that followed the most recent earlier occurrence of the context's last n-gram.

    The longest of the last NGRAM_MAX..min_ngram tokens that occurred before wins. The index maps each n-gram
    to the positions after its occurrences and grows with the context (a few entries per call, not a scan of
    the context); a cut drops the positions past it (rare: a roll-back), so an earlier occurrence is found again.
    """

    def __init__(self, *, k: int = DEFAULT_DRAFT_TOKENS, min_ngram: int = NGRAM_MIN, max_ngram: int = NGRAM_MAX):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"n-gram lengths must satisfy 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.k = k
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self._index: dict[tuple[int, ...], list[int]] = {}  # n-gram -> the positions just after its occurrences
        self._indexed = 0  # n-grams ending before this position are in the index

    def reset(self) -> None:
        self._index.clear()
        self._indexed = 0

    def begin_step(self, transcript: str, *, context_length: int) -> None:
        pass  # the context's tokens are all it needs

    def end_step(self, text: str | None) -> None:
        pass

    def truncate(self, length: int) -> None:
        if length >= self._indexed:
            return
        for positions in self._index.values():  # ascending: the ones past the cut are last
            while positions and positions[-1] >= length:
                positions.pop()
        self._indexed = length

    def draft(self, context: Sequence[int], *, limit: int) -> list[int]:
        count = min(self.k, limit)
        end = len(context)
        if count <= 0 or end == 0:
            return []
        self._extend(context)
        for n in range(min(self.max_ngram, end - 1), self.min_ngram - 1, -1):
            gram = tuple(context[end - n :])
            positions = self._index.get(gram)
            # checked against the context: a cut that was not reported must not make a draft
            if positions and tuple(context[positions[-1] - n : positions[-1]]) == gram:
                return list(context[positions[-1] : positions[-1] + count])
        return []

    def _extend(self, context: Sequence[int]) -> None:
        """Index the n-grams that end before the last token (each one then has a continuation)."""
        end = len(context)
        self.truncate(end)  # a context cut back without truncate()
        for stop in range(max(self._indexed, 1), end):
            for n in range(1, min(self.max_ngram, stop) + 1):
                self._index.setdefault(tuple(context[stop - n : stop]), []).append(stop)
        self._indexed = max(self._indexed, end)
