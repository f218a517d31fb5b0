"""Q8_0 / Q4_0: bit-exact with gguf-py, error bounds, Numba kernels against the NumPy reference, quantized models,
the quantize command, and Grok-1's int8-per-column scheme."""

import contextlib
import math

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minigrok import engine
from minigrok.__main__ import main
from minigrok.checkpoint import load_gguf, save_gguf
from minigrok.config import get_preset
from minigrok.generate import generate
from minigrok.kernels import INTEGER_DOT, integer_dot
from minigrok.kernels import quant_kernels as qk
from minigrok.model import forward, init_cache, init_params
from minigrok.quant import (
    BLOCK_BYTES,
    Q4_0,
    Q8_0,
    QK,
    QuantizedTensor,
    dequantize,
    dequantize_int8_columns,
    dequantize_rows,
    matmul_reference,
    quantize,
    quantize_activations,
    quantize_int8_columns,
    quantized_linear,
    storage_type,
)
from minigrok.quantize import convert
from minigrok.tokenizer import Tokenizer

GGML = {Q8_0: gguf.GGMLQuantizationType.Q8_0, Q4_0: gguf.GGMLQuantizationType.Q4_0}
TYPES = [Q8_0, Q4_0]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Every implementation of the integer products this CPU can run: the plain loops always, VNNI where it exists.
KERNELS = {"loop": {Q8_0: qk.q8_0_matmul_loop, Q4_0: qk.q4_0_matmul_loop}}
if INTEGER_DOT == "vnni":
    from minigrok.kernels import vnni

    KERNELS["vnni"] = {Q8_0: vnni.q8_0_matmul, Q4_0: vnni.q4_0_matmul}


def kernel_product(kind: str, x: np.ndarray, w: QuantizedTensor, min_weights: int = qk.SERIAL) -> np.ndarray:
    """x (N, K) @ w.T with one implementation's kernel called directly."""
    out = np.empty((len(x), w.shape[0]), np.float32)  # (N, R)
    KERNELS[kind][w.type](np.ascontiguousarray(x, np.float32), *qk.kernel_arrays(w), out, min_weights)
    return out


def reference_bytes(x: np.ndarray, qtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):  # gguf-py warns on the blocks whose 1/d overflows
        return gguf_quantize(x, GGML[qtype])


# ---- strategies: random rows and the edge blocks the issue lists ------------------------------------------------
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def edge_block(draw) -> np.ndarray:
    """One 32-value block of a kind that has tripped up quantizers."""
    kind = draw(st.sampled_from(["zeros", "tiny", "ties", "outlier", "negative_first", "random", "huge"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(QK).astype(np.float32)
    if kind == "zeros":
        x = np.where(rng.random(QK) < 0.5, np.float32(0.0), np.float32(-0.0))
    elif kind == "tiny":  # subnormal and near-FLT_MIN values: 1/d overflows for some of them
        x = (x * np.float32(draw(st.sampled_from([1e-45, 1e-42, 1e-39, 1e-38, 3e-37, 1e-36])))).astype(np.float32)
    elif kind == "ties":  # amax 127 makes d = 1 exactly, so x / d lands on exact halves
        x = (rng.integers(-127, 127, QK) + np.float32(0.5)).astype(np.float32)
        x[draw(st.integers(0, QK - 1))] = np.float32(draw(st.sampled_from([127.0, -127.0])))
    elif kind == "outlier":
        x = x * np.float32(1e-3)
        x[draw(st.integers(0, QK - 1))] = np.float32(draw(st.sampled_from([1e4, -1e4, 7.0, -3e2])))
    elif kind == "negative_first":  # two values of the largest magnitude, the negative one first
        i, j = sorted(draw(st.lists(st.integers(0, QK - 1), min_size=2, max_size=2, unique=True)))
        x[i], x[j] = -5.0, 5.0
    elif kind == "huge":
        x = (x * np.float32(draw(st.sampled_from([1e5, 1e30])))).astype(np.float32)
    return x.astype(np.float32)


@st.composite
def rows_of_blocks(draw, edge=True) -> np.ndarray:
    n_rows, n_blocks = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    if edge:
        blocks = [draw(edge_block()) for _ in range(n_rows * n_blocks)]
        return np.stack(blocks).reshape(n_rows, n_blocks * QK)
    return draw(arrays(np.float32, (n_rows, n_blocks * QK), elements=finite32))


# ---- bit-exact with gguf-py --------------------------------------------------------------------------------------
@SETTINGS
@given(x=st.one_of(rows_of_blocks(edge=True), rows_of_blocks(edge=False)), qtype=st.sampled_from(TYPES))
def test_quantize_and_dequantize_are_bit_exact_with_gguf(x, qtype):
    ours = quantize(x, qtype)
    ref = reference_bytes(x, qtype)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape == (x.shape[0], x.shape[1] // QK * BLOCK_BYTES[qtype])
    assert np.array_equal(ours, ref)
    with np.errstate(all="ignore"):
        assert np.array_equal(dequantize(ours, qtype), gguf_dequantize(ref, GGML[qtype]), equal_nan=True)


def test_known_q8_0_block():
    x = np.zeros(QK, np.float32)
    x[:8] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -127.0]  # d = 127 / 127 = 1: x / d is x itself
    blocks = quantize(x, Q8_0)
    assert list(blocks[:2]) == [0x00, 0x3C]  # fp16 1.0
    assert list(blocks[2:10].view(np.int8)) == [127, 1, 2, 3, -1, -3, 0, -127]  # halves away from zero, not to even
    assert np.array_equal(dequantize(blocks, Q8_0)[:8], [127, 1, 2, 3, -1, -3, 0, -127])


def test_known_q4_0_block():
    x = np.zeros(QK, np.float32)
    x[0], x[1], x[2], x[16], x[17] = -8.0, 7.5, 8.0, 4.0, -0.5  # max = -8 (first largest |x|) -> d = 1
    blocks = quantize(x, Q4_0)
    assert list(blocks[:2]) == [0x00, 0x3C]  # fp16 1.0
    q = np.concatenate([blocks[2:] & 15, blocks[2:] >> 4])  # nibbles back in weight order
    # trunc(x + 8.5): -8 -> 0, 7.5 -> 16 clipped to 15, 8 -> 15, 0 -> 8, 4 -> 12, -0.5 -> 8
    assert list(q[[0, 1, 2, 3, 16, 17]]) == [0, 15, 15, 8, 12, 8]
    assert blocks[2] == 0 | (12 << 4)  # byte 0: q[0] low nibble, q[16] high nibble
    assert np.array_equal(dequantize(blocks, Q4_0)[[0, 1, 16]], [-8, 7, 4])


def test_the_first_largest_value_sets_the_q4_0_sign():
    x = np.zeros(QK, np.float32)
    x[3], x[9] = -5.0, 5.0
    assert dequantize(quantize(x, Q4_0), Q4_0)[3] == -5.0  # max = -5 is exact; +5 is clipped to 7 * 5/8
    x[3], x[9] = 5.0, -5.0
    assert dequantize(quantize(x, Q4_0), Q4_0)[3] == 5.0


@pytest.mark.parametrize("qtype", TYPES)
def test_last_axis_not_a_multiple_of_32_names_the_tensor(qtype):
    with pytest.raises(ValueError, match=r"'blk.3.ffn_down_exps.weight'.*multiple of the 32"):
        quantize(np.zeros((4, 48), np.float32), qtype, name="blk.3.ffn_down_exps.weight")
    with pytest.raises(ValueError, match="'w'"):
        QuantizedTensor.from_float(np.zeros(31, np.float32), qtype, name="w")


# ---- error bounds ------------------------------------------------------------------------------------------------
@SETTINGS
@given(x=rows_of_blocks(edge=True), qtype=st.sampled_from(TYPES))
def test_dequantize_quantize_error_per_block(x, qtype):
    """|x - dequantize(quantize(x))| per weight, with d32 = the float32 scale and d16 its fp16 rounding:
    Q8_0 <= d32 / 2 + 127 |d32 - d16|; Q4_0 <= |d32| / 2 + 8 |d32 - d16| except the values clipped at q = 15
    (x / d in [7.5, 8], only the opposite of the block max), which are within |d32|. Slack: float32 rounding."""
    x = x[np.all(np.abs(x) < 5e5, axis=1)]  # keep rows whose scales fit fp16 (65504)
    blocks = x.reshape(-1, QK).astype(np.float64)
    err = np.abs(blocks - dequantize(quantize(x, qtype), qtype).reshape(-1, QK))  # (n, 32)
    amax = np.max(np.abs(blocks), axis=1, keepdims=True)
    if qtype == Q8_0:
        d32 = (amax / 127).astype(np.float32).astype(np.float64)
        bound = d32 / 2 + 127 * np.abs(d32 - d32.astype(np.float16))
    else:
        signed_max = np.take_along_axis(blocks, np.argmax(np.abs(blocks), axis=1)[:, None], axis=1)
        d32 = np.abs(signed_max / -8)
        with np.errstate(invalid="ignore"):  # 0 / 0 in all-zero blocks: not clipped
            clipped = blocks / (signed_max / -8) >= 7.5
        bound = np.where(clipped, d32, d32 / 2) + 8 * np.abs(d32 - d32.astype(np.float16))
    tiny = amax < 2.0**-24 * 127  # fp16 scale underflows towards 0: the whole block may read back as 0
    assert np.all((err <= bound * (1 + 1e-6) + 1e-6 * amax) | tiny)


# ---- QuantizedTensor ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", TYPES)
def test_quantized_tensor_holds_the_file_bits_and_indexes_experts(qtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 64)).astype(np.float32)  # (num_experts, out, in)
    w = QuantizedTensor.from_float(x, qtype)
    assert w.shape == (3, 5, 64) and w.ndim == 3 and w.file_nbytes == 3 * 5 * 2 * BLOCK_BYTES[qtype]
    assert np.array_equal(w.to_blocks(), reference_bytes(x, qtype))
    again = QuantizedTensor.from_blocks(qtype, w.shape, w.to_blocks())
    assert np.array_equal(again.qs, w.qs) and np.array_equal(again.d, w.d)
    assert w.d.dtype == np.float16 and w.nbytes == w.file_nbytes  # in memory as in the file: 8.5 or 4.5 bits/weight
    expert = w[1]
    assert expert.shape == (5, 64) and np.shares_memory(expert.qs, w.qs)
    assert np.array_equal(expert.dequantize(), QuantizedTensor.from_float(x[1], qtype).dequantize())
    assert w[1:3].shape == (2, 5, 64) and w[2, 4].shape == (64,)
    for bad in [(0, 0, 0), (..., 0), None]:
        with pytest.raises(IndexError, match="leading"):
            w[bad]
    with pytest.raises(ValueError, match="not finite or beyond"):
        QuantizedTensor.from_float(np.full(32, 1e9, np.float32), qtype, name="big")
    with pytest.raises(ValueError, match="not finite"):
        QuantizedTensor.from_float(np.full(32, np.nan, np.float32), qtype)
    with pytest.raises(ValueError, match="bytes per block"):
        QuantizedTensor.from_blocks(qtype, (5, 64), w.to_blocks()[0, :4])


def test_storage_policy():
    assert storage_type("blk.0.attn_q.weight", 2, Q4_0) == Q4_0
    assert storage_type("blk.3.ffn_down_exps.weight", 3, Q8_0) == Q8_0
    assert storage_type("blk.0.ffn_gate_inp.weight", 2, Q8_0) == "f32"  # router
    assert storage_type("blk.0.attn_norm.weight", 1, "f16") == "f32"
    assert storage_type("token_embd.weight", 2, Q4_0) == "f16"
    assert storage_type("token_embd.weight", 2, "f32") == "f32"
    with pytest.raises(ValueError, match="q8_0"):
        storage_type("token_embd.weight", 2, "q5_0")


# ---- products: NumPy reference, Numba kernels, BLAS tiles --------------------------------------------------------
def reference_bound(x: np.ndarray, w: QuantizedTensor) -> np.ndarray:
    """Sum over k of |x_q w_q| * (scale of the block): the size of the float32 sum, for its rounding error."""
    R, K = w.shape
    xq, dx = quantize_activations(x)
    wq = w.qs.astype(np.float64) if w.type == Q8_0 else w.dequantize() / np.repeat(np.where(w.d == 0, 1, w.d), QK, 1)
    scale = np.repeat(dx, QK, axis=1)[:, None, :] * np.repeat(w.d, QK, axis=1)[None]  # (N, R, K)
    return np.sum(np.abs(xq[:, None, :] * wq[None] * scale), axis=2)  # (N, R)


@SETTINGS
@given(
    n=st.integers(1, 11),
    r=st.integers(1, 9),
    n_blocks=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    qtype=st.sampled_from(TYPES),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(sorted(KERNELS)),
)
def test_numba_kernel_matches_the_numpy_reference(n, r, n_blocks, scale, qtype, seed, kind):
    """Kernel and reference do the same integer products and differ only in the order of the float32 sum:
    |kernel - reference| <= 1e-5 * sum_k |x_q w_q| * scale (K <= 192 terms, float32 eps 6e-8). Each
    implementation (plain loops; VNNI, whose tokens go 4 at a time and then one by one), and ``matmul``, the
    one this CPU runs."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, n_blocks * QK)) * scale).astype(np.float32)
    x[:, rng.random(n_blocks * QK) < 0.1] = 0.0
    w = QuantizedTensor.from_float(rng.standard_normal((r, n_blocks * QK)).astype(np.float32), qtype)
    ref, bound = matmul_reference(x, w), 1e-5 * reference_bound(x, w) + 1e-30
    for ours in (kernel_product(kind, x, w), qk.matmul(x, w)):
        assert ours.shape == ref.shape == (n, r) and ours.dtype == np.float32
        assert np.all(np.abs(ours - ref) <= bound)


@pytest.mark.parametrize("qtype", TYPES)
def test_reference_error_is_bounded_by_the_activation_rounding(qtype):
    """matmul_reference rounds x to 8 bits per block: |ref - x @ W.T| <= sum_k (dx_b / 2) |W_k| (+ float32)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    w = QuantizedTensor.from_float(rng.standard_normal((6, 128)).astype(np.float32), qtype)
    exact = x.astype(np.float64) @ w.dequantize().T.astype(np.float64)
    _, dx = quantize_activations(x)
    bound = (np.repeat(dx, QK, axis=1) / 2) @ np.abs(w.dequantize()).T
    assert np.all(np.abs(matmul_reference(x, w) - exact) <= bound * 1.001 + 1e-4)
    assert np.abs(matmul_reference(x, w) - exact).max() > 0  # the activations really are rounded


@pytest.mark.parametrize("qtype", TYPES)
def test_integer_sums_do_not_overflow(qtype):
    """Largest products: activations all 127 (after scaling) times weights all at the extreme level; the int32
    block sums (32 * 127 * 127 for Q8_0) and the float32 total are exact here."""
    K = 1024
    x = np.full((1, K), 3.0, np.float32)  # -> q = 127, dx = 3 / 127
    w = QuantizedTensor.from_float(np.full((2, K), -2.0, np.float32), qtype)  # every weight at its extreme level
    expected = K * 3.0 * float(w.dequantize()[0, 0])
    for kind in KERNELS:
        assert np.allclose(kernel_product(kind, x, w), expected, rtol=1e-6)
    assert np.allclose(matmul_reference(x, w), expected, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    qtype=st.sampled_from(TYPES),
    R=st.integers(1, 40),
    N=st.integers(1, 6),
    min_weights=st.integers(1, 3000),
    kind=st.sampled_from(sorted(KERNELS)),
)
def test_rows_split_over_threads_give_the_same_bits(qtype, R, N, min_weights, kind):
    """The kernels cut the rows into blocks of >= min_weights weights for Numba's threads; each row is computed the
    same way in any block, so the result is bit-identical to one thread's."""
    rng = np.random.default_rng(R * 7 + N)
    w = QuantizedTensor.from_float(rng.standard_normal((R, 64)).astype(np.float32), qtype)
    x = rng.standard_normal((N, 64)).astype(np.float32)
    serial, split = kernel_product(kind, x, w), kernel_product(kind, x, w, min_weights)
    assert qk.n_chunks(R, 64, min_weights) == max(1, min(R, R * 64 // min_weights))
    np.testing.assert_array_equal(split, serial)
    np.testing.assert_allclose(serial, matmul_reference(x, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("qtype", TYPES)
def test_kernels_take_any_layout_and_reject_bad_shapes(qtype):
    rng = np.random.default_rng(2)
    w_all = QuantizedTensor.from_float(rng.standard_normal((8, 6, 64)).astype(np.float32), qtype)
    x = rng.standard_normal((64, 3))  # float64, and transposed below: not C-contiguous
    expected = matmul_reference(np.ascontiguousarray(x.T, np.float32), w_all[2])
    assert np.allclose(qk.matmul(x.T, w_all[2]), expected, rtol=1e-5, atol=1e-5)
    strided = w_all[::2, 1]  # (4, 64) weight from a strided view of the scales and quants
    assert np.allclose(qk.matmul(x.T, strided), matmul_reference(x.T, strided), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="x must be"):
        qk.matmul(np.zeros((2, 32), np.float32), w_all[0])
    with pytest.raises(ValueError, match="2-D QuantizedTensor"):
        qk.matmul(np.zeros((2, 64), np.float32), w_all)
    qs, d = qk.kernel_arrays(w_all[0])  # the fp16 scales as their uint16 bits
    for kernel in (kernels[qtype] for kernels in KERNELS.values()):
        with pytest.raises(ValueError, match="shapes disagree"):  # checked inside the kernel, before any read
            kernel(np.zeros((2, 64), np.float32), qs, d[:3], np.zeros((2, 6), np.float32), qk.SERIAL)
        with pytest.raises(ValueError, match="shapes disagree"):
            kernel(np.zeros((2, 64), np.float32), qs, d, np.zeros((2, 5), np.float32), qk.SERIAL)
        with pytest.raises(TypeError):  # explicit signatures: float64 or non-contiguous arrays are not accepted
            kernel(np.zeros((2, 64)), qs, d, np.zeros((2, 6), np.float32), qk.SERIAL)
    rows = np.empty((3, 64), np.float32)
    assert np.array_equal(qk.dequantize_rows(w_all[5], 2, 5, rows), w_all[5].dequantize()[2:5])  # bit-exact
    for r0, r1 in [(4, 2), (-1, 2), (0, 7), (0, 4)]:  # backwards, negative, past the end, more rows than out
        with pytest.raises(ValueError, match="r0 <= r1"):
            qk.dequantize_rows(w_all[5], r0, r1, rows)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("n_tokens", [1, 7, 40])
def test_quantized_linear_over_leading_axes(qtype, n_tokens, monkeypatch):
    """Few tokens: the integer kernel (within the activation rounding of the exact product); many: BLAS on
    dequantized tiles (within float32 rounding). A small tile size makes the tile loop run several times."""
    monkeypatch.setattr("minigrok.quant._TILE_FLOATS", 64 * 3)
    rng = np.random.default_rng(3)
    w = QuantizedTensor.from_float(rng.standard_normal((10, 64)).astype(np.float32), qtype)
    x = rng.standard_normal((1, n_tokens, 64)).astype(np.float32)
    y = quantized_linear(x, w)
    exact = x @ w.dequantize().T
    assert y.shape == (1, n_tokens, 10) and y.dtype == np.float32
    rel = np.abs(y - exact).max() / np.abs(exact).max()
    assert rel < (0.02 if n_tokens < 16 else 1e-5)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("n_tokens", [3, 40])
def test_compiled_quantized_linear_is_the_numpy_one(qtype, n_tokens):
    """CompiledQuantizedTensor runs quantized_linear with the Numba pieces: its dequantized tiles are bit-equal
    to the NumPy dequantize_rows, and its integer products equal matmul_reference up to the float32 sum order."""
    rng = np.random.default_rng(5)
    w = QuantizedTensor.from_float(rng.standard_normal((3, 10, 64)).astype(np.float32), qtype)
    fast = qk.CompiledQuantizedTensor.of(w)
    assert fast.qs is w.qs and isinstance(fast[1], qk.CompiledQuantizedTensor)  # shares the arrays; slices stay fast
    a, b = np.empty((4, 64), np.float32), np.empty((4, 64), np.float32)
    np.testing.assert_array_equal(qk.dequantize_rows(w[1], 3, 7, a), dequantize_rows(w[1], 3, 7, b))
    x = rng.standard_normal((n_tokens, 64)).astype(np.float32)
    # many tokens: BLAS on dequantized tiles, or with VNNI the integer kernel at any batch (matmul_reference's twin)
    blas_min_tokens = math.inf if INTEGER_DOT == "vnni" else None
    expected = quantized_linear(x, w[1], blas_min_tokens=blas_min_tokens)
    np.testing.assert_allclose(fast[1].linear(x), expected, rtol=1e-5, atol=1e-5)


# ---- quantized models --------------------------------------------------------------------------------------------
TINY = get_preset("grok-tiny")


def relative_rms(logits: np.ndarray, ref: np.ndarray) -> float:
    """RMS of the logit error over the RMS spread of the reference logits around their per-position mean."""
    spread = ref - ref.mean(axis=-1, keepdims=True)
    return float(np.sqrt(np.mean((logits - ref) ** 2) / np.mean(spread**2)))


@pytest.mark.parametrize(("qtype", "limit"), [(Q8_0, 0.04), (Q4_0, 0.35)])
def test_quantized_model_logits_stay_close(qtype, limit):
    """grok-tiny at init_params: prefill and decode logits of the quantized model against F32.
    Measured over 8 seeds: Q8_0 <= 0.020, Q4_0 <= 0.21 (relative RMS); the limits allow about 2x (Q8_0 is
    ~13x closer than Q4_0, as 127 levels against 8 per side suggests)."""
    params = init_params(TINY, seed=4)
    tokens = np.random.default_rng(4).integers(0, TINY.vocab_size, size=(2, 24))
    ref = forward(params, TINY, tokens)
    quantized = convert(params, qtype)
    assert isinstance(quantized["blk.1.ffn_up_exps.weight"], QuantizedTensor)
    prefill = forward(quantized, TINY, tokens)  # 48 tokens per projection: the BLAS-tile path
    cache = init_cache(TINY, 2, 24)
    decode = np.concatenate([forward(quantized, TINY, tokens[:, i : i + 1], cache) for i in range(24)], axis=1)
    assert 1e-4 < relative_rms(prefill, ref) < limit  # quantization changed something, and not much
    assert 1e-4 < relative_rms(decode, ref) < limit


@pytest.mark.parametrize("qtype", [Q8_0, Q4_0])
@pytest.mark.parametrize("n_tokens", [5, 40])  # the integer kernel, and BLAS on dequantized tiles
def test_the_engine_runs_quantized_products_in_numba_with_the_same_logits(qtype, n_tokens, monkeypatch):
    """engine.forward on anything but a decode step is model.forward with each quantized weight wrapped as a
    CompiledQuantizedTensor (the same arrays): same logits as the NumPy products, up to float32 summation order.
    (With VNNI the compiled products are integer ones at any batch: the NumPy side then does the same.)"""
    if INTEGER_DOT == "vnni":
        monkeypatch.setattr("minigrok.quant.BLAS_MIN_TOKENS", math.inf)
    quantized = convert(init_params(TINY, seed=5), qtype)
    wrapped = engine.compiled_params(quantized)
    w = wrapped["blk.0.attn_q.weight"]
    assert isinstance(w, qk.CompiledQuantizedTensor) and w.qs is quantized["blk.0.attn_q.weight"].qs
    assert wrapped["blk.0.attn_norm.weight"] is quantized["blk.0.attn_norm.weight"]  # floats as they are
    tokens = np.random.default_rng(5).integers(0, TINY.vocab_size, size=(1, n_tokens))
    expected = forward(quantized, TINY, tokens)
    error = np.abs(engine.forward(quantized, TINY, tokens) - expected)  # (1, n_tokens, vocab_size)
    if n_tokens < 32 or INTEGER_DOT == "vnni":
        # Integer products on both sides: a float32 rounding difference upstream can move one activation across
        # a rounding boundary of its 8-bit block (a change of dx * |w| in one product), so a few positions differ
        # by more than float32 rounding; most are equal to it.
        assert error.max() < 2e-3 and np.median(error.max(axis=-1)) < 1e-5
    else:
        assert error.max() < 1e-4  # BLAS on dequantized tiles on both sides: float32 rounding only


def make_tokenizer(vocab_size: int) -> Tokenizer:
    letters = "abcdefghijklmnopqrstuvwxyz"
    pairs = [(x + y).encode() for x in letters for y in letters][: vocab_size - 257]
    return Tokenizer([bytes([b]) for b in range(256)] + pairs)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "tiny.gguf"
    save_gguf(path, init_params(TINY, seed=5), TINY, make_tokenizer(TINY.vocab_size), metadata={"step": 3})
    return path


@pytest.mark.parametrize("qtype", TYPES)
def test_quantize_command_writes_a_file_generate_and_load_accept(tiny_file, tmp_path, capsys, qtype):
    out = tmp_path / f"tiny-{qtype}.gguf"
    assert main(["quantize", str(tiny_file), str(out), "--type", qtype]) == 0
    summary = capsys.readouterr().out
    assert f"{out}" in summary and "smaller" in summary and f"{qtype.upper()}" in summary
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down_exps.weight"] == qtype.upper()
    assert types["token_embd.weight"] == "F16" and types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert types["output_norm.weight"] == "F32"

    params, config, tokenizer = load_gguf(out)
    original, _, _ = load_gguf(tiny_file)
    w = params["blk.0.attn_v.weight"]
    assert config == TINY and isinstance(w, QuantizedTensor) and w.type == qtype
    assert np.array_equal(w.to_blocks(), reference_bytes(original["blk.0.attn_v.weight"], qtype))
    result = generate(params, config, tokenizer, "ab", 5, temperature=0.0)
    assert result.n_generated == 5

    again = tmp_path / "again.gguf"  # quantizing a quantized file to the same type keeps the same blocks
    assert main(["quantize", str(out), str(again), "--type", qtype]) == 0
    assert np.array_equal(load_gguf(again)[0]["blk.0.attn_v.weight"].to_blocks(), w.to_blocks())
    back = tmp_path / "back.gguf"
    assert main(["quantize", str(out), str(back), "--type", "f32"]) == 0
    assert np.array_equal(load_gguf(back)[0]["blk.0.attn_v.weight"], w.dequantize())


def test_quantize_command_errors_name_the_problem(tmp_path, capsys):
    odd = TINY.replace(d_ff=48)  # ffn_down_exps (4, 64, 48): rows of 48 weights cannot be cut into 32-blocks
    src = tmp_path / "odd.gguf"
    save_gguf(src, init_params(odd), odd, make_tokenizer(odd.vocab_size))
    out = tmp_path / "odd-q8_0.gguf"
    assert main(["quantize", str(src), str(out), "--type", "q8_0"]) == 1
    assert "'blk.0.ffn_down_exps.weight'" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["odd.gguf"]
    assert main(["quantize", str(src), str(out), "--type", "f16"]) == 0  # f16 has no blocks
    assert main(["quantize", str(src), str(tmp_path / "no" / "x.gguf"), "--type", "f32"]) == 1  # refused at once
    assert "does not exist; create it first" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert main(["quantize", str(out), str(tmp_path / "back.gguf"), "--type", "f32"]) == 0  # f16 -> f32: larger
    assert "x larger" in capsys.readouterr().out  # metadata and header do not double
    with pytest.raises(SystemExit):
        main(["quantize", str(src), str(out), "--type", "q5_0"])
    assert "invalid choice" in capsys.readouterr().err


# ---- Grok-1's scheme ---------------------------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n_groups=st.sampled_from([1, 2, 8]))
def test_int8_columns_round_trip(seed, n_groups):
    """w ≈ q * scale with the scale amax / 127 of each (row, group) rounded to bf16: error <= scale / 2, except
    where bf16 rounded the scale down and the largest value hits the clip at 127 (error <= 127 |s - s_bf16|)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((5, 64)) * rng.choice([1e-3, 1.0, 30.0])).astype(np.float32)
    q, scales = quantize_int8_columns(w, n_groups)
    assert q.dtype == np.int8 and scales.shape == (5, n_groups) and np.all(np.abs(q) <= 127)
    assert np.all(scales.view(np.uint32) & 0xFFFF == 0)  # bf16 values: the low 16 bits of float32 are zero
    exact_scale = np.max(np.abs(w.reshape(5, n_groups, -1)), axis=2) / 127
    bound = np.repeat(scales / 2 + 127 * np.abs(exact_scale - scales), 64 // n_groups, axis=1)
    assert np.all(np.abs(dequantize_int8_columns(q, scales) - w) <= bound * (1 + 1e-5))
    with pytest.raises(ValueError, match="equal groups"):
        quantize_int8_columns(w, 3)


def test_the_integer_kernels_follow_the_cpu_unless_told(monkeypatch):
    """VNNI where /proc/cpuinfo lists it (AVX-512 VNNI with VL, or AVX-VNNI) and Numba compiles for this CPU;
    MINIGROK_INTEGER_DOT=portable forces the plain loops; any other value is an error that says what to use."""
    flags = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    has_vnni = {"avx512_vnni", "avx512vl"} <= flags or "avx_vnni" in flags
    monkeypatch.delenv("MINIGROK_INTEGER_DOT", raising=False)
    if flags:
        assert integer_dot() == ("vnni" if has_vnni else "portable")
    monkeypatch.setattr("numba.config.CPU_NAME", "generic")  # NUMBA_CPU_NAME=generic: code for any x86-64
    assert integer_dot() == "portable"
    monkeypatch.setattr("numba.config.CPU_NAME", None)
    monkeypatch.setenv("MINIGROK_INTEGER_DOT", "portable")
    assert integer_dot() == "portable"
    monkeypatch.setenv("MINIGROK_INTEGER_DOT", "avx512")
    with pytest.raises(ValueError, match="MINIGROK_INTEGER_DOT='avx512': use 'portable'"):
        integer_dot()
