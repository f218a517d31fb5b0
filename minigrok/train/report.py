"""Pictures of a training run for the model card: the loss curve and the expert load per layer.

``python -m minigrok.train.report runs/shakespeare/log.jsonl --out weights/`` writes ``loss_curve.png`` and
``expert_load.png``. Needs matplotlib (``pip install -e ".[lessons]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    """The entries of a run's log.jsonl, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_run(log_path: str | Path, out_dir: str | Path, chars_per_token: float | None = None) -> list[Path]:
    """Write loss_curve.png (train and validation loss, nats/token; nats/char on the right axis when
    chars_per_token is given) and expert_load.png (fraction of token-slots per expert and layer, last evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    entries = read_log(log_path)
    steps = [e for e in entries if "loss" in e]
    evals = [e for e in steps if "val_loss" in e]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 4))
    tokens = np.array([e["tokens"] for e in steps]) / 1e6
    ce = np.array([e["ce"] for e in steps])
    smooth = np.convolve(ce, np.ones(20) / 20, mode="valid") if len(ce) > 40 else ce
    ax.plot(tokens, ce, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(tokens[len(tokens) - len(smooth) :], smooth, color="tab:blue", label="train (20-step mean)")
    ax.plot(
        [e["tokens"] / 1e6 for e in evals],
        [e["val_loss"] for e in evals],
        "o-",
        color="tab:red",
        ms=3,
        label="validation (Hamlet, Twelfth Night)",
    )
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(
        bottom=min(ce.min(), min((e["val_loss"] for e in evals), default=ce.min())) - 0.2, top=min(8.5, ce.max() + 0.2)
    )
    ax.grid(alpha=0.3)
    ax.legend()
    if chars_per_token:
        right = ax.secondary_yaxis("right", functions=(lambda y: y / chars_per_token, lambda y: y * chars_per_token))
        right.set_ylabel(f"nats/char (at {chars_per_token:.2f} chars/token)")
    ax.set_title("minigrok-shakespeare: training")
    fig.tight_layout()
    loss_png = out_dir / "loss_curve.png"
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)

    load = np.array(evals[-1]["expert_load"])  # (n_layers, num_experts)
    n_layers, num_experts = load.shape
    fig, ax = plt.subplots(figsize=(7, 3.6))
    im = ax.imshow(load, cmap="viridis", vmin=0, vmax=max(load.max(), 2.0 / num_experts))
    for i in range(n_layers):
        for j in range(num_experts):
            ax.text(j, i, f"{load[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_xticks(range(num_experts))
    ax.set_yticks(range(n_layers))
    fig.colorbar(im, ax=ax, label="fraction of token-slots")
    ax.set_title(f"expert load at step {evals[-1]['step']} (balanced = {1 / num_experts:.3f})")
    fig.tight_layout()
    load_png = out_dir / "expert_load.png"
    fig.savefig(load_png, dpi=120)
    plt.close(fig)
    return [loss_png, load_png]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigrok.train.report", description=__doc__.splitlines()[0])
    p.add_argument("log", help="a run's log.jsonl")
    p.add_argument("--out", default=".", help="folder for the PNGs (default: current folder)")
    p.add_argument("--chars-per-token", type=float, help="adds a nats/char axis (from the data's meta.json)")
    args = p.parse_args(argv)
    try:
        paths = plot_run(args.log, args.out, args.chars_per_token)
    except ModuleNotFoundError:
        print('minigrok: error: matplotlib is missing; pip install -e ".[lessons]"', file=sys.stderr)
        return 1
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
