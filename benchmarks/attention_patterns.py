"""Pictures of the attention patterns, drawn from minigrok.attention.pattern_mask: the mask the model itself uses.

    python benchmarks/attention_patterns.py [--tokens 32] [--out benchmarks/attention_patterns.png]

One panel per pattern: row = query position, column = key position, dark = visible. Under each panel: how many
keys the last query sees, and the KV-cache slots the pattern needs (kv_cache_size; "all" = one per token).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from minigrok.attention import kv_cache_size, pattern_mask
from minigrok.config import parse_attention

PATTERNS = ["dense", "window:8", "sinks:2,6", "block:size=4,local=2,global=1,stride=3"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=32, help="sequence length drawn (default: 32)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "attention_patterns.png"))
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(args.tokens)
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(3.2 * len(PATTERNS), 3.6), dpi=120)
    for ax, text in zip(axes, PATTERNS, strict=True):
        pattern = parse_attention(text)
        mask = pattern_mask(pattern, positions, positions)  # (T, T) bool, the model's own mask
        ax.imshow(mask, cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
        ax.set_title(text, fontsize=9)
        size = kv_cache_size(pattern)
        ax.set_xlabel(f"key; last query sees {mask[-1].sum()}, cache {size or 'all'}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel("query position")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
