"""IEEE half precision (F16) read in compiled code: ``f16_to_f32(bits)`` widens one float16, given as its uint16 bits.

Numba has no float16 type on the CPU, so an F16 array reaches a kernel as its bits (``a.view(np.uint16)``) and each
element is widened to float32 where it is used. Widening is exact: every float16 value (normal, subnormal, ±0, ±inf,
NaN) is a float32 value. The readable twin is NumPy's ``a.astype(np.float32)``; tests/test_decode_kernels.py checks
all 65536 bit patterns against it (bit for bit, but that F16C's conversion quiets a signaling NaN, as NumPy's does not).

Two ways, chosen once at import for the CPU Numba compiles for:

- ``_f16_to_f32_llvm``: LLVM's own conversion (``bitcast i16 to half``, ``fpext half to float``), written with
  ``numba.extending.intrinsic``. Inlined into a loop, LLVM vectorizes it to VCVTPH2PS (x86's F16C, 8 or 16 values
  per instruction) or to FCVTL (AArch64). Without such an instruction LLVM would call a helper from compiler-rt or
  libgcc (``__extendhfsf2``) that Numba's JIT may not find, so it is used only where the instruction exists.
- ``_f16_to_f32_bits``: the same result from integer bit operations (the layout of IEEE 754 binary16 and binary32:
  1 sign bit, then 5 and 8 exponent bits with biases 15 and 127, then 10 and 23 fraction bits), for other CPUs.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import float32, njit, types, uint32
from numba.core import config
from numba.extending import intrinsic


@intrinsic
def _f16_to_f32_llvm(typingctx, bits):
    """float32 of the float16 whose bits are ``bits`` (uint16): LLVM's fpext, VCVTPH2PS with F16C."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return float32(types.uint16), codegen


@intrinsic
def _as_float32(typingctx, bits):
    """The float32 whose bits are ``bits`` (uint32): a plain LLVM bitcast, on any CPU."""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return float32(types.uint32), codegen


_REBIAS = (127 - 15) << 23  # exponent bias 15 -> 127, in place in the binary32 bits
_TWO_TO_M24 = np.float32(2.0**-24)  # a binary16 subnormal is its fraction times 2^-24


@njit(inline="always")
def _f16_to_f32_bits(bits):
    """float32 of the float16 whose bits are ``bits`` (uint16), with integer operations (any CPU)."""
    h = uint32(bits)
    exponent = (h >> 10) & 0x1F
    if exponent == 0:  # zero or subnormal: fraction * 2^-24, exact in float32 (fraction < 2^10, product normal)
        v = float32(h & 0x3FF) * _TWO_TO_M24
        return -v if h & 0x8000 else v  # -0.0 for the bits of -0.0
    magnitude = (h & 0x7FFF) << 13  # exponent and fraction moved to binary32's places (10 -> 23 fraction bits)
    out = magnitude | 0x7F800000 if exponent == 0x1F else magnitude + _REBIAS  # inf/NaN (payload kept) or normal
    return _as_float32(uint32(((h & 0x8000) << 16) | out))


def has_f16_instructions(machine: str, cpu_name: str | None, features: str) -> bool:
    """Does the CPU Numba compiles for convert float16 in hardware (x86 F16C, every AArch64)? ``features`` are LLVM
    feature flags ("+avx,+f16c,...") as llvmlite's ``get_host_cpu_features().flatten()`` gives them; a cpu_name
    other than None/"host" (NUMBA_CPU_NAME, e.g. "generic" for portable caches) is trusted only for AArch64."""
    if machine.lower() in ("aarch64", "arm64"):
        return True
    return machine.lower() in ("x86_64", "amd64") and cpu_name in (None, "host") and "+f16c" in features.split(",")


def _host() -> bool:
    from llvmlite import binding

    try:
        features = config.CPU_FEATURES or binding.get_host_cpu_features().flatten()
    except RuntimeError:  # llvmlite cannot tell on this CPU
        features = ""
    return has_f16_instructions(platform.machine(), config.CPU_NAME, features)


HARDWARE = _host()
f16_to_f32 = _f16_to_f32_llvm if HARDWARE else _f16_to_f32_bits


@njit(cache=True)
def widen(bits, out):
    """out[i] = float32 of the float16 bits[i]: bits (n,) uint16, out (n,) float32 (what tests compare to NumPy)."""
    for i in range(bits.shape[0]):
        out[i] = f16_to_f32(bits[i])


@njit(cache=True)
def widen_portable(bits, out):
    """As :func:`widen`, always with the integer conversion (so that tests check it on every CPU)."""
    for i in range(bits.shape[0]):
        out[i] = _f16_to_f32_bits(bits[i])
