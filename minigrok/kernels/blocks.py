"""What every integer kernel shares: activations quantized per 32-block, shape checks, and the thread split.

Used by the portable loops (quant_kernels.py) and the VNNI ones (vnni.py). ``quantize_activations`` is the
compiled twin of ``quant.quantize_activations`` (llama.cpp's ``quantize_row_q8_0`` rule).
"""

from __future__ import annotations

import numpy as np
from numba import float32, int32, njit

from ..quant import QK

# Allow reordering and fusing float32 sums (what lets LLVM vectorize them); no "afn"/"arcp", so divisions and
# roundings are the exact IEEE ones of the NumPy reference, and no "nnan"/"ninf".
FASTMATH = {"reassoc", "contract", "nsz"}
FLT_MIN = np.float32(np.finfo(np.float32).tiny)
SERIAL = 1 << 62  # a min_weights that keeps every product on one thread


@njit(cache=True, fastmath=FASTMATH)
def quantize_activations(x):
    """x (N, K) float32 -> (q (N, K) int8, d (N, K // 32) float32); same rule as quant.quantize_activations."""
    N, K = x.shape
    n_blocks = K // QK
    q = np.empty((N, K), np.int8)
    d = np.empty((N, n_blocks), np.float32)
    for n in range(N):
        for b in range(n_blocks):
            amax = float32(0)
            for k in range(b * QK, b * QK + QK):
                amax = max(amax, abs(x[n, k]))
            d[n, b] = amax / float32(127)
            inv_d = float32(1) / d[n, b] if d[n, b] >= FLT_MIN else float32(0)
            for k in range(b * QK, b * QK + QK):
                v = x[n, k] * inv_d
                a = abs(v)
                whole = np.floor(a)
                r = whole + np.floor(float32(2) * (a - whole))  # round half away from zero, as C's roundf
                q[n, k] = int32(r) if v >= 0 else -int32(r)
    return q, d


@njit(cache=True)
def product_fits(x, qs, d, out, row_bytes):
    """Do x (N, K), quants qs (R, row_bytes), scales d (R, K // 32) and out (N, R) fit together, with 32 | K?"""
    N, K = x.shape
    R = qs.shape[0]
    return not (K % QK or qs.shape[1] != row_bytes or d.shape[0] != R or d.shape[1] != K // QK or out.shape != (N, R))


@njit(cache=True)
def rows_fit(R, K, d, r0, r1, out):
    """Are rows r0..r1-1 of an (R, K) weight with scales d (R, K // 32) in range, and out (>= r1 - r0, K)?"""
    return (
        0 <= r0 <= r1 <= R
        and d.shape[0] == R
        and d.shape[1] * QK == K
        and out.shape[0] >= r1 - r0
        and out.shape[1] == K
    )


@njit(cache=True)
def n_chunks(R, K, min_weights):
    """Into how many blocks of rows an (R, K) product is cut for Numba's threads: one per min_weights weights
    (``prange`` deals the blocks out evenly to the threads). 1 = no parallel region: starting one costs a few
    microseconds, more than a small product saves. (numba.get_num_threads() would stop the kernels from being
    cached, so the count does not depend on the threads.)"""
    return max(1, min(R, R * K // min_weights))
