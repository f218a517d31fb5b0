"""Decode speed and KV-cache memory of dense vs sliding-window vs sinks attention at long contexts.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/sparse_bench.py [--contexts 512,2048,8192,32768]

A random model of the grok-mini shape (vocab 4096, d_model 256, 6 layers, 8 query / 2 KV heads, head_dim 32,
8 experts top-2) with its context length raised to the longest context measured. For each context C the KV cache
is filled as it would be after C tokens (random keys and values: the work of a decode step depends only on how
many slots it reads, not on their values), then single-token decode steps are timed, with the Numba kernel and
with its NumPy twin. Dense attention reads all C cached positions per step; window:W reads W and sinks:S,W reads
S + W, whatever C is. Also timed: one prefill of a --prefill-token prompt, where the sparse patterns compute only
the key blocks they keep. Every cell is measured in --repeats rounds and the best round counts (the machines are
shared; compare ratios from one run). Prints a Markdown table; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from minigrok import engine
from minigrok.attention import keys_needed, kv_cache_size
from minigrok.config import get_preset
from minigrok.model import forward, init_cache, init_params


def filled_cache(config, context: int, extra: int, rng: np.random.Generator):
    """A KV cache holding what ``config.pattern`` keeps after ``context`` tokens, with random keys and values."""
    size = kv_cache_size(config.pattern)
    cache = init_cache(config, 1, context + extra if size is None else size)
    seen = np.arange(context)
    kept = seen[keys_needed(config.pattern, context, None, seen)]  # (n,) positions a later query may still see
    n = len(kept)
    cache.positions[:n] = kept
    for layer in range(config.n_layers):
        for a in (cache.k[layer], cache.v[layer]):
            a[:, :, :n] = rng.standard_normal(a[:, :, :n].shape, dtype=np.float32)
    cache.pos = context
    return cache


def decode_rate(params, config, context: int, steps: int, compiled: bool) -> tuple[float, int]:
    """(tokens/s of the median decode step, KV-cache bytes at ``context`` tokens) over ``steps`` steps."""
    rng = np.random.default_rng(0)
    cache = filled_cache(config, context, steps + 1, rng)
    token = np.array([[1]])
    engine.forward(params, config, token, cache, compiled)  # warm-up (and the kernel's compilation, or its cache load)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.forward(params, config, token, cache, compiled)
        seconds.append(time.perf_counter() - start)
    per_slot = cache.nbytes() // cache.max_len  # K and V of one position, all layers
    kv_bytes = per_slot * (cache.max_len if cache.rolling else context)  # a dense cache holding exactly `context`
    return 1.0 / float(np.median(seconds)), kv_bytes  # the median step: robust to a busy shared machine


def prefill_rate(params, config, n: int) -> float:
    """Prompt tokens/s of one prefill of ``n`` random tokens through a fresh cache."""
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (1, n))
    cache = init_cache(config, 1, None if kv_cache_size(config.pattern) else n)
    start = time.perf_counter()
    forward(params, config, tokens, cache)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="512,2048,8192,32768", help="comma-separated contexts in tokens")
    p.add_argument("--window", type=int, default=256, help="W of window:W and sinks:S,W-S (default: 256)")
    p.add_argument("--sinks", type=int, default=4, help="S of sinks:S,W (default: 4)")
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per cell (default: 20)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all cells; the best round counts (default: 3)")
    p.add_argument("--prefill", type=int, default=2048, help="prompt length of the prefill timing; 0 = skip")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    base = get_preset("grok-mini").replace(context_length=max(contexts + [args.prefill]))
    params = init_params(base, seed=0)
    patterns = ["dense", f"window:{args.window}", f"sinks:{args.sinks},{args.window - args.sinks}"]

    best: dict[tuple, dict] = {}  # (attention, context) -> row; whole rounds repeated, so a busy spell hits one
    for _ in range(args.repeats):
        for attention in patterns:
            config = base.replace(attention=attention)
            for context in contexts:
                numba_rate, nbytes = decode_rate(params, config, context, args.steps, compiled=True)
                numpy_rate, _ = decode_rate(params, config, context, args.steps, compiled=False)
                row = best.setdefault((attention, context), dict(attention=attention, context=context, kv_bytes=nbytes))
                row["numba"] = max(row.get("numba", 0.0), numba_rate)
                row["numpy"] = max(row.get("numpy", 0.0), numpy_rate)
    rows = list(best.values())
    print("| attention | context | KV cache | decode tok/s (Numba) | decode tok/s (NumPy) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        kv_mb = r["kv_bytes"] / 1e6
        print(f"| {r['attention']} | {r['context']:,} | {kv_mb:.2f} MB | {r['numba']:.1f} | {r['numpy']:.1f} |")
    prefill = {}
    if args.prefill:
        print(f"\n| attention | prefill of {args.prefill:,} tokens, tok/s |\n|---|---:|")
        for attention in patterns:
            config = base.replace(attention=attention)
            prefill[attention] = max(prefill_rate(params, config, args.prefill) for _ in range(args.repeats))
            print(f"| {attention} | {prefill[attention]:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"model": "grok-mini shape, random", "command": vars(args), "decode": rows, "prefill": prefill},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
