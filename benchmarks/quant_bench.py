"""What F32, F16, Q8_0 and Q4_0 weights cost in quality and gain in size, memory and speed, measured in one run.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/quant_bench.py \
        [--model weights/minigrok-shakespeare.gguf] [--data data/shakespeare] [--eval-tokens N] [--no-big]

1. The model is converted to all four types (``minigrok.quantize.convert``, as ``python -m minigrok quantize``),
   into a temporary folder. For each file, in a fresh subprocess so that its memory is its own:
   - generate: load, one warm-up, then prefill a --prompt-tokens prompt taken from the held-out text and decode
     --decode-tokens tokens greedily through the KV cache (minigrok.model.forward, as ``generate`` does);
     prefill and decode tokens/s, and the process's peak resident memory (ru_maxrss) and its peak during
     generation only (VmHWM, reset after loading through /proc/self/clear_refs);
   - eval: ``python -m minigrok eval FILE --json`` (nats per character of the held-out split; --eval-tokens N
     evaluates only its first N tokens).
2. The weight error of each format on the model's own attention and expert weights, with Grok-1's int8 scheme
   (one bf16 scale per output column; 8 groups for attn_output and ffn_down_exps) beside the block formats.
3. Unless --no-big: a random grok model large enough for decoding to be memory-bound (vocab 4096, d_model 1024,
   8 layers, 16 query / 4 KV heads, 8 experts top-2, d_ff 2048: 428 M parameters, 126 M active per token; its
   F32 weights read per token are ~500 MB, far beyond the caches) for the decode and prefill speed of each type.
   Random weights: no quality figures for it.
Prints Markdown and writes it to --out with the command and the machine; what follows the KEEP marker in an
existing --out file (the llama.cpp check, done by hand) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from minigrok.shipped import shipped_model

REPO = Path(__file__).resolve().parents[1]
KEEP = "<!-- written by hand: quant_bench.py keeps what follows this line when it rewrites the file -->"
NOTES = """
- peak RSS: the worker process's peak resident memory (VmHWM), while generating (reset after loading) and while
  loading. Both include the ~{runtime:.0f} MB the process holds before loading a model (Python, NumPy, Numba and
  LLVM, minigrok's kernels). Loading peaks higher because load_gguf copies each tensor out of the memory-mapped
  file, whose pages are resident at the same time.
- F16 files are upcast to float32 when loaded, so they run at F32's speed and memory; only the file is smaller.
- Q8_0/Q4_0 hold their blocks in memory as in the file (fp16 scales: 8.5 and 4.5 bits per weight). The token
  embedding (F16), norms and router are not quantized.
- Speed, one thread: in each worker the best of 3 prefills and the median decode step, after a warm-up; each
  file's worker runs --rounds times, the files in turn, and the best round counts."""
TYPES = ("f32", "f16", "q8_0", "q4_0")
LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


# ---- subprocess workers ------------------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    """A memory figure of this process in MB from /proc/self/status: VmRSS (now) or VmHWM (peak).
    Not ru_maxrss: a child started by vfork + exec inherits its parent's peak there."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def worker_generate(path: str, prompt_ids: list[int], n_decode: int) -> dict:
    """Load ``path``, then time prefills of ``prompt_ids`` (best of 3) and ``n_decode`` greedy decode steps
    (the median step: robust to a busy shared machine)."""
    from minigrok.checkpoint import load_gguf
    from minigrok.engine import forward  # what generate runs; loads Numba and its LLVM: counted in the runtime
    from minigrok.model import init_cache

    runtime_mb = _status_mb("VmRSS")
    params, config, _ = load_gguf(path)
    load_peak_mb = _status_mb("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: from here on, the peak of generation alone
    prompt = np.array([prompt_ids])
    warm = init_cache(config, 1, 8)  # warm-up: first-call costs (loading the Numba kernels' cache) are not timed
    forward(params, config, prompt[:, :4], warm)
    forward(params, config, prompt[:, 4:5], warm)

    prefill = []
    for _ in range(3):
        cache = init_cache(config, 1, len(prompt_ids) + n_decode)
        start = time.perf_counter()
        logits = forward(params, config, prompt, cache)  # (1, P, vocab)
        prefill.append(time.perf_counter() - start)
    token, steps = int(np.argmax(logits[0, -1])), []
    for _ in range(n_decode):
        start = time.perf_counter()
        logits = forward(params, config, np.array([[token]]), cache)  # (1, 1, vocab)
        token = int(np.argmax(logits[0, -1]))
        steps.append(time.perf_counter() - start)
    return {
        "prefill_tok_s": len(prompt_ids) / min(prefill),
        "decode_tok_s": 1 / float(np.median(steps)),
        "generate_peak_mb": _status_mb("VmHWM"),
        "load_peak_mb": load_peak_mb,
        "runtime_mb": runtime_mb,
    }


def run_worker(path: Path, prompt_ids: list[int], n_decode: int) -> dict:
    args = [sys.executable, __file__, "--worker", str(path), "--decode-tokens", str(n_decode)]
    proc = subprocess.run(args, input=json.dumps(prompt_ids), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker on {path} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_speed(paths: dict[str, Path], prompt_ids: list[int], n_decode: int, rounds: int) -> dict[str, dict]:
    """run_worker on every file, ``rounds`` times in turn; the best speed of each (the least disturbed by
    other work on a shared machine) and its largest peak memory."""
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for target, path in paths.items():
            gen = run_worker(path, prompt_ids, n_decode)
            b = best.setdefault(target, gen)
            for key in gen:
                b[key] = max(b[key], gen[key])
    return best


def run_eval(path: Path, data: str, eval_tokens: int | None) -> dict:
    args = [sys.executable, "-m", "minigrok", "eval", str(path), "--data", data, "--json"]
    if eval_tokens:
        args += ["--max-tokens", str(eval_tokens)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"eval of {path} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the measurements --------------------------------------------------------------------------------------------
def write_formats(params, config, tokenizer, folder: Path, stem: str, metadata=None) -> dict[str, Path]:
    """The model in each of TYPES, as ``python -m minigrok quantize`` writes it."""
    from minigrok.checkpoint import save_gguf
    from minigrok.quantize import convert

    paths = {}
    for target in TYPES:
        paths[target] = folder / f"{stem}-{target}.gguf"
        converted = convert(params, target)
        save_gguf(
            paths[target], converted, config, tokenizer, dtype="f32" if target == "f32" else "f16", metadata=metadata
        )
        del converted
    return paths


def weight_errors(params) -> list[tuple[str, float, float]]:
    """(scheme, bits per weight, relative RMS error ||W - W_hat|| / ||W||) over all attention and expert weights."""
    from minigrok.quant import QuantizedTensor, dequantize_int8_columns, quantize_int8_columns

    names = [n for n in params if n.startswith("blk.") and n.split(".")[2] in LINEAR]
    total = sum(float(np.sum(params[n].astype(np.float64) ** 2)) for n in names)
    n_weights = sum(params[n].size for n in names)
    rows = []
    for qtype, bits in (("q8_0", 8.5), ("q4_0", 4.5)):
        err = sum(
            float(np.sum((QuantizedTensor.from_float(params[n], qtype).dequantize() - params[n]) ** 2.0)) for n in names
        )
        rows.append((f"{qtype.upper()} (blocks of 32, fp16 scale)", bits, (err / total) ** 0.5))
    err, scale_bits = 0.0, 0
    for n in names:
        w = params[n].reshape(-1, params[n].shape[-1])  # experts stacked: (num_experts * out, in)
        groups = 8 if n.split(".")[2] in ("attn_output", "ffn_down_exps") else 1
        q, scales = quantize_int8_columns(w, groups)
        err += float(np.sum((dequantize_int8_columns(q, scales) - w) ** 2.0))
        scale_bits += 16 * scales.size
    rows.append(("Grok-1 int8, bf16 scale per output column", 8 + scale_bits / n_weights, (err / total) ** 0.5))
    return rows


def big_model(tokenizer):
    from minigrok.config import ModelConfig, grok1_constants
    from minigrok.model import init_params

    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=1024,
        n_layers=8,
        n_heads=16,
        n_kv_heads=4,
        head_dim=64,
        d_ff=2048,
        num_experts=8,
        top_k=2,
        context_length=512,
        **grok1_constants(1024, 64),
    )
    return init_params(config, seed=0), config


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(shipped_model()), help="GGUF model")
    p.add_argument("--data", default=str(REPO / "data" / "shakespeare"), help="prepared data folder (held-out split)")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate only the first N held-out tokens")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default: 128)")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps (default: 64)")
    p.add_argument("--rounds", type=int, default=3, help="speed runs per file, in turn; the best counts (default: 3)")
    p.add_argument("--no-big", dest="big", action="store_false", help="skip the memory-bound random model")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "quant_results.md"), help="Markdown output")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # a subprocess: prompt ids on stdin, one JSON line out
        print(json.dumps(worker_generate(args.worker, json.loads(sys.stdin.read()), args.decode_tokens)))
        return 0

    from minigrok.checkpoint import load_gguf, read_metadata
    from minigrok.dataset import load_split

    command = "OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/quant_bench.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out = [f"# Quantization: size, memory, quality, speed\n\nCommand: `{command}`\n", machine(), ""]
    params, config, tokenizer = load_gguf(args.model)
    val = np.asarray(load_split(args.data, "val"))
    prompt_ids = [int(t) for t in val[1000 : 1000 + args.prompt_tokens]]

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        paths = write_formats(params, config, tokenizer, Path(tmp), "model", read_metadata(args.model))
        rows = []
        base = None
        speed = measure_speed(paths, prompt_ids, args.decode_tokens, args.rounds)
        for target, path in paths.items():
            gen = speed[target]
            ev = run_eval(path, args.data, args.eval_tokens)
            base = base or ev["nats_per_char"]
            rows.append(
                [
                    target.upper(),
                    f"{path.stat().st_size / 1e6:.2f} MB",
                    f"{gen['generate_peak_mb']:.0f} MB",
                    f"{gen['load_peak_mb']:.0f} MB",
                    f"{ev['nats_per_char']:.4f}",
                    f"{100 * (ev['nats_per_char'] / base - 1):+.3f}%",
                    f"{gen['prefill_tok_s']:.0f}",
                    f"{gen['decode_tok_s']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
        n_eval = ev["tokens"]
    how_much = f"its first {args.eval_tokens} tokens" if args.eval_tokens else "the whole split"
    out.append(
        f"## {Path(args.model).name}: {config.n_params() / 1e6:.1f} M parameters, "
        f"{config.n_active_params() / 1e6:.1f} M active per token\n\n"
        f"Held-out: {n_eval:,} predicted tokens of the val split ({how_much}). Speed: prefill of "
        f"{args.prompt_tokens} tokens, then {args.decode_tokens} greedy decode steps, after a warm-up.\n"
    )
    header = [
        "type",
        "file",
        "peak RSS, generating",
        "peak RSS, loading",
        "nats/char",
        "vs F32",
        "prefill tok/s",
        "decode tok/s",
    ]
    out.append(table(header, rows))
    out.append(NOTES.format(runtime=gen["runtime_mb"]))
    out.append("\n### Weight error on this model's attention and expert weights\n")
    out.append(
        table(
            ["scheme", "bits/weight", "relative RMS error"],
            [[name, f"{bits:.2f}", f"{err:.4f}"] for name, bits, err in weight_errors(params)],
        )
    )
    if args.big:
        del params
        big_params, big_config = big_model(tokenizer)
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            paths = write_formats(big_params, big_config, tokenizer, Path(tmp), "big")
            del big_params
            rows, f32_decode = [], None
            speed = measure_speed(paths, prompt_ids, args.decode_tokens, args.rounds)
            for target, path in paths.items():
                gen = speed[target]
                f32_decode = f32_decode or gen["decode_tok_s"]
                rows.append(
                    [
                        target.upper(),
                        f"{path.stat().st_size / 1e6:.0f} MB",
                        f"{gen['generate_peak_mb']:.0f} MB",
                        f"{gen['load_peak_mb']:.0f} MB",
                        f"{gen['prefill_tok_s']:.0f}",
                        f"{gen['decode_tok_s']:.1f}",
                        f"{gen['decode_tok_s'] / f32_decode:.2f}x",
                    ]
                )
                print(rows[-1], flush=True)
        out.append(
            f"\n## Memory-bound decode: a random grok model, {big_config.n_params() / 1e6:.0f} M parameters, "
            f"{big_config.n_active_params() / 1e6:.0f} M active per token\n\nvocab {big_config.vocab_size}, "
            "d_model 1024, 8 layers, 16 query / 4 KV heads, 8 experts top-2, d_ff 2048; random weights (speed only). "
            f"Prefill {args.prompt_tokens} tokens, decode {args.decode_tokens}.\n"
        )
        out.append(
            table(
                [
                    "type",
                    "file",
                    "peak RSS, generating",
                    "peak RSS, loading",
                    "prefill tok/s",
                    "decode tok/s",
                    "decode vs F32",
                ],
                rows,
            )
        )
    text = "\n".join(out) + "\n"
    print(text)
    old = Path(args.out).read_text() if Path(args.out).exists() else ""
    if KEEP in old:  # notes written by hand below the marker survive a re-run
        text += "\n" + old[old.index(KEEP) :]
    Path(args.out).write_text(text)
    return 0


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    threads = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
    return (
        f"Machine: {cpu}, {os.cpu_count()} vCPU, Python {platform.python_version()}, NumPy {np.__version__}; "
        f"{', '.join(f'{k}={v}' for k, v in threads.items())}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        "Shared machine: compare rows of one run, not runs."
    )


if __name__ == "__main__":
    raise SystemExit(main())
