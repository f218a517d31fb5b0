"""Training speed as a fraction of this machine's float32 matmul rate (MFU), measured side by side in one run.

    OPENBLAS_NUM_THREADS=2 python benchmarks/train_speed.py [--config configs/shakespeare.toml] [--steps 10]

Runs the trainer's step (a batch of random windows -> loss_and_grads -> clip_grad_norm -> AdamW) on the config's
model, and before every step measures the float32 matmul rate (trainer.measure_matmul_gflops, n = 1024) in the
same process with the same BLAS threads. On a shared machine the load changes from second to second, so each
step is compared with the probe just before it; the MFU printed is the median of those per-step ratios
(tok/s · trainer.model_flops_per_token / matmul rate). The first step (warm-up) is left out. Tokens come from the
config's prepared data if it exists (``python -m minigrok data shakespeare``), else uniform random ids.
Prints one JSON object: the CPU, the BLAS threads, the load average, per-step figures and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/shakespeare.toml", help="run config (its model and batch size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    p.add_argument("--probe-seconds", type=float, default=0.5, help="length of each matmul-rate probe")
    args = p.parse_args()

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
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
