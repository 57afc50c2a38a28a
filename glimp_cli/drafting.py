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
# --speculate and the pair key `speculate`: auto picks the source its measured costs say is fastest, or none
SPECULATE_MODES = ("off", "auto", "model", "ngram")
DRAFT_SOURCES = ("model", "ngram")


# auto's assumed share of drafted tokens that the target accepts (it cannot know before the run): model drafts
# from a same-family small model (97% greedy on Qwen2.5-Coder 0.5B for 1.5B here; 70-80% typical of sampled
# reasoning pairs), prompt lookup where it finds a match (83% measured on the demo pair)
ASSUMED_ACCEPTANCE = {"model": 0.8, "ngram": 0.8}
MIN_SPEEDUP = 1.05  # auto drafts only where the estimate beats no drafts by this much (the timing is noisy)


@dataclass(frozen=True)
class Speculation:
    """The draft source a run uses ("off", "model" or "ngram") and why (shown in the legend and --json)."""

    source: str
    reason: str
    costs: DecodeCosts | None = None  # what auto measured to choose it

    @property
    def legend_text(self) -> str | None:
        """The line the legend and bench show: the source and why, also when auto chose none; None when off."""
        if self.source != "off":
            return f"large model verifies {self.source} drafts ({self.reason})"
        return self.reason if self.costs is not None else None


@dataclass(frozen=True)
class DecodeCosts:
    """Seconds of the decodes a draft cycle is made of, measured on the loaded models (median of a few)."""

    target_one_s: float  # the large model, one token
    target_batch_s: float  # the large model, a verify batch of k + 1 tokens with logits at every row
    draft_one_s: float | None  # the small model, one token (None: it cannot draft)
    k: int

    def speedup(self, source: str, *, acceptance: float) -> float:
        """Expected tokens per second with this draft source over one token per decode.

        A cycle verifies k drafts in one batch and yields the accepted run plus one token: (1 - a^(k+1)) / (1 - a)
        tokens for acceptance a. A model draft also costs the small model's decodes: one per drafted token and
        one for the token the target adds. Prompt lookup costs nothing to draft, and only drafts where it finds
        a match (elsewhere it decodes one token, as without drafts), so its figure is that of a matched cycle.
        """
        a = min(acceptance, 0.999)
        tokens = (1 - a ** (self.k + 1)) / (1 - a)
        cost = self.target_batch_s
        if source == "model":
            if self.draft_one_s is None:
                return 0.0
            cost += (self.k + 1) * self.draft_one_s
        return tokens * self.target_one_s / cost

    def describe(self) -> str:
        parts = [
            f"large model {self.target_one_s * 1e3:.1f} ms a token, {self.target_batch_s * 1e3:.1f} ms a "
            f"{self.k + 1}-token verify batch"
        ]
        if self.draft_one_s is not None:
            parts.append(f"small model {self.draft_one_s * 1e3:.1f} ms a token")
        return ", ".join(parts)


def choose_draft_source(mode: str, *, vocabulary_mismatch: str | None, costs: DecodeCosts | None = None) -> Speculation:
    """The source for a `speculate` setting, given what (if anything) keeps the small model from drafting.

    Args:
        vocabulary_mismatch: None where the two vocabularies agree token for token, else how they differ.
        costs: auto's measured decode costs; auto then drafts only with the source expected to be fastest, and
            not at all where neither is expected to beat one token per decode by MIN_SPEEDUP.
    """
    if mode == "off":
        return Speculation("off", "speculative decoding is off")
    if mode == "ngram":
        return Speculation("ngram", "prompt lookup in the large model's own context, as asked")
    if mode == "model":
        return Speculation("model", "the small model drafts: the vocabularies agree, as asked")
    if mode == "auto" and costs is not None:
        return _cheapest(costs, vocabulary_mismatch)
    if mode == "auto":
        if vocabulary_mismatch is None:
            return Speculation("model", "auto: the vocabularies agree, so the small model drafts")
        return Speculation("ngram", f"auto: prompt lookup, since {vocabulary_mismatch}")
    raise ValueError(f"unknown speculate mode {mode!r}; expected one of {', '.join(SPECULATE_MODES)}")


def _cheapest(costs: DecodeCosts, vocabulary_mismatch: str | None) -> Speculation:
    """auto by measured cost: the small model's drafts where they are expected to pay (they draft at every
    token), else prompt lookup where its matched drafts are (it drafts only where the context repeats, so it
    never costs much), else none."""
    estimates = {"ngram": costs.speedup("ngram", acceptance=ASSUMED_ACCEPTANCE["ngram"])}
    if vocabulary_mismatch is None:
        estimates["model"] = costs.speedup("model", acceptance=ASSUMED_ACCEPTANCE["model"])
    shown = ", ".join(f"{source} {estimate:.2f}x" for source, estimate in sorted(estimates.items()))
    why = f"measured {costs.describe()}; expected speed-up {shown}"
    if vocabulary_mismatch is not None:
        why += f"; no model drafts: {vocabulary_mismatch}"
    for source in ("model", "ngram"):
        if estimates.get(source, 0.0) >= MIN_SPEEDUP:
            return Speculation(source, f"auto: {source} drafts ({why})", costs)
    return Speculation("off", f"auto: no drafts, none is expected to be faster ({why})", costs)


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
