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

Q8_0/Q4_0 experts run the same loop with the integer matrix-vector kernels of quant_kernels.py for the three
products. Float32 and quantized weights go to a kernel; anything else (float64 in gradient checks) is passed to
``minigrok.moe.moe`` unchanged, so ``moe_decode`` can stand in for ``moe`` everywhere.

The kernels run on one thread. Splitting each product's rows over Numba threads (``prange``) was measured on 2
cores: alone, the MoE of a decode step of the large bench model took 1.65x less time at Q8_0/Q4_0; inside the
decode loop it lost (shipped model 540 -> 330 tok/s, with OpenBLAS's threads also spinning 540 -> 71): launching a
parallel region per product costs more than a small product, and two thread pools fight over two cores.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..layers import gelu_tanh, softmax
from ..moe import moe
from ..quant import Q8_0, QuantizedTensor, matmul_reference
from .quant_kernels import q4_0_matmul, q8_0_matmul

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


@numba.njit(cache=True, fastmath=True)
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
            e = expert_ids[j]
            for f in range(d_ff):  # gate and up rows f, read together against the same x
                g_row, u_row = w_gate_exps[e, f], w_up_exps[e, f]
                a = np.float32(0.0)
                b = np.float32(0.0)
                for k in range(d_model):
                    a += g_row[k] * xt[k]
                    b += u_row[k] * xt[k]
                gelu = np.float32(0.5) * a * (np.float32(1.0) + math.tanh(_SQRT_2_OVER_PI * (a + _GELU_A * a * a * a)))
                hidden[f] = gelu * b  # gelu_tanh(x @ gate.T) * (x @ up.T), one element
            for o in range(d_model):
                out[t, o] += gates[j] * _dot(w_down_exps[e, o], hidden)


@numba.njit(cache=True)
def _geglu_row(a, b, hidden):
    """hidden[0] = gelu_tanh(a[0]) * b[0], elementwise over (1, d_ff) rows."""
    for f in range(a.shape[1]):
        g = a[0, f]
        hidden[0, f] = np.float32(0.5) * g * (np.float32(1.0) + math.tanh(_SQRT_2_OVER_PI * (g + _GELU_A * g * g * g)))
        hidden[0, f] *= b[0, f]


# Two copies of one loop, for Q8_0 and Q4_0 weights: Numba types both branches of an ``if``, and the two integer
# kernels (minigrok/kernels/quant_kernels.py) take quants of different dtypes (int8, uint8).
@numba.njit(cache=True)
def _moe_decode_q8_0_kernel(x, w_router, gate_qs, gate_d, up_qs, up_d, down_qs, down_d, top_k, renormalize, out):
    n_tokens, d_model = x.shape
    num_experts, d_ff = w_router.shape[0], gate_qs.shape[1]
    logits = np.empty(num_experts, np.float32)
    expert_ids, gates = np.empty(top_k, np.int64), np.empty(top_k, np.float32)
    xt, y = np.empty((1, d_model), np.float32), np.empty((1, d_model), np.float32)
    a, b, hidden = np.empty((1, d_ff), np.float32), np.empty((1, d_ff), np.float32), np.empty((1, d_ff), np.float32)
    for t in range(n_tokens):
        xt[0] = x[t]
        for e in range(num_experts):
            logits[e] = _dot(w_router[e], x[t])
        _route_one(logits, top_k, renormalize, expert_ids, gates)
        for j in range(top_k):
            e = expert_ids[j]
            q8_0_matmul(xt, gate_qs[e], gate_d[e], a)  # (1, d_ff)
            q8_0_matmul(xt, up_qs[e], up_d[e], b)  # (1, d_ff)
            _geglu_row(a, b, hidden)
            q8_0_matmul(hidden, down_qs[e], down_d[e], y)  # (1, d_model)
            for o in range(d_model):
                out[t, o] += gates[j] * y[0, o]


@numba.njit(cache=True)
def _moe_decode_q4_0_kernel(x, w_router, gate_qs, gate_d, up_qs, up_d, down_qs, down_d, top_k, renormalize, out):
    n_tokens, d_model = x.shape
    num_experts, d_ff = w_router.shape[0], gate_qs.shape[1]
    logits = np.empty(num_experts, np.float32)
    expert_ids, gates = np.empty(top_k, np.int64), np.empty(top_k, np.float32)
    xt, y = np.empty((1, d_model), np.float32), np.empty((1, d_model), np.float32)
    a, b, hidden = np.empty((1, d_ff), np.float32), np.empty((1, d_ff), np.float32), np.empty((1, d_ff), np.float32)
    for t in range(n_tokens):
        xt[0] = x[t]
        for e in range(num_experts):
            logits[e] = _dot(w_router[e], x[t])
        _route_one(logits, top_k, renormalize, expert_ids, gates)
        for j in range(top_k):
            e = expert_ids[j]
            q4_0_matmul(xt, gate_qs[e], gate_d[e], a)  # (1, d_ff)
            q4_0_matmul(xt, up_qs[e], up_d[e], b)  # (1, d_ff)
            _geglu_row(a, b, hidden)
            q4_0_matmul(hidden, down_qs[e], down_d[e], y)  # (1, d_model)
            for o in range(d_model):
                out[t, o] += gates[j] * y[0, o]


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
        kernel = _moe_decode_q8_0_kernel if w_gate_exps.type == Q8_0 else _moe_decode_q4_0_kernel
        arrays = [a for w in experts for a in _quant_arrays(w)]
        kernel(x, w_router, *arrays, int(top_k), bool(renormalize), out)
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
