"""Initial-token entropy (nats) of a next-token distribution, from raw logits."""

from __future__ import annotations

from typing import Literal

import numpy as np

EntropyMode = Literal["full", "topk"]
ENTROPY_MODES: tuple[str, ...] = ("full", "topk")
DEFAULT_TOP_K = 20  # the original implementation's top-20 log-probs


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax in float64; -inf logits stay -inf."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x)
    return shifted - np.log(np.sum(np.exp(shifted)))


def _entropy_of(logits: np.ndarray) -> float:
    logp = log_softmax(logits)
    p = np.exp(logp)
    # 0 * log 0 is 0, not nan, for masked (-inf) entries; multiplying only where p > 0 avoids a RuntimeWarning
    return float(-np.sum(np.multiply(p, logp, out=np.zeros_like(p), where=p > 0.0)))


def full_entropy(logits: np.ndarray) -> float:
    """Entropy over the whole vocabulary, untempered."""
    return _entropy_of(logits)


def topk_entropy(logits: np.ndarray, *, k: int = DEFAULT_TOP_K) -> float:
    """Entropy of the k most likely tokens, renormalised (at most ln k)."""
    x = np.asarray(logits)
    if k >= x.size:
        return _entropy_of(x)
    top = x[np.argpartition(x, -k)[-k:]]
    return _entropy_of(top)


def initial_token_entropies(logits: np.ndarray, *, top_k: int = DEFAULT_TOP_K) -> dict[str, float]:
    """The router's difficulty signal in every mode, in nats (a probe measures both)."""
    return {"full": full_entropy(logits), "topk": topk_entropy(logits, k=top_k)}


def initial_token_entropy(logits: np.ndarray, *, mode: EntropyMode = "full", top_k: int = DEFAULT_TOP_K) -> float:
    """The router's difficulty signal for one step, in nats."""
    if mode == "full":
        return full_entropy(logits)
    if mode == "topk":
        return topk_entropy(logits, k=top_k)
    raise ValueError(f"unknown entropy mode {mode!r}")
