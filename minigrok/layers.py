"""The small pure functions every layer is built from: RMSNorm, RoPE, GELU, soft-cap, softmax.

All functions take and return float32 NumPy arrays and never modify their inputs.
"""

from __future__ import annotations

import numpy as np

from .quant import QuantizedTensor

SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))
F16_BLOCK = 1 << 18  # weights of a float16 matrix widened at a time in linear: 1 MB of float32, within the L2 cache


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` for a weight stored (out, in) as in GGUF, over any leading axes: (..., in) -> (..., out).

    The leading axes are flattened first, so NumPy makes one BLAS call (a stacked 3-D matmul is far slower).
    A Q8_0/Q4_0 weight (a ``QuantizedTensor``) multiplies itself (``QuantizedTensor.linear``: quant.quantized_linear).
    A float16 weight (the F16 token embedding, which ``load_gguf(mmap=True)`` keeps as it is in the file) is
    widened to float32 a block of rows at a time: the float32 products of ``x @ w.astype(np.float32).T`` (BLAS may
    add them in another order, a float32 rounding), without the float32 copy of the whole matrix that NumPy's mixed
    float32 @ float16 product makes on every call.
    """
    if isinstance(w, QuantizedTensor):
        return w.linear(x)
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    if w.dtype != np.float16:
        return (x2 @ w.T).reshape(*x.shape[:-1], w.shape[0])
    out = np.empty((x2.shape[0], w.shape[0]), np.result_type(x, np.float32))  # (N, out)
    rows = max(1, F16_BLOCK // w.shape[1])
    for r in range(0, w.shape[0], rows):
        out[:, r : r + rows] = x2 @ w[r : r + rows].astype(out.dtype).T  # (N, rows): exact widening, then float32
    return out.reshape(*x.shape[:-1], w.shape[0])


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm: ``weight * x / sqrt(mean(x**2) + eps)`` over the last axis, in float32.

    Zhang & Sennrich 2019, eq. 4; Grok-1 (xai-org/grok-1 model.py, ``RMSNorm``) multiplies by ``scale``, not
    ``1 + scale``. Shapes: x (..., d_model), weight (d_model,) -> (..., d_model).

    The mean of squares is summed in float64, as llama.cpp's ggml_compute_forward_rms_norm does: squares of
    float32 values above ~1.8e19 overflow float32 (the norm would collapse to 0), but never float64. The rms
    itself, between sqrt(eps) and max|x|, fits float32, so the division stays in float32 for every finite x.
    """
    x = x.astype(np.result_type(x, np.float32), copy=False)  # at least float32 (float64 in gradient checks)
    return weight * (x / root_mean_square(x, eps))  # (..., d_model)


def root_mean_square(x: np.ndarray, eps: float) -> np.ndarray:
    """``sqrt(mean(x**2) + eps)`` over the last axis, summed in float64, returned in x's dtype: (..., 1)."""
    mean_square = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)  # (..., 1) float64
    return np.sqrt(mean_square + eps).astype(x.dtype)  # (..., 1)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of RoPE's angles ``pos * theta**(-2i/head_dim)``, i = 0 .. head_dim/2 - 1.

    Su et al. 2021 (RoFormer), eq. 15. positions (T,) int -> cos, sin each (T, head_dim // 2) float32.
    Angles are computed in float64 and then rounded, so long positions stay accurate.
    """
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (head_dim/2,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (x[i], x[i + head_dim/2]) by the RoPE angle: the "rotate-half" (GPT-NeoX) layout.

    Grok-1 (model.py, ``RotaryEmbedding``) and llama.cpp (LLAMA_ROPE_TYPE_NEOX for grok) both use this layout,
    not interleaved pairs. x (B, T, n_heads, head_dim); cos, sin (T, head_dim/2) -> (B, T, n_heads, head_dim).
    To undo the rotation (the backward pass), pass ``-sin``.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, T, H, head_dim/2) each
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, head_dim/2): broadcast over heads
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B, T, H, head_dim)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Hendrycks & Gimpel 2016, eq. in section 2; JAX's ``jax.nn.gelu`` default (approximate=True), used by Grok-1.
    """
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def softcap(s: np.ndarray, cap: float) -> np.ndarray:
    """Soft-cap logits to (-cap, cap): ``cap * tanh(s / cap)``; near-identity for |s| << cap. cap 0 = off.

    Grok-1 model.py (``attn_logits = 30 * tanh(attn_logits / 30)``); llama.cpp llama-graph.cpp (LLM_ARCH_GROK).
    """
    if cap <= 0:
        return s
    return cap * np.tanh(s / cap)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (subtracts the max first). Same shape as x."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)
