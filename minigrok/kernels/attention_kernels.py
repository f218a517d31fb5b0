"""Decode attention for one new token, reading only the KV-cache slots its attention pattern keeps.

``decode_attention`` (Numba) and ``decode_attention_numpy`` (its NumPy twin) take the same arguments and give the
same result (tests/test_sparse_attention.py ties them). A decode step's query sees at most W keys with window:W,
S + W with sinks:S,W: both read only those slots of the cache, never a (heads × max_len) score matrix.
The kernel reads each key and value row once for all the query heads that share it (grouped-query attention).
"""

from __future__ import annotations

import numba
import numpy as np

from ..attention import attend, pattern_mask
from ..config import AttentionPattern

_KINDS = {"dense": 0, "window": 1, "sinks": 2, "block": 3}


def pattern_code(pattern: AttentionPattern) -> np.ndarray:
    """The pattern as 5 integers for the kernel: (kind, p1, p2, p3, p4).

    dense (0); window (1, W); sinks (2, S, W); block (3, block, local, global_blocks, stride); unused ones are 0.
    """
    params = {
        "dense": (),
        "window": (pattern.window,),
        "sinks": (pattern.sinks, pattern.window),
        "block": (pattern.block, pattern.local, pattern.global_blocks, pattern.stride),
    }[pattern.kind]
    return np.array([_KINDS[pattern.kind], *params, *[0] * (4 - len(params))], np.int64)


@numba.njit(cache=True)
def _visible(kind, p1, p2, p3, p4, i, j):
    """minigrok.attention.pattern_mask for one (query i, key j) pair; j = -1 is an empty slot."""
    if j < 0 or j > i:
        return False
    if kind == 1:  # window: the last p1 positions, own included
        return i - j < p1
    if kind == 2:  # sinks: the first p1 positions + the last p2
        return j < p1 or i - j < p2
    if kind == 3:  # block-sparse: block p1, local p2, global p3, stride p4
        qb, kb = i // p1, j // p1
        return qb - kb < p2 or kb < p3 or (p4 > 0 and (qb - kb) % p4 == 0)
    return True


@numba.njit(cache=True, fastmath=True)
def _decode_kernel(q, q_sink, k, v, k_pos, q_position, code, multiplier, cap, out):
    """out (B, n_heads, hd) = attention of q (B, n_heads, hd) over the visible slots of k, v (B, n_kv, C, hd).

    Returns the number of visible slots (0 leaves out untouched; the caller raises)."""
    B, n_heads, hd = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    kind, p1, p2, p3, p4 = code[0], code[1], code[2], code[3], code[4]
    idx = np.empty(k_pos.shape[0], np.int64)  # the visible slots: found from positions alone, no key is read
    sink = np.empty(k_pos.shape[0], np.bool_)
    n = 0
    for s in range(k_pos.shape[0]):
        if _visible(kind, p1, p2, p3, p4, q_position, k_pos[s]):
            idx[n] = s
            sink[n] = kind == 2 and k_pos[s] < p1
            n += 1
    if n == 0:
        return 0
    scores = np.empty((group, n), np.float32)
    inv_total = np.empty(group, np.float32)
    for b in range(B):
        for h in range(n_kv):
            for m in range(n):  # scores: each key row is read once for the whole group of query heads
                s = idx[m]
                for g in range(group):
                    qh = q_sink[b, h * group + g] if sink[m] else q[b, h * group + g]
                    acc = np.float32(0.0)
                    for d in range(hd):
                        acc += qh[d] * k[b, h, s, d]
                    x = acc * multiplier
                    if cap > 0:
                        x = cap * np.tanh(x / cap)
                    scores[g, m] = x
            for g in range(group):  # softmax, max subtracted first
                top = scores[g, 0]
                for m in range(1, n):
                    top = max(top, scores[g, m])
                total = np.float32(0.0)
                for m in range(n):
                    e = np.exp(scores[g, m] - top)
                    scores[g, m] = e
                    total += e
                inv_total[g] = 1.0 / total
                out[b, h * group + g, :] = 0.0
            for m in range(n):  # weighted sum of values: each value row read once
                s = idx[m]
                for g in range(group):
                    p = scores[g, m] * inv_total[g]
                    for d in range(hd):
                        out[b, h * group + g, d] += p * v[b, h, s, d]
    return n


def _check(q, q_sink, k, v, k_pos):
    if q.ndim != 3 or q_sink.shape != q.shape or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(
            f"expected q, q_sink (B, n_heads, hd) and k, v (B, n_kv, C, hd), got {q.shape}, {q_sink.shape}, "
            f"{k.shape}, {v.shape}"
        )
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"q {q.shape} does not fit k {k.shape}: batch, head_dim or head grouping differ")
    if k_pos.ndim != 1 or len(k_pos) > k.shape[2]:
        raise ValueError(f"k_pos must be (S,) with S <= {k.shape[2]} cache slots, got shape {k_pos.shape}")


def decode_attention(q, q_sink, k, v, k_pos, q_position: int, pattern: AttentionPattern, multiplier, cap):
    """Attention of one new token per sequence over the cache slots its pattern keeps (Numba).

    q (B, n_heads, hd) float32, rotated at q_position; q_sink (B, n_heads, hd): q rotated for the sink keys (see
    minigrok.attention.sink_query_positions; pass q when there is none); k, v (B, n_kv, C, hd) float32 cache
    (after RoPE); k_pos (S,) int64 positions of slots 0..S-1 (S <= C; -1 = empty); the rest are not read.
    Returns (B, n_heads, hd) float32. Raises ValueError for mismatched shapes or if no slot is visible.
    """
    q, q_sink = np.ascontiguousarray(q, np.float32), np.ascontiguousarray(q_sink, np.float32)
    k_pos = np.ascontiguousarray(k_pos, np.int64)
    _check(q, q_sink, k, v, k_pos)
    k, v = np.asarray(k, np.float32), np.asarray(v, np.float32)  # cache views: never copied
    out = np.empty_like(q)
    n = _decode_kernel(
        q, q_sink, k, v, k_pos, int(q_position), pattern_code(pattern), np.float32(multiplier), np.float32(cap), out
    )
    if n == 0:
        raise ValueError(f"no cached key is visible to position {q_position} under {pattern}")
    return out


def decode_attention_numpy(q, q_sink, k, v, k_pos, q_position: int, pattern: AttentionPattern, multiplier, cap):
    """NumPy twin of :func:`decode_attention` (same arguments, same result): gathers the visible slots, then
    minigrok.attention.attend on them."""
    k_pos = np.asarray(k_pos, np.int64)
    _check(q, q_sink, k, v, k_pos)
    idx = np.flatnonzero(pattern_mask(pattern, [q_position], k_pos)[0])  # (n,) visible slots
    if idx.size == 0:
        raise ValueError(f"no cached key is visible to position {q_position} under {pattern}")
    sink_keys = k_pos[idx] < pattern.sinks  # (n,) all False unless the pattern has sinks
    mask = np.ones((1, idx.size), bool)
    out, _ = attend(q[:, None], k[:, :, idx], v[:, :, idx], mask, multiplier, cap, q_sink[:, None], sink_keys)
    return out[:, 0]  # (B, n_heads, hd)
