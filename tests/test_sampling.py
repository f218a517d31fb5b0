"""Sampling: greedy, temperature, top-k and top-p, as properties and known answers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minigrok.sampling import sample, softmax_with_temperature, top_k_filter, top_p_filter

# Small vocabularies with many ties (integers as floats), so tie-breaking is exercised.
logits_st = arrays(np.float32, st.integers(1, 12), elements=st.integers(-4, 4).map(float))
temperature_st = st.floats(0.05, 5.0)


def draws(logits, n, seed, **kw):
    rng = np.random.default_rng(seed)
    return [sample(logits, rng=rng, **kw) for _ in range(n)]


def test_greedy_breaks_ties_to_lowest_id():
    assert sample(np.array([1.0, 3.0, 3.0, 0.0]), 0.0) == 1
    assert sample(np.array([-2.0, -2.0]), 0.0) == 0


@given(logits_st, st.integers(0, 2**32 - 1))
def test_temperature_zero_is_argmax_whatever_the_other_arguments(logits, seed):
    rng = np.random.default_rng(seed)
    expected = int(np.argmax(logits))
    assert sample(logits, 0.0) == expected
    assert sample(logits, 0.0, top_k=3, top_p=0.5, rng=rng) == expected


@given(logits_st, temperature_st, st.integers(0, 2**32 - 1))
def test_top_p_zero_and_top_k_one_are_greedy(logits, temperature, seed):
    expected = int(np.argmax(logits))  # lowest id among ties
    assert draws(logits, 5, seed, temperature=temperature, top_p=0.0) == [expected] * 5
    assert draws(logits, 5, seed, temperature=temperature, top_k=1) == [expected] * 5


@given(logits_st, temperature_st, st.integers(0, 2**32 - 1))
def test_filters_that_keep_everything_change_nothing(logits, temperature, seed):
    plain = draws(logits, 20, seed, temperature=temperature)
    assert draws(logits, 20, seed, temperature=temperature, top_p=1.0) == plain
    assert draws(logits, 20, seed, temperature=temperature, top_k=logits.size) == plain
    assert draws(logits, 20, seed, temperature=temperature, top_k=logits.size + 100) == plain
    assert draws(logits, 20, seed, temperature=temperature, top_k=0) == plain
    assert draws(logits, 20, seed, temperature=temperature, top_k=-3) == plain


@given(logits_st, temperature_st, st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_top_k_only_returns_one_of_the_k_largest(logits, temperature, top_k, seed):
    kth_largest = np.sort(logits)[::-1][min(top_k, logits.size) - 1]
    for token in draws(logits, 20, seed, temperature=temperature, top_k=top_k):
        assert 0 <= token < logits.size
        assert logits[token] >= kth_largest


@given(logits_st, st.integers(0, 2**32 - 1))
def test_same_seed_same_tokens(logits, seed):
    assert draws(logits, 30, seed, temperature=1.0, top_k=5, top_p=0.9) == draws(
        logits, 30, seed, temperature=1.0, top_k=5, top_p=0.9
    )


def test_different_seeds_differ_on_a_flat_distribution():
    # 64 equally likely tokens, 50 draws: two seeds agree everywhere with probability 64^-50.
    assert draws(np.zeros(64), 50, 1, temperature=1.0) != draws(np.zeros(64), 50, 2, temperature=1.0)


def test_softmax_with_temperature_known_values():
    logits = np.array([0.0, math.log(2.0)])
    np.testing.assert_allclose(softmax_with_temperature(logits, 1.0), [1 / 3, 2 / 3])
    np.testing.assert_allclose(softmax_with_temperature(logits, 0.5), [1 / 5, 4 / 5])  # ratio 2^(1/0.5) = 4
    # A tiny temperature or huge logits do not overflow: the result tends to one-hot on the argmax.
    np.testing.assert_array_equal(softmax_with_temperature(logits, 1e-300), [0.0, 1.0])
    np.testing.assert_allclose(softmax_with_temperature(np.array([3e38, 0.0], np.float32), 1.0), [1.0, 0.0])


def test_top_k_and_top_p_filters_known_values():
    probs = np.array([0.15, 0.5, 0.05, 0.3])
    np.testing.assert_allclose(top_k_filter(probs, 2), [0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8])
    # Ranked 0.5, 0.3, 0.15, 0.05; mass before each: 0, 0.5, 0.8, 0.95. top_p 0.7 keeps the first two.
    np.testing.assert_allclose(top_p_filter(probs, 0.7), [0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8])
    np.testing.assert_allclose(top_p_filter(probs, 0.85), np.array([0.15, 0.5, 0.0, 0.3]) / 0.95)
    np.testing.assert_allclose(top_p_filter(probs, 0.3), [0.0, 1.0, 0.0, 0.0])
    # Exact binary fractions: a set that already reaches top_p takes no further token.
    np.testing.assert_array_equal(top_p_filter(np.array([0.5, 0.25, 0.25]), 0.5), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(top_p_filter(np.array([0.5, 0.25, 0.25]), 0.75), [2 / 3, 1 / 3, 0.0])


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# 99.9% quantiles of the chi-square distribution (scipy.stats.chi2.ppf(0.999, df)), for df = vocab - 1.
CHI2_999 = {1: 10.83, 2: 13.82, 4: 18.47}


@pytest.mark.parametrize(
    "temperature, top_k, top_p, expected",
    [
        # softmax([2, 1, 0.5, 0, -1] / 0.7), all five tokens
        (0.7, None, None, None),
        # top_k=3 keeps tokens 0, 1, 2, renormalised
        (1.0, 3, None, np.exp([2.0, 1.0, 0.5]) / np.exp([2.0, 1.0, 0.5]).sum()),
        # at T=1 probs are [.586, .216, .131, .079, .029]; top_p=0.7 keeps the first two
        (1.0, None, 0.7, np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()),
    ],
)
def test_empirical_distribution_matches(temperature, top_k, top_p, expected):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    if expected is None:
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    n = 20_000
    tokens = draws(logits, n, 1234, temperature=temperature, top_k=top_k, top_p=top_p)
    counts = np.bincount(tokens, minlength=logits.size)
    kept = counts[: expected.size]
    assert counts[expected.size :].sum() == 0  # filtered tokens are never drawn
    # With a fixed seed this is deterministic; the bound is the 99.9% quantile, so a correct sampler passes
    # for 999 seeds in 1000 and a sampler off by a few percent in any probability fails.
    assert chi_square(kept, expected) < CHI2_999[expected.size - 1]


@settings(max_examples=50)
@given(logits_st, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_nucleus(logits, top_p):
    probs = softmax_with_temperature(logits, 1.0)
    kept = top_p_filter(probs, top_p) > 0
    ranked = np.sort(probs)[::-1]
    n_kept = int(kept.sum())
    assert probs[kept].sum() >= top_p - 1e-12 or n_kept == probs.size  # reaches top_p ...
    assert ranked[: n_kept - 1].sum() < top_p  # ... and one fewer token would not
    assert probs[kept].min() >= probs[~kept].max(initial=0.0)  # the kept tokens are the most likely ones


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"temperature": 1.0, "top_p": -0.1}, "top_p"),
        ({"temperature": 1.0, "top_p": float("nan")}, "top_p"),
        ({"temperature": 1.0, "rng": None}, "rng"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs, name):
    kwargs = {"rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ValueError, match=name):
        sample(np.array([0.0, 1.0]), **kwargs)


@pytest.mark.parametrize("logits", [[0.0, np.nan], [np.inf, 0.0], [-np.inf, 0.0], [], [[0.0, 1.0]]])
def test_bad_logits_raise(logits):
    with pytest.raises(ValueError, match="logits"):
        sample(np.array(logits), 1.0, rng=np.random.default_rng(0))
