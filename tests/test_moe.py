"""The MoE layer: routing, tie-breaking, gates, and the dense equivalents it must reduce to."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minigrok.config import get_preset
from minigrok.model import forward, init_params, layer_params
from minigrok.moe import expert_ffn, moe, route

D_MODEL, D_FF = 8, 12


def softmax64(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def dense_ffn64(x, w_gate, w_up, w_down):
    """One GeGLU FFN in float64, written out: down(gelu_tanh(x gate.T) * (x up.T))."""
    x, w_gate, w_up, w_down = (np.asarray(a, np.float64) for a in (x, w_gate, w_up, w_down))
    g = x @ w_gate.T  # (N, d_ff)
    gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    return (gelu * (x @ w_up.T)) @ w_down.T  # (N, d_model)


def moe_weights(rng, num_experts):
    """Router and expert weights with unit-scale outputs: (router, gate, up, down), float32."""
    router = rng.standard_normal((num_experts, D_MODEL)).astype(np.float32)
    gate = (rng.standard_normal((num_experts, D_FF, D_MODEL)) / np.sqrt(D_MODEL)).astype(np.float32)
    up = (rng.standard_normal((num_experts, D_FF, D_MODEL)) / np.sqrt(D_MODEL)).astype(np.float32)
    down = (rng.standard_normal((num_experts, D_MODEL, D_FF)) / np.sqrt(D_FF)).astype(np.float32)
    return router, gate, up, down


@st.composite
def moe_setups(draw, top_k_all=False):
    num_experts = draw(st.integers(1, 6))
    top_k = num_experts if top_k_all else draw(st.integers(1, num_experts))
    n_tokens = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n_tokens, D_MODEL)).astype(np.float32)
    return x, top_k, moe_weights(rng, num_experts)


def layer(router, gate, up, down) -> dict:
    """The MoE tensors of a layer, by the short GGUF names moe() reads."""
    return {"ffn_gate_inp": router, "ffn_gate_exps": gate, "ffn_up_exps": up, "ffn_down_exps": down}


@given(moe_setups())
def test_identical_experts_give_one_dense_ffn_times_the_gate_sum(setup):
    x, top_k, (router, gate, up, down) = setup
    num_experts = router.shape[0]
    same = [np.repeat(w[:1], num_experts, axis=0) for w in (gate, up, down)]  # every expert = expert 0
    dense = dense_ffn64(x, gate[0], up[0], down[0])  # (N, d_model)
    _, gates, _ = route(x, router, top_k, renormalize=False)
    raw = moe(x, layer(router, *same), top_k, renormalize=False)
    assert raw.dtype == np.float32 and raw.shape == x.shape
    np.testing.assert_allclose(raw, dense * gates.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(moe(x, layer(router, *same), top_k, renormalize=True), dense, rtol=1e-5, atol=1e-5)


@given(moe_setups(top_k_all=True))
def test_top_k_equal_to_num_experts_is_the_soft_mixture_of_all_experts(setup):
    x, top_k, (router, gate, up, down) = setup
    p = softmax64(x.astype(np.float64) @ router.T.astype(np.float64))  # (N, num_experts)
    mixture = sum(p[:, e : e + 1] * dense_ffn64(x, gate[e], up[e], down[e]) for e in range(router.shape[0]))
    out = moe(x, layer(router, gate, up, down), top_k, renormalize=False)
    np.testing.assert_allclose(out, mixture, rtol=1e-5, atol=1e-5)


@given(st.data(), st.integers(2, 6))
def test_router_ties_pick_the_lowest_expert_ids(data, num_experts):
    # Token i is the one-hot vector e_i, so its router logits are column i of an integer router weight: exact,
    # and drawn from {-2..2} so that equal logits (hence bit-equal probabilities) are common.
    n_tokens = data.draw(st.integers(1, 6))
    top_k = data.draw(st.integers(1, num_experts))
    router = data.draw(arrays(np.float32, (num_experts, n_tokens), elements=st.integers(-2, 2).map(float)))
    x = np.eye(n_tokens, dtype=np.float32)  # (N, d_model = N)
    expert_ids, gates, probs = route(x, router, top_k, renormalize=False)
    for i in range(n_tokens):
        logits = router[:, i]
        expected = sorted(range(num_experts), key=lambda e: (-logits[e], e))[:top_k]  # best first, lowest id on ties
        assert expert_ids[i].tolist() == expected


def test_router_tie_known_answer():
    router = np.array([[0.0], [1.0], [1.0], [1.0]], np.float32)  # experts 1, 2, 3 tie for the best logit
    ids, gates, _ = route(np.ones((1, 1), np.float32), router, 2, renormalize=False)
    assert ids.tolist() == [[1, 2]]
    p_best = np.e / (1 + 3 * np.e)
    np.testing.assert_allclose(gates, [[p_best, p_best]], rtol=1e-6)


@given(moe_setups())
def test_gates_are_the_top_k_softmax_probabilities_and_renormalised_gates_sum_to_one(setup):
    x, top_k, (router, *_) = setup
    expected_p = softmax64(x.astype(np.float64) @ router.T.astype(np.float64))  # (N, num_experts)
    ids, gates, probs = route(x, router, top_k, renormalize=False)
    assert ids.shape == gates.shape == (x.shape[0], top_k) and gates.dtype == np.float32
    np.testing.assert_allclose(probs, expected_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gates, np.take_along_axis(expected_p, ids, axis=-1), rtol=1e-5, atol=1e-6)
    for i in range(x.shape[0]):
        assert len(set(ids[i].tolist())) == top_k  # distinct experts
        unchosen = np.delete(probs[i], ids[i])
        assert unchosen.size == 0 or gates[i].min() >= unchosen.max()  # the chosen ones are the k largest
        assert np.all(np.diff(gates[i]) <= 0)  # best first
    ids_n, gates_n, _ = route(x, router, top_k, renormalize=True)
    np.testing.assert_array_equal(ids_n, ids)
    np.testing.assert_allclose(gates_n.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(gates_n, gates / gates.sum(axis=-1, keepdims=True), rtol=1e-6)


TINY = get_preset("grok-tiny")


def unit_scale_tiny_params(seed):
    """grok-tiny parameters whose MoE output has mean square ~1 >> rms_eps, so the post-MoE norm sees a real signal.

    With init_params' std 0.02 the MoE output has rms ~1e-3, below sqrt(1e-5) ~3e-3: eps would dominate the norm
    and raw vs renormalised gates would change the logits by ~5e-2. Here gate/up have std 1/sqrt(d_model) and
    down 4/sqrt(d_ff), so each token's mean square is >~0.1 and eps/ms <~1e-4.
    """
    params = init_params(TINY, seed)
    rng = np.random.default_rng(seed + 1)
    d, f = TINY.d_model, TINY.d_ff
    for i in range(TINY.n_layers):
        p = f"blk.{i}."
        for name in ("ffn_gate_exps.weight", "ffn_up_exps.weight"):
            params[p + name] = (rng.standard_normal((TINY.num_experts, f, d)) / np.sqrt(d)).astype(np.float32)
        down = rng.standard_normal((TINY.num_experts, d, f)) * 4 / np.sqrt(f)
        params[p + "ffn_down_exps.weight"] = down.astype(np.float32)
    return params


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 8))
def test_renormalised_and_raw_gates_differ_only_through_the_post_moe_norm(seed, T):
    params = unit_scale_tiny_params(seed)
    tokens = np.random.default_rng(seed).integers(0, TINY.vocab_size, (1, T))
    raw = forward(params, TINY.replace(renormalize_gates=False), tokens)
    renorm = forward(params, TINY.replace(renormalize_gates=True), tokens)
    # Renormalising multiplies each token's MoE output by 1/sum(gates); the post-MoE RMSNorm cancels that scale
    # up to eps/(2 mean square) <~ 5e-5 relative. Logits are ~0.3; the largest difference seen over 300 seeds is 5e-6.
    np.testing.assert_allclose(renorm, raw, rtol=0, atol=1e-4)
    # ...while the MoE outputs themselves differ by the factor 1/sum(gates): about 2 for a near-uniform router
    # over 4 experts (init_params' router gives logits ~0.2).
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, TINY.d_model)).astype(np.float32)
    w = layer_params(params, 0)
    _, gates, _ = route(x, w["ffn_gate_inp"], TINY.top_k, renormalize=False)
    moe_raw = moe(x, w, TINY.top_k, renormalize=False)
    moe_renorm = moe(x, w, TINY.top_k, renormalize=True)
    np.testing.assert_allclose(moe_renorm, moe_raw / gates.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(moe_renorm - moe_raw)) > 0.3 * np.max(np.abs(moe_raw))


def test_expert_ffn_matches_the_written_out_geglu():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, D_MODEL)).astype(np.float32)
    _, gate, up, down = moe_weights(rng, 1)
    y = expert_ffn(x, gate[0], up[0], down[0])
    assert y.shape == (5, D_MODEL) and y.dtype == np.float32
    np.testing.assert_allclose(y, dense_ffn64(x, gate[0], up[0], down[0]), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 10), st.integers(0, 2**32 - 1), st.booleans())
def test_one_expert_top_1_is_exactly_a_dense_geglu_ffn(n_tokens, seed, renormalize):
    """The dense runs of benchmarks/moe_vs_dense.md (num_experts=1, top_k=1): the softmax over one router logit is
    exactly 1, so the gate is 1 and the layer is the plain GeGLU FFN, bit for bit, whatever the router weights;
    in the reference moe() and in the training forward. The load-balancing loss is the constant 1 (its gradient
    reaches no logit: the softmax of one logit does not move), so only the z-loss touches the router weights."""
    from minigrok.train.backward import load_balancing_loss, moe_forward, softmax_backward

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, D_MODEL)).astype(np.float32)
    router, gate, up, down = moe_weights(rng, 1)
    router *= 10.0  # large router logits change nothing
    dense = expert_ffn(x, gate[0], up[0], down[0])  # (N, d_model)
    expert_ids, gates, probs = route(x, router, 1, renormalize)
    assert np.all(expert_ids == 0) and np.all(gates == 1.0) and np.all(probs == 1.0)
    np.testing.assert_array_equal(moe(x, layer(router, gate, up, down), 1, renormalize), dense)
    config = get_preset("grok-tiny").replace(
        d_model=D_MODEL, d_ff=D_FF, num_experts=1, top_k=1, renormalize_gates=renormalize
    )
    y, _ = moe_forward(x, router, gate, up, down, config)
    np.testing.assert_array_equal(y, dense)
    aux, dprobs = load_balancing_loss(probs, expert_ids, 1)
    assert aux == 1.0
    np.testing.assert_array_equal(softmax_backward(dprobs, probs), 0.0)
