"""Held-out loss of a model, in nats per token, nats per character and bits per character.

Nats per character is tokenizer-independent: total nats over the split / characters of its text. A model that
spends 1.5 nats per character is as good as a character-level model with that loss, whatever its vocabulary.
``python -m minigrok eval MODEL [--split val] [--data DIR] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import ModelConfig
from .engine import forward


def token_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per position, in nats. logits (..., V), targets (...) -> (...) float64."""
    z = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)  # (..., V)
    lse = np.log(np.sum(np.exp(z), axis=-1))  # (...)
    return lse - np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window + 1`` tokens (inputs + next-token targets) covering a stream."""
    last = max(0, n_tokens - window - 1)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def evaluate_tokens(
    params: dict,
    config: ModelConfig,
    tokens: np.ndarray,
    window: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[float, int]:
    """Total nats of predicting ``tokens[1:]`` from what precedes them, with sliding windows.

    Each window holds ``window`` tokens (default: the context length); consecutive windows overlap by half,
    and a token is scored in the first window where it has at least window/2 tokens of context (all tokens
    of the first window are scored). tokens (n,) int. Returns (total nats, number of predicted tokens = n - 1).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    window = min(window or config.context_length, len(tokens) - 1)
    if window < 1:
        raise ValueError("need at least 2 tokens to evaluate")
    stride = max(1, window // 2)
    starts = window_starts(len(tokens), window, stride)
    total, scored_until = 0.0, 0  # scored_until = number of targets already counted (targets are tokens[1:])
    for b in tqdm(range(0, len(starts), batch_size), desc="eval", unit="batch", disable=not progress):
        batch = starts[b : b + batch_size]
        x = np.stack([tokens[s : s + window] for s in batch])  # (b, window)
        y = np.stack([tokens[s + 1 : s + window + 1] for s in batch])  # (b, window)
        nats = token_nats(forward(params, config, x), y)  # (b, window)
        for row, s in zip(nats, batch, strict=True):
            first_new = max(scored_until - s, 0)  # skip targets an earlier window already scored
            total += float(np.sum(row[first_new:]))
            scored_until = s + window
    return total, len(tokens) - 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF model file")
    p.add_argument("--data", default="data/shakespeare", help="prepared data folder (default: %(default)s)")
    p.add_argument("--split", choices=["val", "train"], default="val", help="which split (default: val)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens of the split")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args) -> int:
    from .checkpoint import load_gguf
    from .dataset import load_meta, load_split
    from .tokenizer import Tokenizer

    params, config, tokenizer = load_gguf(args.model, mmap=True)
    if getattr(args, "attention", None) is not None:  # --attention, added by minigrok.__main__
        config = config.replace(attention=args.attention)
    meta = load_meta(args.data)
    if Tokenizer.load(Path(args.data) / "tokenizer.json") != tokenizer:
        raise ValueError(
            f"{args.data} was tokenized with a different tokenizer than the model's, so its tokens mean other "
            "text; evaluate on the data the model was trained with"
        )
    tokens = np.asarray(load_split(args.data, args.split))
    n_chars = meta[args.split]["n_chars"]
    if args.max_tokens is not None:
        if args.max_tokens < 2:
            raise ValueError("--max-tokens must be at least 2")
        tokens = tokens[: args.max_tokens]
        n_chars = len(tokenizer.decode(tokens[tokens != tokenizer.eot_id].tolist()))  # EOT separators excluded
    total, n = evaluate_tokens(params, config, tokens, progress=True)  # on stderr: --json output stays clean
    result = {
        "model": str(Path(args.model)),
        "attention": config.attention,
        "split": args.split,
        "tokens": n,
        "chars": n_chars,
        "nats_per_token": total / n,
        "nats_per_char": total / n_chars,
        "bits_per_char": total / n_chars / math.log(2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.split}: {n:,} tokens, {n_chars:,} chars | {result['nats_per_token']:.4f} nats/token | "
            f"{result['nats_per_char']:.4f} nats/char | {result['bits_per_char']:.4f} bits/char"
        )
    return 0
