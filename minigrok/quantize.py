"""``python -m minigrok quantize IN.gguf OUT.gguf --type q8_0|q4_0|f16|f32``: rewrite a model's weights in another type.

The attention projections and the experts take the new type; norms and the router stay F32 and the token embedding
F16 in Q8_0/Q4_0 files (``quant.storage_type`` gives the reasons). The result runs in ``generate``, ``eval`` and
llama.cpp. A tensor that is already in the target type is copied as is; one in another quantized type is
dequantized first, so converting Q4_0 back to F16 gives the Q4_0 values, not the original ones.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .checkpoint import check_destination, load_gguf, read_metadata, save_gguf
from .quant import Q4_0, Q8_0, QuantizedTensor, storage_type

TYPES = ("q8_0", "q4_0", "f16", "f32")


def convert(params: dict, target: str, progress: bool = False) -> dict:
    """``{name: array or QuantizedTensor}`` with each tensor in ``storage_type(name, ndim, target)``.

    Float tensors bound for f16 are returned as float32 (``save_gguf(dtype="f16")`` does the rounding).
    Raises ValueError naming the tensor if one cannot be quantized (last axis not a multiple of 32, too large).
    """
    out = {}
    for name, w in tqdm(params.items(), desc=f"to {target}", unit="tensor", disable=not progress):
        kind = storage_type(name, w.ndim, target)
        if isinstance(w, QuantizedTensor) and w.type == kind:
            out[name] = w  # already in the target type: keep the exact blocks
            continue
        values = w.dequantize() if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)
        out[name] = QuantizedTensor.from_float(values, kind, name) if kind in (Q8_0, Q4_0) else values
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="GGUF model to read (F32, F16, Q8_0 or Q4_0 tensors)")
    p.add_argument("output", help="GGUF file to write (atomically: on any error nothing is written)")
    p.add_argument("--type", dest="target", required=True, choices=TYPES, help="type of the weight matrices")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"output {args.output} is a directory; give a file name, e.g. {out / 'model-q8_0.gguf'}")
    if out.exists() and out.resolve() == Path(args.input).resolve():
        raise ValueError(f"output {args.output} is the input file; write to a new file (nothing was changed)")
    check_destination(out)  # before the conversion, not after it
    params, config, tokenizer = load_gguf(args.input)
    metadata = read_metadata(args.input)
    converted = convert(params, args.target, progress=True)
    save_gguf(
        args.output,
        converted,
        config,
        tokenizer,
        dtype="f32" if args.target == "f32" else "f16",  # of the float tensors that remain (token_embd)
        metadata=metadata,
    )
    before, after = os.path.getsize(args.input), os.path.getsize(args.output)
    kinds = Counter(
        w.type if isinstance(w, QuantizedTensor) else storage_type(n, w.ndim, args.target) for n, w in converted.items()
    )
    print(
        f"{args.input}: {_mb(before)} -> {args.output}: {_mb(after)} ({after / before:.1%} of the input, "
        + (f"{before / after:.2f}x smaller" if after <= before else f"{after / before:.2f}x larger")
        + ") | tensors: "
        + ", ".join(f"{n} {k.upper()}" for k, n in sorted(kinds.items()))
    )
    return 0
