"""Backpropagation by hand: a backward function for every operation of the forward pass, and the whole model.

Each ``*_backward`` takes the gradient of the loss with respect to an operation's output (``dy``, same shape
as the output) and what the forward pass saw, and returns the gradients with respect to the inputs and weights.
Every one is checked against central finite differences in float64 (tests/test_backward.py).

``loss_and_grads`` runs a training forward pass that keeps the activations (the same primitives as
minigrok.model.forward, which a test ties to it), then walks the layers backwards.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..attention import MASKED, pattern_mask, sink_query_positions, split_heads
from ..config import ModelConfig
from ..layers import SQRT_2_OVER_PI, apply_rope, linear, root_mean_square, rope_tables, softmax
from ..model import layer_params
from ..moe import route


# ---- elementwise and normalisation --------------------------------------------------------------------
def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray):
    """y = x @ w.T. dy (..., out), x (..., in), w (out, in) -> dx (..., in), dw (out, in)."""
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    dx = (dy2 @ w).reshape(x.shape)  # (..., in)
    dw = dy2.T @ x.reshape(-1, x.shape[-1])  # (out, in)
    return dx, dw


def rms_norm_train(x: np.ndarray, weight: np.ndarray, eps: float):
    """layers.rms_norm (the same ops), also returning the rms (..., 1) so the backward need not sum it again."""
    rms = root_mean_square(x, eps)  # (..., 1)
    return weight * (x / rms), rms  # (..., d), (..., 1)


def rms_norm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, eps: float, rms: np.ndarray | None = None):
    """y = w * x̂ with x̂ = x / rms, rms = sqrt(mean(x²) + eps). Returns dx (..., d), dweight (d,).

    dx = (g - x̂ * mean(g * x̂)) / rms where g = dy * w (the quotient rule on x / rms(x)). Written with x̂,
    which is at most sqrt(d) in size, rather than with x and 1/rms², so no product overflows or underflows
    float32 for any finite x (the rms is summed in float64, as in layers.rms_norm). rms (..., 1): the forward's
    (rms_norm_train), or it is recomputed.
    """
    if rms is None:
        rms = root_mean_square(x, eps)  # (..., 1)
    x_hat = x / rms  # (..., d)
    g = dy * weight  # (..., d)
    dx = (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True)) / rms  # (..., d)
    dweight = np.sum((dy * x_hat).reshape(-1, x.shape[-1]), axis=0)  # (d,)
    return dx, dweight


def gelu_tanh_backward(dy: np.ndarray, x: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """d/dx of 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x³): 0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3·0.044715 x²),
    with t = tanh(u) (pass the forward's, or it is recomputed)."""
    if t is None:
        t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x))


def softmax_backward(dy: np.ndarray, probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """p = softmax(z): dz = p * (dy - sum(dy * p))."""
    return probs * (dy - np.sum(dy * probs, axis=axis, keepdims=True))


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE is a rotation, so its backward is the rotation by the opposite angle."""
    return apply_rope(dy, cos, -sin)


def cross_entropy(logits: np.ndarray, targets: np.ndarray):
    """Mean softmax cross-entropy in nats. logits (N, V), targets (N,) -> (loss, dlogits (N, V)).

    dlogits = (softmax - onehot) / N. The (N, V) array is large (the whole vocabulary for every token), so it is
    passed over as few times as possible: subtract the row max, exp in place, sum, scale in place.
    """
    n = logits.shape[0]
    rows = np.arange(n)  # (N,)
    z = logits - np.max(logits, axis=-1, keepdims=True)  # (N, V)
    z_target = z[rows, targets]  # (N,)
    e = np.exp(z, out=z)  # (N, V)
    total = np.sum(e, axis=-1)  # (N,)
    loss = float(np.mean(np.log(total) - z_target))
    dlogits = e  # (N, V): softmax / N, minus 1/N at the targets
    dlogits *= (1 / (n * total))[:, None]
    dlogits[rows, targets] -= 1 / n
    return loss, dlogits


# ---- attention ----------------------------------------------------------------------------------------
def stack_heads(a: np.ndarray, n_kv: int) -> np.ndarray:
    """(B, T, n_heads, hd) -> (B, n_kv, group*T, hd): the query heads sharing a K/V head stacked along the rows,
    the layout of minigrok.attention.attend, so one batched matmul per K/V head does all their scores."""
    B, T, n_heads, hd = a.shape
    group = n_heads // n_kv
    return a.reshape(B, T, n_kv, group, hd).transpose(0, 2, 3, 1, 4).reshape(B, n_kv, group * T, hd)


def unstack_heads(a: np.ndarray, T: int) -> np.ndarray:
    """Inverse of stack_heads: (B, n_kv, group*T, hd) -> (B, T, n_heads, hd)."""
    B, n_kv, rows, hd = a.shape
    group = rows // T
    return a.reshape(B, n_kv, group, T, hd).transpose(0, 3, 1, 2, 4).reshape(B, T, n_kv * group, hd)


def attend_train(q, k, v, mask, multiplier: float, cap: float):
    """Training twin of minigrok.attention.attend (the same out and probs, tests/test_backward.py), which also
    returns what the backward needs: out in the stacked layout and the slope of the soft-capped logit.

    q (B, T, n_heads, hd); k, v (B, n_kv, S, hd); mask (T, S) bool, at least one True per row (a training mask
    always shows a query its own position). Returns out (B, T, n_heads, hd), probs (B, n_kv, group, T, S),
    out_stacked (B, n_kv, group*T, hd) and slope, d(logit)/d(q·k): multiplier·(1 - tanh²) (B, n_kv, group, T, S)
    with the soft-cap, else the scalar multiplier. The large (.., T, S) arrays are updated in place (each pass
    over them costs as much as the matmuls that make them), and the soft-capped logits lie within ±cap, so the
    softmax needs no max subtracted while a row sum of exp(cap) fits float32 (cap <= 60: e^60 ≈ 1e26).
    """
    B, T, n_heads, hd = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    scores = (stack_heads(q, n_kv) @ k.transpose(0, 1, 3, 2)).reshape(B, n_kv, group, T, S)  # q·k
    if cap > 0:  # logits = cap·tanh(q·k·multiplier/cap)
        scores *= np.float32(multiplier) / scores.dtype.type(cap)  # in scores' dtype (float64 in gradient checks)
        th = np.tanh(scores, out=scores)  # (B, n_kv, group, T, S)
        logits = th * np.float32(cap)  # (B, n_kv, group, T, S)
        slope = np.square(th, out=th)  # tanh², then multiplier·(1 - tanh²)
        slope *= np.float32(-multiplier)
        slope += np.float32(multiplier)
    else:
        logits, slope = scores * np.float32(multiplier), multiplier
    np.copyto(logits, MASKED, where=~mask)  # exp -> 0
    if not 0 < cap <= 60:  # unbounded logits: subtract the row max, as layers.softmax does
        logits -= np.max(logits, axis=-1, keepdims=True)
    probs = np.exp(logits, out=logits)  # (B, n_kv, group, T, S)
    probs *= 1 / np.sum(probs, axis=-1, keepdims=True)
    out_stacked = probs.reshape(B, n_kv, group * T, S) @ v  # (B, n_kv, group*T, hd)
    return unstack_heads(out_stacked, T), probs, out_stacked, slope


def attend_backward(dout, q, k, v, probs, multiplier: float, cap: float, out_stacked=None, slope=None):
    """Backward of minigrok.attention.attend (any mask, soft-cap, GQA).

    dout (B, T, n_heads, hd); q (B, T, n_heads, hd); k, v (B, n_kv, S, hd); probs (B, n_kv, group, T, S).
    out_stacked and slope are those of attend_train; left None, they are recomputed from probs, q and k.
    Returns dq (B, T, n_heads, hd), dk (B, n_kv, S, hd), dv (B, n_kv, S, hd). Masked logits get no gradient
    (their probability is 0). Gradients of the query heads sharing a K/V head add up in dk and dv.

    The softmax backward p ⊙ (dp - Σ_s dp ⊙ p) takes its row sum from the output instead of the (T, S) arrays:
    Σ_s p_s (do · v_s) = do · out (FlashAttention, Dao et al. 2022, appendix B.2: "D_i = dO_i · O_i").
    """
    B, T, n_heads, hd = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    do, qg = stack_heads(dout, n_kv), stack_heads(q, n_kv)  # (B, n_kv, group*T, hd)
    p = probs.reshape(B, n_kv, group * T, S)  # (B, n_kv, group*T, S)
    if out_stacked is None:
        out_stacked = p @ v  # (B, n_kv, group*T, hd)
    if slope is None:
        slope = multiplier
        if cap > 0:  # d/ds of cap·tanh(s·m/cap) = m (1 - tanh²)
            th = np.tanh((qg @ k.transpose(0, 1, 3, 2)) * np.float32(multiplier / cap))  # (B, n_kv, group*T, S)
            slope = np.float32(multiplier) * (1.0 - th * th)
    if not np.isscalar(slope):
        slope = slope.reshape(B, n_kv, group * T, S)
    dv = p.transpose(0, 1, 3, 2) @ do  # (B, n_kv, S, hd)
    dscores = do @ v.transpose(0, 1, 3, 2)  # (B, n_kv, group*T, S): d(probs)
    dscores -= np.sum(do * out_stacked, axis=-1, keepdims=True)  # softmax backward, then
    dscores *= p
    dscores *= slope  # d(q·k): through the soft-cap and the multiplier
    dq = dscores @ k  # (B, n_kv, group*T, hd)
    dk = dscores.transpose(0, 1, 3, 2) @ qg  # (B, n_kv, S, hd)
    return unstack_heads(dq, T), dk, dv


# The attention core runs on chunks of this many sequences. Sequences attend independently, so the chunks can run
# at once on two threads (NumPy lets go of Python's lock inside its loops and BLAS calls; two because that is all
# it was measured on), which puts the softmax and soft-cap passes, one core's work otherwise, on both cores; and
# a chunk's (chunk, heads, T, T) temporaries stay in the CPU's cache. Chunks are joined in order, so the result
# does not depend on which thread ran which.
ATTENTION_CHUNK = 4


def blas_threads() -> int:
    """Threads NumPy's BLAS uses: OpenBLAS reads OPENBLAS_NUM_THREADS (else OMP_NUM_THREADS) once, when NumPy is
    imported, and uses every core when neither is set. Set it before starting Python to choose, e.g.
    ``OPENBLAS_NUM_THREADS=1 python -m minigrok train ...``."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


_threads = ThreadPoolExecutor(max_workers=min(2, blas_threads()))  # one when BLAS is told to use one core


def _sequence_chunks(B: int) -> list[slice]:
    return [slice(b, min(b + ATTENTION_CHUNK, B)) for b in range(0, B, ATTENTION_CHUNK)]


def attention_forward(x, wq, wk, wv, wo, cos, sin, config: ModelConfig):
    """Training forward of one attention block over positions 0..T-1 under config.pattern (dense: causal);
    returns (y (B, T, d_model), saved). Raises ValueError for a sinks pattern whose sinks need moved query positions.
    The q, k and v projections are one matmul, on the three weights stacked (one wide BLAS call beats three).
    """
    B, T, _ = x.shape
    n_q, n_k = wq.shape[0], wk.shape[0]  # n_heads*hd, n_kv*hd
    qkv = linear(x, np.concatenate([wq, wk, wv]))  # (B, T, n_q + 2*n_k)
    q = apply_rope(split_heads(qkv[..., :n_q], config.n_heads), cos, sin)  # (B, T, n_heads, hd)
    k = apply_rope(split_heads(qkv[..., n_q : n_q + n_k], config.n_kv_heads), cos, sin)  # (B, T, n_kv, hd)
    k = k.transpose(0, 2, 1, 3)  # (B, n_kv, T, hd)
    v = split_heads(qkv[..., n_q + n_k :], config.n_kv_heads).transpose(0, 2, 1, 3)  # (B, n_kv, T, hd)
    positions = np.arange(T)  # (T,)
    if sink_query_positions(config.pattern, positions) is not None:
        raise ValueError(
            f"training with {config.pattern} on {T}-token sequences would score the sinks from moved query positions "
            "(StreamingLLM's positions within the cache), which this backward pass does not do; train with "
            "window:W, or with S + W >= the context length"
        )
    mask = pattern_mask(config.pattern, positions, positions)  # (T, T): the model's mask (dense: causal)

    def core(s: slice):  # out (b, T, n_heads, hd), probs (b, n_kv, group, T, S), out_stacked, slope
        return attend_train(q[s], k[s], v[s], mask, config.attention_multiplier, config.attn_logit_softcap)

    chunks = list(_threads.map(core, _sequence_chunks(B)))  # per chunk: (out, probs, out_stacked, slope)
    o = np.concatenate([c[0] for c in chunks]).reshape(B, T, -1)  # (B, T, n_heads*hd)
    return linear(o, wo), (x, q, k, v, o, [c[1:] for c in chunks])


def attention_backward(dy, saved, wq, wk, wv, wo, cos, sin, config: ModelConfig):
    """Backward of attention_forward. Returns dx (B, T, d_model) and (dwq, dwk, dwv, dwo)."""
    x, q, k, v, o, chunks = saved
    B, T, _ = x.shape
    do, dwo = linear_backward(dy, o, wo)  # (B, T, n_heads*hd)
    do = do.reshape(q.shape)  # (B, T, n_heads, hd)
    m, cap = config.attention_multiplier, config.attn_logit_softcap

    def core(s: slice, kept):  # kept: this chunk's (probs, out_stacked, slope) from the forward
        return attend_backward(do[s], q[s], k[s], v[s], kept[0], m, cap, kept[1], kept[2])

    grads = list(_threads.map(core, _sequence_chunks(B), chunks))  # per chunk: (dq, dk, dv)
    dq, dk, dv = (np.concatenate([g[i] for g in grads]) for i in range(3))  # (B, T, H, hd), (B, n_kv, S, hd) x 2
    dq = rope_backward(dq, cos, sin).reshape(B, T, -1)  # (B, T, n_heads*hd)
    dk = rope_backward(dk.transpose(0, 2, 1, 3), cos, sin).reshape(B, T, -1)  # (B, T, n_kv*hd)
    dv = dv.transpose(0, 2, 1, 3).reshape(B, T, -1)  # (B, T, n_kv*hd)
    dqkv = np.concatenate([dq, dk, dv], axis=-1)  # (B, T, n_q + 2*n_k): the stacked projection's output gradient
    dx, dw_qkv = linear_backward(dqkv, x, np.concatenate([wq, wk, wv]))
    dwq, dwk, dwv = np.split(dw_qkv, [wq.shape[0], wq.shape[0] + wk.shape[0]])
    return dx, (dwq, dwk, dwv, dwo)


# ---- mixture of experts -------------------------------------------------------------------------------
def moe_forward(x, w_router, w_gate, w_up, w_down, config: ModelConfig):
    """Training forward of the MoE layer, x (N, d_model) -> (y (N, d_model), saved). Same maths as moe.moe.

    The GELU's tanh is kept for the backward. (Gate and up stay two matmuls here, not one on the stacked weights:
    BLAS may round a wider product differently, and this forward must equal moe.moe bit for bit.)
    """
    expert_ids, gates, probs = route(x, w_router, config.top_k, config.renormalize_gates)  # (N, k), (N, k), (N, E)
    y = np.zeros_like(x)  # (N, d_model)
    per_expert = []
    for e in range(config.num_experts):
        tokens, slot = np.nonzero(expert_ids == e)  # (n_e,), (n_e,)
        xe = x[tokens]  # (n_e, d_model)
        a = xe @ w_gate[e].T  # (n_e, d_ff): gate pre-activation
        u = xe @ w_up[e].T  # (n_e, d_ff)
        t = np.tanh(SQRT_2_OVER_PI * (a + 0.044715 * a * a * a))  # (n_e, d_ff): as in layers.gelu_tanh
        gelu_a = 0.5 * a * (1.0 + t)  # (n_e, d_ff)
        hidden = gelu_a * u  # (n_e, d_ff)
        ye = hidden @ w_down[e].T  # (n_e, d_model)
        y[tokens] += gates[tokens, slot, None] * ye
        per_expert.append((tokens, slot, xe, a, u, t, gelu_a, hidden, ye))
    router_logits = x @ w_router.T  # (N, E), kept for the z-loss
    return y, (x, expert_ids, gates, probs, router_logits, per_expert)


def moe_backward(dy, saved, w_router, w_gate, w_up, w_down, config: ModelConfig, dprobs_extra=None, dlogits_extra=None):
    """Backward of moe_forward. dy (N, d_model). Extra gradients from the auxiliary losses can be added on the
    router probabilities (dprobs_extra (N, E)) and router logits (dlogits_extra (N, E)).

    The top-k choice itself is piecewise constant, so gradients reach the router only through the gates.
    Returns dx (N, d_model), (dw_router, dw_gate, dw_up, dw_down). The gradients of an expert's gate and up
    projections go through one matmul each way, on [da, du] and the stacked weights (2·d_ff, d_model): one BLAS
    call with twice the width runs faster than two (and dx needs no extra add).
    """
    x, expert_ids, gates, probs, _, per_expert = saved
    d_ff = w_gate.shape[1]
    dx = np.zeros_like(x)
    dgates = np.zeros_like(gates)  # (N, k)
    dw_gate, dw_up, dw_down = np.zeros_like(w_gate), np.zeros_like(w_up), np.zeros_like(w_down)
    for e, (tokens, slot, xe, a, u, t, gelu_a, hidden, ye) in enumerate(per_expert):
        if tokens.size == 0:
            continue
        dy_e = dy[tokens]  # (n_e, d_model)
        dgates[tokens, slot] = np.sum(dy_e * ye, axis=-1)
        dye = dy_e * gates[tokens, slot, None]  # (n_e, d_model)
        dw_down[e] = dye.T @ hidden  # (d_model, d_ff)
        dhidden = dye @ w_down[e]  # (n_e, d_ff)
        dau = np.empty((tokens.size, 2 * d_ff), dy.dtype)  # (n_e, 2*d_ff): d(gate pre-activation), d(up)
        dau[:, :d_ff] = gelu_tanh_backward(dhidden * u, a, t)
        dau[:, d_ff:] = dhidden * gelu_a
        dw_in = dau.T @ xe  # (2*d_ff, d_model)
        dw_gate[e], dw_up[e] = dw_in[:d_ff], dw_in[d_ff:]
        dx[tokens] += dau @ np.concatenate([w_gate[e], w_up[e]])  # (n_e, 2*d_ff) @ (2*d_ff, d_model)
    # gates -> router probabilities (only the selected ones)
    selected = np.take_along_axis(probs, expert_ids, axis=-1)  # (N, k)
    if config.renormalize_gates:  # g = p / sum(p): dp = (dg - sum(dg * g)) / sum(p)
        dselected = (dgates - np.sum(dgates * gates, axis=-1, keepdims=True)) / np.sum(selected, -1, keepdims=True)
    else:
        dselected = dgates
    dprobs = np.zeros_like(probs)  # (N, E)
    np.put_along_axis(dprobs, expert_ids, dselected, axis=-1)
    if dprobs_extra is not None:
        dprobs += dprobs_extra
    dlogits = softmax_backward(dprobs, probs)  # (N, E)
    if dlogits_extra is not None:
        dlogits += dlogits_extra
    dx_router, dw_router = linear_backward(dlogits, x, w_router)
    return dx + dx_router, (dw_router, dw_gate, dw_up, dw_down)


def load_balancing_loss(probs: np.ndarray, expert_ids: np.ndarray, num_experts: int):
    """Switch Transformer aux loss (Fedus et al. 2021, eq. 4-6), without its coefficient: E · Σ_i f_i · P_i.

    f_i = fraction of tokens routed to expert i (counting all top-k slots, so Σ f = top_k), P_i = mean router
    probability of expert i. A perfectly balanced router gives top_k. probs (N, E), expert_ids (N, k).
    Returns (loss, dprobs (N, E)); f comes from the top-k choice, which has no gradient, so the gradient flows
    through P only.
    """
    n = probs.shape[0]
    f = np.bincount(expert_ids.ravel(), minlength=num_experts).astype(np.float32) / np.float32(n)  # (E,)
    P = np.mean(probs, axis=0)  # (E,)
    loss = float(num_experts * np.sum(f * P))
    dprobs = np.broadcast_to(num_experts * f / np.float32(n), probs.shape).astype(np.float32)  # (N, E)
    return loss, dprobs


def router_z_loss(router_logits: np.ndarray):
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5), without its coefficient: mean_tokens logsumexp(logits)².

    router_logits (N, E) -> (loss, dlogits (N, E)); d/dz of lse² = 2 lse softmax(z).
    """
    m = np.max(router_logits, axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.sum(np.exp(router_logits - m), axis=-1))  # (N,)
    n = router_logits.shape[0]
    loss = float(np.mean(lse * lse))
    dlogits = (2.0 * lse / n)[:, None] * softmax(router_logits, axis=-1)  # (N, E)
    return loss, dlogits.astype(np.float32)


# ---- the whole model ----------------------------------------------------------------------------------
def loss_and_grads(
    params: dict,
    config: ModelConfig,
    tokens: np.ndarray,
    targets: np.ndarray,
    aux_loss_coef: float = 0.0,
    z_loss_coef: float = 0.0,
):
    """Cross-entropy (nats/token) of next-token prediction plus the MoE auxiliary losses, and all gradients.

    tokens, targets (B, T) int. Returns (loss, grads, stats): loss = ce + aux_loss_coef·Σ_layers aux +
    z_loss_coef·Σ_layers z; grads has the same keys and shapes as params (float32); stats has "ce", "aux",
    "z" (summed over layers, without coefficients) and "expert_load" (n_layers, num_experts): the fraction of
    token-slots routed to each expert.
    """
    B, T = tokens.shape
    eps = config.rms_eps
    cos, sin = rope_tables(np.arange(T), config.head_dim, config.rope_theta)  # (T, hd/2)
    emb = params["token_embd.weight"]
    x = emb[tokens] * np.float32(config.embedding_multiplier)  # (B, T, d_model)

    tape = []
    for i in range(config.n_layers):
        p = layer_params(params, i)
        x_in = x
        h, rms_in = rms_norm_train(x, p["attn_norm"], eps)
        a, att_saved = attention_forward(h, p["attn_q"], p["attn_k"], p["attn_v"], p["attn_output"], cos, sin, config)
        a_normed, rms_a = rms_norm_train(a, p["attn_output_norm"], eps)
        x = x + a_normed
        x_mid = x
        h2, rms_mid = rms_norm_train(x, p["ffn_norm"], eps)
        h2 = h2.reshape(B * T, -1)  # (B*T, d_model)
        m, moe_saved = moe_forward(
            h2, p["ffn_gate_inp"], p["ffn_gate_exps"], p["ffn_up_exps"], p["ffn_down_exps"], config
        )
        m = m.reshape(B, T, -1)
        m_normed, rms_m = rms_norm_train(m, p["layer_output_norm"], eps)
        x = x + m_normed
        tape.append((x_in, rms_in, a, rms_a, x_mid, rms_mid, m, rms_m, att_saved, moe_saved))
    x_final = x
    xf, rms_final = rms_norm_train(x, params["output_norm.weight"], eps)  # (B, T, d_model)
    xf_scaled = xf * np.float32(config.output_multiplier)  # (B, T, d_model): scaled here, not the (B, T, V) logits
    logits = linear(xf_scaled, emb)  # (B, T, V)
    ce, dlogits = cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
    del logits

    grads = {name: None for name in params}
    dxf_scaled, demb = linear_backward(dlogits.reshape(B, T, -1), xf_scaled, emb)
    dxf = dxf_scaled * np.float32(config.output_multiplier)  # (B, T, d_model)
    del dlogits
    dx, grads["output_norm.weight"] = rms_norm_backward(dxf, x_final, params["output_norm.weight"], eps, rms_final)

    aux_total = z_total = 0.0
    load = np.zeros((config.n_layers, config.num_experts), np.float32)
    for i in reversed(range(config.n_layers)):
        p = layer_params(params, i)
        g = {}  # this layer's gradients, by short name
        x_in, rms_in, a, rms_a, x_mid, rms_mid, m, rms_m, att_saved, moe_saved = tape.pop()
        _, expert_ids, _, probs, router_logits, _ = moe_saved
        aux, dprobs_aux = load_balancing_loss(probs, expert_ids, config.num_experts)
        z, dlogits_z = router_z_loss(router_logits)
        aux_total += aux
        z_total += z
        load[i] = np.bincount(expert_ids.ravel(), minlength=config.num_experts) / expert_ids.size
        # x = x_mid + norm(m)
        dm, g["layer_output_norm"] = rms_norm_backward(dx, m, p["layer_output_norm"], eps, rms_m)
        dh2, (dwr, dwg, dwu, dwd) = moe_backward(
            dm.reshape(B * T, -1),
            moe_saved,
            p["ffn_gate_inp"],
            p["ffn_gate_exps"],
            p["ffn_up_exps"],
            p["ffn_down_exps"],
            config,
            dprobs_extra=np.float32(aux_loss_coef) * dprobs_aux,
            dlogits_extra=np.float32(z_loss_coef) * dlogits_z,
        )
        g["ffn_gate_inp"], g["ffn_gate_exps"] = dwr, dwg
        g["ffn_up_exps"], g["ffn_down_exps"] = dwu, dwd
        dx_mid, g["ffn_norm"] = rms_norm_backward(dh2.reshape(B, T, -1), x_mid, p["ffn_norm"], eps, rms_mid)
        dx = dx + dx_mid
        # x_mid = x_in + norm(a)
        da, g["attn_output_norm"] = rms_norm_backward(dx, a, p["attn_output_norm"], eps, rms_a)
        dh, (dwq, dwk, dwv, dwo) = attention_backward(
            da, att_saved, p["attn_q"], p["attn_k"], p["attn_v"], p["attn_output"], cos, sin, config
        )
        g["attn_q"], g["attn_k"], g["attn_v"], g["attn_output"] = (
            dwq,
            dwk,
            dwv,
            dwo,
        )
        dx_in, g["attn_norm"] = rms_norm_backward(dh, x_in, p["attn_norm"], eps, rms_in)
        dx = dx + dx_in
        grads.update({f"blk.{i}.{n}.weight": v for n, v in g.items()})

    # embedding lookup (with its multiplier): scatter-add the rows back
    dx = dx * np.float32(config.embedding_multiplier)
    np.add.at(demb, tokens.reshape(-1), dx.reshape(B * T, -1))
    grads["token_embd.weight"] = demb

    loss = ce + aux_loss_coef * aux_total + z_loss_coef * z_total
    stats = {"ce": ce, "aux": aux_total, "z": z_total, "expert_load": load}
    return loss, grads, stats
