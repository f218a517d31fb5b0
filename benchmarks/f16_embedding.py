"""Decode steps with the F16 token embedding against a float32 copy of it, interleaved in one process.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/f16_embedding.py MODEL.gguf [--rounds 60] [--numpy]

Loads MODEL as generate does (``load_gguf(mmap=True)``: an F16 token embedding stays F16) and makes a second
params dict that differs only by a float32 copy of the embedding (what load_gguf gave before issue 15). After a
128-token prompt in each, it times decode steps in blocks of --block, alternating the two (and which goes first),
so that the load of a shared machine hits both alike; prints the median and best ms per step of each and their
ratio. --numpy times the readable path (``engine.forward(..., compiled=False)``) instead of the compiled step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from minigrok import engine, model
from minigrok.checkpoint import load_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="GGUF model file with an F16 token embedding (F16, Q8_0 or Q4_0)")
    parser.add_argument("--rounds", type=int, default=60, help="rounds of one block each (default: 60)")
    parser.add_argument("--block", type=int, default=8, help="decode steps per block (default: 8)")
    parser.add_argument("--numpy", action="store_true", help="time the NumPy path, not the compiled step")
    args = parser.parse_args()
    f16, config, _ = load_gguf(args.model, mmap=True)
    if f16["token_embd.weight"].dtype != np.float16:
        parser.error(f"{args.model} has no F16 token embedding")
    variants = {"f16": f16, "f32": dict(f16, **{"token_embd.weight": f16["token_embd.weight"].astype(np.float32)})}
    caches = {name: model.init_cache(config, 1, 130 + args.rounds * args.block) for name in variants}
    prompt = (np.arange(128) % config.vocab_size)[None]  # (1, 128)
    for name, params in variants.items():
        engine.forward(params, config, prompt, caches[name], not args.numpy)
        engine.forward(params, config, np.array([[1]]), caches[name], not args.numpy)  # loads the decode kernels
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        token = np.array([[r % config.vocab_size]])  # (1, 1)
        for name in sorted(variants, reverse=r % 2 == 1):
            for _ in range(args.block):
                start = time.perf_counter()
                engine.forward(variants[name], config, token, caches[name], not args.numpy)
                times[name].append(time.perf_counter() - start)
    path = "NumPy path" if args.numpy else "compiled step"
    for name, t in times.items():
        median, best = np.median(t) * 1e3, min(t) * 1e3
        print(f"{args.model}, {path}, {name} embedding: median {median:.3f} ms/step, best {best:.3f}")
    median = np.median(times["f32"]) / np.median(times["f16"])
    print(f"f32 / f16 step time: median {median:.3f}x, best {min(times['f32']) / min(times['f16']):.3f}x")


if __name__ == "__main__":
    main()
