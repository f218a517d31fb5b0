"""Grouped-query attention against an explicit-loop reference, the causal mask, and causality of the whole model."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.attention import attend, causal_mask
from minigrok.config import get_preset
from minigrok.model import forward, init_params


def loop_attention(q, k, v, mask, multiplier, cap):
    """Plain multi-head attention, one query head, one position, one key at a time, in float64.

    q (B, T, n_heads, hd); k, v (B, n_kv_heads, S, hd); mask (T, S) with at least one True per row.
    Query head h reads K/V head h // (n_heads // n_kv_heads). Returns out (B, T, n_heads, hd), probs (B, n_heads, T, S).
    """
    B, T, n_heads, hd = q.shape
    n_kv_heads, S = k.shape[1], k.shape[2]
    out = np.zeros((B, T, n_heads, hd))
    probs = np.zeros((B, n_heads, T, S))
    for b in range(B):
        for h in range(n_heads):
            kv = h // (n_heads // n_kv_heads)
            for t in range(T):
                scores = {}
                for s in range(S):
                    if mask[t, s]:
                        score = sum(float(q[b, t, h, i]) * float(k[b, kv, s, i]) for i in range(hd)) * multiplier
                        scores[s] = cap * math.tanh(score / cap) if cap > 0 else score
                top = max(scores.values())
                total = sum(math.exp(x - top) for x in scores.values())
                for s, x in scores.items():
                    probs[b, h, t, s] = math.exp(x - top) / total
                    out[b, t, h] += probs[b, h, t, s] * v[b, kv, s].astype(np.float64)
    return out, probs


def per_head_probs(probs):
    """attend's probs (B, n_kv, group, T, S) -> (B, n_heads, T, S): query head h = kv * group + g."""
    B, n_kv, group, T, S = probs.shape
    return probs.reshape(B, n_kv * group, T, S)


@st.composite
def attention_inputs(draw, kv_equals_heads=False):
    B, T, hd = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.sampled_from([2, 4]))
    n_kv = draw(st.sampled_from([1, 2]))
    n_heads = n_kv if kv_equals_heads else n_kv * draw(st.sampled_from([1, 2, 3]))
    S = T + draw(st.integers(0, 3))  # S - T keys already cached before this chunk
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.5, 2.0]))  # 2.0 gives logits of several units, where the soft-cap bites
    q = (rng.standard_normal((B, T, n_heads, hd)) * scale).astype(np.float32)
    k = (rng.standard_normal((B, n_kv, S, hd)) * scale).astype(np.float32)
    v = rng.standard_normal((B, n_kv, S, hd)).astype(np.float32)
    if draw(st.booleans()):
        mask = causal_mask(T, S, S - T)
    else:  # any mask with at least one visible key per query
        mask = rng.random((T, S)) < 0.6
        mask[np.arange(T), rng.integers(0, S, T)] = True
    return q, k, v, mask


multipliers = st.sampled_from([1.0, 0.25, 1 / math.sqrt(2)])
caps = st.sampled_from([0.0, 1.0, 30.0])


@given(attention_inputs(kv_equals_heads=True), multipliers, caps)
def test_attend_with_as_many_kv_heads_as_query_heads_is_plain_multi_head_attention(inputs, multiplier, cap):
    q, k, v, mask = inputs
    out, probs = attend(q, k, v, mask, multiplier, cap)
    ref_out, ref_probs = loop_attention(q, k, v, mask, multiplier, cap)
    assert out.shape == q.shape and out.dtype == np.float32
    np.testing.assert_allclose(per_head_probs(probs), ref_probs, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)


@given(attention_inputs(), multipliers, caps)
def test_grouped_query_attention_equals_mha_with_repeated_kv_heads(inputs, multiplier, cap):
    q, k, v, mask = inputs
    group = q.shape[2] // k.shape[1]
    out, probs = attend(q, k, v, mask, multiplier, cap)
    ref_out, ref_probs = loop_attention(q, k, v, mask, multiplier, cap)
    np.testing.assert_allclose(per_head_probs(probs), ref_probs, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    # Repeating each K/V head `group` times (head h -> kv head h // group) and running plain MHA gives the same.
    k_rep, v_rep = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (B, n_heads, S, hd)
    mha_out, _ = attend(q, k_rep, v_rep, mask, multiplier, cap)
    np.testing.assert_allclose(out, mha_out, atol=1e-5)


def test_multiplier_and_softcap_are_applied_as_cap_tanh_of_scaled_logits():
    # One query, two keys, head_dim 1: raw logits q·k = 8 and 2, multiplier 0.5 -> 4 and 1, cap 2.
    q = np.array([2.0], np.float32).reshape(1, 1, 1, 1)
    k = np.array([4.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    v = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
    mask = np.ones((1, 2), bool)
    out, probs = attend(q, k, v, mask, 0.5, 2.0)
    capped = [2 * math.tanh(4 / 2), 2 * math.tanh(1 / 2)]  # 1.9281, 0.9242
    p0 = 1 / (1 + math.exp(capped[1] - capped[0]))  # 0.7421
    np.testing.assert_allclose(probs.ravel(), [p0, 1 - p0], atol=1e-6)
    np.testing.assert_allclose(out.ravel(), [p0], atol=1e-6)
    _, uncapped = attend(q, k, v, mask, 0.5, 0.0)
    np.testing.assert_allclose(uncapped.ravel(), [1 / (1 + math.exp(-3)), 1 - 1 / (1 + math.exp(-3))], atol=1e-6)


def test_a_fully_masked_row_stays_finite_and_leaves_other_rows_alone():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    k = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    v = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    mask = causal_mask(3, 3, 0)
    mask[1] = False  # query 1 may see nothing
    out, probs = attend(q, k, v, mask, 0.5, 30.0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)
    ref_out, _ = loop_attention(q[:, [0, 2]], k, v, mask[[0, 2]], 0.5, 30.0)
    np.testing.assert_allclose(out[:, [0, 2]], ref_out, atol=1e-5)


def test_causal_mask_known_answers():
    np.testing.assert_array_equal(causal_mask(3, 3, 0), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    # Two new queries at absolute positions 3 and 4, after 3 cached keys: 5 keys in all.
    np.testing.assert_array_equal(causal_mask(2, 5, 3), [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(causal_mask(1, 4, 3), [[1, 1, 1, 1]])  # one decode step sees everything
    assert causal_mask(2, 5, 3).dtype == bool


TINY = get_preset("grok-tiny")
TINY_PARAMS = init_params(TINY, seed=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 10), st.data())
def test_changing_a_later_token_never_changes_earlier_logits(T, data):
    p = data.draw(st.integers(0, T - 2), label="last unchanged position")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    tokens = rng.integers(0, TINY.vocab_size, (1, T))
    changed = tokens.copy()
    changed[0, p + 1 :] = (tokens[0, p + 1 :] + rng.integers(1, TINY.vocab_size, T - p - 1)) % TINY.vocab_size
    a, b = forward(TINY_PARAMS, TINY, tokens), forward(TINY_PARAMS, TINY, changed)
    # Positions 0..p see the same tokens: equal up to float32 rounding of differently shaped expert batches.
    np.testing.assert_allclose(a[0, : p + 1], b[0, : p + 1], rtol=0, atol=1e-5)
    assert np.max(np.abs(a[0, p + 1] - b[0, p + 1])) > 1e-3  # ...while the changed position does change
