"""The compiled decode step (minigrok/kernels/decode.py) computes what the readable model.forward computes."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import minigrok.kernels.decode as decode
from minigrok import engine
from minigrok.config import ModelConfig
from minigrok.kernels import f16
from minigrok.layers import gelu_tanh, softcap, softmax
from minigrok.model import init_cache, init_params
from minigrok.quant import QuantizedTensor, storage_type


def make_model(seed, n_heads, n_kv_heads, num_experts, top_k, renormalize, cap, attention, qtype="f32", d_model=64):
    head_dim = d_model // n_heads
    config = ModelConfig(
        vocab_size=97, d_model=d_model, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
        d_ff=96, num_experts=num_experts, top_k=top_k, renormalize_gates=renormalize, attn_logit_softcap=cap,
        attention_multiplier=1 / math.sqrt(head_dim), embedding_multiplier=2.0, output_multiplier=0.5,
        context_length=64, attention=attention,
    )  # fmt: skip
    params = init_params(config, seed)
    rng = np.random.default_rng(seed)
    for name, w in params.items():  # norms away from 1, so that a norm applied twice or skipped shows
        if w.ndim == 1:
            params[name] = (1 + 0.3 * rng.standard_normal(w.shape)).astype(np.float32)
        elif storage_type(name, w.ndim, qtype) in ("q8_0", "q4_0"):
            params[name] = QuantizedTensor.from_float(w * 10, qtype)  # larger weights: logits of order 1
        else:
            params[name] = w * np.float32(10)
    return params, config


def decode_both(params, config, tokens, prefill):
    """Logits (T - prefill, vocab) for tokens after the first ``prefill``, one decode step at a time, computed by the
    compiled step and by model.forward; each cache must also end up holding the same keys and values."""
    out = []
    caches = []
    for compiled in (True, False):
        cache = init_cache(config, 1)

        def run(ids, cache=cache, compiled=compiled):
            return engine.forward(params, config, ids, cache, compiled)

        if prefill:
            run(tokens[None, :prefill])
        steps = [run(tokens[None, t : t + 1])[0, 0] for t in range(prefill, len(tokens))]
        out.append(np.array(steps))
        caches.append(cache)
    for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max() + 1e-6)
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    heads=st.sampled_from([(4, 4), (4, 2), (8, 2), (4, 1)]),
    num_experts=st.integers(1, 6),
    data=st.data(),
)
def test_compiled_step_equals_the_numpy_path_f32(seed, heads, num_experts, data):
    top_k = data.draw(st.integers(1, num_experts), label="top_k")
    renormalize = data.draw(st.booleans(), label="renormalize")
    cap = data.draw(st.sampled_from([0.0, 30.0, 2.0]), label="cap")
    attention = data.draw(
        st.sampled_from(["dense", "window:5", "sinks:2,4", "block:size=4,local=1,global=1,stride=2"]), label="pattern"
    )
    prefill = data.draw(st.integers(0, 6), label="prefill")
    params, config = make_model(seed, *heads, num_experts, top_k, renormalize, cap, attention)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, prefill + 12)
    kernel, numpy_path = decode_both(params, config, tokens, prefill)
    assert kernel.dtype == np.float32 and kernel.shape == (12, config.vocab_size)
    # float32 rounding only (a router near tie could pick other experts; random routers of this size have none)
    np.testing.assert_allclose(kernel, numpy_path, rtol=0, atol=2e-5 * np.abs(numpy_path).max())


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("attention", ["dense", "sinks:2,4"])
def test_compiled_step_equals_the_numpy_path_quantized(qtype, attention):
    params, config = make_model(1, 4, 2, 4, 2, False, 30.0, attention, qtype)
    assert isinstance(params["blk.0.ffn_up_exps.weight"], QuantizedTensor)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, 20)
    kernel, numpy_path = decode_both(params, config, tokens, 4)
    # Both quantize each product's input to 8 bits per block; a float32 rounding difference before that can move a
    # value across a rounding boundary (one step of 1/127 of its block's largest value). Such a flip changes the
    # logits of its step, and of later ones while its key and value stay in the window, by < 1%; every other
    # step agrees to float32 rounding. A real mistake (a wrong expert, scale or rotation) changes every step.
    step_diffs = np.abs(kernel - numpy_path).max(axis=1) / np.abs(numpy_path).max()  # (steps,)
    assert step_diffs.max() < 1e-2
    assert np.median(step_diffs) < 1e-5


def test_router_ties_go_to_the_lowest_expert_id_as_in_route():
    params, config = make_model(2, 4, 2, 6, 2, False, 30.0, "dense")
    for i in range(config.n_layers):  # every probability 1/6: experts 0 and 1 win in both paths
        params[f"blk.{i}.ffn_gate_inp.weight"] = np.zeros_like(params[f"blk.{i}.ffn_gate_inp.weight"])
    tokens = np.arange(8)
    kernel, numpy_path = decode_both(params, config, tokens, 2)
    np.testing.assert_allclose(kernel, numpy_path, rtol=0, atol=2e-5 * np.abs(numpy_path).max())
    for i in range(config.n_layers):  # the other experts are never read: changing them changes nothing
        for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            params[f"blk.{i}.{name}.weight"][2:] = 0
    again, _ = decode_both(params, config, tokens, 2)
    np.testing.assert_array_equal(again, kernel)


def test_other_dtypes_take_the_numpy_path():
    params, config = make_model(3, 4, 2, 4, 2, True, 30.0, "dense")
    assert decode.kernel_weights(params, config) is not None
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    assert decode.kernel_weights(params64, config) is None
    cache = init_cache(config, 1)
    engine.forward(params64, config, np.array([[1, 2]]), cache)
    assert engine.forward(params64, config, np.array([[3]]), cache).dtype == np.float64


def test_a_batch_of_two_takes_the_numpy_path_and_agrees():
    params, config = make_model(4, 4, 2, 4, 2, False, 30.0, "dense")
    tokens = np.array([[5, 6, 7], [8, 9, 10]])
    cache = init_cache(config, 2)
    engine.forward(params, config, tokens[:, :2], cache)
    both = engine.forward(params, config, tokens[:, 2:], cache)[:, 0]  # (2, vocab)
    for b in range(2):
        single = init_cache(config, 1)
        engine.forward(params, config, tokens[b : b + 1, :2], single)
        one = engine.forward(params, config, tokens[b : b + 1, 2:], single)[0, 0]  # compiled step
        np.testing.assert_allclose(one, both[b], rtol=0, atol=2e-5 * np.abs(both).max())


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.floats(-200, 200, width=32), min_size=1, max_size=40),
    cap=st.sampled_from([0.0, 1.0, 30.0]),
    multiplier=st.sampled_from([1.0, 0.125]),
)
def test_softcap_softmax_in_the_kernel_equals_layers(scores, cap, multiplier):
    s = np.array([scores, scores[::-1]], np.float32)  # (2, n)
    expected = softmax(softcap(s * np.float32(multiplier), cap))
    got = s.copy()
    decode.softcap_softmax(got, np.float32(multiplier), np.float32(cap))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-60, 60, width=32), min_size=1, max_size=70))
def test_geglu_in_the_kernel_equals_gelu_tanh_times_up(values):
    """The kernel writes gelu_tanh(a) as a / (1 + exp(-2z)) with its own exp; the reference is layers.gelu_tanh."""
    a = np.array(values, np.float32)
    b = np.linspace(-2, 2, len(a), dtype=np.float32)
    got = a.copy()
    decode.geglu(got, b, np.empty_like(a))
    np.testing.assert_allclose(got, gelu_tanh(a) * b, rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-120, 120, width=32), min_size=1, max_size=70))
def test_exp_in_the_kernel_equals_numpy(values):
    x = np.array(values, np.float32)
    got = x.copy()
    decode.exp_inplace(got)
    expected = np.exp(np.clip(x, -87, 88).astype(np.float64))  # the kernel clamps its inputs to [-87, 88]
    np.testing.assert_allclose(got, expected, rtol=5e-7, atol=0)


def test_exp_known_values():
    x = np.array([0, 1, -1, np.log(2), 10, -10, 88, -87, 100, -100], np.float32)
    got = x.copy()
    decode.exp_inplace(got)
    assert got[0] == 1 and np.isfinite(got).all() and (got > 0).all()
    np.testing.assert_allclose(got, np.exp(np.clip(x, -87, 88).astype(np.float64)), rtol=3e-7)


def test_models_from_the_threshold_on_split_products_over_threads(monkeypatch):
    params, config = make_model(5, 4, 2, 4, 2, False, 30.0, "dense")
    active = config.n_active_params()
    for threshold, expected in [(active + 1, decode.SERIAL), (active, decode.PARALLEL_BLOCK)]:
        monkeypatch.setattr(decode, "THREADED_MODEL_WEIGHTS", threshold)
        monkeypatch.setattr(decode, "_last", [None, None])  # forget the remembered answer
        assert decode.kernel_weights(params, config)[1] == expected


@pytest.mark.parametrize("qtype", ["f32", "q8_0", "q4_0"])
def test_products_split_over_threads_give_the_same_logits(qtype, monkeypatch):
    params, config = make_model(6, 4, 2, 4, 2, False, 30.0, "dense", qtype)
    tokens = np.random.default_rng(6).integers(0, config.vocab_size, 10)
    serial, _ = decode_both(params, config, tokens, 3)
    monkeypatch.setattr(decode, "THREADED_MODEL_WEIGHTS", 0)  # every model counts as large ...
    monkeypatch.setattr(decode, "PARALLEL_BLOCK", 500)  # ... and every product is cut into blocks of rows
    monkeypatch.setattr(decode, "_last", [None, None])
    assert decode.kernel_weights(params, config)[1] == 500
    threaded, _ = decode_both(params, config, tokens, 3)
    np.testing.assert_array_equal(threaded, serial)


# ---- the F16 token embedding (kernels/f16.py, decode.f16_matvec) ---------------------------------------------------
ALL_F16_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # every float16, by its bits


@pytest.mark.parametrize("widen", [f16.widen, f16.widen_portable], ids=["as-compiled-here", "portable"])
def test_the_kernels_widen_every_float16_as_numpy_does(widen):
    got = np.empty(ALL_F16_BITS.size, np.float32)
    widen(ALL_F16_BITS, got)
    want = ALL_F16_BITS.view(np.float16).astype(np.float32)  # (65536,)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan) and nan.sum() == 2046
    # Bit for bit (±0, 2046 subnormals, ±inf included), but NaNs: F16C's VCVTPH2PS quiets signaling NaNs.
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_f16_instructions_are_used_only_where_they_exist():
    assert f16.has_f16_instructions("x86_64", None, "+avx,+f16c,+fma")
    assert not f16.has_f16_instructions("x86_64", None, "+avx,-f16c")  # e.g. a CPU of before 2012
    assert not f16.has_f16_instructions("x86_64", "generic", "")  # NUMBA_CPU_NAME=generic: no F16C assumed
    assert f16.has_f16_instructions("aarch64", "generic", "")  # every AArch64 converts half precision
    assert not f16.has_f16_instructions("ppc64le", None, "")


finite_f16_bits = st.tuples(st.integers(0, 0x7BFF), st.booleans()).map(lambda t: t[0] | (0x8000 if t[1] else 0))


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 50), st.integers(1, 80))
def test_f16_unembedding_equals_the_numpy_product(data, R, K):
    """f16_matvec on an F16 matrix's bits is x @ W.astype(float32).T, whatever the rows' split over threads."""
    bits = data.draw(arrays(np.uint16, (R, K), elements=finite_f16_bits), label="W bits")  # subnormals included
    x = data.draw(arrays(np.float32, (1, K), elements=st.floats(-100, 100, width=32)), label="x")  # (1, K)
    w32 = bits.view(np.float16).astype(np.float32)  # (R, K)
    want = x @ w32.T  # (1, R)
    serial = np.empty((1, R), np.float32)
    decode.f16_matvec(x, bits, serial, decode.SERIAL)
    bound = np.abs(x).astype(np.float64) @ np.abs(w32).T.astype(np.float64)  # (1, R): sum of |products|
    assert np.all(np.abs(serial.astype(np.float64) - want) <= 1e-6 * K * bound)  # sums in another order
    threaded = np.empty((1, R), np.float32)
    decode.f16_matvec(x, bits, threaded, data.draw(st.integers(1, R * K), label="min_weights"))
    np.testing.assert_array_equal(threaded, serial)  # every row computed the same way in any block


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_compiled_step_with_an_f16_embedding_equals_the_numpy_path(qtype, monkeypatch):
    params, config = make_model(7, 4, 2, 4, 2, True, 30.0, "dense", qtype)
    params["token_embd.weight"] = params["token_embd.weight"].astype(np.float16)  # as load_gguf(mmap=True) gives
    weights = decode.kernel_weights(params, config)
    assert weights.token_embd.dtype == np.uint16 and weights.token_embd.base is params["token_embd.weight"]
    tokens = np.random.default_rng(7).integers(0, config.vocab_size, 14)
    kernel, numpy_path = decode_both(params, config, tokens, 4)
    tolerance = 2e-5 if qtype == "f32" else 1e-2  # see the quantized test above
    np.testing.assert_allclose(kernel, numpy_path, rtol=0, atol=tolerance * np.abs(numpy_path).max())
    monkeypatch.setattr(decode, "THREADED_MODEL_WEIGHTS", 0)  # the unembedding's rows split over threads
    monkeypatch.setattr(decode, "PARALLEL_BLOCK", 500)
    monkeypatch.setattr(decode, "_last", [None, None])
    threaded, _ = decode_both(params, config, tokens, 4)
    np.testing.assert_array_equal(threaded, kernel)


def test_only_the_token_embedding_may_be_f16_in_the_compiled_step():
    params, config = make_model(8, 4, 2, 4, 2, True, 30.0, "dense")
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_norm.weight", "output_norm.weight"):
        half = dict(params, **{name: params[name].astype(np.float16)})
        assert decode.kernel_weights(half, config) is None  # the NumPy path, which widens it in layers.linear
        cache = init_cache(config, 1)
        got = engine.forward(half, config, np.array([[3]]), cache)[0, 0]
        want = engine.forward(dict(half, **{name: half[name].astype(np.float32)}), config, np.array([[3]]))[0, 0]
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
