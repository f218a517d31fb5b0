"""RMSNorm, RoPE, GELU, soft-cap and linear: invariances, round trips and known answers computed by hand."""

import math

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import minigrok.layers as layers
from minigrok.layers import apply_rope, gelu_tanh, linear, rms_norm, rope_tables, softcap

EPS = 1e-5  # Grok-1's rms_eps

finite32 = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)
vectors = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 32)), elements=finite32)


def rms(x):
    return np.sqrt(np.mean(np.asarray(x, np.float64) ** 2, axis=-1))


# ---- RMSNorm ---------------------------------------------------------------------------------------------------------


@given(vectors, st.floats(0.5, 1e3))
def test_rms_norm_is_invariant_to_a_positive_scale_of_the_input(x, c):
    # Every row has rms >= 1 >> sqrt(eps), so eps/(c² ms) <= 4e-5 and the relative change is <= 2e-5.
    assume(np.all(rms(x) >= 1.0))
    weight = np.linspace(-2, 2, x.shape[-1], dtype=np.float32)
    scaled = rms_norm(np.float32(c) * x, weight, EPS)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, rms_norm(x, weight, EPS), rtol=5e-5, atol=1e-6)


@given(vectors)
def test_rms_norm_with_unit_weight_gives_unit_rms_and_weight_scales_each_channel(x):
    assume(np.all(rms(x) >= 1.0))  # then rms(out) = sqrt(ms / (ms + eps)) is within eps/2 of 1
    ones = np.ones(x.shape[-1], np.float32)
    out = rms_norm(x, ones, EPS)
    np.testing.assert_allclose(rms(out), 1.0, atol=2e-5)
    weight = np.arange(1, x.shape[-1] + 1, dtype=np.float32) * np.float32(-0.5)
    np.testing.assert_allclose(rms_norm(x, weight, EPS), weight * out, rtol=1e-6, atol=1e-6)


def test_rms_norm_known_answers():
    # [3, 4]: mean square 12.5; with eps 0.5 the denominator is sqrt(13).
    out = rms_norm(np.array([3.0, 4.0], np.float32), np.ones(2, np.float32), 0.5)
    np.testing.assert_allclose(out, [3 / math.sqrt(13), 4 / math.sqrt(13)], rtol=1e-6)
    np.testing.assert_allclose(out, [0.8320503, 1.1094004], rtol=1e-6)
    # [2, -2, 2, -2]: rms 2, so x/rms = [1, -1, 1, -1] (times 2/sqrt(4 + 1e-5)), then times the weight.
    x = np.array([[2.0, -2.0, 2.0, -2.0]], np.float32)
    before = x.copy()
    out = rms_norm(x, np.array([1.0, 2.0, 0.5, -1.0], np.float32), EPS)
    np.testing.assert_allclose(out, [[0.99999875, -1.9999975, 0.49999937, 0.99999875]], rtol=1e-6)
    np.testing.assert_array_equal(x, before)  # the input is not modified


# ---- RoPE ------------------------------------------------------------------------------------------------------------


def rope_at(x, position, theta=10000.0):
    """x (head_dim,) rotated as if at ``position``: (head_dim,)."""
    cos, sin = rope_tables(np.array([position]), x.shape[-1], theta)
    return apply_rope(x[None, None, None, :], cos, sin)[0, 0, 0]


head_dims = st.sampled_from([2, 4, 8, 16])
positions = st.integers(0, 4096)
unit_elements = st.floats(-1, 1, width=32)


@given(st.data(), head_dims, positions, positions, positions)
def test_rope_dot_product_depends_only_on_the_position_difference(data, head_dim, m, n, shift):
    q = data.draw(arrays(np.float32, head_dim, elements=unit_elements))
    k = data.draw(arrays(np.float32, head_dim, elements=unit_elements))
    before = np.dot(rope_at(q, m).astype(np.float64), rope_at(k, n))
    after = np.dot(rope_at(q, m + shift).astype(np.float64), rope_at(k, n + shift))
    # |q|, |k| <= 4 and cos/sin are float32-rounded (~6e-8): the dot products agree to well under 1e-4.
    assert abs(before - after) <= 1e-4


@given(st.data(), head_dims, st.lists(positions, min_size=1, max_size=5))
def test_rope_preserves_the_norm_of_every_rotated_pair(data, head_dim, pos):
    x = data.draw(arrays(np.float32, (2, len(pos), 3, head_dim), elements=finite32))
    cos, sin = rope_tables(np.array(pos), head_dim, 10000.0)
    y = apply_rope(x, cos, sin)
    assert y.shape == x.shape and y.dtype == np.float32
    half = head_dim // 2
    pair_norm = lambda a: np.hypot(a[..., :half].astype(np.float64), a[..., half:])  # noqa: E731
    np.testing.assert_allclose(pair_norm(y), pair_norm(x), rtol=1e-5, atol=1e-4)


@given(st.data(), head_dims)
def test_rope_at_position_zero_is_the_identity(data, head_dim):
    x = data.draw(arrays(np.float32, (1, 1, 2, head_dim), elements=finite32))
    cos, sin = rope_tables(np.array([0]), head_dim, 10000.0)
    np.testing.assert_array_equal(apply_rope(x, cos, sin), x)


@given(st.data(), head_dims, st.lists(positions, min_size=1, max_size=5))
def test_rope_with_minus_sin_undoes_rope(data, head_dim, pos):
    x = data.draw(arrays(np.float32, (1, len(pos), 2, head_dim), elements=finite32))
    cos, sin = rope_tables(np.array(pos), head_dim, 10000.0)
    back = apply_rope(apply_rope(x, cos, sin), cos, -sin)
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-3)  # |x| <= 1e3: float32 rounding ~1e-4


def test_rope_rotate_half_layout_known_answer():
    # head_dim 4: the pairs are (x0, x2) and (x1, x3). Rotate the first pair by 90°, leave the second alone.
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 1, 4)
    cos = np.array([[0.0, 1.0]], np.float32)
    sin = np.array([[1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(apply_rope(x, cos, sin).ravel(), [-3.0, 2.0, 1.0, 4.0])
    # Angles pos * theta**(-2i/head_dim): theta 100, head_dim 4 -> frequencies 1 and 0.1 rad per position.
    cos, sin = rope_tables(np.array([0, 1, 2]), 4, 100.0)
    np.testing.assert_allclose(cos, [[1, 1], [math.cos(1), math.cos(0.1)], [math.cos(2), math.cos(0.2)]], atol=1e-7)
    np.testing.assert_allclose(sin, [[0, 0], [math.sin(1), math.sin(0.1)], [math.sin(2), math.sin(0.2)]], atol=1e-7)
    y = apply_rope(x, cos[1:2], sin[1:2]).ravel()
    c1, s1, c01, s01 = math.cos(1), math.sin(1), math.cos(0.1), math.sin(0.1)
    np.testing.assert_allclose(y, [c1 - 3 * s1, 2 * c01 - 4 * s01, 3 * c1 + s1, 4 * c01 + 2 * s01], atol=1e-6)


# ---- GELU and soft-cap -----------------------------------------------------------------------------------------------


def test_gelu_tanh_known_values():
    y = gelu_tanh(np.array([0.0, 1.0, -3.0], np.float32))
    assert y.dtype == np.float32
    assert y[0] == 0.0
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))) in float64: 0.8411919906, -0.0036373921.
    # float32 loses digits in 1 + tanh(-3.36), hence an absolute tolerance of 1e-7.
    np.testing.assert_allclose(y[1:], [0.8411920, -0.00363739], rtol=0, atol=1e-7)


def test_gelu_tanh_is_within_5e_4_of_the_exact_erf_gelu():
    x = np.linspace(-8, 8, 2001)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.max(np.abs(gelu_tanh(x) - exact)) < 5e-4  # the tanh approximation's known error is ~4.7e-4


caps = st.floats(0.1, 100.0)


@given(
    arrays(np.float32, st.integers(1, 20), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)), caps
)
def test_softcap_is_bounded_by_the_cap_for_any_finite_input(s, cap):
    with np.errstate(over="ignore"):  # s / cap may overflow to ±inf for huge s; tanh(±inf) = ±1 is still right
        y = softcap(s, cap)
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y) <= np.float32(cap))
    assert np.all(np.sign(y) * np.sign(s) >= 0)  # never flips sign (a subnormal s may round to 0)


@given(st.floats(-1.0, 1.0), caps)
def test_softcap_is_near_identity_for_small_logits(u, cap):
    s = np.float64(u * 0.05 * cap)  # |s| <= cap / 20
    # cap·tanh(s/cap) = s - s³/(3 cap²) + ...: relative error <= (s/cap)²/3 <= 8.4e-4.
    assert abs(softcap(s, cap) - s) <= abs(s) * ((s / cap) ** 2 / 3 + 1e-12)


@given(arrays(np.float32, st.integers(1, 20), elements=finite32))
def test_softcap_with_cap_zero_is_the_identity(s):
    np.testing.assert_array_equal(softcap(s, 0.0), s)
    assert np.max(np.abs(softcap(s * 100, 30.0))) <= 30.0  # ...and a non-zero cap does cap


# ---- linear with a float16 weight ----------------------------------------------------------------------------------
# Every finite float16, by its bits: sign, then exponent and fraction below 0x7C00 (inf, NaN): subnormals included.
finite_f16_bits = st.tuples(st.integers(0, 0x7BFF), st.booleans()).map(lambda t: t[0] | (0x8000 if t[1] else 0))


@given(st.data(), st.integers(1, 40), st.integers(1, 24), st.sampled_from([(1,), (2, 3)]))
def test_linear_with_a_float16_weight_multiplies_its_exact_float32_values(data, R, K, lead):
    w = data.draw(arrays(np.uint16, (R, K), elements=finite_f16_bits), label="w bits").view(np.float16)  # (R, K)
    x = data.draw(arrays(np.float32, (*lead, K), elements=finite32), label="x")  # (*lead, K)
    block = data.draw(st.integers(1, R * K), label="F16_BLOCK")  # widened blocks of 1 row .. all rows
    saved, layers.F16_BLOCK = layers.F16_BLOCK, block
    try:
        got = linear(x, w)  # (*lead, R)
    finally:
        layers.F16_BLOCK = saved
    w32 = w.astype(np.float32)  # (R, K): NumPy's exact widening
    want = x @ w32.T  # (*lead, R)
    assert got.dtype == np.float32 and got.shape == want.shape
    # The same float32 products; BLAS may add them in another order for a block of rows than for all of them.
    bound = np.abs(x).astype(np.float64) @ np.abs(w32).T.astype(np.float64)  # (*lead, R): sum of |products|
    assert np.all(np.abs(got.astype(np.float64) - want) <= 1e-6 * K * bound)
    assert linear(x.astype(np.float64), w).dtype == np.float64  # gradient checks keep float64


def test_linear_with_a_float16_weight_known_answer():
    w = np.array([[1.0, -2.0], [0.5, 6.1e-5], [65504.0, 2.0**-24]], np.float16)  # a subnormal, the max, the least
    x = np.array([[3.0, 1.0]], np.float32)
    want = [[1.0, 1.5 + np.float32(np.float16(6.1e-5)), 196512.0 + 2.0**-24]]
    np.testing.assert_array_equal(linear(x, w), np.array(want, np.float32))
