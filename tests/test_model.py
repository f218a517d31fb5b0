"""The whole model: parameters, output shape, the grok-1 parameter count, and the KV cache against a full forward."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.config import get_preset
from minigrok.model import forward, init_cache, init_params

TINY = get_preset("grok-tiny")
PARAMS = init_params(TINY, seed=0)


def tokens_for(seed, B, T):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, (B, T))


# ---- parameters and shapes -------------------------------------------------------------------------------------------


def test_init_params_is_deterministic_and_matches_param_shapes():
    again, other = init_params(TINY, seed=0), init_params(TINY, seed=1)
    shapes = TINY.param_shapes()
    assert list(PARAMS) == list(shapes)
    for name, shape in shapes.items():
        assert PARAMS[name].shape == shape and PARAMS[name].dtype == np.float32, name
        np.testing.assert_array_equal(again[name], PARAMS[name])
    assert sum(p.size for p in PARAMS.values()) == TINY.n_params()
    assert not np.array_equal(other["blk.0.attn_q.weight"], PARAMS["blk.0.attn_q.weight"])
    np.testing.assert_array_equal(PARAMS["blk.1.ffn_norm.weight"], 1.0)  # norms start at 1


@given(st.integers(1, 2), st.integers(1, 6))
@settings(max_examples=10, deadline=None)
def test_forward_gives_float32_logits_of_shape_batch_time_vocab(B, T):
    logits = forward(PARAMS, TINY, tokens_for(0, B, T))
    assert logits.shape == (B, T, TINY.vocab_size) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


def test_each_batch_row_is_computed_independently():
    tokens = tokens_for(1, 2, 7)
    both = forward(PARAMS, TINY, tokens)
    for b in range(2):
        np.testing.assert_allclose(both[b], forward(PARAMS, TINY, tokens[b : b + 1])[0], rtol=0, atol=1e-6)


def test_grok1_preset_parameter_counts():
    grok1 = get_preset("grok-1")
    n, active = grok1.n_params(), grok1.n_active_params()
    # The presets' shapes give 315,684,820,992 (the tied 131072 x 6144 embedding counted once): "314B" rounded.
    assert n == 315_684_820_992
    assert 3.1e11 < n < 3.2e11
    assert 0.25 <= active / n <= 0.27  # 2 of 8 experts: 83.76e9 active, 26.5%


# ---- KV cache --------------------------------------------------------------------------------------------------------


def cached_logits(tokens, prefill):
    """Logits from one prefill call on tokens[:, :prefill] then one call per remaining token: (B, T, vocab)."""
    B, T = tokens.shape
    cache = init_cache(TINY, batch_size=B, max_len=T)
    chunks = [forward(PARAMS, TINY, tokens[:, :prefill], cache)]
    assert cache.pos == prefill
    for t in range(prefill, T):
        chunks.append(forward(PARAMS, TINY, tokens[:, t : t + 1], cache))
        assert cache.pos == t + 1
    return np.concatenate(chunks, axis=1)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 2), st.integers(2, 12), st.data())
def test_prefill_plus_decode_steps_matches_the_full_forward_at_every_position(B, T, data):
    k = data.draw(st.integers(1, T), label="prefill length")
    tokens = tokens_for(data.draw(st.integers(0, 2**32 - 1), label="seed"), B, T)
    full = forward(PARAMS, TINY, tokens)
    np.testing.assert_allclose(cached_logits(tokens, T), full, rtol=0, atol=1e-5)  # one prefill of everything
    np.testing.assert_allclose(cached_logits(tokens, 1), full, rtol=0, atol=1e-5)  # prefill(1) + single steps
    np.testing.assert_allclose(cached_logits(tokens, k), full, rtol=0, atol=1e-5)  # prefill(k) + steps


def test_overflowing_the_cache_raises_value_error_and_loses_nothing():
    tokens = tokens_for(2, 1, 5)
    cache = init_cache(TINY, batch_size=1, max_len=4)
    forward(PARAMS, TINY, tokens[:, :3], cache)
    with pytest.raises(ValueError, match="exceeds the 4-token limit"):
        forward(PARAMS, TINY, tokens[:, 3:5], cache)  # 3 + 2 > 4
    assert cache.pos == 3  # the failed call changed nothing: we can still decode the 4th token
    last = forward(PARAMS, TINY, tokens[:, 3:4], cache)
    np.testing.assert_allclose(last[:, 0], forward(PARAMS, TINY, tokens[:, :4])[:, 3], rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        forward(PARAMS, TINY, tokens[:, 4:5], cache)
    with pytest.raises(ValueError, match="exceeds"):  # without a cache the context length is the limit
        forward(PARAMS, TINY, np.zeros((1, TINY.context_length + 1), np.int64))


@pytest.mark.parametrize("bad", [-1, TINY.vocab_size, TINY.vocab_size + 100])
def test_out_of_range_token_ids_raise_value_error(bad):
    tokens = np.array([[1, 2, bad]])
    with pytest.raises(ValueError, match="token ids must be in"):
        forward(PARAMS, TINY, tokens)
    cache = init_cache(TINY, batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="token ids must be in"):
        forward(PARAMS, TINY, tokens, cache)
    assert cache.pos == 0


def test_tokens_must_be_two_dimensional():
    with pytest.raises(ValueError, match="batch, time"):
        forward(PARAMS, TINY, np.array([1, 2, 3]))
