"""The whole Grok-1 decoder stack on one screen: ``forward(params, config, tokens, cache) -> logits``.

Parameters are a flat dict keyed by llama.cpp's grok GGUF tensor names (``"blk.0.attn_q.weight"`` -> array),
so the dict *is* the checkpoint. One layer (xai-org/grok-1 model.py, ``DecoderLayer``; llama.cpp
src/models/grok.cpp)::

    h = h + post_attn_norm( attention( pre_attn_norm(h) ) )
    h = h + post_moe_norm(  moe(       pre_moe_norm(h)  ) )
    logits = output_multiplier * ( final_norm(h) @ token_embd.T )

This is the readable reference: NumPy only, it imports nothing from minigrok.kernels. Its compiled twin for one
decode step is minigrok/kernels/decode.py; minigrok/engine.py chooses which one runs.
"""

from __future__ import annotations

import numpy as np

from .attention import KVCache, attention, kv_cache_size
from .config import ModelConfig
from .layers import linear, rms_norm
from .moe import moe

# The tensors of one layer, by their short GGUF names (``blk.{i}.<name>.weight``), in the order the layer uses them.
LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "attn_output_norm",
    "ffn_norm",
    "ffn_gate_inp",
    "ffn_gate_exps",
    "ffn_up_exps",
    "ffn_down_exps",
    "layer_output_norm",
)


def layer_params(params: dict, i: int) -> dict:
    """Layer i's tensors by short name: ``{"attn_q": params["blk.{i}.attn_q.weight"], ...}`` (no copies)."""
    return {name: params[f"blk.{i}.{name}.weight"] for name in LAYER_TENSORS}


def init_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters for ``config``: norms at 1, matrices ~ N(0, 0.02²), output projections
    (attn_output, ffn_down_exps) scaled down by sqrt(2 n_layers) as in GPT-2. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in config.param_shapes().items():
        if len(shape) == 1:
            params[name] = np.ones(shape, np.float32)
            continue
        std = 0.02
        if name.endswith(("attn_output.weight", "ffn_down_exps.weight")):
            std /= np.sqrt(2 * config.n_layers)
        params[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)
    return params


def init_cache(config: ModelConfig, batch_size: int = 1, max_len: int | None = None) -> KVCache:
    """An empty KV cache for ``config.pattern`` with ``max_len`` slots.

    Default max_len: kv_cache_size(pattern) for a bounded pattern (a rolling cache: S + W slots for sinks:S,W, W for
    window:W, and any number of tokens), else the context length.
    """
    if max_len is None:
        max_len = kv_cache_size(config.pattern) or config.context_length
    return KVCache(config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim, config.pattern)


def check_inputs(config: ModelConfig, tokens: np.ndarray, cache: KVCache | None) -> None:
    """Raise ValueError unless ``tokens`` (B, T) are ids in [0, vocab_size) that fit the context (no cache) or
    ``cache`` (made for config.pattern; its room is checked by cache.begin)."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (batch, time), got shape {tokens.shape}")
    T = tokens.shape[1]
    if cache is None and kv_cache_size(config.pattern) is None and T > config.context_length:
        raise ValueError(f"sequence of {T} tokens exceeds the {config.context_length}-token limit of this model")
    if T and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(f"token ids must be in [0, {config.vocab_size}), got {tokens.min()}..{tokens.max()}")
    if cache is not None and cache.pattern != config.pattern:
        raise ValueError(f"the cache was made for attention {cache.pattern}, the model uses {config.pattern}")


def forward(params: dict, config: ModelConfig, tokens: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
    """Logits for every position of ``tokens``, under the attention pattern ``config.pattern``.

    tokens (B, T) int ids in [0, vocab_size). Without a cache the tokens are positions 0..T-1. With a cache,
    they continue the cached sequence at positions cache.pos .. cache.pos+T-1 (their K/V are stored and
    cache.pos advances): a prefill is one call on the prompt, a decode step one call on one token.
    Dense attention (and block-sparse with a stride) is limited to context_length tokens without a cache and to
    cache.max_len with one; a bounded pattern (window, sinks) runs any length, with a rolling cache.
    Returns (B, T, vocab_size) float32 logits (nats before softmax).
    Raises ValueError if a token id is out of range, or the cache (or context) would overflow; the cache is then
    unchanged.
    """
    tokens = np.asarray(tokens)
    check_inputs(config, tokens, cache)
    T = tokens.shape[1]
    step = cache.begin(T) if cache is not None else None  # where the new keys go; raises if they do not fit
    positions = np.arange(T) + (cache.pos if cache is not None else 0)  # (T,) absolute positions
    eps = config.rms_eps
    # An F16 embedding's rows (load_gguf(mmap=True) keeps it F16) are widened exactly by this float32 product.
    x = params["token_embd.weight"][tokens] * np.float32(config.embedding_multiplier)  # (B, T, d_model)
    for i in range(config.n_layers):
        w = layer_params(params, i)  # this layer's tensors: w["attn_q"] is params[f"blk.{i}.attn_q.weight"]
        h = attention(rms_norm(x, w["attn_norm"], eps), w, config, positions, cache, i, step)  # (B, T, d_model)
        x = x + rms_norm(h, w["attn_output_norm"], eps)  # (B, T, d_model)
        h = moe(rms_norm(x, w["ffn_norm"], eps), w, config.top_k, config.renormalize_gates)  # (B, T, d_model)
        x = x + rms_norm(h, w["layer_output_norm"], eps)  # (B, T, d_model)
    if cache is not None:
        cache.commit(step)  # every layer has stored the new keys: the cache now holds positions .. pos + T - 1
    x = rms_norm(x, params["output_norm.weight"], eps)  # (B, T, d_model)
    return linear(x, params["token_embd.weight"]) * np.float32(config.output_multiplier)  # (B, T, vocab_size)
