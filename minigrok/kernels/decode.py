"""The MoE layer for a few tokens (decode) in one compiled call: router, top-k, gates and the selected experts.

``minigrok.moe.moe`` is written for many tokens: it groups the tokens by expert and makes one matrix product per
expert, which is what a prefill needs. For the single token of a decode step that costs ~30 NumPy calls per layer
(router, softmax, argsort, a ``nonzero`` for each of the num_experts experts, three products and the GELU for each
selected expert, the gated sum), each with its Python and dispatch overhead, while the useful work is to read the
top_k experts' weights once. ``moe_decode`` (Numba) does that work in one call: per token, the router logits and
softmax, the top-k by repeated arg-max (ties to the lowest id, as ``route``'s stable sort), then for each selected
expert one pass over the rows of ``gate`` and ``up`` together (both read against the same x), the GELU, and the
``down`` product added into the output with its gate. ``moe_decode_numpy`` is its NumPy twin, the same algorithm
token by token; tests/test_decode_kernels.py ties the two to each other and to ``minigrok.moe.moe``.

Q8_0/Q4_0 experts run the same loop with integer matrix-vector products: the activation quantized to 8 bits per
32-block, exact int32 block products scaled by both block scales (the arithmetic of quant_kernels.py's
q8_0_matmul / q4_0_matmul and of llama.cpp's ggml_vec_dot_q8_0_q8_0 / ggml_vec_dot_q4_0_q8_0). Each product splits
its output rows over Numba's threads (``prange``; NUMBA_NUM_THREADS), as llama.cpp splits rows over its threads:
measured on 2 cores, the MoE of a decode step of the large random bench model takes 1.65x less time at Q8_0 and
Q4_0 than on one thread, 1.2x at F32 (memory-bound). Float32 and quantized weights go to a kernel; anything else
(float64 in gradient checks) is passed to ``minigrok.moe.moe`` unchanged, so ``moe_decode`` can stand in for
``moe`` everywhere.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import float32, int32

from ..layers import gelu_tanh, softmax
from ..moe import moe
from ..quant import Q8_0, QK, QuantizedTensor, matmul_reference
from .quant_kernels import FASTMATH, _quantize_activations

_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_GELU_A = np.float32(0.044715)  # float32 constants keep the kernel's arithmetic in float32


@numba.njit(cache=True, fastmath=True)
def _dot(w_row, x):
    """float32 dot product of two (n,) rows; fastmath lets LLVM reorder the sum into SIMD lanes."""
    s = np.float32(0.0)
    for k in range(x.shape[0]):
        s += w_row[k] * x[k]
    return s


@numba.njit(cache=True)
def _route_one(logits, top_k, renormalize, expert_ids, gates):
    """Softmax of one token's router logits (num_experts,), then its top_k experts and gates, written in place."""
    m = logits.max()
    probs = np.exp(logits - m)
    probs /= probs.sum()
    taken = np.zeros(probs.shape[0], np.bool_)
    total = np.float32(0.0)
    for j in range(top_k):
        best = -1
        for e in range(probs.shape[0]):  # strict >: the lowest id wins a tie, as a stable sort of -probs
            if not taken[e] and (best < 0 or probs[e] > probs[best]):
                best = e
        taken[best] = True
        expert_ids[j] = best
        gates[j] = probs[best]
        total += probs[best]
    if renormalize:
        for j in range(top_k):
            gates[j] /= total


@numba.njit(cache=True, fastmath=True, parallel=True)
def _moe_decode_kernel(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k, renormalize, out):
    n_tokens, d_model = x.shape
    num_experts, d_ff = w_router.shape[0], w_gate_exps.shape[1]
    logits = np.empty(num_experts, np.float32)
    hidden = np.empty(d_ff, np.float32)
    expert_ids = np.empty(top_k, np.int64)
    gates = np.empty(top_k, np.float32)
    for t in range(n_tokens):
        xt = x[t]
        for e in range(num_experts):
            logits[e] = _dot(w_router[e], xt)
        _route_one(logits, top_k, renormalize, expert_ids, gates)
        for j in range(top_k):
            e, gate = expert_ids[j], gates[j]
            for f in numba.prange(d_ff):  # gate and up rows f, read together against the same x; rows split on threads
                a = np.float32(0.0)
                b = np.float32(0.0)
                for k in range(d_model):
                    a += w_gate_exps[e, f, k] * xt[k]
                    b += w_up_exps[e, f, k] * xt[k]
                gelu = np.float32(0.5) * a * (np.float32(1.0) + math.tanh(_SQRT_2_OVER_PI * (a + _GELU_A * a * a * a)))
                hidden[f] = gelu * b  # gelu_tanh(x @ gate.T) * (x @ up.T), one element
            for o in numba.prange(d_model):
                y = np.float32(0.0)
                for f in range(d_ff):
                    y += w_down_exps[e, o, f] * hidden[f]
                out[t, o] += gate * y


@numba.njit(cache=True)
def _gelu(a):
    """gelu_tanh of one float32 number."""
    return np.float32(0.5) * a * (np.float32(1.0) + math.tanh(_SQRT_2_OVER_PI * (a + _GELU_A * a * a * a)))


# Integer matrix-vector products for one token, rows split over threads (the loops of quant_kernels.py's
# q8_0_matmul / q4_0_matmul, which run on one thread: same arithmetic, exact int32 products scaled per 32-block).
@numba.njit(cache=True, fastmath=FASTMATH, parallel=True)
def _q8_0_rows(xq, dx, qs, d, out):
    """out (R,) = W x for a Q8_0 weight (qs (R, K) int8, d (R, K/32)) and an 8-bit x (xq (K,) int8, dx (K/32,))."""
    for r in numba.prange(qs.shape[0]):
        acc = float32(0)
        for k in range(qs.shape[1]):
            acc += float32(int32(int32(qs[r, k]) * int32(xq[k]))) * (d[r, k >> 5] * dx[k >> 5])
        out[r] = acc


@numba.njit(cache=True, fastmath=FASTMATH, parallel=True)
def _q4_0_rows(x_lo, x_hi, dx, qs, d, out):
    """out (R,) = W x for a Q4_0 weight (qs (R, K/2) uint8 in GGUF nibble order, d (R, K/32)) and an 8-bit x split
    into the halves the low and the high nibbles multiply (x_lo, x_hi (K/2,) int8, dx (K/32,))."""
    for r in numba.prange(qs.shape[0]):
        acc = float32(0)
        for k in range(qs.shape[1]):
            byte = int32(qs[r, k])
            p = int32(int32((byte & 15) - 8) * int32(x_lo[k]) + int32((byte >> 4) - 8) * int32(x_hi[k]))
            acc += float32(p) * (d[r, k >> 4] * dx[k >> 4])
        out[r] = acc


@numba.njit(cache=True)
def _nibble_halves(xq):
    """xq (K,) int8 -> (x_lo, x_hi) (K/2,) each: x_lo[16 b + j] = xq[32 b + j], x_hi[16 b + j] = xq[32 b + 16 + j]."""
    half = xq.shape[0] // 2
    x_lo, x_hi = np.empty(half, np.int8), np.empty(half, np.int8)
    for i in range(half):
        b, j = i >> 4, i & 15
        x_lo[i] = xq[b * QK + j]
        x_hi[i] = xq[b * QK + 16 + j]
    return x_lo, x_hi


@numba.njit(cache=True)
def _matvec_q(v, qs, d, is_q4, out):
    """out (R,) = W v for a Q4_0 (is_q4) or Q8_0 W; v (1, K) float32 is first quantized to 8 bits per 32-block
    (quant_kernels._quantize_activations, the rule of quant.quantize_activations)."""
    vq, dv = _quantize_activations(v)  # (1, K) int8, (1, K/32) float32
    if is_q4:
        x_lo, x_hi = _nibble_halves(vq[0])
        _q4_0_rows(x_lo, x_hi, dv[0], qs, d, out)
    else:
        _q8_0_rows(vq[0], dv[0], qs, d, out)


@numba.njit(cache=True)
def _moe_decode_quantized(x, w_router, gate_qs, gate_d, up_qs, up_d, down_qs, down_d, top_k, renormalize, out, is_q4):
    n_tokens, d_model = x.shape
    num_experts, d_ff = w_router.shape[0], gate_qs.shape[1]
    logits = np.empty(num_experts, np.float32)
    expert_ids, gates = np.empty(top_k, np.int64), np.empty(top_k, np.float32)
    a, b, y = np.empty(d_ff, np.float32), np.empty(d_ff, np.float32), np.empty(d_model, np.float32)
    hidden = np.empty((1, d_ff), np.float32)
    for t in range(n_tokens):
        for e in range(num_experts):
            logits[e] = _dot(w_router[e], x[t])
        _route_one(logits, top_k, renormalize, expert_ids, gates)
        for j in range(top_k):
            e = expert_ids[j]
            _matvec_q(x[t : t + 1], gate_qs[e], gate_d[e], is_q4, a)  # (d_ff,)
            _matvec_q(x[t : t + 1], up_qs[e], up_d[e], is_q4, b)  # (d_ff,)
            for f in range(d_ff):
                hidden[0, f] = _gelu(a[f]) * b[f]
            _matvec_q(hidden, down_qs[e], down_d[e], is_q4, y)  # (d_model,)
            for o in range(d_model):
                out[t, o] += gates[j] * y[o]


def _quant_arrays(w: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(w.qs), np.ascontiguousarray(w.d, dtype=np.float32)


def _kernel_applies(*arrays) -> bool:
    return all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


def moe_decode(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k: int, renormalize: bool) -> np.ndarray:
    """``minigrok.moe.moe`` for a few tokens, in one Numba call: same arguments, same result (to float32 rounding).

    x (N, d_model); w_router (num_experts, d_model); w_gate_exps, w_up_exps (num_experts, d_ff, d_model);
    w_down_exps (num_experts, d_model, d_ff) -> (N, d_model) float32. Meant for decode (N = batch size); for a
    prefill, ``moe`` (one matrix product per expert) is faster. Expert weights may be float32 or Q8_0/Q4_0
    (``QuantizedTensor``, multiplied by the integer kernels of quant_kernels.py, activations quantized to 8 bits
    as in ``quant.quantized_linear``); x and the router must be C-contiguous float32. Anything else (float64 in
    gradient checks, mixed types) goes to ``moe`` itself.

    Raises:
        ValueError: shapes that do not fit together, or top_k outside 1..num_experts (checked before the kernel).
    """
    experts = (w_gate_exps, w_up_exps, w_down_exps)
    quantized = all(isinstance(w, QuantizedTensor) and w.type == w_gate_exps.type for w in experts)
    if not (_kernel_applies(x, w_router) and (quantized or _kernel_applies(*experts))):
        return moe(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k, renormalize)
    _check_shapes(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k)
    out = np.zeros_like(x)  # (N, d_model)
    if quantized:
        arrays = [a for w in experts for a in _quant_arrays(w)]
        is_q4 = w_gate_exps.type != Q8_0
        _moe_decode_quantized(x, w_router, *arrays, int(top_k), bool(renormalize), out, is_q4)
    else:
        _moe_decode_kernel(x, w_router, *experts, int(top_k), bool(renormalize), out)
    return out


def moe_decode_numpy(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k: int, renormalize: bool) -> np.ndarray:
    """The NumPy twin of :func:`moe_decode`: the same steps, token by token, expert by expert. Same shapes."""
    _check_shapes(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k)
    out = np.zeros_like(x)  # (N, d_model)
    for t in range(x.shape[0]):
        probs = softmax(w_router @ x[t])  # (num_experts,)
        expert_ids = np.argsort(-probs, kind="stable")[:top_k]  # (top_k,), ties to the lowest id
        gates = probs[expert_ids] / (probs[expert_ids].sum() if renormalize else 1)  # (top_k,)
        for e, gate in zip(expert_ids, gates, strict=True):
            hidden = gelu_tanh(_matvec(w_gate_exps[e], x[t])) * _matvec(w_up_exps[e], x[t])  # (d_ff,)
            out[t] += gate * _matvec(w_down_exps[e], hidden)  # (d_model,)
    return out


def _matvec(w, v: np.ndarray) -> np.ndarray:
    """w (R, K) @ v (K,) -> (R,); a quantized w as quant.matmul_reference computes it (v quantized to 8 bits)."""
    return matmul_reference(v[None], w)[0] if isinstance(w, QuantizedTensor) else w @ v


def _check_shapes(x, w_router, w_gate_exps, w_up_exps, w_down_exps, top_k: int) -> None:
    """ValueError unless the shapes are those of one MoE layer and 1 <= top_k <= num_experts."""

    def shape(a) -> tuple[int, ...]:
        return tuple(a.shape) if isinstance(a, QuantizedTensor) else np.shape(a)

    num_experts, d_model = shape(w_router)
    d_ff = shape(w_gate_exps)[1] if len(shape(w_gate_exps)) == 3 else -1
    expected = {
        "x": (shape(x)[0] if len(shape(x)) == 2 else -1, d_model),
        "w_gate_exps": (num_experts, d_ff, d_model),
        "w_up_exps": (num_experts, d_ff, d_model),
        "w_down_exps": (num_experts, d_model, d_ff),
    }
    for name, array in (("x", x), ("w_gate_exps", w_gate_exps), ("w_up_exps", w_up_exps), ("w_down_exps", w_down_exps)):
        if shape(array) != expected[name]:
            raise ValueError(
                f"{name} has shape {shape(array)}, expected {expected[name]} for a router of shape "
                f"{shape(w_router)} (num_experts, d_model)"
            )
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts} (num_experts), got {top_k}")
