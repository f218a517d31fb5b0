"""Decode attention for one new token, reading only the KV-cache slots its attention pattern keeps.

``decode_attention`` is the compiled twin of minigrok.attention's decode route for one query (``attend_pattern``
over the cache, which ``attention`` runs for every chunk): tests/test_sparse_attention.py ties the two, and
kernels/decode.py runs its pieces (``visible_slots``, ``key_scores``, ``weighted_values``) inside the compiled
decode step. A decode step's query sees at most W keys with window:W,
S + W with sinks:S,W: both read only those slots of the cache, never a (heads × max_len) score matrix.
The Numba loops do the memory-bound part: find the visible slots from the positions alone, then read each of their
key and value rows once for all the query heads that share it (grouped-query attention). The soft-cap and softmax
on the (n_heads, n) scores in between are NumPy's (SIMD tanh and exp; Numba's are scalar calls, about 50x slower).
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from ..config import AttentionPattern
from ..layers import softcap, softmax

# The pattern as the kernels take it: its kind as an integer, then its sizes by name (minigrok.config.AttentionPattern;
# 0 where a kind does not use one). A namedtuple of integers, which Numba compiles like a tuple with field names.
PatternCode = namedtuple("PatternCode", ["kind", "window", "sinks", "block", "local", "global_blocks", "stride"])
DENSE, WINDOW, SINKS, BLOCK = 0, 1, 2, 3
_KINDS = {"dense": DENSE, "window": WINDOW, "sinks": SINKS, "block": BLOCK}


def pattern_code(pattern: AttentionPattern) -> PatternCode:
    """The pattern's kind and sizes as integers, for the kernels."""
    sizes = (pattern.window, pattern.sinks, pattern.block, pattern.local, pattern.global_blocks, pattern.stride)
    return PatternCode(_KINDS[pattern.kind], *(int(n) for n in sizes))


@numba.njit(cache=True)
def _visible(code, i, j):
    """minigrok.attention.pattern_mask for one (query i, key j) pair; j = -1 is an empty slot."""
    if j < 0 or j > i:
        return False
    if code.kind == WINDOW:  # the last `window` positions, own included
        return i - j < code.window
    if code.kind == SINKS:  # the first `sinks` positions + the last `window`
        return j < code.sinks or i - j < code.window
    if code.kind == BLOCK:  # block-sparse: local blocks, global blocks, every stride-th block back
        qb, kb = i // code.block, j // code.block
        return qb - kb < code.local or kb < code.global_blocks or (code.stride > 0 and (qb - kb) % code.stride == 0)
    return True


@numba.njit(cache=True)
def visible_slots(k_pos, q_position, code):
    """The slots (n,) whose key the query at q_position sees under the PatternCode ``code``, and which of them are
    sinks (n,): read from the positions alone, so no key or value of a hidden slot is touched."""
    idx = np.empty(k_pos.shape[0], np.int64)
    sink = np.empty(k_pos.shape[0], np.bool_)
    n = 0
    for s in range(k_pos.shape[0]):
        if _visible(code, q_position, k_pos[s]):
            idx[n] = s
            sink[n] = code.kind == SINKS and k_pos[s] < code.sinks
            n += 1
    return idx[:n], sink[:n]


@numba.njit(cache=True, fastmath=True)
def key_scores(q, q_sink, k, idx, sink):
    """Raw scores (B, n_heads, n) = q · k for the slots idx; each key row is read once for its group of heads."""
    B, n_heads, hd = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    scores = np.empty((B, n_heads, idx.shape[0]), np.float32)
    for b in range(B):
        for h in range(n_kv):
            for m in range(idx.shape[0]):
                key = k[b, h, idx[m]]  # (hd,)
                qs = q_sink[b] if sink[m] else q[b]  # (n_heads, hd)
                for g in range(h * group, (h + 1) * group):
                    acc = np.float32(0.0)
                    for d in range(hd):
                        acc += qs[g, d] * key[d]
                    scores[b, g, m] = acc
    return scores


@numba.njit(cache=True, fastmath=True)
def weighted_values(probs, v, idx):
    """out (B, n_heads, hd) = sum over m of probs[:, :, m] · v[slot idx[m]]; each value row is read once."""
    B, n_heads, n = probs.shape
    n_kv, hd = v.shape[1], v.shape[3]
    group = n_heads // n_kv
    out = np.empty((B, n_heads, hd), np.float32)
    for b in range(B):
        for h in range(n_kv):
            acc = np.zeros((group, hd), np.float32)  # a local accumulator: LLVM vectorizes the d loop (not so
            for m in range(n):  # when adding into out directly, which might alias v)
                value = v[b, h, idx[m]]  # (hd,)
                for g in range(group):
                    p = probs[b, h * group + g, m]
                    for d in range(hd):
                        acc[g, d] += p * value[d]
            out[b, h * group : (h + 1) * group] = acc
    return out


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
    k, v = np.asarray(k, np.float32), np.asarray(v, np.float32)  # the cache itself: never copied
    idx, sink = visible_slots(k_pos, int(q_position), pattern_code(pattern))  # (n,), (n,)
    if idx.size == 0:
        raise ValueError(f"no cached key is visible to position {q_position} under {pattern}")
    scores = softcap(key_scores(q, q_sink, k, idx, sink) * np.float32(multiplier), cap)  # (B, n_heads, n)
    return weighted_values(softmax(scores, axis=-1), v, idx)  # (B, n_heads, hd)
