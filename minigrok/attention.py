"""Grouped-query attention with RoPE, Grok-1's attention multiplier and soft-cap, attention patterns and a KV cache.

Grok-1 (xai-org/grok-1 model.py, ``MultiHeadAttention``): 48 query heads share 8 key/value heads; logits are
``q·k * attention_multiplier``, soft-capped with ``30 tanh(s / 30)`` in float32, then masked and soft-maxed.
llama.cpp does the same in llama-graph.cpp (``build_attn_mha``, the LLM_ARCH_GROK branch).

Layout used throughout: query head h reads key/value head ``h // (n_heads // n_kv_heads)``, as in llama.cpp.

Attention patterns (``ModelConfig.attention``) decide which earlier positions a query sees. One function,
:func:`pattern_mask`, answers that question for training, generation and the lesson pictures. Everything is
written in absolute positions (query at position i, key at position j), never in array indices, so the same mask
works for a whole sequence, a chunk of it, or a rolling KV cache whose slots hold positions in any order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .config import AttentionPattern
from .layers import apply_rope, linear, rope_tables, softcap, softmax

# A finite "minus infinity" for masked logits: a fully masked row then softmaxes to a uniform row, not NaN.
MASKED = np.float32(-1e30)
# Queries per block in the prefill: each block attends only to the keys its pattern keeps (see attend_pattern).
QUERY_BLOCK = 64


# ---- the patterns: is key position j visible to query position i? ---------------------------------------------------
# i and j are integer arrays that broadcast against each other (e.g. i (T, 1), j (1, S)); each returns a bool array.


def dense_visible(i, j):
    """Causal attention: every position up to and including the query's own (Vaswani et al. 2017, decoder mask)."""
    return j <= i


def window_visible(i, j, window: int):
    """Sliding window: the last ``window`` positions, **the query's own included**: j in (i - window, i].

    Mistral 7B (Jiang et al. 2023, section 2, "Sliding Window Attention"). The paper's text and its reference code
    (mistral-src one_file_ref.py: ``torch.triu(mask, diagonal=-sliding_window)``) keep i - W .. i, which is W + 1
    keys; minigrok follows llama.cpp instead (src/llama-hparams.h ``is_masked_swa``, LLAMA_SWA_TYPE_STANDARD:
    masked when ``p1 - p0 >= n_swa``), so window:W means exactly W keys and a rolling cache of W entries.
    """
    return (j <= i) & (i - j < window)


def sinks_visible(i, j, sinks: int, window: int):
    """Attention sinks + sliding window: the first ``sinks`` positions stay visible to every query, plus the last
    ``window`` positions (own included).

    StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks", section 3.2): models
    trained with dense attention park much of their attention on the first tokens; keeping those few "sinks" in the
    cache lets window attention run on past the training length. sinks = 0 is window_visible.
    """
    return (j <= i) & ((j < sinks) | (i - j < window))


def block_sparse_visible(i, j, block: int, local: int, global_blocks: int, stride: int):
    """Block-sparse attention on blocks of ``block`` positions (query block qb = i // block, key block kb = j // block).

    A query sees key block kb (causally: j <= i) when kb is one of its ``local`` latest blocks (qb - kb < local, its
    own block included), one of the first ``global_blocks`` blocks (kb < global_blocks), or ``stride`` blocks apart
    ((qb - kb) % stride == 0; stride 0 = none). Sparse Transformer (Child et al. 2019, section 4.2: the "strided"
    pattern, a local window plus every l-th position, applied here to blocks, as its block-sparse kernels do) and
    BigBird (Zaheer et al. 2020, section 2: window + global blocks; its random blocks are left out). With causal
    masking, BigBird's global *queries* add nothing: the first blocks can only see each other anyway.
    """
    qb, kb = i // block, j // block
    strided = (qb - kb) % stride == 0 if stride > 0 else False
    return (j <= i) & ((qb - kb < local) | (kb < global_blocks) | strided)


def pattern_mask(pattern: AttentionPattern, q_pos, k_pos) -> np.ndarray:
    """Boolean mask (T, S): may the query at position q_pos[t] attend to the key at position k_pos[s]?

    q_pos (T,) int, k_pos (S,) int absolute positions; k_pos -1 marks an empty cache slot (never visible).
    The one mask used by model.forward, the training forward and the lesson's pictures.
    """
    i = np.asarray(q_pos)[:, None]  # (T, 1)
    j = np.asarray(k_pos)[None, :]  # (1, S)
    if pattern.kind == "window":
        visible = window_visible(i, j, pattern.window)
    elif pattern.kind == "sinks":
        visible = sinks_visible(i, j, pattern.sinks, pattern.window)
    elif pattern.kind == "block":
        visible = block_sparse_visible(i, j, pattern.block, pattern.local, pattern.global_blocks, pattern.stride)
    else:
        visible = dense_visible(i, j)
    return visible & (j >= 0)  # (T, S)


def causal_mask(n_queries: int, n_keys: int, offset: int) -> np.ndarray:
    """Boolean mask (n_queries, n_keys): query i (at absolute position offset + i) may see key j iff j <= offset + i."""
    return pattern_mask(AttentionPattern(), offset + np.arange(n_queries), np.arange(n_keys))


def keys_needed(pattern: AttentionPattern, q_lo: int, q_hi: int | None, k_pos: np.ndarray) -> np.ndarray:
    """Which keys (S,) bool can some query at a position in [q_lo, q_hi) see? q_hi None = no upper end.

    The prefill computes a block of queries against these keys only; the rolling cache keeps, of its entries, those
    that some future query (q_lo = the next position, q_hi None) can still see. Empty slots (-1) are never needed.
    """
    j = np.asarray(k_pos)
    present = (j >= 0) if q_hi is None else (j >= 0) & (j < q_hi)
    if pattern.kind == "window":
        return present & (j > q_lo - pattern.window)
    if pattern.kind == "sinks":
        return present & ((j < pattern.sinks) | (j > q_lo - pattern.window))
    if pattern.kind == "block":
        b = pattern.block
        kb, qb_lo = j // b, q_lo // b
        needed = (kb > qb_lo - pattern.local) | (kb < pattern.global_blocks)
        if pattern.stride > 0:
            if q_hi is None:  # some later block is always a multiple of the stride away
                return present
            n_blocks = (q_hi - 1) // b - qb_lo + 1  # query blocks qb_lo .. qb_lo + n_blocks - 1
            needed |= (kb - qb_lo) % pattern.stride < n_blocks  # some qb in range has (qb - kb) % stride == 0
        return present & needed
    return present


def kv_cache_size(pattern: AttentionPattern) -> int | None:
    """Most keys a single query can see, so the slots a rolling KV cache needs; None if unbounded.

    dense: None. window:W: W. sinks:S,W: S + W. block: (global + local) blocks of keys, or None with a stride
    (some block far back stays visible forever).
    """
    if pattern.kind == "window":
        return pattern.window
    if pattern.kind == "sinks":
        return pattern.sinks + pattern.window
    if pattern.kind == "block" and pattern.stride == 0:
        return (pattern.global_blocks + pattern.local) * pattern.block
    return None


def sink_query_positions(pattern: AttentionPattern, q_pos: np.ndarray) -> np.ndarray | None:
    """RoPE position of each query when it scores the sink keys, or None when that is its own position.

    minigrok follows StreamingLLM (Xiao et al. 2023, section 3.2, "positions within the cache"): positions are
    counted inside the cache, [sinks 0..S-1 | window], so the query sits at S + W - 1 once the cache is full. For
    the window keys this changes nothing (RoPE scores depend only on i - j, and the window is contiguous), so keys
    are cached rotated at their absolute position and only the sink scores need a query rotated at
    min(i, S + W - 1). Without it a query 10,000 tokens on would score the sinks at RoPE distances never seen
    in training. q_pos (T,) int -> (T,) int, or None.
    """
    if pattern.kind != "sinks" or pattern.sinks == 0 or np.max(q_pos) <= pattern.sinks + pattern.window - 1:
        return None
    return np.minimum(q_pos, pattern.sinks + pattern.window - 1)


# ---- the attention computation ---------------------------------------------------------------------------------------
def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, T, n_heads * head_dim) -> (B, T, n_heads, head_dim)."""
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, -1)


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    multiplier: float,
    cap: float,
    q_sink: np.ndarray | None = None,
    sink_keys: np.ndarray | None = None,
):
    """Scaled, soft-capped, masked dot-product attention with grouped K/V heads.

    q (B, T, n_heads, head_dim) after RoPE; k, v (B, n_kv_heads, S, head_dim) (the layout of the KV cache);
    mask (T, S) bool. Optionally the columns ``sink_keys`` (S,) bool are scored with ``q_sink`` (q rotated at
    the positions of :func:`sink_query_positions`) instead of q.
    Returns (out (B, T, n_heads, head_dim), probs (B, n_kv_heads, group, T, S)).
    Each group of ``n_heads // n_kv_heads`` query heads is stacked along the row axis so that one batched
    matmul per K/V head computes all its scores.
    """
    B, T, n_heads, head_dim = q.shape
    n_kv_heads, S = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads

    def stack(a):  # (B, T, n_heads, hd) -> (B, n_kv, group*T, hd)
        a = a.reshape(B, T, n_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)  # (B, n_kv, group, T, hd)
        return a.reshape(B, n_kv_heads, group * T, head_dim)

    scores = (stack(q) @ k.transpose(0, 1, 3, 2)) * np.float32(multiplier)  # (B, n_kv, group*T, S)
    if q_sink is not None and np.any(sink_keys):
        cols = np.flatnonzero(sink_keys)  # (n_sinks,)
        scores[..., cols] = (stack(q_sink) @ k[:, :, cols].transpose(0, 1, 3, 2)) * np.float32(multiplier)
    scores = softcap(scores.reshape(B, n_kv_heads, group, T, S), cap)  # (B, n_kv, group, T, S)
    scores = np.where(mask, scores, MASKED)  # (B, n_kv, group, T, S)
    probs = softmax(scores, axis=-1)  # (B, n_kv, group, T, S)
    out = probs.reshape(B, n_kv_heads, group * T, S) @ v  # (B, n_kv, group*T, hd)
    out = out.reshape(B, n_kv_heads, group, T, head_dim).transpose(0, 3, 1, 2, 4)  # (B, T, n_kv, group, hd)
    return out.reshape(B, T, n_heads, head_dim), probs


def take_keys(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[:, :, idx] along the key axis: a view when idx is a contiguous run (a dense or window block), else a copy."""
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return a[:, :, idx[0] : idx[-1] + 1]
    return a[:, :, idx]


def attend_pattern(q, k, v, q_pos, k_pos, pattern: AttentionPattern, multiplier: float, cap: float, q_sink=None):
    """Attention under ``pattern`` that computes only the blocks the pattern keeps: never a T × S score matrix.

    q (B, T, n_heads, hd) rotated at absolute positions q_pos (T,); k, v (B, n_kv, S, hd) at positions k_pos (S,)
    (-1 = empty slot, any order); q_sink (B, T, n_heads, hd) or None (see sink_query_positions).
    The queries go in blocks of QUERY_BLOCK (a multiple of the pattern's block size), each against only the keys
    :func:`keys_needed` lists for it: a window:W prefill costs T·(W + QUERY_BLOCK) scores instead of T², and a dense
    one skips the blocks above the diagonal. Returns (B, T, n_heads, hd).
    """
    B, T, n_heads, hd = q.shape
    q_pos, k_pos = np.asarray(q_pos), np.asarray(k_pos)
    size = QUERY_BLOCK if pattern.kind != "block" else pattern.block * max(1, QUERY_BLOCK // pattern.block)
    starts = np.union1d([0], np.flatnonzero(q_pos % size == 0))  # blocks aligned to positions, not to the chunk
    out = np.empty_like(q)  # (B, T, n_heads, hd)
    for a, b in zip(starts, [*starts[1:], T], strict=True):
        idx = np.flatnonzero(keys_needed(pattern, int(q_pos[a]), int(q_pos[b - 1]) + 1, k_pos))  # (n,)
        mask = pattern_mask(pattern, q_pos[a:b], k_pos[idx])  # (b - a, n)
        sink = None if q_sink is None else q_sink[:, a:b]
        sink_keys = None if q_sink is None else (k_pos[idx] >= 0) & (k_pos[idx] < pattern.sinks)
        out[:, a:b], _ = attend(q[:, a:b], take_keys(k, idx), take_keys(v, idx), mask, multiplier, cap, sink, sink_keys)
    return out


# ---- the KV cache ----------------------------------------------------------------------------------------------------
@dataclass
class CacheStep:
    """How one forward call of T new tokens uses a KVCache (made by KVCache.begin, applied by KVCache.commit).

    write_first: the new keys go into the free slots ``slots`` before attention, which then reads slots
    [:n_read] at positions ``after``. Otherwise (a chunk longer than the free slots of a rolling cache) attention
    reads the kept slots ``read`` plus the new keys, and afterwards the new tokens ``store`` (indices into the
    chunk) are written to ``slots``.
    """

    positions: np.ndarray  # (T,) the new tokens' absolute positions
    write_first: bool
    slots: np.ndarray  # (n,) where the stored new tokens go
    store: np.ndarray  # (n,) which of the new tokens are stored (all T when write_first)
    read: np.ndarray | None  # (m,) slots read besides the new keys (when not write_first)
    after: np.ndarray  # (max_len,) the cache's positions once this step is done (-1 = empty)

    @functools.cached_property
    def n_read(self) -> int:
        """Slots 0 .. n_read-1 hold every position the cache keeps after this step."""
        live = np.flatnonzero(self.after >= 0)
        return int(live[-1]) + 1 if live.size else 0


class KVCache:
    """Keys and values of every layer for the positions the attention pattern may still need.

    k[layer], v[layer]: (B, n_kv_heads, max_len, head_dim) float32; positions (max_len,) int64: the absolute
    position held by each slot (-1 = empty); pos = number of tokens seen so far. Keys are stored after RoPE (at
    their absolute position), so a cached key never needs rotating again.

    With dense attention slot i holds position i and max_len bounds the sequence. With a pattern whose queries see
    a bounded number of keys (window, sinks, block without stride; see kv_cache_size) and max_len at least that
    number, the cache rolls: a new token takes the slot of a position no future query can see, so a sequence
    of any length runs in max_len slots (S + W for sinks:S,W), with memory that stays flat.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        pattern: AttentionPattern | None = None,
    ):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.positions = np.full(max_len, -1, np.int64)
        self.max_len = max_len
        self.pattern = AttentionPattern() if pattern is None else pattern
        self.pos = 0

    @property
    def rolling(self) -> bool:
        """True if the cache can hold a sequence of any length (its pattern is bounded and it has enough slots)."""
        size = kv_cache_size(self.pattern)
        return size is not None and self.max_len >= size

    def nbytes(self) -> int:
        """Bytes held by the cache (both K and V, all layers)."""
        return sum(a.nbytes for a in self.k + self.v)

    def begin(self, T: int) -> CacheStep:
        """Plan where T new tokens go. Changes nothing; raises ValueError if they do not fit."""
        pos, positions = self.pos, self.positions
        new = np.arange(pos, pos + T)  # (T,)
        keep = keys_needed(self.pattern, pos, None, positions)  # (max_len,) still visible to a query >= pos
        free = np.flatnonzero(~keep)
        if free.size >= T:  # the usual case (and every decode step of a rolling cache): write, then attend
            after = np.where(keep, positions, -1)
            after[free[:T]] = new
            return CacheStep(new, True, free[:T], np.arange(T), None, after)
        if not self.rolling:
            raise ValueError(f"sequence of {pos + T} tokens exceeds the {self.max_len}-token limit of this cache")
        # A long chunk into a rolling cache: attend over the kept entries plus the new keys, then keep what later
        # queries (>= pos + T) can see: at most kv_cache_size(pattern) - 1 entries, so they fit.
        keep_old = keep & keys_needed(self.pattern, pos + T, None, positions)
        store = np.flatnonzero(keys_needed(self.pattern, pos + T, None, new))
        slots = np.flatnonzero(~keep_old)[: store.size]
        after = np.where(keep_old, positions, -1)
        after[slots] = new[store]
        return CacheStep(new, False, slots, store, np.flatnonzero(keep), after)

    def commit(self, step: CacheStep) -> None:
        """Record that every layer has stored ``step``'s tokens."""
        self.positions = step.after
        self.pos += len(step.positions)


def attention(x, w: dict, config, positions, cache: KVCache | None = None, layer: int = 0, step=None):
    """One grouped-query attention block (without its norms), under ``config.pattern``.

    x (B, T, d_model) at the absolute positions ``positions`` (T,); w the layer's tensors by short GGUF name:
    "attn_q" (n_heads*head_dim, d_model), "attn_k", "attn_v" (n_kv_heads*head_dim, d_model), "attn_output"
    (d_model, n_heads*head_dim). With a cache, ``step`` (from cache.begin) says where the new keys/values go and
    which cached ones to read; the caller commits the step after the last layer. Returns (B, T, d_model) float32.
    """
    B, T, _ = x.shape
    pattern = config.pattern
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta)  # (T, head_dim/2)
    q = split_heads(linear(x, w["attn_q"]), config.n_heads)  # (B, T, n_heads, hd), before RoPE
    sink_pos = sink_query_positions(pattern, positions)  # (T,) or None
    q_sink = None if sink_pos is None else apply_rope(q, *rope_tables(sink_pos, config.head_dim, config.rope_theta))
    q = apply_rope(q, cos, sin)  # (B, T, n_heads, hd)
    k = apply_rope(split_heads(linear(x, w["attn_k"]), config.n_kv_heads), cos, sin)  # (B, T, n_kv, hd)
    v = split_heads(linear(x, w["attn_v"]), config.n_kv_heads)  # (B, T, n_kv, hd)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, n_kv, T, hd)
    k_pos = positions
    if cache is not None and step.write_first:  # the new keys go into free slots, then attention reads the cache
        cache.k[layer][:, :, step.slots] = k
        cache.v[layer][:, :, step.slots] = v
        k_pos = step.after[: step.n_read]  # (S,) positions of slots 0..S-1
        k, v = cache.k[layer][:, :, : step.n_read], cache.v[layer][:, :, : step.n_read]  # (B, n_kv, S, hd) views
    elif cache is not None:  # a chunk longer than the free slots of a rolling cache
        old_k, old_v = cache.k[layer][:, :, step.read], cache.v[layer][:, :, step.read]  # (B, n_kv, n_old, hd)
        new_k, new_v = k, v
        k, v = np.concatenate([old_k, new_k], axis=2), np.concatenate([old_v, new_v], axis=2)  # (B, n_kv, S, hd)
        k_pos = np.concatenate([cache.positions[step.read], positions])  # (S,)
        cache.k[layer][:, :, step.slots] = new_k[:, :, step.store]
        cache.v[layer][:, :, step.slots] = new_v[:, :, step.store]
    multiplier, cap = config.attention_multiplier, config.attn_logit_softcap
    out = attend_pattern(q, k, v, positions, k_pos, pattern, multiplier, cap, q_sink=q_sink)  # (B, T, n_heads, hd)
    return linear(out.reshape(B, T, -1), w["attn_output"])  # (B, T, d_model)
