"""8-bit and 4-bit weights: GGML's Q8_0 and Q4_0 block formats, and Grok-1's own int8 scheme.

A block format cuts each row of a weight into blocks of 32 numbers along its last axis (the input dimension) and
stores each block as one fp16 scale ``d`` plus 32 small integers ``q``; a weight is read back as ``q * d``.

    Q8_0: 34 bytes per block (8.5 bits/weight)    d = amax / 127       q = round_half_away(x / d)  in [-127, 127]
    Q4_0: 18 bytes per block (4.5 bits/weight)    d = max / -8         q = min(15, trunc(x / d + 8.5)) in [0, 15],
          max = the signed value of largest magnitude (the first one on ties); a weight is (q - 8) * d.

Q4_0 packs two 4-bit values per byte: byte j (j = 0..15) holds q[j] in its low nibble and q[j + 16] in its high
nibble. The inverse scale 1/d is taken from the float32 d, before d is rounded to fp16 for storage.
Sources: ggml/src/ggml-common.h (block_q8_0, block_q4_0), ggml/src/ggml-quants.c (quantize_row_q8_0_ref,
quantize_row_q4_0_ref, dequantize_row_*); the functions here are bit-exact with gguf-py's gguf/quants.py.

Grok-1 itself was released with int8 weights and one bf16 scale per output column (``QuantizedWeight8bit`` in
xai-org/grok-1 model.py): :func:`quantize_int8_columns` does that, for comparison with the block formats.

This module is NumPy only and imports nothing from ``minigrok.kernels``. Its products (:func:`matmul_reference`,
:func:`dequantize_rows`, :func:`quantized_linear`) are the readable twins of the Numba kernels in
minigrok/kernels/quant_kernels.py, whose ``CompiledQuantizedTensor`` runs the same :func:`quantized_linear` with
compiled pieces; minigrok/engine.py decides which one a run uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 32  # weights per block, for both formats (ggml-common.h: QK8_0 = QK4_0 = 32)
Q8_0, Q4_0 = "q8_0", "q4_0"
BLOCK_BYTES = {Q8_0: 2 + QK, Q4_0: 2 + QK // 2}  # fp16 d + the quants
_FP16_MAX = float(np.finfo(np.float16).max)  # 65504: a block scale beyond this becomes inf in fp16
# An activation block whose scale is below the smallest normal float32 is treated as zeros (1/d may overflow).
_FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def _blocks(x: np.ndarray, qtype: str, name: str) -> np.ndarray:
    """x (..., K) as float32 blocks (n_blocks, 32), or ValueError naming the tensor if K is not a multiple of 32."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] % QK != 0:
        last = x.shape[-1] if x.ndim else "none (a scalar)"
        raise ValueError(
            f"tensor {name!r} of shape {x.shape} cannot be stored as {qtype.upper()}: its last axis ({last}) must be "
            f"a multiple of the {QK}-weight block size; keep this tensor in f16 or f32"
        )
    return x.astype(np.float32, copy=False).reshape(-1, QK)  # (n_blocks, 32)


def _byte_shape(shape: tuple[int, ...], qtype: str) -> tuple[int, ...]:
    """(..., K) values -> (..., K // 32 * bytes per block) bytes, gguf-py's layout of quantized tensor data."""
    return (*shape[:-1], shape[-1] // QK * BLOCK_BYTES[qtype])


def _value_shape(shape: tuple[int, ...], qtype: str) -> tuple[int, ...]:
    """(..., n_blocks * bytes per block) bytes -> (..., n_blocks * 32) values."""
    return (*shape[:-1], shape[-1] // BLOCK_BYTES[qtype] * QK)


def _fp16_bytes(d: np.ndarray) -> np.ndarray:
    """Block scales (n_blocks, 1) float32 -> their fp16 encoding, (n_blocks, 2) uint8 (little-endian).
    A scale beyond 65504 becomes inf, as in gguf-py (QuantizedTensor.from_float refuses such tensors)."""
    with np.errstate(over="ignore", under="ignore"):  # scales below fp16's range round to 0 or a subnormal
        return d.astype("<f2").view(np.uint8)


def _inverse(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1/d with 0 where d == 0, mask of blocks where 1/d overflows to inf).

    1/d overflows when |d| < 2**-128 (the largest |value| of the block below ~4e-37 for Q8_0, ~2e-38 for Q4_0).
    The C reference then casts
    inf/NaN to an integer (undefined behaviour); gguf-py's NumPy cast gives 0 on x86, so the caller writes 0
    there. Such a scale rounds to 0 in fp16, so the block reads back as zeros either way.
    """
    with np.errstate(divide="ignore", over="ignore"):
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / d)  # (n_blocks, 1)
    return inv_d, np.isinf(inv_d)


def round_half_away_from_zero(v: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves go away from zero (2.5 -> 3, -2.5 -> -3). ``np.round`` rounds halves to even.

    Computed as floor(|v|) + floor(2 (|v| - floor(|v|))), which is exact in float32 (gguf-py ``np_roundf``);
    the tempting ``floor(|v| + 0.5)`` is wrong for 0.49999997, where |v| + 0.5 rounds up to 1.0.
    """
    a = np.abs(v)
    whole = np.floor(a)
    return np.sign(v) * (whole + np.floor(2 * (a - whole)))


# ---- Q8_0 --------------------------------------------------------------------------------------------------------
def quantize_q8_0(x: np.ndarray, name: str = "array") -> np.ndarray:
    """Quantize to Q8_0 blocks, bit-exact with ``gguf.quants.quantize(x, Q8_0)`` and ggml's quantize_row_q8_0_ref.

    x (..., K) float, K a multiple of 32 (else ValueError naming ``name``) -> (..., K // 32 * 34) uint8:
    per block, the fp16 scale d = amax / 127, then 32 int8 q = round_half_away_from_zero(x / d).
    """
    blocks = _blocks(x, Q8_0, name)  # (n, 32)
    # Underflow is expected and harmless (tiny scales, tiny values rounding to q = 0), and inf * 0 in overflowing
    # blocks is replaced below: set NumPy's error state here, so the result never depends on the caller's.
    with np.errstate(under="ignore", invalid="ignore"):
        d = np.max(np.abs(blocks), axis=1, keepdims=True) / np.float32(127)  # (n, 1) float32
        inv_d, overflow = _inverse(d)
        q = round_half_away_from_zero(blocks * inv_d)  # (n, 32) in [-127, 127]
    q = np.where(overflow, 0, q).astype(np.int8)  # (n, 32)
    out = np.concatenate([_fp16_bytes(d), q.view(np.uint8)], axis=1)  # (n, 34)
    return out.reshape(_byte_shape(np.shape(x), Q8_0))


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0 bytes (..., n_blocks * 34) uint8 -> float32 (..., n_blocks * 32): q * d."""
    b = np.asarray(blocks, dtype=np.uint8).reshape(-1, BLOCK_BYTES[Q8_0])  # (n, 34)
    d = b[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1)
    q = b[:, 2:].view(np.int8).astype(np.float32)  # (n, 32)
    return (q * d).reshape(_value_shape(np.shape(blocks), Q8_0))


# ---- Q4_0 --------------------------------------------------------------------------------------------------------
def quantize_q4_0(x: np.ndarray, name: str = "array") -> np.ndarray:
    """Quantize to Q4_0 blocks, bit-exact with ``gguf.quants.quantize(x, Q4_0)`` and ggml's quantize_row_q4_0_ref.

    x (..., K) float, K a multiple of 32 (else ValueError naming ``name``) -> (..., K // 32 * 18) uint8:
    per block, max = the signed value of largest |x| (first on ties), d = max / -8, q = min(15, trunc(x / d + 8.5)),
    so max itself maps to q = 0, i.e. -8 * d. The sign trick buys one extra level: -8..7 with max at -8.
    Bytes: the fp16 d, then 16 bytes with q[j] in the low and q[j + 16] in the high nibble of byte j.
    """
    blocks = _blocks(x, Q4_0, name)  # (n, 32)
    first_largest = np.argmax(np.abs(blocks), axis=1)[:, None]  # (n, 1): argmax returns the first on ties
    signed_max = np.take_along_axis(blocks, first_largest, axis=1)  # (n, 1)
    with np.errstate(under="ignore", invalid="ignore"):  # as in quantize_q8_0
        d = signed_max / np.float32(-8)  # (n, 1) float32
        inv_d, overflow = _inverse(d)
        q = np.minimum(15, np.trunc(blocks * inv_d + np.float32(8.5)))  # (n, 32) in [0, 15]
    q = np.where(overflow, 0, q).astype(np.uint8)  # (n, 32)
    packed = q[:, :16] | (q[:, 16:] << 4)  # (n, 16): byte j = q[j] (low nibble) | q[j + 16] (high nibble)
    out = np.concatenate([_fp16_bytes(d), packed], axis=1)  # (n, 18)
    return out.reshape(_byte_shape(np.shape(x), Q4_0))


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 bytes (..., n_blocks * 18) uint8 -> float32 (..., n_blocks * 32): (q - 8) * d."""
    b = np.asarray(blocks, dtype=np.uint8).reshape(-1, BLOCK_BYTES[Q4_0])  # (n, 18)
    d = b[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1)
    packed = b[:, 2:]  # (n, 16)
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8) - 8  # (n, 32) in [-8, 7]
    return (q.astype(np.float32) * d).reshape(_value_shape(np.shape(blocks), Q4_0))


_QUANTIZE = {Q8_0: quantize_q8_0, Q4_0: quantize_q4_0}
_DEQUANTIZE = {Q8_0: dequantize_q8_0, Q4_0: dequantize_q4_0}


def _check_type(qtype: str) -> None:
    if qtype not in _QUANTIZE:
        raise ValueError(f"unknown quantization type {qtype!r}; minigrok knows {Q8_0!r} and {Q4_0!r}")


def quantize(x: np.ndarray, qtype: str, name: str = "array") -> np.ndarray:
    """GGUF bytes of ``x`` in ``qtype`` ("q8_0" or "q4_0"): (..., K) -> (..., K // 32 * BLOCK_BYTES[qtype]) uint8."""
    _check_type(qtype)
    return _QUANTIZE[qtype](x, name)


def dequantize(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """Float32 values of GGUF ``qtype`` bytes: (..., n_blocks * BLOCK_BYTES[qtype]) -> (..., n_blocks * 32)."""
    _check_type(qtype)
    return _DEQUANTIZE[qtype](blocks)


# ---- a quantized weight in memory --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A Q8_0 or Q4_0 weight, its blocks split into scales and quants so that kernels can stream each row.

    Attributes:
        type: "q8_0" or "q4_0".
        shape: the NumPy shape of the float weight, e.g. (num_experts, d_ff, d_model); last axis a multiple of 32.
        d: (*shape[:-1], shape[-1] // 32) float16, the block scales as the file holds them (NumPy widens them
            exactly to float32 in any product with float32).
        qs: q8_0: (*shape[:-1], shape[-1]) int8, the quants in order; q4_0: (*shape[:-1], shape[-1] // 2) uint8,
            16 bytes per block in GGUF's nibble order (byte j: q[j] low, q[j + 16] high).

    The same bits as the file's blocks (:meth:`to_blocks` gives them back exactly), arranged as llama.cpp's CPU
    backend also re-arranges blocks for speed (ggml-cpu "repack"): 8.5 (Q8_0) or 4.5 (Q4_0) bits per weight in
    memory, as in the file. (Numba has no float16: the kernels read the scales' bits, kernels/f16.py.)
    ``w[e]`` selects along the leading axes (e.g. one expert) without copying; the last axis cannot be indexed.
    """

    type: str
    shape: tuple[int, ...]
    d: np.ndarray
    qs: np.ndarray

    @classmethod
    def from_float(cls, x: np.ndarray, qtype: str, name: str = "array") -> QuantizedTensor:
        """Quantize a float array. Raises ValueError naming ``name`` if its last axis is not a multiple of 32,
        or if it is not finite or too large for an fp16 block scale."""
        x = np.asarray(x, dtype=np.float32)
        limit = _FP16_MAX * (127 if qtype == Q8_0 else 8)
        if x.size and not np.all(np.abs(x) <= limit):  # also catches NaN
            raise ValueError(
                f"tensor {name!r} has values that are not finite or beyond ±{limit:.3g}, whose {qtype.upper()} "
                "block scale would overflow fp16; keep this tensor in f32"
            )
        return cls.from_blocks(qtype, x.shape, quantize(x, qtype, name))

    @classmethod
    def from_blocks(cls, qtype: str, shape: tuple[int, ...], blocks: np.ndarray) -> QuantizedTensor:
        """From GGUF bytes (*shape[:-1], shape[-1] // 32 * BLOCK_BYTES[qtype]) uint8 (e.g. GGUFReader tensor data).
        Copies. Raises ValueError if the byte count does not match the shape."""
        _check_type(qtype)
        shape = tuple(int(n) for n in shape)
        blocks = np.asarray(blocks)
        n_bytes = int(np.prod(shape)) // QK * BLOCK_BYTES[qtype]
        if not shape or shape[-1] % QK or blocks.dtype != np.uint8 or blocks.size != n_bytes:
            raise ValueError(
                f"{blocks.dtype} data of shape {blocks.shape} is not {qtype.upper()} blocks of a {shape} tensor "
                f"(needs a last axis that is a multiple of {QK} and {BLOCK_BYTES[qtype]} uint8 bytes per block)"
            )
        # One block = an fp16 scale and 32 int8 quants (Q8_0) or 16 bytes of nibbles (Q4_0): a NumPy record, so
        # that the quants are copied out as whole (32,) or (16,) rows (~8x faster than a reshape of a byte view).
        record = np.dtype([("d", "<f2"), ("qs", np.int8 if qtype == Q8_0 else np.uint8, (BLOCK_BYTES[qtype] - 2,))])
        b = np.ascontiguousarray(blocks).reshape(*shape[:-1], -1).view(record)  # (..., n_blocks) records
        d = b["d"].astype(np.float16)  # (..., n_blocks): the file's fp16 scales, a native-order copy
        qs = np.ascontiguousarray(b["qs"]).reshape(*shape[:-1], -1)  # (..., K) int8 or (..., K // 2) uint8: a copy
        return cls(qtype, shape, d, qs)

    def to_blocks(self) -> np.ndarray:
        """The GGUF bytes: (*shape[:-1], shape[-1] // 32 * BLOCK_BYTES[type]) uint8."""
        lead, n_blocks = self.shape[:-1], self.shape[-1] // QK
        out = np.empty((*lead, n_blocks, BLOCK_BYTES[self.type]), np.uint8)  # (..., n_blocks, bytes)
        out[..., :2] = self.d.astype("<f2")[..., None].view(np.uint8)  # (..., n_blocks, 2): the fp16 scales
        out[..., 2:] = self.qs.view(np.uint8).reshape(*lead, n_blocks, -1)
        return out.reshape(*lead, -1)

    def dequantize(self) -> np.ndarray:
        """The float32 weight, shape ``self.shape`` (the whole tensor: for tests and conversions, not the hot path)."""
        return dequantize(self.to_blocks(), self.type)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the same as in the file (fp16 scales, quants)."""
        return self.d.nbytes + self.qs.nbytes

    @property
    def file_nbytes(self) -> int:
        """Bytes in a GGUF file (scales as fp16)."""
        return self.d.size * BLOCK_BYTES[self.type]

    def __getitem__(self, index) -> QuantizedTensor:
        """Select along the leading axes: ``w[e]`` is expert e of a stacked (num_experts, out, in) weight (a view)."""
        parts = index if isinstance(index, tuple) else (index,)
        if any(p is Ellipsis or p is None for p in parts) or len(parts) >= self.ndim:
            raise IndexError(
                f"a {self.type.upper()} tensor of shape {self.shape} can be indexed on its {self.ndim - 1} leading "
                "axes only (its last axis is split into blocks); dequantize() it for anything else"
            )
        d, qs = self.d[index], self.qs[index]
        return type(self)(self.type, (*d.shape[:-1], self.shape[-1]), d, qs)  # a subclass stays itself

    def linear(self, x: np.ndarray) -> np.ndarray:
        """``x @ self.T`` over any leading axes of x: :func:`quantized_linear` with the NumPy products.
        (kernels.quant_kernels.CompiledQuantizedTensor overrides this with the Numba ones.)"""
        return quantized_linear(x, self)

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.type!r}, shape={self.shape})"


# ---- products with quantized weights -----------------------------------------------------------------------------
def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 rule applied to activations, scale kept in float32: x (N, K) -> (q (N, K) int8, d (N, K // 32) float32).

    llama.cpp multiplies Q8_0 and Q4_0 weights with activations quantized to Q8_0 (ggml-cpu.c, type_traits_cpu:
    ``vec_dot_type = GGML_TYPE_Q8_0``), so the dot products are integer. It rounds that scale to fp16; we do not.
    """
    N, K = x.shape
    blocks = x.astype(np.float32).reshape(N, K // QK, QK)  # (N, nb, 32)
    d = np.max(np.abs(blocks), axis=2) / np.float32(127)  # (N, nb)
    inv_d = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d >= _FLT_MIN)  # (N, nb); tinier blocks -> 0
    q = round_half_away_from_zero(blocks * inv_d[..., None]).astype(np.int8)  # (N, nb, 32)
    return q.reshape(N, K), d


def matmul_reference(x: np.ndarray, w: QuantizedTensor) -> np.ndarray:
    """What the Numba kernel computes, written plainly: ``x @ w.T`` for x (N, K) float and w (R, K) -> (N, R) float32.

    The activations are quantized to 8 bits per 32-block (:func:`quantize_activations`); each block's dot product
    of int8 activations with the weight's integers is exact in int32 (32 * 127 * 128 < 2**31), then scaled by
    both blocks' scales and summed in float32 (llama.cpp ggml_vec_dot_q8_0_q8_0 / ggml_vec_dot_q4_0_q8_0).
    """
    R, K = w.shape
    xq, dx = quantize_activations(np.asarray(x, dtype=np.float32).reshape(-1, K))  # (N, K), (N, nb)
    if w.type == Q8_0:
        wq = w.qs.astype(np.int32)  # (R, K)
    else:
        packed = w.qs.reshape(R, K // QK, QK // 2)  # (R, nb, 16)
        wq = np.concatenate([packed & 0x0F, packed >> 4], axis=2).astype(np.int32).reshape(R, K) - 8  # (R, K)
    block_dots = np.einsum(
        "nbj,rbj->nrb", xq.reshape(-1, K // QK, QK).astype(np.int32), wq.reshape(R, K // QK, QK)
    )  # (N, R, nb) int32
    scales = dx[:, None, :] * w.d[None, :, :]  # (N, R, nb) float32
    return np.sum(block_dots.astype(np.float32) * scales, axis=2, dtype=np.float32)  # (N, R)


def dequantize_rows(w: QuantizedTensor, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """Rows r0..r1-1 of a 2-D quantized weight as float32, written into ``out`` (at least r1 - r0 rows of K);
    returns the view ``out[: r1 - r0]``. Q8_0: q * d; Q4_0: (q - 8) * d, low nibbles first in each block."""
    R, K = w.shape
    if not 0 <= r0 <= r1 <= R or out.shape[0] < r1 - r0 or out.shape[1] != K:
        raise ValueError(
            f"need 0 <= r0 <= r1 <= {R} and out of at least r1-r0 rows of {K}, got {r0}, {r1}, {out.shape}"
        )
    n = r1 - r0
    if w.type == Q8_0:
        q = w.qs[r0:r1].astype(np.float32).reshape(n, K // QK, QK)  # (n, nb, 32)
    else:
        packed = w.qs[r0:r1].reshape(n, K // QK, QK // 2)  # (n, nb, 16)
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=2).astype(np.float32) - 8  # (n, nb, 32)
    out[:n] = (q * w.d[r0:r1, :, None]).reshape(n, K)  # (n, K)
    return out[:n]


BLAS_MIN_TOKENS = 32  # from this many rows of x on, dequantize tiles of w and use BLAS (ggml-blas: min_batch 32)
_TILE_FLOATS = 1 << 18  # 1 MB of float32 per dequantized tile: the L2 cache of one core here


def quantized_linear(
    x: np.ndarray,
    w: QuantizedTensor,
    matmul=matmul_reference,
    dequantize_rows=dequantize_rows,
    blas_min_tokens: float | None = None,
):
    """``x @ w.T`` for a quantized weight w (out, in), over any leading axes of x: (..., in) -> (..., out) float32.

    Few tokens (decode, fewer than ``blas_min_tokens`` rows, by default BLAS_MIN_TOKENS): ``matmul``, the integer
    product on the weight's quantized bytes, as llama.cpp does; decoding is memory-bound, so fewer bytes is
    faster. Many tokens (prefill, eval): compute-bound, where float BLAS beats a plain integer loop, so rows of w
    are dequantized one small tile at a time (``dequantize_rows``) and multiplied with BLAS (as llama.cpp's BLAS
    backend does for batches, ggml-blas.cpp). The two paths differ only by the 8-bit rounding of x in the first
    (each value within 1/254 of its block's largest |x|). ``matmul`` and ``dequantize_rows`` default to the NumPy
    functions above; the Numba kernels of minigrok/kernels/quant_kernels.py take the same arguments, and where
    their integer kernel beats BLAS at any batch (the VNNI one, kernels/vnni.py) they pass ``blas_min_tokens=inf``,
    as llama.cpp's CPU backend does without BLAS. Raises ValueError if w is not 2-D or the last axis of x is not
    w's input width.
    """
    if w.ndim != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"cannot multiply x of shape {x.shape} by a quantized weight of shape {w.shape} (out, in)")
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)  # (N, in)
    R, K = w.shape
    if x2.shape[0] < (BLAS_MIN_TOKENS if blas_min_tokens is None else blas_min_tokens):
        y = matmul(x2, w)  # (N, out)
    else:
        y = np.empty((x2.shape[0], R), np.float32)  # (N, out)
        tile_rows = max(1, _TILE_FLOATS // K)
        tile = np.empty((min(tile_rows, R), K), np.float32)  # (tile_rows, in)
        for r0 in range(0, R, tile_rows):
            rows = dequantize_rows(w, r0, min(r0 + tile_rows, R), tile)  # (rows, in): a view of tile
            y[:, r0 : r0 + len(rows)] = x2 @ rows.T  # (N, rows)
    return y.reshape(*x.shape[:-1], R)


# ---- which tensors are quantized ---------------------------------------------------------------------------------
def storage_type(name: str, ndim: int, target: str) -> str:
    """The type a tensor is stored as when a model is converted to ``target`` ("f32", "f16", "q8_0", "q4_0").

    - 1-D norm weights: always f32 (tiny; ggml's norm ops take f32; llama.cpp's quantizer skips 1-D tensors).
    - the router ``ffn_gate_inp``: always f32. Its 8 x d_model numbers are a rounding error in size, and routing
      is a discrete top-k choice that small errors can flip (llama.cpp src/llama-quant.cpp also keeps it f32).
    - the token embedding: f16 in q8_0/q4_0 files, else the target. It is both the input lookup and (tied) the
      unembedding, whose errors go straight into the logits; llama.cpp gives this tensor more bits too (Q6_K or
      Q8_0 in a Q4_0 file: llama-quant.cpp, llama_tensor_get_type). minigrok gathers rows from it, so it is kept
      as floats in memory.
    - everything else (attn_q/k/v/output, ffn_gate/up/down_exps): the target.
    """
    if target not in ("f32", "f16", Q8_0, Q4_0):
        raise ValueError(f"unknown storage type {target!r}; choose f32, f16, q8_0 or q4_0")
    if ndim < 2 or name.endswith("ffn_gate_inp.weight"):
        return "f32"
    if name == "token_embd.weight" and target in (Q8_0, Q4_0):
        return "f16"
    return target


# ---- Grok-1's scheme, for the lesson -----------------------------------------------------------------------------
def _bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even, as ggml_compute_fp32_to_bf16) and widen back."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def quantize_int8_columns(w: np.ndarray, n_groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Grok-1's released format: int8 weights and one bf16 scale per output column (per group of inputs).

    w (out, in) float in minigrok's layout (Grok-1 stores the transpose, (in, out), so its "columns" are our rows).
    n_groups splits the input axis into equal groups with a scale each (Grok-1: 8 for the attention output and
    expert down projections, as read by llama.cpp's unmerged Grok converter; 1 elsewhere).
    Returns q (out, in) int8 and scales (out, n_groups) float32 holding bf16 values; w ≈ q * scale.
    xAI did not publish its quantizer: the scale is amax / 127 and rounding is half away from zero, as in Q8_0.
    Raises ValueError if ``in`` is not a multiple of n_groups.
    """
    w = np.asarray(w, dtype=np.float32)
    out_dim, in_dim = w.shape
    if n_groups < 1 or in_dim % n_groups:
        raise ValueError(f"cannot split an input axis of {in_dim} into {n_groups} equal groups")
    groups = w.reshape(out_dim, n_groups, in_dim // n_groups)  # (out, n_groups, in / n_groups)
    scales = _bf16(np.max(np.abs(groups), axis=2) / np.float32(127))  # (out, n_groups)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.clip(round_half_away_from_zero(groups * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(out_dim, in_dim), scales


def dequantize_int8_columns(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """q (out, in) int8, scales (out, n_groups) -> float32 (out, in): q * scale of its group."""
    out_dim, in_dim = q.shape
    groups = q.reshape(out_dim, scales.shape[1], -1).astype(np.float32)  # (out, n_groups, in / n_groups)
    return (groups * scales[..., None]).reshape(out_dim, in_dim)
