"""The fused MoE decode kernel (minigrok/kernels/decode.py) equals its NumPy twin and minigrok.moe.moe."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.kernels.decode import moe_decode, moe_decode_numpy
from minigrok.moe import moe
from minigrok.quant import QuantizedTensor


def layer(seed, n_tokens, d_model, d_ff, num_experts, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, d_model)).astype(dtype)  # (N, d_model)
    w_router = rng.standard_normal((num_experts, d_model)).astype(dtype)
    w_gate = (rng.standard_normal((num_experts, d_ff, d_model)) / np.sqrt(d_model)).astype(dtype)
    w_up = (rng.standard_normal((num_experts, d_ff, d_model)) / np.sqrt(d_model)).astype(dtype)
    w_down = (rng.standard_normal((num_experts, d_model, d_ff)) / np.sqrt(d_ff)).astype(dtype)
    return x, w_router, w_gate, w_up, w_down


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_tokens=st.integers(1, 4),
    d_model=st.sampled_from([1, 8, 33, 64]),
    d_ff=st.sampled_from([1, 16, 40]),
    num_experts=st.integers(1, 8),
    data=st.data(),
)
def test_kernel_equals_numpy_twin_and_moe(seed, n_tokens, d_model, d_ff, num_experts, data):
    top_k = data.draw(st.integers(1, num_experts))
    renormalize = data.draw(st.booleans())
    args = (*layer(seed, n_tokens, d_model, d_ff, num_experts), top_k, renormalize)
    kernel, twin, reference = moe_decode(*args), moe_decode_numpy(*args), moe(*args)
    assert kernel.dtype == np.float32 and kernel.shape == (n_tokens, d_model)
    # Relative to the output's size, plus an absolute 1e-6 for outputs that cancel to near zero (their float32
    # error is set by the O(1) terms summed, not by the tiny result). A router near tie could pick different
    # experts in float32; random normal routers have none at this size.
    atol = 1e-5 * np.abs(reference).max() + 1e-6
    np.testing.assert_allclose(twin, reference, rtol=0, atol=atol)
    np.testing.assert_allclose(kernel, reference, rtol=0, atol=atol)


def test_ties_go_to_the_lowest_expert_id_as_in_route():
    x, _, w_gate, w_up, w_down = layer(0, 2, 16, 8, 6)
    w_router = np.zeros((6, 16), np.float32)  # every probability 1/6: experts 0 and 1 win
    args = (x, w_router, w_gate, w_up, w_down, 2, False)
    np.testing.assert_allclose(moe_decode(*args), moe(*args), atol=1e-6)
    # experts 0 and 1 with gates 1/6 each: the two-expert layer (gates 1/2 each) scaled by 1/3
    expected = moe(x, w_router[:2], w_gate[:2], w_up[:2], w_down[:2], 2, False) / 3
    np.testing.assert_allclose(moe_decode(*args), expected, atol=1e-6)


def test_one_expert_with_gate_one_is_the_plain_geglu():
    x, w_router, w_gate, w_up, w_down = layer(1, 1, 32, 24, 1)
    hidden = (
        0.5
        * (x @ w_gate[0].T)
        * (1 + np.tanh(np.sqrt(2 / np.pi) * ((x @ w_gate[0].T) + 0.044715 * (x @ w_gate[0].T) ** 3)))
    )
    expected = (hidden * (x @ w_up[0].T)) @ w_down[0].T  # (1, d_model), gate = softmax of one logit = 1
    np.testing.assert_allclose(moe_decode(x, w_router, w_gate, w_up, w_down, 1, False), expected, rtol=1e-4, atol=1e-5)


def test_other_dtypes_go_to_moe_unchanged():
    args = (*layer(2, 3, 16, 8, 4, dtype=np.float64), 2, True)
    out = moe_decode(*args)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, moe(*args))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "w_up": a["w_up"][:, :-1]}, "w_up_exps has shape"),
        (lambda a: {**a, "w_down": a["w_down"][:-1]}, "w_down_exps has shape"),
        (lambda a: {**a, "x": a["x"][:, :-1]}, "x has shape"),
        (lambda a: {**a, "top_k": 5}, "top_k must be in 1..4"),
        (lambda a: {**a, "top_k": 0}, "top_k must be in 1..4"),
    ],
)
def test_bad_shapes_are_refused_before_the_kernel(change, message):
    x, w_router, w_gate, w_up, w_down = layer(3, 1, 16, 8, 4)
    a = change({"x": x, "w_router": w_router, "w_gate": w_gate, "w_up": w_up, "w_down": w_down, "top_k": 2})
    for fn in (moe_decode, moe_decode_numpy):
        with pytest.raises(ValueError, match=message):
            fn(*(np.ascontiguousarray(a[k]) for k in ("x", "w_router", "w_gate", "w_up", "w_down")), a["top_k"], False)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("n_tokens, num_experts, top_k, renormalize", [(1, 8, 2, False), (3, 4, 1, True)])
def test_quantized_experts_equal_numpy_twin_and_moe(qtype, n_tokens, num_experts, top_k, renormalize):
    x, w_router, *experts = layer(4, n_tokens, 64, 96, num_experts)
    experts = [QuantizedTensor.from_float(w, qtype) for w in experts]
    args = (x, w_router, *experts, top_k, renormalize)
    kernel, twin, reference = moe_decode(*args), moe_decode_numpy(*args), moe(*args)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(twin, reference, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(kernel, reference, rtol=0, atol=1e-5 * scale)
    # and the quantization error itself is small: within a few % of the float32 layer
    float_layer = moe(x, w_router, *(w.dequantize() for w in experts), top_k, renormalize)
    assert np.abs(kernel - float_layer).max() < (0.03 if qtype == "q8_0" else 0.15) * scale
