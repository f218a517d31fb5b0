"""Where a decode step's time goes: attention, MoE, RMSNorm, the unembedding, and the rest, per token.

    OPENBLAS_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python benchmarks/profile_decode.py MODEL.gguf [--tokens 32]

Times each part of a greedy single-token decode step after a 128-token prompt, by wrapping functions with a
clock, --repeats times, keeping the fastest run. On the NumPy path (``minigrok.model.forward``, which
``engine.forward(..., compiled=False)`` runs) the parts are the functions model.py calls: attention, moe,
rms_norm, linear (the unembedding). On the compiled step (``minigrok.kernels.decode``) a layer is one call, so
its parts are the layers (``decode_layer``: attention and MoE together), the unembedding (``final_logits``) and
the rest. "rest" is the step minus the parts (embedding lookup, residual adds, RoPE tables, Python). Also prints
the bytes each part reads per token and the rate at which it read them (GB/s), which says how close a part is to
the memory bandwidth. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from bench import prompt_ids  # benchmarks/bench.py, beside this script

from minigrok import engine, model
from minigrok.checkpoint import load_gguf
from minigrok.kernels import decode
from minigrok.quant import QuantizedTensor

PARTS = ("attention", "moe", "rms_norm", "linear")  # linear: the unembedding (model.py's only direct use)
COMPILED_PARTS = {"layers": "decode_layer", "linear": "final_logits"}  # part -> function of kernels/decode.py


def nbytes(w) -> int:
    return w.nbytes if isinstance(w, (np.ndarray, QuantizedTensor)) else 0


def bytes_read(params: dict, config) -> dict[str, float]:
    """Bytes of weights each part reads per decoded token (experts: top_k of num_experts)."""
    out = defaultdict(float)
    for name, w in params.items():
        if name == "token_embd.weight":
            out["linear"] += nbytes(w)
        elif "attn_" in name and "norm" not in name:
            out["attention"] += nbytes(w)
        elif "_exps." in name:
            out["moe"] += nbytes(w) * config.top_k / config.num_experts
        elif "ffn_gate_inp" in name:
            out["moe"] += nbytes(w)
        elif name.endswith("norm.weight"):
            out["rms_norm"] += nbytes(w)
    return out


def profile(params, config, compiled: bool, n_tokens: int) -> dict[str, float]:
    """Seconds per decoded token spent in each part, and in the whole forward."""
    spent = defaultdict(float)
    module, parts = (decode, COMPILED_PARTS) if compiled else (model, {p: p for p in PARTS})
    originals = {name: getattr(module, name) for name in parts.values()}

    def clocked(part, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start

        return wrapper

    try:
        for part, name in parts.items():
            setattr(module, name, clocked(part, originals[name]))
        cache = model.init_cache(config, 1, 128 + n_tokens + 2)

        def forward(ids):
            return engine.forward(params, config, ids, cache, compiled)

        token = int(np.argmax(forward(prompt_ids(config.vocab_size, 128)[None])[0, -1]))
        for _ in range(2):  # warm-up: the first decode step loads the decode kernels
            token = int(np.argmax(forward(np.array([[token]]))[0, -1]))
        spent.clear()
        start = time.perf_counter()
        for _ in range(n_tokens):
            token = int(np.argmax(forward(np.array([[token]]))[0, -1]))
        spent["forward"] = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
    spent["rest"] = spent["forward"] - sum(spent[part] for part in parts)
    return {name: seconds / n_tokens for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="GGUF model file")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps to time (default: 32)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each variant; the fastest is shown (default: 3)"
    )
    args = parser.parse_args()
    params, config, _ = load_gguf(args.model, mmap=True)  # as generate and the bench load it
    read = bytes_read(params, config)
    runs = {}
    for name, compiled in (("NumPy path", False), ("compiled step", True)):
        runs[name] = min(
            (profile(params, config, compiled, args.tokens) for _ in range(args.repeats)), key=lambda r: r["forward"]
        )
    read["layers"] = read["attention"] + read["moe"] + read["rms_norm"]
    print(f"{args.model}: ms per decoded token (GB/s of weights read)")
    print("| part | MB read per token | " + " | ".join(runs) + " |")
    print("|---|--:|" + "--:|" * len(runs))
    total = read["layers"] + read["linear"]
    for part in (*PARTS, "layers", "rest", "forward"):
        mb = (total if part == "forward" else read.get(part, 0.0)) / 1e6
        cells = []
        for r in runs.values():
            gb_s = f" ({mb / 1e3 / r[part]:.1f} GB/s)" if mb and part in r else ""
            cells.append(f"{r[part] * 1e3:.2f}{gb_s}" if part in r else "")
        print(f"| {part} | {mb:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
