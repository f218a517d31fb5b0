"""Q8_0 and Q4_0 products with the VNNI dot-product instruction: the fast path on CPUs that have it.

``vpdpbusd`` (AVX-512 VNNI, or AVX-VNNI on recent laptops) multiplies 32 unsigned bytes by 32 signed bytes and
adds each group of 4 products into one of 8 int32 lanes: one instruction per 32-weight block of Q8_0 or Q4_0.
LLVM does not emit it for any loop we wrote (benchmarks/README.md), so this module writes the inner loop over a
row's blocks in LLVM IR with ``numba.extending.intrinsic``. Everything around it stays Numba Python, and the
twins are the same as for the portable kernels of quant_kernels.py: ``quant.matmul_reference`` (the readable
NumPy product) and tests/test_quant.py, which ties every kernel to it.

The arithmetic, per weight row r and token n, with the activation quantized per 32-block as llama.cpp's
``quantize_row_q8_0`` does (quant.quantize_activations: int8 x, float32 scale dx)::

    y[n, r] = sum over blocks b of  d[r, b] * dx[n, b] * sum_j w[r, 32b + j] * x[n, 32b + j]

``vpdpbusd`` needs one unsigned operand, so the weights are made unsigned by an offset: Q8_0's int8 w becomes
w + 128 (flip the sign bit), Q4_0's nibble q (w = q - 8) is already unsigned. Then
``sum_j w_j x_j = sum_j u_j x_j - offset * sum_j x_j``, and the last term is the same for every row, so it is
computed once per token and block (``cx = offset * dx * sum_j x_j``) and subtracted as ``sum_b d[r, b] cx[b]``.
This is ggml's Q8_1 idea (the block sum stored with the activation: ggml-quants.c ``quantize_row_q8_1``, used
with Q4_1's unsigned quants) and the same instruction as ggml-cpu's AVX-512 VNNI dot products (``mul_sum_us8_pairs``
in ggml/src/ggml-cpu/arch/x86/quants.c).

Each row's loop keeps 8 float32 lanes per token: the int32 lanes of one block are converted to float, multiplied
by that block's scale d * dx and added (``fma``); one horizontal sum per row at the end. Up to TOKENS_PER_ROW
tokens share each load and unpack of a weight block (a prefill's many tokens).

Only imported where the CPU has the instruction (``kernels.INTEGER_DOT == "vnni"``): on any other CPU LLVM
cannot compile it. Results agree with the portable kernels to float32 summation order.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import float32, int32, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..quant import QK
from .blocks import FASTMATH, n_chunks, product_fits, quantize_activations

TOKENS_PER_ROW = 4  # tokens that share each weight block's load (more: fewer loads, more registers)

_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_BYTES, _LANES, _FLOATS = ir.VectorType(_I8, 32), ir.VectorType(_I32, 8), ir.VectorType(_F32, 8)


def _pointer(context, builder, array_type, array, offset, element):
    """An LLVM pointer to element ``offset`` of a C-contiguous Numba array, as a pointer to ``element``."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [offset]), element.as_pointer())


def _splat(builder, value):
    """An (8,) float vector with every lane = value."""
    one = builder.insert_element(ir.Constant(_FLOATS, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_FLOATS, ir.Undefined), ir.Constant(_LANES, [0] * 8))


def _unsigned_block(builder, weights, b, q4_0):
    """The 32 unsigned weights u of block b, in the activation's order: Q8_0 w + 128; Q4_0 the nibbles (low
    nibbles are weights 0-15 of the block, high ones 16-31: GGUF's order)."""
    if not q4_0:
        start = builder.mul(b, ir.Constant(b.type, QK))
        w = builder.load(builder.bitcast(builder.gep(weights, [start]), _BYTES.as_pointer()), align=1)  # (32,) int8
        return builder.xor(w, ir.Constant(_BYTES, [0x80] * QK))  # (32,) w + 128 as unsigned bytes
    half = ir.VectorType(_I8, QK // 2)
    start = builder.mul(b, ir.Constant(b.type, QK // 2))
    packed = builder.load(builder.bitcast(builder.gep(weights, [start]), half.as_pointer()), align=1)  # (16,) bytes
    low = builder.and_(packed, ir.Constant(half, [0x0F] * 16))  # (16,) weights 0..15
    high = builder.lshr(packed, ir.Constant(half, [4] * 16))  # (16,) weights 16..31
    return builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, QK), list(range(QK))))  # (32,)


def _row_dot(n_tokens: int):
    """An intrinsic: one weight row against n_tokens quantized activations, returning n_tokens float32 sums.

    Arguments (all offsets in elements of C-contiguous arrays): qs and w_off (the row's first quant byte; int8
    quants are Q8_0, uint8 nibbles Q4_0), xq
    (N, K) int8 and x_off (the first token's first value), dx and cx (N, K // 32) float32 with s_off (the first
    token's first block), d and d_off (the row's first block scale), n_blocks = K // 32. Token t of the group is
    row t after the first: x_off + t K, s_off + t n_blocks. Returns sum_b d[b] (dx[t, b] (u . x)[t, b] - cx[t, b]).
    """

    @intrinsic
    def row_dot(typingctx, qs, w_off, xq, x_off, dx, cx, s_off, d, d_off, n_blocks):
        result = types.UniTuple(types.float32, n_tokens)
        sig = result(qs, types.intp, xq, types.intp, dx, cx, types.intp, d, types.intp, types.intp)
        q4_0 = qs.dtype == types.uint8  # chosen as Numba compiles the caller, from the quants' dtype

        def codegen(context, builder, signature, args):
            qs_v, w_off_v, xq_v, x_off_v, dx_v, cx_v, s_off_v, d_v, d_off_v, nb = args
            a = signature.args
            weights = _pointer(context, builder, a[0], qs_v, w_off_v, _I8)
            x = _pointer(context, builder, a[2], xq_v, x_off_v, _I8)
            dxp = _pointer(context, builder, a[4], dx_v, s_off_v, _F32)
            cxp = _pointer(context, builder, a[5], cx_v, s_off_v, _F32)
            dp = _pointer(context, builder, a[7], d_v, d_off_v, ir.IntType(16))  # fp16 scales, as their bits
            dpbusd = builder.module.declare_intrinsic(
                "llvm.x86.avx512.vpdpbusd.256", fnty=ir.FunctionType(_LANES, [_LANES, _LANES, _LANES])
            )
            fma = builder.module.declare_intrinsic(
                "llvm.fma.v8f32", fnty=ir.FunctionType(_FLOATS, [_FLOATS, _FLOATS, _FLOATS])
            )
            reduce = builder.module.declare_intrinsic(
                "llvm.vector.reduce.fadd.v8f32", fnty=ir.FunctionType(_F32, [_F32, _FLOATS])
            )
            # per token: 8 float lanes of sum_b d dx (u . x), and the offset term sum_b d cx (promoted to registers)
            acc = [cgutils.alloca_once_value(builder, ir.Constant(_FLOATS, None)) for _ in range(n_tokens)]
            off = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(n_tokens)]
            k = builder.mul(nb, ir.Constant(nb.type, QK))  # K, values per token
            with cgutils.for_range(builder, nb) as loop:
                b = loop.index
                u = builder.bitcast(_unsigned_block(builder, weights, b, q4_0), _LANES)  # 32 bytes as (8,) int32
                d_b = builder.fpext(builder.bitcast(builder.load(builder.gep(dp, [b])), ir.HalfType()), _F32)
                for t in range(n_tokens):
                    row = builder.mul(k, ir.Constant(k.type, t))
                    at = builder.add(row, builder.mul(b, ir.Constant(b.type, QK)))
                    xb = builder.load(builder.bitcast(builder.gep(x, [at]), _LANES.as_pointer()), align=1)
                    lanes = builder.call(dpbusd, [ir.Constant(_LANES, None), u, xb])  # (8,) int32 partial sums
                    s = builder.add(builder.mul(nb, ir.Constant(nb.type, t)), b)  # token t's block b
                    scale = builder.fmul(d_b, builder.load(builder.gep(dxp, [s])))  # d[b] dx[t, b]
                    new = builder.call(
                        fma, [builder.sitofp(lanes, _FLOATS), _splat(builder, scale), builder.load(acc[t])]
                    )
                    builder.store(new, acc[t])
                    c = builder.fmul(d_b, builder.load(builder.gep(cxp, [s])), flags=("contract",))
                    builder.store(builder.fadd(builder.load(off[t]), c, flags=("contract",)), off[t])
            sums = []
            for t in range(n_tokens):
                total = builder.call(reduce, [ir.Constant(_F32, 0.0), builder.load(acc[t])], fastmath=("reassoc",))
                sums.append(builder.fsub(total, builder.load(off[t])))
            return context.make_tuple(builder, signature.return_type, sums)

        return sig, codegen

    return row_dot


_dot_1, _dot_n = _row_dot(1), _row_dot(TOKENS_PER_ROW)


@njit(cache=True, fastmath=FASTMATH)
def _offset_terms(xq, dx, offset):
    """cx (N, K // 32) float32 = offset * dx * (sum of the block's int8 activations): the term that undoes the
    weights' unsigned offset."""
    N, n_blocks = dx.shape
    cx = np.empty((N, n_blocks), np.float32)
    for n in range(N):
        for b in range(n_blocks):
            s = int32(0)
            for j in range(QK):
                s += int32(xq[n, b * QK + j])
            cx[n, b] = float32(offset) * dx[n, b] * float32(s)
    return cx


@njit(cache=True, fastmath=FASTMATH)
def _rows(xq, dx, cx, qs, d, out, r0, r1):
    """out[:, r0:r1] for rows r0..r1-1 of a Q8_0 (int8 qs) or Q4_0 (uint8 qs) weight, TOKENS_PER_ROW tokens at a
    time; a row's quants start at r * qs.shape[1] (K bytes for Q8_0, K / 2 for Q4_0)."""
    N, K = xq.shape
    nb, row_bytes = K // QK, qs.shape[1]
    for r in range(r0, r1):
        n = 0
        while n + TOKENS_PER_ROW <= N:
            sums = _dot_n(qs, r * row_bytes, xq, n * K, dx, cx, n * nb, d, r * nb, nb)
            for t in range(TOKENS_PER_ROW):
                out[n + t, r] = sums[t]
            n += TOKENS_PER_ROW
        for m in range(n, N):
            out[m, r] = _dot_1(qs, r * row_bytes, xq, m * K, dx, cx, m * nb, d, r * nb, nb)[0]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def _product(x, qs, d, out, min_weights, offset):
    """The body of both kernels below, once their shapes are checked: offset is the weights' unsigned offset."""
    N, K = x.shape
    R = qs.shape[0]
    xq, dx = quantize_activations(x)  # (N, K) int8, (N, K // 32)
    cx = _offset_terms(xq, dx, offset)  # (N, K // 32)
    chunks = n_chunks(R, K * N, min_weights)
    if chunks == 1:
        _rows(xq, dx, cx, qs, d, out, 0, R)
    else:
        for c in prange(chunks):
            _rows(xq, dx, cx, qs, d, out, c * R // chunks, (c + 1) * R // chunks)


@njit("void(float32[:, ::1], int8[:, ::1], uint16[:, ::1], float32[:, ::1], int64)", cache=True)
def q8_0_matmul(x, qs, d, out, min_weights):
    """out (N, R) = x (N, K) @ W.T for a Q8_0 weight W (R, K) given as qs (R, K) int8 and d (R, K // 32) uint16
    (fp16 bits); the same arguments, checks and thread split as quant_kernels.q8_0_matmul_loop."""
    if not product_fits(x, qs, d, out, x.shape[1]):
        raise ValueError("q8_0_matmul: shapes disagree; need x (N, K), qs (R, K), d (R, K/32), out (N, R), 32 | K")
    _product(x, qs, d, out, min_weights, 128)  # int8 w + 128: unsigned


@njit("void(float32[:, ::1], uint8[:, ::1], uint16[:, ::1], float32[:, ::1], int64)", cache=True)
def q4_0_matmul(x, qs, d, out, min_weights):
    """out (N, R) = x (N, K) @ W.T for a Q4_0 weight W (R, K) given as qs (R, K // 2) uint8 (GGUF nibble order)
    and d (R, K // 32) uint16 (fp16 bits); the same arguments, checks and thread split as
    quant_kernels.q4_0_matmul_loop."""
    if not product_fits(x, qs, d, out, x.shape[1] // 2):
        raise ValueError("q4_0_matmul: shapes disagree; need x (N, K), qs (R, K/2), d (R, K/32), out (N, R), 32 | K")
    _product(x, qs, d, out, min_weights, 8)  # the nibble q of w = q - 8 is unsigned
