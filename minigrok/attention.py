"""Grouped-query attention with RoPE, Grok-1's attention multiplier and logit soft-cap, and a KV cache.

Grok-1 (xai-org/grok-1 model.py, ``MultiHeadAttention``): 48 query heads share 8 key/value heads; logits are
``q·k * attention_multiplier``, soft-capped with ``30 tanh(s / 30)`` in float32, then masked and soft-maxed.
llama.cpp does the same in llama-graph.cpp (``build_attn_mha``, the LLM_ARCH_GROK branch).

Layout used throughout: query head h reads key/value head ``h // (n_heads // n_kv_heads)``, as in llama.cpp.
"""

from __future__ import annotations

import numpy as np

from .layers import apply_rope, linear, softcap, softmax

# A finite "minus infinity" for masked logits: a fully masked row then softmaxes to a uniform row, not NaN.
MASKED = np.float32(-1e30)


def causal_mask(n_queries: int, n_keys: int, offset: int) -> np.ndarray:
    """Boolean mask (n_queries, n_keys): query i (at absolute position offset + i) may see key j iff j <= offset + i."""
    q_pos = offset + np.arange(n_queries)[:, None]  # (T, 1)
    k_pos = np.arange(n_keys)[None, :]  # (1, S)
    return k_pos <= q_pos  # (T, S)


def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, T, n_heads * head_dim) -> (B, T, n_heads, head_dim)."""
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, -1)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, multiplier: float, cap: float):
    """Scaled, soft-capped, masked dot-product attention with grouped K/V heads.

    q (B, T, n_heads, head_dim) after RoPE; k, v (B, n_kv_heads, S, head_dim) (the layout of the KV cache);
    mask (T, S) bool. Returns (out (B, T, n_heads, head_dim), probs (B, n_kv_heads, group, T, S)).
    Each group of ``n_heads // n_kv_heads`` query heads is stacked along the row axis so that one batched
    matmul per K/V head computes all its scores.
    """
    B, T, n_heads, head_dim = q.shape
    n_kv_heads, S = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    qg = q.reshape(B, T, n_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)  # (B, n_kv, group, T, hd)
    qg = qg.reshape(B, n_kv_heads, group * T, head_dim)  # (B, n_kv, group*T, hd)
    scores = (qg @ k.transpose(0, 1, 3, 2)) * np.float32(multiplier)  # (B, n_kv, group*T, S)
    scores = softcap(scores.reshape(B, n_kv_heads, group, T, S), cap)  # (B, n_kv, group, T, S)
    scores = np.where(mask, scores, MASKED)  # (B, n_kv, group, T, S)
    probs = softmax(scores, axis=-1)  # (B, n_kv, group, T, S)
    out = probs.reshape(B, n_kv_heads, group * T, S) @ v  # (B, n_kv, group*T, hd)
    out = out.reshape(B, n_kv_heads, group, T, head_dim).transpose(0, 3, 1, 2, 4)  # (B, T, n_kv, group, hd)
    return out.reshape(B, T, n_heads, head_dim), probs


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    k[layer], v[layer]: (B, n_kv_heads, max_len, head_dim) float32; ``pos`` = number of cached tokens.
    Keys are stored after RoPE, so a cached key never needs rotating again.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0

    def nbytes(self) -> int:
        """Bytes held by the cache (both K and V, all layers)."""
        return sum(a.nbytes for a in self.k + self.v)


def attention(x, wq, wk, wv, wo, cos, sin, config, cache: KVCache | None = None, layer: int = 0, pos: int = 0):
    """One grouped-query attention block (without its norms).

    x (B, T, d_model); wq (n_heads*head_dim, d_model); wk, wv (n_kv_heads*head_dim, d_model);
    wo (d_model, n_heads*head_dim); cos, sin (T, head_dim/2) for absolute positions pos .. pos+T-1.
    With a cache, the new keys/values are written at pos .. pos+T-1 and attention reads all pos+T of them
    (the caller advances cache.pos). Returns (B, T, d_model) float32.
    """
    B, T, _ = x.shape
    q = apply_rope(split_heads(linear(x, wq), config.n_heads), cos, sin)  # (B, T, n_heads, hd)
    k = apply_rope(split_heads(linear(x, wk), config.n_kv_heads), cos, sin)  # (B, T, n_kv, hd)
    v = split_heads(linear(x, wv), config.n_kv_heads)  # (B, T, n_kv, hd)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, n_kv, T, hd)
    if cache is not None:
        cache.k[layer][:, :, pos : pos + T] = k
        cache.v[layer][:, :, pos : pos + T] = v
        k, v = cache.k[layer][:, :, : pos + T], cache.v[layer][:, :, : pos + T]  # (B, n_kv, S, hd)
    mask = causal_mask(T, k.shape[2], pos)  # (T, S)
    out, _ = attend(q, k, v, mask, config.attention_multiplier, config.attn_logit_softcap)  # (B, T, n_heads, hd)
    return linear(out.reshape(B, T, -1), wo)  # (B, T, d_model)
