"""StreamingLLM's headline at minigrok's scale: held-out loss far past the training context, by attention pattern.

    OPENBLAS_NUM_THREADS=1 python benchmarks/streaming_quality.py [--model weights/minigrok-shakespeare.gguf]
        [--tokens 8192] [--window-model runs/shakespeare-window/ckpt.gguf]

The first --tokens tokens of the held-out split (Hamlet, never seen in training) go through the model as one
stream, --chunk tokens per forward call through a KV cache, so every token is predicted from everything before
it that its attention pattern keeps (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
Sinks", figure 3 and section 4.1, at our scale):

- dense: the whole past, at RoPE distances up to --tokens, far beyond the trained context (expected to break down);
- window:W: the last W tokens (W = --window, default the trained context; a rolling cache of W entries);
- sinks:S,W-S: the first S tokens plus the last W - S (the same W cache entries; expected to stay flat);
- with --window-model, a model trained with window attention, under its own pattern;
- reference: the usual evaluation (python -m minigrok eval): windows of the trained context, re-computed.

Also measured: how much attention late queries put on the first S keys, per layer. Window attention breaks down
in StreamingLLM because trained models park attention there (the "sinks"); a model without sinks should not care.
Writes a plot (nats/char per --bucket tokens against position) and the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from minigrok import attention as attn
from minigrok.checkpoint import load_gguf
from minigrok.dataset import load_split
from minigrok.evaluate import token_nats, window_starts
from minigrok.model import forward, init_cache
from minigrok.shipped import shipped_model

HERE = Path(__file__).resolve().parent


def stream_nats(params, config, tokens: np.ndarray, chunk: int) -> np.ndarray:
    """-log p(tokens[t+1] | what the pattern keeps of tokens[:t+1]) for every t, in nats: (n - 1,) float64.

    The tokens go through one KV cache, ``chunk`` at a time: a rolling cache for a bounded pattern, else one slot
    per token (dense attention then sees the whole stream, past config.context_length, which the caller raises).
    """
    inputs, targets = tokens[:-1], tokens[1:]
    cache = init_cache(config, 1, None if config.attention != "dense" else len(inputs))
    nats = []
    for a in range(0, len(inputs), chunk):
        logits = forward(params, config, inputs[None, a : a + chunk], cache)  # (1, c, vocab)
        nats.append(token_nats(logits, targets[None, a : a + chunk])[0])
    return np.concatenate(nats)


def recomputed_nats(params, config, tokens: np.ndarray) -> np.ndarray:
    """Per-token nats of the usual evaluation (minigrok.evaluate.evaluate_tokens, whose total it matches): windows
    of context_length tokens, half overlapping, each target scored in the first window that holds it with at
    least half a window of context. (n - 1,) float64."""
    W = config.context_length
    nats = np.full(len(tokens) - 1, np.nan)
    for s in window_starts(len(tokens), W, W // 2):
        x, y = tokens[None, s : s + W], tokens[None, s + 1 : s + W + 1]
        row = token_nats(forward(params, config, x), y)[0]  # (W,)
        fresh = np.isnan(nats[s : s + W])
        nats[s : s + W][fresh] = row[fresh]
    return nats


def attention_on_first_keys(params, config, tokens: np.ndarray, n_first: int) -> list[float]:
    """Per layer: the mean attention probability that queries in the last quarter of a context_length window put on
    its first ``n_first`` keys (all heads, 4 windows of the stream): the attention sinks StreamingLLM keeps. A sink
    shows as a share far above n_first / (number of keys seen)."""
    C = config.context_length
    x = tokens[: 4 * C].reshape(4, C)  # (4, C)
    probs = []
    real_attend = attn.attend

    def recording_attend(*args, **kwargs):  # record what model.forward's own attention computes
        out, p = real_attend(*args, **kwargs)
        probs.append(p)
        return out, p

    attn.attend = recording_attend
    try:
        forward(params, config, x)
    finally:
        attn.attend = real_attend
    per_layer = len(probs) // config.n_layers  # query blocks per layer; the last one holds the latest queries
    last = [probs[(i + 1) * per_layer - 1] for i in range(config.n_layers)]  # (4, n_kv, group, q, S) each
    return [float(p[..., -max(1, C // 4) :, :n_first].sum(-1).mean()) for p in last]


def per_bucket(nats: np.ndarray, chars: np.ndarray, bucket: int) -> np.ndarray:
    """nats/char of consecutive buckets of ``bucket`` predicted tokens: (n_buckets,)."""
    n = len(nats) // bucket * bucket
    return nats[:n].reshape(-1, bucket).sum(1) / chars[:n].reshape(-1, bucket).sum(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(shipped_model()), help="a dense-trained GGUF model")
    p.add_argument("--window-model", help="optional: a model trained with window attention, run with its pattern")
    p.add_argument("--window-attention", help="the window model's pattern, if its file does not record it")
    p.add_argument("--data", default="data/shakespeare", help="prepared data folder (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=8192, help="stream length in tokens (default: 8192)")
    p.add_argument("--chunk", type=int, default=256, help="tokens per forward call (default: 256)")
    p.add_argument("--sinks", type=int, default=4, help="S of sinks:S,W-S (default: 4)")
    p.add_argument("--window", type=int, help="W of window:W and sinks:S,W-S (default: the trained context)")
    p.add_argument("--bucket", type=int, default=256, help="tokens per point of the plot (default: 256)")
    p.add_argument("--out", default=str(HERE / "streaming_quality"), help="output path without suffix (.png, .json)")
    args = p.parse_args(argv)

    params, config, tokenizer = load_gguf(args.model)
    tokens = np.asarray(load_split(args.data, "val")[: args.tokens + 1], dtype=np.int64)
    C = config.context_length  # the trained context
    W = args.window or C
    chars = np.array([len(tokenizer.decode([int(t)]).replace("<|endoftext|>", "")) for t in tokens[1:]], float)
    sinks = f"sinks:{args.sinks},{W - args.sinks}"  # the same W cache entries as window:W
    runs = {
        f"dense (RoPE up to {len(tokens) - 1:,})": (params, config.replace(context_length=len(tokens))),
        f"window:{W}": (params, config.replace(attention=f"window:{W}")),
        sinks: (params, config.replace(attention=sinks)),
    }
    if args.window_model:
        wparams, wconfig, _ = load_gguf(args.window_model)
        wconfig = wconfig.replace(attention=args.window_attention or wconfig.attention)
        runs[f"window-trained model, {wconfig.attention}"] = (wparams, wconfig)

    results = {
        "model": args.model,
        "tokens": len(tokens) - 1,
        "chars": float(chars.sum()),
        "trained_context": C,
        "window": W,
    }
    reference = recomputed_nats(params, config, tokens)
    ref_curve = per_bucket(reference, chars, args.bucket)
    ref = float(reference.sum() / chars.sum())
    results["reference"] = {"nats_per_char": ref, "buckets": ref_curve.round(4).tolist()}
    print(f"{'reference: re-computed windows of ' + str(C):<44} {ref:.4f} nats/char overall")
    sink_share = attention_on_first_keys(params, config, tokens, args.sinks)
    results["attention_on_first_keys"] = {"n_first": args.sinks, "per_layer": [round(a, 4) for a in sink_share]}
    print(
        f"attention of late queries on the first {args.sinks} keys, per layer: "
        + " ".join(f"{a:.3f}" for a in sink_share)
        + f" (no preference: about {args.sinks / (0.875 * C):.3f})"
    )
    curves = {}
    for label, (run_params, run_config) in runs.items():
        nats = stream_nats(run_params, run_config, tokens, args.chunk)
        curves[label] = per_bucket(nats, chars, args.bucket)
        inside, past = slice(0, C), slice(C, None)
        results[label] = {
            "attention": run_config.attention,
            "nats_per_char": float(nats.sum() / chars.sum()),
            "nats_per_char_first_context": float(nats[inside].sum() / chars[inside].sum()),
            "nats_per_char_past_context": float(nats[past].sum() / chars[past].sum()),
            "nats_per_char_last_bucket": float(curves[label][-1]),
            "buckets": curves[label].round(4).tolist(),
        }
        print(
            f"{label:<44} {results[label]['nats_per_char']:.4f} nats/char overall | first {C} tokens "
            f"{results[label]['nats_per_char_first_context']:.4f} | past them "
            f"{results[label]['nats_per_char_past_context']:.4f} | last bucket {curves[label][-1]:.4f}"
        )
    Path(args.out + ".json").write_text(json.dumps(results, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), dpi=120, sharex=True, height_ratios=[3, 2])
    x = (np.arange(len(ref_curve)) + 0.5) * args.bucket  # bucket centres (tokens)
    top.plot(x, ref_curve, color="gray", linestyle=":", label=f"reference: re-computed windows of {C}")
    for label, curve in curves.items():
        top.plot(x, curve, marker="o", markersize=3, label=label)
        bottom.plot(x, curve - ref_curve, marker="o", markersize=3, label=label)
    bottom.axhline(0, color="gray", linestyle=":")
    for ax in (top, bottom):
        ax.axvline(C, color="black", linewidth=0.8, linestyle="--")
    top.text(C, top.get_ylim()[1], f" trained context {C}", va="top", fontsize=8)
    top.set_ylabel("held-out nats / char")
    bottom.set_ylabel("minus the reference")
    bottom.set_xlabel(f"position in the stream (tokens); one point per {args.bucket} tokens")
    top.set_title(f"{len(tokens) - 1:,} tokens of Hamlet as one stream, by attention pattern", fontsize=10)
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out + ".png")
    print(f"wrote {args.out}.png and {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
