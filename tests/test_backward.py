"""Every hand-written backward pass against central finite differences, in float64.

Tolerance: |num - ana| / max(1e-3, |num| + |ana|) < 1e-5 (step h = 1e-6), unless stated: a relative error for
gradients above 1e-3, and an absolute error of 1e-8 below it, where float64 round-off in the central difference
(about 1e-16 · |loss| / h) would dominate a purely relative test.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.attention import attend, causal_mask
from minigrok.config import ModelConfig
from minigrok.layers import apply_rope, gelu_tanh, rms_norm, rope_tables, softmax
from minigrok.model import forward, init_params
from minigrok.train import backward as bw

TOL = 1e-5


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar f() with respect to every entry of x (modified in place, restored)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return g


def assert_close(num, ana, tol=TOL):
    err = np.max(np.abs(num - ana) / np.maximum(1e-3, np.abs(num) + np.abs(ana)))
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"


def rng_for(seed):
    return np.random.default_rng(seed)


seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 6), st.integers(2, 8))
def test_linear(seed, b, n_in, n_out):
    r = rng_for(seed)
    x, w, c = r.standard_normal((b, 2, n_in)), r.standard_normal((n_out, n_in)), r.standard_normal((b, 2, n_out))
    dx, dw = bw.linear_backward(c, x, w)
    assert_close(numeric_grad(lambda: np.sum(c * (x @ w.T)), x), dx)
    assert_close(numeric_grad(lambda: np.sum(c * (x @ w.T)), w), dw)


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(2, 9), st.sampled_from([1e-5, 1e-2]))
def test_rms_norm(seed, d, eps):
    r = rng_for(seed)
    x, w, c = r.standard_normal((3, d)), r.standard_normal(d), r.standard_normal((3, d))
    dx, dw = bw.rms_norm_backward(c, x, w, eps)
    assert_close(numeric_grad(lambda: np.sum(c * rms_norm(x, w, eps)), x), dx)
    assert_close(numeric_grad(lambda: np.sum(c * rms_norm(x, w, eps)), w), dw)


@settings(max_examples=15, deadline=None)
@given(seeds)
def test_gelu_and_softmax(seed):
    r = rng_for(seed)
    x, c = 3 * r.standard_normal((4, 5)), r.standard_normal((4, 5))
    assert_close(numeric_grad(lambda: np.sum(c * gelu_tanh(x)), x), bw.gelu_tanh_backward(c, x))
    assert_close(numeric_grad(lambda: np.sum(c * softmax(x)), x), bw.softmax_backward(c, softmax(x)))


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 5), st.sampled_from([2, 4, 8]))
def test_rope(seed, T, hd):
    r = rng_for(seed)
    x, c = r.standard_normal((2, T, 3, hd)), r.standard_normal((2, T, 3, hd))
    cos, sin = rope_tables(np.arange(T) + 3, hd, 10000.0)
    cos, sin = cos.astype(np.float64), sin.astype(np.float64)
    assert_close(numeric_grad(lambda: np.sum(c * apply_rope(x, cos, sin)), x), bw.rope_backward(c, cos, sin))


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(2, 7))
def test_cross_entropy(seed, n, v):
    r = rng_for(seed)
    logits, targets = r.standard_normal((n, v)), r.integers(0, v, n)
    loss, dlogits = bw.cross_entropy(logits, targets)
    expected = np.mean(-np.log(softmax(logits)[np.arange(n), targets]))
    assert loss == pytest.approx(expected, rel=1e-12)
    assert_close(numeric_grad(lambda: bw.cross_entropy(logits, targets)[0], logits), dlogits)


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 5), st.sampled_from([(2, 2), (4, 2), (4, 1)]), st.sampled_from([0.0, 2.0, 30.0]))
def test_attend(seed, T, heads, cap):
    n_heads, n_kv = heads
    r = rng_for(seed)
    q, c = r.standard_normal((2, T, n_heads, 4)), r.standard_normal((2, T, n_heads, 4))
    k, v = r.standard_normal((2, n_kv, T, 4)), r.standard_normal((2, n_kv, T, 4))
    mask = causal_mask(T, T, 0)

    def f():
        return np.sum(c * attend(q, k, v, mask, 0.7, cap)[0])

    _, probs = attend(q, k, v, mask, 0.7, cap)
    dq, dk, dv = bw.attend_backward(c, q, k, v, probs, 0.7, cap)
    assert_close(numeric_grad(f, q), dq)
    assert_close(numeric_grad(f, k), dk)
    assert_close(numeric_grad(f, v), dv)


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 5), st.sampled_from([(2, 2), (4, 2), (4, 1)]), st.sampled_from([0.0, 2.0, 30.0, 100.0]))
def test_attend_train_and_its_saved_backward(seed, T, heads, cap):
    # the training forward gives attend's outputs; the backward from its saved out and slope (the row sum taken as
    # do·out, FlashAttention's D) gives the finite-difference gradients. cap 100: logits may pass exp's float32
    # range, so the row max is subtracted
    n_heads, n_kv = heads
    r = rng_for(seed)
    q, c = 3 * r.standard_normal((2, T, n_heads, 4)), r.standard_normal((2, T, n_heads, 4))
    k, v = 3 * r.standard_normal((2, n_kv, T, 4)), r.standard_normal((2, n_kv, T, 4))
    mask = causal_mask(T, T, 0)
    out, probs = attend(q, k, v, mask, 0.7, cap)
    out_t, probs_t, out_stacked, slope = bw.attend_train(q, k, v, mask, 0.7, cap)
    np.testing.assert_allclose(out_t, out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(probs_t, probs, rtol=1e-12, atol=1e-14)
    dq, dk, dv = bw.attend_backward(c, q, k, v, probs_t, 0.7, cap, out_stacked, slope)

    def f():
        return np.sum(c * attend(q, k, v, mask, 0.7, cap)[0])

    assert_close(numeric_grad(f, q), dq)
    assert_close(numeric_grad(f, k), dk)
    assert_close(numeric_grad(f, v), dv)


def test_attend_train_float32_long_rows():
    # float32, a causal mask over 64 positions with large scores: the same probabilities as attend, rows summing to 1
    r = rng_for(0)
    q = (4 * r.standard_normal((1, 64, 4, 8))).astype(np.float32)
    k, v = (4 * r.standard_normal((2, 1, 2, 64, 8))).astype(np.float32)
    mask = causal_mask(64, 64, 0)
    for cap in (0.0, 30.0):
        out, probs = attend(q, k, v, mask, 0.5, cap)
        out_t, probs_t, _, _ = bw.attend_train(q, k, v, mask, 0.5, cap)
        assert probs_t.dtype == np.float32 and out_t.dtype == np.float32
        np.testing.assert_allclose(probs_t, probs, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out_t, out, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.sum(probs_t, axis=-1), 1.0, rtol=1e-5)
        assert np.all(probs_t[..., ~mask] == 0)


def tiny_config(**kw):
    base = dict(
        vocab_size=23,
        d_model=8,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=2,
        d_ff=6,
        num_experts=4,
        top_k=2,
        embedding_multiplier=2.8,
        attention_multiplier=0.7,
        attn_logit_softcap=3.0,
        output_multiplier=0.58,
        context_length=8,
    )
    base.update(kw)
    return ModelConfig(**base)


def f64_params(config, seed):
    r = rng_for(seed + 1)
    params = {k: v.astype(np.float64) for k, v in init_params(config, seed).items()}
    for k, v in params.items():  # larger weights and non-trivial norm scales, so every path carries gradient
        params[k] = v * 10 if v.ndim > 1 else v + 0.3 * r.standard_normal(v.shape)
    return params


@settings(max_examples=10, deadline=None)
@given(seeds, st.booleans(), st.integers(1, 3))
def test_moe_layer_with_aux_losses(seed, renormalize, top_k):
    config = tiny_config(renormalize_gates=renormalize, top_k=top_k)
    r = rng_for(seed)
    p = f64_params(config, seed % 1000)
    wr, wg, wu, wd = (p[f"blk.0.{n}.weight"] for n in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"))
    x, c = r.standard_normal((6, 8)), r.standard_normal((6, 8))

    def loss():
        y, saved = bw.moe_forward(x, wr, wg, wu, wd, config)
        _, ids, _, probs, logits, _ = saved
        return np.sum(c * y) + 0.1 * bw.load_balancing_loss(probs, ids, 4)[0] + 0.01 * bw.router_z_loss(logits)[0]

    y, saved = bw.moe_forward(x, wr, wg, wu, wd, config)
    _, ids, _, probs, logits, _ = saved
    dprobs = 0.1 * bw.load_balancing_loss(probs, ids, 4)[1]
    dlogits = 0.01 * bw.router_z_loss(logits)[1]
    dx, (dwr, dwg, dwu, dwd) = bw.moe_backward(c, saved, wr, wg, wu, wd, config, dprobs, dlogits)
    for arr, ana in ((x, dx), (wr, dwr), (wg, dwg), (wu, dwu), (wd, dwd)):
        assert_close(numeric_grad(loss, arr), ana)


def test_aux_losses_known_values():
    # a perfectly balanced router gives top_k; every token on experts 0 and 1 gives E * (f0 P0 + f1 P1)
    probs = np.full((8, 4), 0.25)
    ids = np.array([[0, 1], [2, 3]] * 4)
    assert bw.load_balancing_loss(probs, ids, 4)[0] == pytest.approx(2.0)
    skew = np.tile([0.7, 0.1, 0.1, 0.1], (8, 1))
    assert bw.load_balancing_loss(skew, np.tile([0, 1], (8, 1)), 4)[0] == pytest.approx(4 * (1.0 * 0.7 + 1.0 * 0.1))
    logits = np.zeros((3, 4))
    assert bw.router_z_loss(logits)[0] == pytest.approx(np.log(4) ** 2)


@pytest.mark.parametrize("renormalize", [False, True])
def test_whole_model_gradient(renormalize):
    config = tiny_config(renormalize_gates=renormalize)
    params = f64_params(config, 3)
    r = rng_for(4)
    tokens, targets = r.integers(0, 23, (2, 5)), r.integers(0, 23, (2, 5))
    loss, grads, stats = bw.loss_and_grads(params, config, tokens, targets, 0.01, 0.001)
    # the training forward computes the same logits as the inference forward
    ce = bw.cross_entropy(forward(params, config, tokens).reshape(10, -1), targets.reshape(-1))[0]
    assert stats["ce"] == pytest.approx(ce, rel=1e-10)
    assert set(grads) == set(params)
    for name, p in params.items():
        idx = r.choice(p.size, min(5, p.size), replace=False)
        flat = p.reshape(-1)
        for i in idx:
            old = flat[i]
            flat[i] = old + 1e-6
            plus = bw.loss_and_grads(params, config, tokens, targets, 0.01, 0.001)[0]
            flat[i] = old - 1e-6
            minus = bw.loss_and_grads(params, config, tokens, targets, 0.01, 0.001)[0]
            flat[i] = old
            assert_close(np.array((plus - minus) / 2e-6), grads[name].reshape(-1)[i], tol=1e-4)


def test_attention_chunks_change_nothing(monkeypatch):
    # the attention core runs per chunk of sequences (on two threads): any chunking gives the same loss and gradients
    config = tiny_config()
    params = f64_params(config, 5)
    r = rng_for(6)
    tokens, targets = r.integers(0, 23, (5, 8)), r.integers(0, 23, (5, 8))
    monkeypatch.setattr(bw, "ATTENTION_CHUNK", 100)
    loss, grads, _ = bw.loss_and_grads(params, config, tokens, targets, 0.01, 0.001)
    monkeypatch.setattr(bw, "ATTENTION_CHUNK", 2)  # chunks of 2, 2 and 1 sequences
    loss_chunked, grads_chunked, _ = bw.loss_and_grads(params, config, tokens, targets, 0.01, 0.001)
    assert loss_chunked == pytest.approx(loss, rel=1e-13)
    for name in params:
        np.testing.assert_allclose(grads_chunked[name], grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
