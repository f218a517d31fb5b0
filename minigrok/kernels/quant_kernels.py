"""Numba kernels for products with Q8_0 and Q4_0 weights: the fast twins of ``minigrok.quant.matmul_reference``.

``matmul(x, w)`` computes ``x @ w.T`` reading the weight's quantized bytes directly, as llama.cpp does: each row
of x is first quantized to int8 per 32-block (the Q8_0 rule, scale kept in float32), the 32 products of a block
are exact integers, and they are scaled by the weight's and the activation's block scales and summed in float32.
``dequantize_rows`` turns a few rows of a weight back into float32, for BLAS on big batches. Both take the same
arguments as their NumPy twins in minigrok/quant.py (``matmul_reference``, ``dequantize_rows``), and
``CompiledQuantizedTensor`` is a QuantizedTensor whose products run ``quant.quantized_linear`` with them.

The loops are written in the shape LLVM vectorizes (measured here with Numba 0.68 on a 2-vCPU AMD EPYC
with AVX2 and AVX-512, by timing each variant of the loop; benchmarks/README.md has the resulting figures):
- one long loop over a row of K weights, with the block scale looked up as ``scale[k >> 5]``. A loop over blocks
  with an inner loop of 32 stays scalar and is about 3x slower.
- each product of two small integers written ``int16(int16(a) * int16(b))``: it fits (|a b| <= 128 * 128), and
  without the outer cast Numba widens the multiply to int64 lanes; int16 lanes are ~8% (Q8_0) and ~25% (Q4_0)
  faster than int32 ones here. Products are not summed in int16: each is converted to float32 (exactly, it is
  below 2**24), scaled and accumulated in float32.
- for Q4_0, the activation split once into the halves that the low and the high nibbles multiply, so the loop
  reads both with unit stride instead of gathering.

Threads: ``q8_0_matmul`` and ``q4_0_matmul`` cut the rows into blocks of at least ``min_weights`` weights and deal
them to Numba's threads (``prange``); every row is computed the same way in any block, so the result does not
depend on the threads. ``matmul`` (used between BLAS calls in prefills, through CompiledQuantizedTensor) stays on one
thread; the compiled decode step (decode.py) decides for itself.

Safety: the kernels have explicit signatures, so they accept only C-contiguous arrays of the stated dtypes (Numba
raises TypeError for anything else, and the wrappers below convert what they are given), and each kernel checks
that the shapes agree and raises ValueError before any loop runs: no read is out of bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numba import float32, int16, int32, njit, prange

from ..quant import Q8_0, QK, QuantizedTensor, quantized_linear
from . import INTEGER_DOT
from .blocks import FASTMATH, SERIAL, n_chunks, product_fits, quantize_activations, rows_fit
from .f16 import f16_to_f32


@njit(cache=True, fastmath=FASTMATH)
def _q8_0_rows(xq, dx, qs, d, out, r0, r1):
    """out[:, r0:r1] for Q8_0 rows r0..r1-1, activations already quantized (xq (N, K) int8, dx (N, K // 32))."""
    N, K = xq.shape
    n_blocks = K // QK
    scale = np.empty(n_blocks, np.float32)  # (n_blocks,): weight scale * activation scale of each block
    for r in range(r0, r1):
        w = qs[r]  # (K,) int8
        for n in range(N):
            xn = xq[n]  # (K,) int8
            for b in range(n_blocks):
                scale[b] = f16_to_f32(d[r, b]) * dx[n, b]
            acc = float32(0)
            for k in range(K):
                acc += float32(int16(int16(w[k]) * int16(xn[k]))) * scale[k >> 5]
            out[n, r] = acc


@njit(
    "void(float32[:, ::1], int8[:, ::1], uint16[:, ::1], float32[:, ::1], int64)",
    cache=True,
    fastmath=FASTMATH,
    parallel=True,
)
def q8_0_matmul_loop(x, qs, d, out, min_weights):
    """out (N, R) = x (N, K) @ W.T for a Q8_0 weight W (R, K) given as qs (R, K) int8 and d (R, K // 32)
    uint16 (the fp16 scales' bits).
    Rows are split over Numba's threads in blocks of at least min_weights weights (SERIAL: one thread)."""
    N, K = x.shape
    R = qs.shape[0]
    if not product_fits(x, qs, d, out, K):
        raise ValueError("q8_0_matmul: shapes disagree; need x (N, K), qs (R, K), d (R, K/32), out (N, R), 32 | K")
    xq, dx = quantize_activations(x)  # (N, K) int8, (N, n_blocks)
    chunks = n_chunks(R, K, min_weights)
    if chunks == 1:
        _q8_0_rows(xq, dx, qs, d, out, 0, R)
    else:
        for c in prange(chunks):  # each thread its own block of rows
            _q8_0_rows(xq, dx, qs, d, out, c * R // chunks, (c + 1) * R // chunks)


@njit(cache=True, fastmath=FASTMATH)
def _q4_0_rows(x_lo, x_hi, dx, qs, d, out, r0, r1):
    """out[:, r0:r1] for Q4_0 rows r0..r1-1, given the activation halves x_lo, x_hi (N, K // 2) int8 and dx."""
    N, half = x_lo.shape
    n_blocks = half // (QK // 2)
    scale = np.empty(n_blocks, np.float32)
    for r in range(r0, r1):
        w = qs[r]  # (K / 2,) uint8
        for n in range(N):
            lo, hi = x_lo[n], x_hi[n]
            for b in range(n_blocks):
                scale[b] = f16_to_f32(d[r, b]) * dx[n, b]
            acc = float32(0)
            for k in range(half):
                byte = int32(w[k])
                p_lo = int16(int16((byte & 15) - 8) * int16(lo[k]))  # weight 32 b + j times its activation
                p_hi = int16(int16((byte >> 4) - 8) * int16(hi[k]))  # weight 32 b + 16 + j times its activation
                acc += (float32(p_lo) + float32(p_hi)) * scale[k >> 4]
            out[n, r] = acc


@njit(
    "void(float32[:, ::1], uint8[:, ::1], uint16[:, ::1], float32[:, ::1], int64)",
    cache=True,
    fastmath=FASTMATH,
    parallel=True,
)
def q4_0_matmul_loop(x, qs, d, out, min_weights):
    """out (N, R) = x (N, K) @ W.T for a Q4_0 weight W (R, K) given as qs (R, K // 2) uint8 (GGUF nibble order:
    byte j of a block holds q[j] low and q[j + 16] high) and d (R, K // 32) uint16 (fp16 bits); a weight is
    (q - 8) * d.
    Rows are split over Numba's threads in blocks of at least min_weights weights (SERIAL: one thread)."""
    N, K = x.shape
    R = qs.shape[0]
    n_blocks, half = K // QK, K // 2
    if not product_fits(x, qs, d, out, half):
        raise ValueError("q4_0_matmul: shapes disagree; need x (N, K), qs (R, K/2), d (R, K/32), out (N, R), 32 | K")
    xq, dx = quantize_activations(x)  # (N, K) int8, (N, n_blocks)
    # Split each activation block into the 16 values the low nibbles multiply and the 16 the high nibbles do.
    x_lo = np.empty((N, half), np.int8)  # x_lo[n, 16 b + j] = xq[n, 32 b + j]
    x_hi = np.empty((N, half), np.int8)  # x_hi[n, 16 b + j] = xq[n, 32 b + 16 + j]
    for n in range(N):
        for b in range(n_blocks):
            for j in range(QK // 2):
                x_lo[n, b * 16 + j] = xq[n, b * QK + j]
                x_hi[n, b * 16 + j] = xq[n, b * QK + 16 + j]
    chunks = n_chunks(R, K, min_weights)
    if chunks == 1:
        _q4_0_rows(x_lo, x_hi, dx, qs, d, out, 0, R)
    else:
        for c in prange(chunks):
            _q4_0_rows(x_lo, x_hi, dx, qs, d, out, c * R // chunks, (c + 1) * R // chunks)


@njit("void(int8[:, ::1], uint16[:, ::1], int64, int64, float32[:, ::1])", cache=True)
def q8_0_dequantize_rows(qs, d, r0, r1, out):
    """out[:r1 - r0] = the float32 rows r0..r1-1 of a Q8_0 weight (qs (R, K) int8, d (R, K // 32) fp16 bits): q * d."""
    R, K = qs.shape
    if not rows_fit(R, K, d, r0, r1, out):
        raise ValueError(
            "q8_0_dequantize_rows: need 0 <= r0 <= r1 <= R, d (R, K/32) and out of at least r1-r0 rows of K"
        )
    for i in range(r1 - r0):
        for k in range(K):
            out[i, k] = float32(qs[r0 + i, k]) * f16_to_f32(d[r0 + i, k >> 5])


@njit("void(uint8[:, ::1], uint16[:, ::1], int64, int64, float32[:, ::1])", cache=True)
def q4_0_dequantize_rows(qs, d, r0, r1, out):
    """out[:r1 - r0] = float32 rows r0..r1-1 of a Q4_0 weight (qs (R, K // 2) uint8, d fp16 bits): (q - 8) * d."""
    R, half = qs.shape
    K = 2 * half
    if not rows_fit(R, K, d, r0, r1, out):
        raise ValueError(
            "q4_0_dequantize_rows: need 0 <= r0 <= r1 <= R, d (R, K/32) and out of at least r1-r0 rows of K"
        )
    for i in range(r1 - r0):
        for b in range(K // QK):
            db = f16_to_f32(d[r0 + i, b])
            for j in range(QK // 2):
                byte = int32(qs[r0 + i, b * 16 + j])
                out[i, b * QK + j] = float32((byte & 15) - 8) * db
                out[i, b * QK + 16 + j] = float32((byte >> 4) - 8) * db


# ---- which integer kernels run: the VNNI ones where the CPU has the instruction (kernels.INTEGER_DOT) ----------
if INTEGER_DOT == "vnni":
    from .vnni import q4_0_matmul, q8_0_matmul
else:
    q8_0_matmul, q4_0_matmul = q8_0_matmul_loop, q4_0_matmul_loop


# ---- Python entry points: convert and check, then call a kernel --------------------------------------------------
def kernel_arrays(w: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(qs, d) as the kernels take them: C-contiguous quants, and the fp16 scales as their uint16 bits."""
    return np.ascontiguousarray(w.qs), np.ascontiguousarray(w.d, dtype=np.float16).view(np.uint16)


def _arrays(w: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(w, QuantizedTensor) or w.ndim != 2:
        raise ValueError(f"expected a 2-D QuantizedTensor (out, in), got {w!r}")
    return kernel_arrays(w)


def matmul(x: np.ndarray, w: QuantizedTensor, min_weights: int = SERIAL) -> np.ndarray:
    """``x @ w.T`` with the integer kernel: x (N, K) float, w (R, K) Q8_0 or Q4_0 -> (N, R) float32.

    Agrees with ``quant.matmul_reference`` up to float32 summation order (tests/test_quant.py states the bound).
    min_weights: the kernel's thread split (SERIAL, the default: one thread). Raises ValueError if the shapes do not
    fit.
    """
    qs, d = _arrays(w)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x must be (N, {w.shape[1]}) to multiply a weight of shape {w.shape}, got {x.shape}")
    out = np.empty((x.shape[0], w.shape[0]), np.float32)  # (N, R)
    (q8_0_matmul if w.type == Q8_0 else q4_0_matmul)(x, qs, d, out, min_weights)
    return out


def dequantize_rows(w: QuantizedTensor, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """Rows r0..r1-1 of a 2-D quantized weight as float32, written into ``out`` (at least r1 - r0 rows of K,
    C-contiguous float32); returns the view ``out[: r1 - r0]``. Raises ValueError on bad rows or buffer."""
    qs, d = _arrays(w)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 2 and out.flags.c_contiguous):
        raise ValueError("out must be a C-contiguous 2-D float32 array")
    (q8_0_dequantize_rows if w.type == Q8_0 else q4_0_dequantize_rows)(qs, d, r0, r1, out)
    return out[: r1 - r0]


@dataclass(frozen=True, eq=False)
class CompiledQuantizedTensor(QuantizedTensor):
    """A QuantizedTensor (the same arrays, not copied) whose products run in the Numba kernels above:
    ``quant.quantized_linear`` with :func:`matmul` and :func:`dequantize_rows` instead of the NumPy twins.

    min_weights: the thread split of its products on the VNNI path, which multiplies any batch with the integer
    kernel (SERIAL: one thread; minigrok/engine.py gives a large model's weights PARALLEL_BLOCK). On the portable
    path its products stay on one thread: they run between BLAS calls, whose idle threads spin (decode.py)."""

    min_weights: int = SERIAL

    @classmethod
    def of(cls, w: QuantizedTensor, min_weights: int = SERIAL) -> CompiledQuantizedTensor:
        """The same weight, with compiled products (shares w's scales and quants)."""
        return cls(w.type, w.shape, w.d, w.qs, min_weights)

    def __getitem__(self, index) -> CompiledQuantizedTensor:
        return replace(super().__getitem__(index), min_weights=self.min_weights)

    def linear(self, x: np.ndarray) -> np.ndarray:
        if INTEGER_DOT == "vnni":  # the integer kernel beats dequantize + BLAS at any batch (benchmarks/README.md)
            return quantized_linear(x, self, self._threaded_matmul, dequantize_rows, blas_min_tokens=math.inf)
        return quantized_linear(x, self, matmul, dequantize_rows)

    def _threaded_matmul(self, x: np.ndarray, w: QuantizedTensor) -> np.ndarray:
        return matmul(x, w, self.min_weights)
