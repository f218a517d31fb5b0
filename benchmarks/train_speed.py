"""Training speed as a fraction of this machine's float32 matmul rate (MFU), measured side by side in one run.

    OPENBLAS_NUM_THREADS=2 python benchmarks/train_speed.py [--config configs/shakespeare.toml] [--steps 10]

Runs the trainer's step (a batch of random windows -> loss_and_grads -> clip_grad_norm -> AdamW) on the config's
model, and before every step measures the float32 matmul rate (trainer.measure_matmul_gflops, n = 1024) in the
same process with the same BLAS threads. On a shared machine the load changes from second to second, so each
step is compared with the probe just before it; ``median_mfu`` is the median of those per-step ratios
(tok/s · trainer.model_flops_per_token / matmul rate), and ``best_mfu`` the fastest step against the fastest probe.
The first step (warm-up) is left out. Tokens come from the
config's prepared data if it exists (``python -m minigrok data shakespeare``), else uniform random ids.
Prints one JSON object: the CPU, the BLAS threads, the load average, per-step figures and the medians.

With --floor it also times the step's matrix products alone (their shapes from backward.py, the experts evenly
loaded): ``mfu_ceiling`` is the MFU a step would reach if nothing but those products took time, and
``their_rate_vs_reference`` how fast these shapes run compared with the n = 1024 product (both best of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from minigrok.dataset import load_split
from minigrok.model import init_params
from minigrok.tokenizer import Tokenizer
from minigrok.train.backward import loss_and_grads
from minigrok.train.optim import AdamW, clip_grad_norm
from minigrok.train.trainer import (
    TrainConfig,
    blas_threads,
    get_batch,
    measure_matmul_gflops,
    model_flops_per_token,
)


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and its flags, from /proc/cpuinfo (empty on other systems)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "", []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name, flags


def step_matmuls(config, batch_size: int) -> list[tuple[int, tuple[int, int, int], int]]:
    """The matrix products of one training step (forward and backward) as in minigrok/train/backward.py:
    (count, (m, k, n), batch) for a (batch, m, k) @ (batch, k, n) product done ``count`` times. The experts are
    assumed evenly loaded (n_tokens·top_k/num_experts tokens each)."""
    n = batch_size * config.context_length  # tokens
    d, T, hd, L = config.d_model, config.context_length, config.head_dim, config.n_layers
    n_q, n_kv = config.n_heads * hd, config.n_kv_heads * hd
    rows = T * config.n_heads // config.n_kv_heads  # stacked query rows per K/V head
    heads = batch_size * config.n_kv_heads  # batched products per attention matmul
    n_e, f = n * config.top_k // config.num_experts, config.d_ff
    E, V = config.num_experts, config.vocab_size
    return [
        (L, (n, d, n_q + 2 * n_kv), 1),  # q, k, v projections
        (L, (n, n_q + 2 * n_kv, d), 1),  # their dx
        (L, (n_q + 2 * n_kv, n, d), 1),  # their dw
        (3 * L, (n, n_q, d), 1),  # output projection: forward, dx, dw (same FLOPs)
        (2 * L, (rows, hd, T), heads),  # scores q·k; backward do·v
        (2 * L, (rows, T, hd), heads),  # probs @ v; backward dq = ds @ k
        (2 * L, (T, rows, hd), heads),  # backward dv = p^T @ do, dk = ds^T @ q
        (3 * L * E, (n_e, d, f), 1),  # experts: gate, up, and dhidden = dye @ w_down
        (L * E, (n_e, f, d), 1),  # down
        (L * E, (d, n_e, f), 1),  # dw_down
        (L * E, (2 * f, n_e, d), 1),  # dw of gate and up, stacked
        (L * E, (n_e, 2 * f, d), 1),  # dx of gate and up, stacked
        (1, (n, d, V), 1),  # unembedding
        (1, (n, V, d), 1),  # its dx
        (1, (V, n, d), 1),  # its dw
    ]


def matmul_floor(config, batch_size: int, repeats: int = 5) -> tuple[float, float, float]:
    """Seconds the products of step_matmuls take alone (each shape timed, best of ``repeats``), their FLOPs, and
    the rate (FLOP/s) of the n = 1024 product timed the same way (best of ``repeats``): the step time if everything
    that is not a matmul took no time, and the matching reference rate."""
    rng = np.random.default_rng(0)
    seconds = flops = 0.0
    shapes = [(0, (1024, 1024, 1024), 1)] + step_matmuls(config, batch_size)  # count 0: the reference
    reference = 0.0
    for count, (m, k, n), batch in shapes:
        lead = (batch,) if batch > 1 else ()  # a 2-D product when there is no batch, as in backward.py
        a = rng.standard_normal((*lead, m, k), dtype=np.float32)
        b = rng.standard_normal((*lead, k, n), dtype=np.float32)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        if count == 0:
            reference = 2.0 * m * k * n / best
        seconds += count * best
        flops += count * 2.0 * batch * m * k * n
    return seconds, flops, reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/shakespeare.toml", help="run config (its model and batch size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    p.add_argument("--probe-seconds", type=float, default=0.5, help="length of each matmul-rate probe")
    p.add_argument("--floor", action="store_true", help="also time the step's matmuls alone (the MFU ceiling)")
    args = p.parse_args()
    if args.steps < 1 or not args.probe_seconds > 0:
        p.error("--steps must be >= 1 and --probe-seconds > 0")

    cfg = TrainConfig.from_toml(args.config)
    data = Path(cfg.data_dir)
    if (data / "tokenizer.json").is_file():
        vocab_size = Tokenizer.load(data / "tokenizer.json").vocab_size
        tokens = np.asarray(load_split(cfg.data_dir, "train"))
    else:
        vocab_size = 4096
        tokens = np.random.default_rng(0).integers(0, vocab_size, 1_000_000)
    config = cfg.model_config(vocab_size)
    params = init_params(config, cfg.seed)
    opt = AdamW(params, cfg.beta1, cfg.beta2, weight_decay=cfg.weight_decay)
    flops_per_token = model_flops_per_token(config)
    load_before = os.getloadavg()
    rows = []
    for step in range(args.steps + 1):
        gflops = measure_matmul_gflops(seconds=args.probe_seconds)
        t0 = time.perf_counter()
        x, y = get_batch(tokens, cfg.batch_size, config.context_length, np.random.default_rng((cfg.seed, step)))
        _, grads, _ = loss_and_grads(params, config, x, y, cfg.aux_loss_coef, cfg.z_loss_coef)
        clip_grad_norm(grads, cfg.grad_clip)
        opt.update(params, grads, cfg.lr * 0.01)
        seconds = time.perf_counter() - t0
        tok_per_s = x.size / seconds
        if step > 0:  # step 0 warms up
            mfu = tok_per_s * flops_per_token / (gflops * 1e9)
            rows.append({"seconds": round(seconds, 3), "matmul_gflops": round(gflops, 1), "mfu": round(mfu, 4)})
    floor = None
    if args.floor:  # the step's own products, timed alone, each the best of a few (as the reference product)
        seconds, flops, reference = matmul_floor(config, cfg.batch_size)
        floor = {
            "matmul_seconds": round(seconds, 3),
            "matmul_gflop": round(flops / 1e9, 1),
            "reference_gflops": round(reference / 1e9, 1),
            "their_rate_vs_reference": round(flops / seconds / reference, 3),
            "mfu_ceiling": round(x.size * flops_per_token / seconds / reference, 3),
        }
    best_seconds, best_gflops = min(r["seconds"] for r in rows), max(r["matmul_gflops"] for r in rows)
    name, flags = cpu_model()
    result = {
        "cpu": name,
        "cpu_flags": [f for f in flags if f.startswith(("avx", "fma", "amx"))],
        "blas_threads": blas_threads(),
        "numpy": np.__version__,
        "command": f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '')} python "
        f"benchmarks/train_speed.py --config {args.config} --steps {args.steps}",
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "tokens_per_step": cfg.batch_size * config.context_length,
        "flops_per_token": flops_per_token,
        "steps": rows,
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "median_tok_per_s": round(statistics.median(x.size / r["seconds"] for r in rows)),
        "median_matmul_gflops": statistics.median(r["matmul_gflops"] for r in rows),
        "median_mfu": statistics.median(r["mfu"] for r in rows),
        # the least disturbed step against the least disturbed probe: on a loaded machine the steadier figure
        "best_seconds": best_seconds,
        "best_matmul_gflops": best_gflops,
        "best_mfu": round(x.size / best_seconds * flops_per_token / (best_gflops * 1e9), 4),
        "matmuls_alone": floor,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:  # a missing or bad config: one line, as the minigrok commands do
        sys.exit(f"train_speed: error: {e}")
