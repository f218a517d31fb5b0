"""One decode step of the whole model in compiled code: the fast twin of ``model.forward`` for one new token.

A decode step reads every active weight once and does little arithmetic with it, so its speed is set by how fast
the weights stream from memory and, for a small model, by how many Python and NumPy calls it makes: the readable
``model.forward`` makes about 60 per layer for one token (norms, four projections, RoPE, the KV cache, softmax,
the router, top-k, each expert), each with microseconds of dispatch whatever its size. Here each layer is one
compiled call, ``decode_layer``, and the final norm and logits one more (``final_logits``)::

    for each layer:  x += attention(RMSNorm(x)) ... x += MoE(RMSNorm(x))   # decode_layer(x, weights, cache, ...)
    logits = final_logits(x, output_norm, token_embd)

Every product in them is ``matvec``, compiled once for each weight type: a float32 loop for F32, the integer
kernels of quant_kernels.py for Q8_0 and Q4_0 (activations quantized to 8 bits per block, as llama.cpp does). A
large model splits each big product's rows over Numba's threads. tanh (soft-cap, GELU) is written with exp, and
exp itself as Cephes' polynomial (``exp_inplace``), because LLVM vectorizes that loop here and not one of libm calls.

The NumPy twin is ``model.forward`` itself; tests/test_decode_kernels.py checks that both give the same logits,
step after step, for F32, Q8_0 and Q4_0 weights, every attention pattern and several head and expert shapes.
minigrok/engine.py takes this path for one token of one sequence with a cache, when every weight is float32 or
Q8_0/Q4_0, and the token embedding float32 or F16 (read as F16 by ``f16_matvec``, see kernels/f16.py). The
arguments are named records (``LayerWeights``, ``DecodeConstants``: namedtuples, which Numba compiles like tuples
with field names).

Compiled code is cached on disk in a folder keyed by a hash of every source file (see kernels/__init__.py), so an
edit to any of them, here or in the reference modules, is picked up by the next run.
"""

from __future__ import annotations

import functools
import math
import operator
from collections import namedtuple

import numpy as np
from numba import float32, float64, njit, prange, types
from numba.extending import overload

from ..attention import CacheStep, KVCache, sink_query_positions
from ..config import ModelConfig
from ..layers import rope_tables
from ..model import LAYER_TENSORS
from ..quant import QuantizedTensor
from .attention_kernels import key_scores, pattern_code, visible_slots, weighted_values
from .blocks import FASTMATH, SERIAL, n_chunks
from .f16 import f16_to_f32
from .quant_kernels import q4_0_matmul, q8_0_matmul

# Threads. A parallel region costs microseconds to start, and right after a prefill OpenBLAS's idle threads spin
# for ~0.1 s: a third busy thread on two cores made the shipped model's decode steps (~1 ms) 2x slower. So only
# a model with at least THREADED_MODEL_WEIGHTS active weights per token (the large bench model: 126 M; the shipped
# one: 4.4 M) splits its products over Numba's threads, in blocks of at least PARALLEL_BLOCK weights.
THREADED_MODEL_WEIGHTS = 1 << 24
PARALLEL_BLOCK = 1 << 19

_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_GELU_A = np.float32(0.044715)  # float32 constants keep the kernel's arithmetic in float32


# ---- matrix-vector products for every weight type -----------------------------------------------------------------
# In compiled code a weight is either a float32 (R, K) array or, for Q8_0/Q4_0, the tuple (qs, d) of its quants
# ((R, K) int8 or (R, K // 2) uint8) and fp16 block scales (R, K // 32) as their uint16 bits: see kernel_weight.
@njit(cache=True, fastmath=FASTMATH)
def _f32_rows(x, w, out, r0, r1):
    """out[0, r] = w[r] · x[0] for rows r0..r1-1; a float32 loop LLVM vectorizes (sums reordered, fastmath)."""
    for r in range(r0, r1):
        acc = float32(0)
        for k in range(x.shape[1]):
            acc += w[r, k] * x[0, k]
        out[0, r] = acc


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def f32_matvec(x, w, out, min_weights):
    """out (1, R) = x (1, K) @ w.T for a float32 w (R, K); rows split over threads in blocks of >= min_weights."""
    R, K = w.shape
    chunks = n_chunks(R, K, min_weights)
    if chunks == 1:
        _f32_rows(x, w, out, 0, R)
    else:
        for c in prange(chunks):
            _f32_rows(x, w, out, c * R // chunks, (c + 1) * R // chunks)


def matvec(w, x, out, min_weights):
    """out (1, R) = x (1, K) @ W.T for a weight W (R, K) of any type, its rows split over Numba's threads in
    blocks of at least min_weights weights (compiled code only; see the overload)."""
    raise NotImplementedError("matvec runs inside Numba-compiled functions only")


def expert(w, e):
    """Expert e of a stacked (num_experts, R, K) weight of any type (compiled code only; see the overload)."""
    raise NotImplementedError("expert runs inside Numba-compiled functions only")


@overload(matvec)
def _matvec_for(w, x, out, min_weights):
    if isinstance(w, types.Array):
        return lambda w, x, out, min_weights: f32_matvec(x, w, out, min_weights)
    if w[0].dtype == types.int8:
        return lambda w, x, out, min_weights: q8_0_matmul(x, w[0], w[1], out, min_weights)
    return lambda w, x, out, min_weights: q4_0_matmul(x, w[0], w[1], out, min_weights)


@overload(expert)
def _expert_for(w, e):
    if isinstance(w, types.Array):
        return lambda w, e: w[e]
    return lambda w, e: (w[0][e], w[1][e])


def n_rows(w):
    """R, the output width of a weight (..., R, K) of any type (compiled code only; see the overload)."""
    raise NotImplementedError("n_rows runs inside Numba-compiled functions only")


@overload(n_rows)
def _n_rows_for(w):
    if isinstance(w, types.Array):
        return lambda w: w.shape[-2]
    return lambda w: w[0].shape[-2]


# ---- the pieces of a layer ------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=FASTMATH)
def _rms_norm(x, weight, eps, out):
    """out (1, d) = weight * x / sqrt(mean(x²) + eps), as layers.rms_norm: squares summed in float64 (float32
    overflows above |x| ~ 1.8e19), the rms (at most max|x|) back in float32 for the division. x / rms is stored
    before the weights multiply it, in a loop of its own: fastmath may reassociate within one expression, and
    (weight * x) / rms overflows near 3.4e38 where weight * (x / rms) does not."""
    ms = 0.0
    for i in range(x.shape[1]):
        ms += float64(x[0, i]) * float64(x[0, i])
    rms = float32(np.sqrt(ms / x.shape[1] + float64(eps)))
    for i in range(x.shape[1]):
        out[0, i] = x[0, i] / rms
    for i in range(x.shape[1]):
        out[0, i] *= weight[i]


@njit(cache=True)
def _rope(x, cos, sin, out):
    """out (H, hd) = x (H, hd) rotated in the rotate-half layout, as layers.apply_rope (cos, sin (hd / 2,))."""
    half = x.shape[1] // 2
    for h in range(x.shape[0]):
        for i in range(half):
            x1, x2 = x[h, i], x[h, i + half]
            out[h, i] = x1 * cos[i] - x2 * sin[i]
            out[h, i + half] = x2 * cos[i] + x1 * sin[i]


@njit(cache=True)
def _route(logits, top_k, renormalize, expert_ids, gates):
    """Softmax of the router logits (num_experts,), then the top_k experts and gates, as moe.route, in place."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    taken = np.zeros(probs.shape[0], np.bool_)
    total = float32(0)
    for j in range(top_k):
        best = -1
        for e in range(probs.shape[0]):  # strict >: the lowest id wins a tie, as route's stable sort of -probs
            if not taken[e] and (best < 0 or probs[e] > probs[best]):
                best = e
        taken[best] = True
        expert_ids[j] = best
        gates[j] = probs[best]
        total += probs[best]
    if renormalize:
        for j in range(top_k):
            gates[j] /= total


# Cephes' expf (Moshier, Cephes Math Library, expf.c): exp(x) = 2^k * p(r), k = round(x / ln 2), r = x - k ln 2
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = _LN2_HI + _LN2_LO, in two parts
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@njit(cache=True, fastmath=FASTMATH)
def exp_inplace(a):
    """a[:] = exp(a) in place, for a float32 (n,) array; relative error < 3e-7, inputs clamped to [-87, 88].

    Written out (Cephes' expf) because LLVM vectorizes this loop here, 6x faster than a loop of math.exp, which is
    a scalar libm call per element, and 1.4x faster than np.exp. Used for the soft-cap, the softmax and the GELU.
    """
    two_to_k = np.empty(a.shape[0], np.int32)  # the bits of the float32 2^k: exponent field k + 127
    for i in range(a.shape[0]):
        x = min(max(a[i], float32(-87.0)), float32(88.0))
        k = np.floor(x * _LOG2E + float32(0.5))
        r = x - k * _LN2_HI - k * _LN2_LO  # |r| <= ln(2) / 2
        p = float32(_EXP_POLY[0])
        for c in _EXP_POLY[1:]:
            p = p * r + float32(c)
        a[i] = p * r * r + r + float32(1)  # exp(r)
        two_to_k[i] = (np.int32(k) + np.int32(127)) << 23
    a *= two_to_k.view(np.float32)


@njit(cache=True, fastmath=FASTMATH)
def softcap_softmax(scores, multiplier, cap):
    """In place on raw q·k scores (n_heads, n): softmax over n of cap * tanh(multiplier * s / cap) (cap 0: no cap),
    as layers.softcap and layers.softmax, with tanh(y) = 1 - 2 / (exp(2y) + 1)."""
    for g in range(scores.shape[0]):
        row = scores[g]  # (n,)
        if cap > 0:
            row *= float32(2) * multiplier / cap
            exp_inplace(row)  # exp(2y)
            for m in range(row.shape[0]):
                row[m] = cap * (float32(1) - float32(2) / (row[m] + float32(1)))
        else:
            row *= multiplier
        row -= row.max()
        exp_inplace(row)
        row /= row.sum()


# A layer's weights by their short GGUF names (model.LAYER_TENSORS), each in kernel form (see kernel_weight).
LayerWeights = namedtuple("LayerWeights", LAYER_TENSORS)
# The numbers a decode step needs besides the weights: float32 ones as np.float32, so the arithmetic stays float32.
DecodeConstants = namedtuple(
    "DecodeConstants", ["rms_eps", "attention_multiplier", "attn_logit_softcap", "renormalize_gates", "top_k"]
)


def thread_split(config: ModelConfig) -> int:
    """The min_weights of a model's products: PARALLEL_BLOCK (split over Numba's threads) for a model of at least
    THREADED_MODEL_WEIGHTS active weights per token, else SERIAL (see "Threads" above)."""
    return PARALLEL_BLOCK if config.n_active_params() >= THREADED_MODEL_WEIGHTS else SERIAL


@functools.lru_cache(maxsize=8)
def decode_constants(config: ModelConfig) -> DecodeConstants:
    """The config's numbers that decode_layer reads, typed for the kernel (made once per config)."""
    return DecodeConstants(
        np.float32(config.rms_eps),
        np.float32(config.attention_multiplier),
        np.float32(config.attn_logit_softcap),
        bool(config.renormalize_gates),
        int(config.top_k),
    )


@njit(cache=True, fastmath=FASTMATH)
def decode_layer(x, w, c, cos, sin, cos_sink, sin_sink, k_cache, v_cache, slot, idx, sink, min_par):
    """One decoder layer for one token, adding into the residual stream x (1, d_model) in place.

    w: LayerWeights, the layer's weights in kernel form; c: DecodeConstants. cos, sin (hd / 2,): RoPE at the
    token's position; cos_sink, sin_sink: at the position its query takes against the sink keys. k_cache, v_cache
    (1, n_kv_heads, C, hd): the new key (after RoPE) and value go to ``slot``, then attention reads the visible
    slots idx (n,), of which ``sink`` (n,) are sinks. min_par: matvec's min_weights. Same steps as model.forward
    (layers.py, attention.py, moe.py).
    """
    eps, multiplier, cap = c.rms_eps, c.attention_multiplier, c.attn_logit_softcap
    n_kv, hd = k_cache.shape[1], k_cache.shape[3]
    n_heads, d_ff, d_model = n_rows(w.attn_q) // hd, n_rows(w.ffn_gate_exps), x.shape[1]
    # attention: h = RMSNorm(x); q, k, v = h @ W.T; RoPE; k, v into the cache
    h = np.empty_like(x)  # (1, d_model)
    _rms_norm(x, w.attn_norm, eps, h)
    q = np.empty((1, n_heads * hd), np.float32)  # (1, n_heads * hd), before RoPE
    k = np.empty((1, n_kv * hd), np.float32)  # (1, n_kv * hd)
    v = np.empty((1, n_kv * hd), np.float32)  # (1, n_kv * hd)
    matvec(w.attn_q, h, q, min_par)
    matvec(w.attn_k, h, k, min_par)
    matvec(w.attn_v, h, v, min_par)
    q_rot = np.empty((1, n_heads, hd), np.float32)  # (1, n_heads, hd)
    q_sink = np.empty((1, n_heads, hd), np.float32)  # (1, n_heads, hd): the query as the sink keys see it
    _rope(q.reshape(n_heads, hd), cos, sin, q_rot[0])
    _rope(q.reshape(n_heads, hd), cos_sink, sin_sink, q_sink[0])
    _rope(k.reshape(n_kv, hd), cos, sin, k_cache[0, :, slot])  # keys are cached after RoPE
    v_cache[0, :, slot] = v.reshape(n_kv, hd)
    probs = key_scores(q_rot, q_sink, k_cache, idx, sink)  # (1, n_heads, n) raw q·k
    softcap_softmax(probs[0], multiplier, cap)
    attn = weighted_values(probs, v_cache, idx)  # (1, n_heads, hd)
    y = np.empty_like(x)  # (1, d_model)
    matvec(w.attn_output, attn.reshape(1, -1), y, min_par)
    _rms_norm(y, w.attn_output_norm, eps, h)
    x += h
    # MoE: router logits, softmax, top_k experts, each down(gelu(h @ gate.T) * (h @ up.T)), gated sum
    _rms_norm(x, w.ffn_norm, eps, h)
    logits = np.empty((1, n_rows(w.ffn_gate_inp)), np.float32)  # (1, num_experts) router logits
    matvec(w.ffn_gate_inp, h, logits, min_par)
    expert_ids, gates = np.empty(c.top_k, np.int64), np.empty(c.top_k, np.float32)
    _route(logits[0], c.top_k, c.renormalize_gates, expert_ids, gates)
    a = np.empty((1, d_ff), np.float32)  # (1, d_ff)
    b = np.empty((1, d_ff), np.float32)  # (1, d_ff)
    exp_m2z = np.empty(d_ff, np.float32)  # (d_ff,) exp(-2z) of the GELU
    moe_out = np.zeros_like(x)  # (1, d_model)
    for j in range(c.top_k):
        e = expert_ids[j]
        matvec(expert(w.ffn_gate_exps, e), h, a, min_par)
        matvec(expert(w.ffn_up_exps, e), h, b, min_par)
        geglu(a[0], b[0], exp_m2z)  # a = gelu_tanh(a) * b
        matvec(expert(w.ffn_down_exps, e), a, y, min_par)
        for o in range(d_model):
            moe_out[0, o] += gates[j] * y[0, o]
    _rms_norm(moe_out, w.layer_output_norm, eps, h)
    x += h


@njit(cache=True, fastmath=FASTMATH)
def geglu(a, b, exp_m2z):
    """a[:] = gelu_tanh(a) * b in place, as moe.expert_ffn, with 0.5 (1 + tanh(z)) = 1 / (1 + exp(-2z)).
    a, b, exp_m2z (d_ff,) float32; exp_m2z is scratch space."""
    for f in range(a.shape[0]):
        g = a[f]
        exp_m2z[f] = float32(-2) * _SQRT_2_OVER_PI * (g + _GELU_A * g * g * g)  # -2z
    exp_inplace(exp_m2z)
    for f in range(a.shape[0]):
        a[f] = a[f] / (float32(1) + exp_m2z[f]) * b[f]


# ---- the unembedding ------------------------------------------------------------------------------------------------
# An F16 weight (the token embedding of F16, Q8_0 and Q4_0 files, which load_gguf(mmap=True) keeps F16) reaches
# compiled code as its uint16 bits (Numba has no float16); each weight is widened where it is read (f16.py).
@njit(cache=True, fastmath=FASTMATH)
def _f16_rows(x, w, out, r0, r1):
    """out[0, r] = w[r] · x[0] for rows r0..r1-1 of F16 bits w; float32 products, vectorized with VCVTPH2PS."""
    for r in range(r0, r1):
        acc = float32(0)
        for k in range(x.shape[1]):
            acc += f16_to_f32(w[r, k]) * x[0, k]
        out[0, r] = acc


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def f16_matvec(x, w, out, min_weights):
    """out (1, R) = x (1, K) @ W.T for W (R, K) float16 given as its bits w (uint16): W.astype(float32) products,
    as layers.linear computes them. Rows split over threads in blocks of >= min_weights weights, as f32_matvec."""
    R, K = w.shape
    chunks = n_chunks(R, K, min_weights)
    if chunks == 1:
        _f16_rows(x, w, out, 0, R)
    else:
        for c in prange(chunks):
            _f16_rows(x, w, out, c * R // chunks, (c + 1) * R // chunks)


def unembed(w, x, out, min_weights):
    """out (1, vocab_size) = x (1, d_model) @ E.T for the token embedding E in kernel form: float32, or float16 as
    its uint16 bits (compiled code only; see the overload)."""
    raise NotImplementedError("unembed runs inside Numba-compiled functions only")


@overload(unembed)
def _unembed_for(w, x, out, min_weights):
    if w.dtype == types.uint16:
        return lambda w, x, out, min_weights: f16_matvec(x, w, out, min_weights)
    return lambda w, x, out, min_weights: matvec(w, x, out, min_weights)


@njit(cache=True)
def final_logits(x, output_norm, token_embd, eps, multiplier, min_par):
    """(1, vocab_size) = multiplier * (final RMSNorm(x) @ token_embd.T): the tied unembedding. token_embd
    (vocab_size, d_model) in kernel form: float32, or F16 as its uint16 bits (kernel_embedding)."""
    h = np.empty_like(x)  # (1, d_model)
    _rms_norm(x, output_norm, eps, h)
    logits = np.empty((1, token_embd.shape[0]), np.float32)  # (1, vocab_size)
    unembed(token_embd, h, logits, min_par)
    return logits * float32(multiplier)


# ---- Python side ----------------------------------------------------------------------------------------------------
def kernel_weight(w):
    """A weight as the compiled code takes it: a C-contiguous float32 array, or (qs, d) for Q8_0/Q4_0; None for
    anything else (float64 in gradient checks), which makes engine.forward take the NumPy path."""
    if isinstance(w, QuantizedTensor):
        ok = w.qs.flags.c_contiguous and w.d.flags.c_contiguous and w.d.dtype == np.float16
        return (w.qs, w.d.view(np.uint16)) if ok else None  # the fp16 scales as their bits (kernels/f16.py)
    if isinstance(w, np.ndarray) and w.dtype == np.float32 and w.flags.c_contiguous:
        return w
    return None


def kernel_embedding(w):
    """The token embedding as final_logits takes it: a C-contiguous float32 array as is, a float16 one (an F16
    embedding loaded with load_gguf(mmap=True)) as its uint16 bits; None for anything else (the NumPy path)."""
    if not isinstance(w, np.ndarray) or not w.flags.c_contiguous:
        return None
    if w.dtype == np.float16:
        return w.view(np.uint16)  # (vocab_size, d_model), the same memory
    return w if w.dtype == np.float32 else None


_FLOAT_ONLY = {"attn_norm", "attn_output_norm", "ffn_norm", "ffn_gate_inp", "layer_output_norm"}  # not quantized
_last: list = [None, None]  # [the weights kernel_weights last looked at, its answer]: one per generation, not step
# What a decode step reads, in kernel form: per layer its LayerWeights, matvec's min_weights, the token embedding.
DecodeWeights = namedtuple("DecodeWeights", ["layers", "min_weights", "token_embd"])


@functools.lru_cache
def _weight_names(n_layers: int) -> list[str]:
    """The tensors a decode step reads: each layer's in LAYER_TENSORS order, then the embedding and final norm."""
    layers = [f"blk.{i}.{name}.weight" for i in range(n_layers) for name in LAYER_TENSORS]
    return [*layers, "token_embd.weight", "output_norm.weight"]


def kernel_weights(params: dict, config: ModelConfig) -> DecodeWeights | None:
    """DecodeWeights (per layer its LayerWeights in kernel form (see kernel_weight), min_weights for matvec, the
    token embedding as kernel_embedding gives it), or None if a weight has no kernel. Norms and the router must be
    float32 arrays; projections and experts float32 or Q8_0/Q4_0; the token embedding float32 or float16. The
    answer for the same weight objects is remembered (checking costs microseconds)."""
    objects = [params[n] for n in _weight_names(config.n_layers)]
    if _last[0] is None or len(_last[0]) != len(objects) or not all(map(operator.is_, _last[0], objects)):
        _last[:] = objects, _kernel_weights(objects, config)
    return _last[1]


def _kernel_weights(objects: list, config: ModelConfig) -> DecodeWeights | None:
    n = len(LAYER_TENSORS)
    converted = [kernel_weight(w) for w in objects[:-2]]
    embd, norm = kernel_embedding(objects[-2]), kernel_weight(objects[-1])
    if any(w is None for w in converted) or embd is None or not isinstance(norm, np.ndarray):
        return None
    layers = [LayerWeights(*converted[i * n : (i + 1) * n]) for i in range(config.n_layers)]
    if any(isinstance(getattr(layer, name), tuple) for layer in layers for name in _FLOAT_ONLY):
        return None
    return DecodeWeights(layers, thread_split(config), embd)


def decode_step(params: dict, config: ModelConfig, token: int, cache: KVCache, step: CacheStep, weights) -> np.ndarray:
    """Logits (vocab_size,) float32 for one new token of a batch-1 sequence, written to the cache as ``step`` says.

    params, config as for model.forward; token an id in [0, vocab_size); cache a KVCache with batch size 1 and
    step = cache.begin(1) (a write-first step; the caller commits it); weights = kernel_weights(params, config).
    The same computation as model.forward on (1, 1) tokens, to float32 rounding (tests/test_decode_kernels.py).
    """
    layers, min_par, embd = weights
    position = int(step.positions[0])
    cos, sin = rope_tables([position], config.head_dim, config.rope_theta)  # (1, hd / 2) each
    sink_pos = sink_query_positions(config.pattern, step.positions)  # (1,) or None
    cos_s, sin_s = (cos, sin) if sink_pos is None else rope_tables(sink_pos, config.head_dim, config.rope_theta)
    k_pos = step.after[: step.n_read]  # (S,) positions of the slots attention reads
    idx, sink = visible_slots(k_pos, position, pattern_code(config.pattern))  # (n,), (n,)
    slot = int(step.slots[0])
    c = decode_constants(config)
    row = params["token_embd.weight"][token].astype(np.float32)  # (d_model,): an F16 row widened exactly
    x = row[None] * np.float32(config.embedding_multiplier)  # (1, d_model)
    for i, w in enumerate(layers):
        decode_layer(x, w, c, cos[0], sin[0], cos_s[0], sin_s[0], cache.k[i], cache.v[i], slot, idx, sink, min_par)
    norm = params["output_norm.weight"]
    logits = final_logits(x, norm, embd, c.rms_eps, config.output_multiplier, min_par)  # (1, vocab_size)
    return logits[0]  # (vocab_size,)
