"""Choosing the next token from the model's logits: greedy, temperature, top-k, top-p.

Each step is a pure function over a probability vector of shape (vocab,), float64:

    logits --softmax(logits / T)--> probs --top_k_filter--> probs --top_p_filter--> probs --draw--> token id

The order (temperature, then top-k, then top-p on what top-k kept) is the one of Hugging Face transformers'
logits warpers (src/transformers/generation/logits_process.py). Every filter keeps at least the most likely token,
so a draw is always possible.
"""

from __future__ import annotations

import math

import numpy as np


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64.

    Args:
        logits: (vocab,) finite scores, any float dtype.
        temperature: > 0. Below 1 sharpens the distribution, above 1 flattens it.

    Returns:
        (vocab,) float64 probabilities summing to 1.

    The maximum is subtracted *before* dividing by the temperature, so every exponent is <= 0 and even a tiny
    temperature cannot overflow (the result then tends to one-hot on the argmax).
    """
    z = (logits.astype(np.float64) - logits.max()) / temperature  # (vocab,), all <= 0
    probs = np.exp(z)  # (vocab,), the argmax has exp(0) = 1, so the sum is >= 1
    return probs / probs.sum()


def _by_probability(probs: np.ndarray) -> np.ndarray:
    """Token ids from most to least likely; ties keep the lower id first (a stable sort), as np.argmax does."""
    return np.argsort(-probs, kind="stable")


def top_k_filter(probs: np.ndarray, top_k: int | None) -> np.ndarray:
    """Keep the top_k most likely tokens and renormalise (Fan et al. 2018, "Hierarchical Neural Story Generation").

    Args:
        probs: (vocab,) float64 probabilities.
        top_k: tokens to keep; None or <= 0 turns the filter off, and values above vocab are clamped to vocab.

    Returns:
        (vocab,) float64 probabilities; the dropped tokens are exactly 0. The input itself if nothing is dropped.
    """
    if top_k is None or top_k <= 0 or top_k >= probs.size:
        return probs
    kept = np.zeros_like(probs)
    ids = _by_probability(probs)[:top_k]  # (top_k,)
    kept[ids] = probs[ids]
    return kept / kept.sum()


def top_p_filter(probs: np.ndarray, top_p: float | None) -> np.ndarray:
    """Nucleus filter (Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration", section 3.1).

    Keeps the smallest set of most likely tokens whose total probability reaches top_p, then renormalises.
    A token is kept when the probability of all tokens more likely than it is still below top_p, so the most
    likely token is always kept: top_p = 0 is greedy, top_p = 1 keeps every token.

    Args:
        probs: (vocab,) float64 probabilities.
        top_p: in [0, 1]; None or 1 turns the filter off (1 is tested directly: a cumulative sum can round
            past 1 before the last tokens and would drop them).

    Returns:
        (vocab,) float64 probabilities; the dropped tokens are exactly 0. The input itself if nothing is dropped.
    """
    if top_p is None or top_p >= 1:
        return probs
    ids = _by_probability(probs)  # (vocab,) most likely first
    mass_before = np.cumsum(probs[ids]) - probs[ids]  # (vocab,) probability of the tokens ranked above each one
    keep = mass_before < top_p  # (vocab,) bool, in ranked order
    keep[0] = True
    if keep.all():
        return probs
    kept = np.zeros_like(probs)
    kept[ids[keep]] = probs[ids[keep]]
    return kept / kept.sum()


def check_sampling_args(temperature: float, top_p: float | None) -> None:
    """Raise ValueError, naming the argument, if temperature is negative or not finite or top_p is outside [0, 1]."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_p is not None and not (0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")


def sample(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """Pick the next token id from one position's logits.

    Args:
        logits: (vocab,) finite float scores for the next token.
        temperature: >= 0. 0 is greedy: the argmax, ties going to the lowest id; top_k, top_p and rng are unused.
        top_k: keep only the k most likely tokens; None or <= 0 = off; clamped to vocab.
        top_p: nucleus threshold in [0, 1]; None = off.
        rng: source of the one uniform draw per call; needed when temperature > 0.

    Returns:
        The token id, a Python int in [0, vocab).

    Raises:
        ValueError: naming the argument, if logits are not a non-empty 1-D array of finite numbers, if temperature
            is negative or not finite, if top_p is outside [0, 1], or if rng is missing when temperature > 0.

    The draw uses ``rng.choice(vocab, p=probs)``: one uniform number and the inverse CDF over token ids in id order.
    So with the same generator state, filters that drop nothing (top_k >= vocab, top_p = 1) give the same token as
    plain temperature sampling.
    """
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array (vocab,), got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite; got NaN or infinity (a diverged model or a broken checkpoint?)")
    check_sampling_args(temperature, top_p)

    if temperature == 0:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("rng must be a numpy.random.Generator when temperature > 0")
    probs = softmax_with_temperature(logits, temperature)  # (vocab,) float64
    probs = top_k_filter(probs, top_k)
    probs = top_p_filter(probs, top_p)
    return int(rng.choice(probs.size, p=probs))
