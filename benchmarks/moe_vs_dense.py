"""Issue 14: the mixture of experts against dense FFNs as wide as its active experts and as wide as all of them.

The three runs (configs/moe-vs-dense-{moe,dense-active,dense-total}.toml) are trained first, one thread each:

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        python -m minigrok train --config configs/moe-vs-dense-moe.toml        # and the two dense configs

then this script, one stage at a time (each stage stores its figures in benchmarks/moe_vs_dense-logs/):

    python benchmarks/moe_vs_dense.py collect   # copy the training logs; `minigrok eval --json` on each checkpoint
                                                # (collect moe dense-active: only those runs)
    python benchmarks/moe_vs_dense.py decode    # decode tok/s at batch 1: `minigrok generate -n 200 -t 0`, alternating
    python benchmarks/moe_vs_dense.py routing   # the experts the trained moe model picks on held-out text
    python benchmarks/moe_vs_dense.py report    # benchmarks/moe_vs_dense.json, the plots, the tables (markdown)

`report` needs only the committed files in benchmarks/moe_vs_dense-logs/, not the checkpoints.

Training FLOPs per token, the count used here: 6 per weight that multiplies an activation (forward 2, backward 4;
Kaplan et al. 2020, section 2.1), counting the active parameters (``ModelConfig.n_active_params``, in which the tied
token embedding appears once: as the unembedding, a (vocab, d_model) product per token; the embedding lookup is no
multiply), plus causal attention scores and weighted sums, 6 · n_layers · context · n_heads · head_dim (half of
PaLM's 12 · L · T · d, appendix B, because of the causal mask). This is the trainer's ``model_flops_per_token``
with the unembedding put back (that function drops it: issue 13).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "benchmarks" / "moe_vs_dense-logs"
RUNS = ("moe", "dense-active", "dense-total")  # seed 1337, the shipped model's
SEED2 = tuple(f"{name}-seed2" for name in RUNS)  # the same three with seed 2: the spread between seeds
BATCHES = (1, 2, 4, 8, 16, 64)
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def run_dir(name: str) -> Path:
    return ROOT / "runs" / f"moe-vs-dense-{name}"


def read_log(name: str) -> tuple[dict, list[dict], dict]:
    """The committed training log: (start header, step lines, final summary)."""
    lines = [json.loads(line) for line in (LOGS / f"{name}.jsonl").read_text().splitlines()]
    header = next(e for e in lines if e.get("event") == "start")
    summary = next(e for e in reversed(lines) if e.get("event") == "done")
    steps = [e for e in lines if "event" not in e]
    return header, steps, summary


def model_config(header: dict):
    from minigrok.config import ModelConfig

    return ModelConfig(**header["config"])


def train_flops_per_token(config) -> float:
    """6 · active parameters (the unembedding counted, the lookup not) + causal attention (module docstring)."""
    attention = 6 * config.n_layers * config.context_length * config.n_heads * config.head_dim
    return 6.0 * config.n_active_params() + attention


def expected_distinct(n: int, k: int, B: int) -> float:
    """Distinct experts among B tokens, each picking k of n experts uniformly at random without replacement.

    One token leaves a given expert unused with probability C(n-1, k)/C(n, k) = (n-k)/n; B independent tokens
    leave it unused with probability ((n-k)/n)^B; summing over the n experts (linearity of expectation):
    E = n (1 - ((n-k)/n)^B).
    """
    return n * (1.0 - ((n - k) / n) ** B)


# ---------------------------------------------------------------------------------------------------------- stages


def collect(*names: str) -> None:
    """Copy each run's log.jsonl here and evaluate its checkpoint on the full validation split (all runs, or
    those named)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    for name in names or RUNS + SEED2:
        shutil.copyfile(run_dir(name) / "log.jsonl", LOGS / f"{name}.jsonl")
        cmd = [sys.executable, "-m", "minigrok", "eval", str(run_dir(name) / "ckpt.gguf"), "--json"]
        env = {**os.environ, **ONE_THREAD}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
        result = json.loads(out.stdout)
        (LOGS / f"eval-{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(name, result["nats_per_char"], flush=True)


def decode(rounds: int = 9) -> None:
    """Decode tok/s at batch 1 on the compiled path: `generate -n 200 -t 0`, one thread, the models alternating."""
    rates: dict[str, list[float]] = {name: [] for name in RUNS}
    for r in range(rounds + 1):  # round 0 warms the kernel cache and is not kept
        for name in RUNS:
            cmd = [sys.executable, "-m", "minigrok", "generate", "-m", str(run_dir(name) / "ckpt.gguf")]
            cmd += ["-n", "200", "-t", "0", "-p", "ROMEO:", "--no-stream"]
            out = subprocess.run(
                cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **ONE_THREAD}
            )
            rate = float(re.search(r"decode: \d+ tokens, ([\d.]+) tok/s", out.stderr).group(1))
            if r > 0:
                rates[name].append(rate)
            print(r, name, rate, flush=True)
    record = {"command": "python -m minigrok generate -m CKPT -n 200 -t 0 -p ROMEO: --no-stream", "threads": 1}
    record["tok_s"] = rates
    (LOGS / "decode.json").write_text(json.dumps(record, indent=1) + "\n")


def routing(n_windows: int = 64) -> None:
    """Run the trained moe model on the first n_windows context windows of the validation split (held-out plays)
    and record, per layer, the top-k expert ids of every token: what moe.route returns inside model.forward."""
    import minigrok.moe as moe_module
    from minigrok.checkpoint import load_gguf
    from minigrok.dataset import load_split
    from minigrok.model import forward

    params, config, _ = load_gguf(run_dir("moe") / "ckpt.gguf")
    T = config.context_length
    tokens = np.asarray(load_split(ROOT / "data" / "shakespeare", "val"))[: n_windows * T]  # (n_windows*T,)
    recorded = []
    route = moe_module.route

    def recording_route(x, w_router, top_k, renormalize):
        expert_ids, gates, probs = route(x, w_router, top_k, renormalize)  # (N, k), (N, k), (N, E)
        recorded.append(expert_ids.copy())
        return expert_ids, gates, probs

    moe_module.route = recording_route  # moe() looks route up in its module at each call
    try:
        for w in range(0, n_windows, 8):
            forward(params, config, tokens[w * T : (w + 8) * T].reshape(-1, T).astype(np.int64))  # (8, T) windows
    finally:
        moe_module.route = route
    L = config.n_layers
    ids = np.stack([np.concatenate(recorded[i::L]) for i in range(L)])  # (L, n_windows*T, k), tokens in text order
    np.savez_compressed(LOGS / "routing-moe.npz", expert_ids=ids.astype(np.uint8))
    print("expert ids", ids.shape)


def distinct_experts(ids: np.ndarray, B: int, T: int, rng=None, draws: int = 4000) -> np.ndarray:
    """Mean distinct experts per layer for batches of B tokens. ids (L, N, k), N a multiple of the window T.

    rng None: B consecutive tokens of one window (non-overlapping chunks; B divides T). Otherwise B tokens drawn at
    random from all positions (as B unrelated sequences decoding together would be), averaged over ``draws`` draws.
    Returns (L,) float.
    """
    L, N, k = ids.shape
    if rng is None:
        chunks = ids.reshape(L, N // B, B * k)  # (L, chunks, B*k): chunks never cross a window as B divides T
    else:
        picks = rng.integers(0, N, size=(draws, B))  # (draws, B)
        chunks = ids[:, picks].reshape(L, draws, B * k)  # (L, draws, B*k)
    s = np.sort(chunks, axis=-1)  # (L, chunks, B*k)
    distinct = 1 + np.count_nonzero(np.diff(s, axis=-1), axis=-1)  # (L, chunks)
    return distinct.mean(axis=1)  # (L,)


# ---------------------------------------------------------------------------------------------------------- report


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode_rates = json.loads((LOGS / "decode.json").read_text())["tok_s"]
    records, curves = [], {}
    for name in RUNS + SEED2:
        header, steps, summary = read_log(name)
        model = name.removesuffix("-seed2")
        config = model_config(header)
        evaluation = json.loads((LOGS / f"eval-{name}.json").read_text())
        fpt = train_flops_per_token(config)
        tokens_seen = summary["tokens"]
        expert = 3 * config.d_ff * config.d_model  # gate, up, down weights of one expert
        records.append(
            {
                "name": name,
                "model": model,
                "seed": header["train"]["seed"],
                "config": f"configs/moe-vs-dense-{name}.toml",
                "num_experts": config.num_experts,
                "top_k": config.top_k,
                "d_ff": config.d_ff,
                "nats_per_char": evaluation["nats_per_char"],
                "nats_per_token": evaluation["nats_per_token"],
                "bits_per_char": evaluation["bits_per_char"],
                "eval_tokens": evaluation["tokens"],
                "final_val_loss_32_windows": steps[-1]["val_loss"],
                "steps": summary["step"],
                "tokens_seen": tokens_seen,
                "train_flops_per_token": fpt,
                "train_flops_total": fpt * tokens_seen,
                "trainer_logged_flops_per_token": header["flops_per_token"],
                "wall_s": summary["seconds"],
                "train_tok_s": summary["tok_per_s"],
                "decode_tok_s": float(np.median(decode_rates[model])),  # measured on the seed-1337 checkpoint
                "decode_tok_s_runs": decode_rates[model],
                "params_total": config.n_params(),
                "params_active": config.n_active_params(),
                "ffn_params_per_layer_total": config.num_experts * expert,
                "ffn_params_per_layer_active": config.top_k * expert,
                "weight_bytes_f32": 4 * config.n_params(),
                "decode_bytes_per_token_f32": 4 * config.n_active_params(),
            }
        )
        curves[name] = [
            (e["step"] * header["train"]["batch_size"] * config.context_length * fpt, e["val_loss"])
            for e in steps
            if "val_loss" in e
        ]

    # serving side: distinct experts per layer for a batch of B tokens, and the weight bytes a decode step reads
    ids = np.load(LOGS / "routing-moe.npz")["expert_ids"]  # (L, N, k)
    moe_cfg = model_config(read_log("moe")[0])
    n, k, L, T = moe_cfg.num_experts, moe_cfg.top_k, moe_cfg.n_layers, moe_cfg.context_length
    expert_bytes = 4 * 3 * moe_cfg.d_ff * moe_cfg.d_model  # F32
    shared_bytes = 4 * moe_cfg.n_params() - L * n * expert_bytes  # attention, norms, routers, embedding/unembedding
    by_name = {r["name"]: r for r in records}
    rng = np.random.default_rng(0)
    serving = []
    for B in BATCHES:
        consecutive = distinct_experts(ids, B, T)  # (L,)
        scattered = distinct_experts(ids, B, T, rng)  # (L,)
        step_bytes = shared_bytes + expert_bytes * consecutive.sum()
        serving.append(
            {
                "B": B,
                "distinct_uniform": expected_distinct(n, k, B),
                "distinct_consecutive_mean": float(consecutive.mean()),
                "distinct_consecutive_per_layer": np.round(consecutive, 3).tolist(),
                "distinct_random_positions_mean": float(scattered.mean()),
                "moe_step_bytes": float(step_bytes),
                "moe_step_bytes_uniform": float(shared_bytes + expert_bytes * L * expected_distinct(n, k, B)),
                "dense_active_step_bytes": by_name["dense-active"]["weight_bytes_f32"],
                "dense_total_step_bytes": by_name["dense-total"]["weight_bytes_f32"],
                "moe_flops_per_token": 2 * moe_cfg.n_active_params(),
                "dense_active_flops_per_token": 2 * by_name["dense-active"]["params_active"],
                "dense_total_flops_per_token": 2 * by_name["dense-total"]["params_active"],
            }
        )
    load = np.stack([np.bincount(ids[i].ravel(), minlength=n) / ids[i].size for i in range(L)])  # (L, n)
    out = {
        "issue": 14,
        "flops_formula": "6 * n_active_params (tied embedding counted once, as the unembedding) "
        "+ 6 * n_layers * context_length * n_heads * head_dim",
        "runs": records,
        "serving": {
            "model": "runs/moe-vs-dense-moe/ckpt.gguf",
            "text": f"validation split (Hamlet, Twelfth Night), first {ids.shape[1]} tokens in windows of {T}",
            "bytes": "F32 weights; every non-expert tensor read whole per step (the embedding as the unembedding)",
            "expert_load_per_layer": np.round(load, 4).tolist(),
            "batches": serving,
        },
    }
    (ROOT / "benchmarks" / "moe_vs_dense.json").write_text(json.dumps(out, indent=1) + "\n")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(RUNS):  # seed 1337 solid with markers, seed 2 dashed in the same colour
        x, y = zip(*curves[name], strict=True)
        label = f"{name} ({by_name[name]['params_active'] / 1e6:.1f} M active)"
        ax.plot(x, y, marker="o", ms=3, color=f"C{i}", label=label)
        x, y = zip(*curves[f"{name}-seed2"], strict=True)
        ax.plot(x, y, ls="--", lw=1, color=f"C{i}", label=f"{name}, seed 2")
    ax.set_xlabel("training FLOPs (6·active params + attention, per token × tokens)")
    ax.set_ylabel("validation loss (nats/token, 32 windows)")
    ax.set_title("grok-mini: 8-expert top-2 MoE vs dense GeGLU FFNs, same recipe and tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "moe_vs_dense_loss.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    Bs = [s["B"] for s in serving]
    ax.plot(Bs, [s["distinct_uniform"] for s in serving], "k--", label="uniform routing: n(1-((n-k)/n)^B)")
    ax.plot(Bs, [s["distinct_consecutive_mean"] for s in serving], "o-", label="measured, B consecutive tokens")
    ax.plot(Bs, [s["distinct_random_positions_mean"] for s in serving], "s-", label="measured, B random positions")
    ax.axhline(k, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens in the batch (B)")
    ax.set_ylabel("distinct experts a layer runs (mean over layers)")
    ax.set_title(f"trained moe model, top-{k} of {n} experts, held-out text")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "moe_vs_dense_experts.png", dpi=110)
    print_tables(out)


def print_tables(out: dict) -> None:
    print(
        "| run | experts (top-k) × d_ff | params total | params active | nats/char (val) | tokens | "
        "train FLOPs/token | train FLOPs | wall s | train tok/s | decode tok/s | weights (F32) |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in out["runs"]:
        print(
            f"| {r['name']} | {r['num_experts']} ({r['top_k']}) × {r['d_ff']} | {r['params_total'] / 1e6:.2f} M | "
            f"{r['params_active'] / 1e6:.2f} M | {r['nats_per_char']:.4f} | {r['tokens_seen']:,} | "
            f"{r['train_flops_per_token'] / 1e6:.1f} M | {r['train_flops_total']:.3g} | {r['wall_s']:.0f} | "
            f"{r['train_tok_s']:.0f} | {r['decode_tok_s']:.0f} | {r['weight_bytes_f32'] / 1e6:.1f} MB |"
        )
    print()
    print(
        "| B | distinct experts, uniform | measured, consecutive | measured, random positions | "
        "MoE MB read / step | dense-active | dense-total | MoE MB / token | MoE FLOPs/token (fwd) | dense-total |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in out["serving"]["batches"]:
        print(
            f"| {s['B']} | {s['distinct_uniform']:.2f} | {s['distinct_consecutive_mean']:.2f} | "
            f"{s['distinct_random_positions_mean']:.2f} | {s['moe_step_bytes'] / 1e6:.1f} | "
            f"{s['dense_active_step_bytes'] / 1e6:.1f} | {s['dense_total_step_bytes'] / 1e6:.1f} | "
            f"{s['moe_step_bytes'] / s['B'] / 1e6:.2f} | {s['moe_flops_per_token'] / 1e6:.1f} M | "
            f"{s['dense_total_flops_per_token'] / 1e6:.1f} M |"
        )


if __name__ == "__main__":
    stages = {"collect": collect, "decode": decode, "routing": routing, "report": report}
    if len(sys.argv) < 2 or sys.argv[1] not in stages or (sys.argv[1] != "collect" and len(sys.argv) > 2):
        sys.exit(f"usage: python benchmarks/moe_vs_dense.py {{{','.join(stages)}}} (collect [RUN ...])")
    stages[sys.argv[1]](*sys.argv[2:])
