"""``python -m minigrok bench [--json]``: minigrok's speed next to llama.cpp, a naive NumPy loop and the memory bound.

A script of the repository (benchmarks/bench.py), not part of the package: ``python -m minigrok bench`` loads it
from here, and it runs each measurement as ``python benchmarks/bench.py --worker SPEC`` in a fresh process.

Models: ``shipped`` (weights/minigrok-shakespeare.gguf, or --model) and ``large``, a random grok model big enough
that decoding is limited by memory bandwidth (d_model 1024, 8 layers, 16 query / 4 KV heads, 8 experts top-2,
d_ff 2048, vocab 4096: 428 M parameters, 126 M active per token, 1.7 GB at F32). Types: F32, Q8_0 and Q4_0: the
model file itself if it has that type, else a conversion made with ``python -m minigrok quantize``. Engines, each
run in its own process, one after the other, all with --threads threads (OpenBLAS and Numba for minigrok,
n_threads for llama.cpp):

    minigrok        generate's loop: the prompt in one forward through a KV cache, then one token per forward, greedy,
                    through minigrok/engine.py: decode steps in compiled code (minigrok/kernels/decode.py)
    minigrok-numpy  the same loop on the readable NumPy model.forward throughout (engine.forward(compiled=False))
    llama.cpp       llama-cpp-python on the same GGUF file (skipped if it is not installed)
    naive           no KV cache: each new token recomputes the whole sequence (picoGPT's loop); F32 only

Every engine runs --rounds times (default 2), the engines alternating within each round, and the best run is kept
(its decode and the faster prefill of its runs): on a shared machine a noisy minute then hits every engine.
Measured per engine: prefill tokens/s (a --prompt-tokens prompt in one forward; median of 3), decode tokens/s
(--decode-tokens greedy steps after the prompt and 2 untimed ones), time to first token (prompt in -> first token
chosen, the first prompt the process sees, so it includes compiling or loading cached kernels), start to first
token (process launch -> first token: imports, model load, compile) and the peak resident memory of the process
(VmHWM).

The bound: decode tokens/s <= bandwidth / bytes one decode step reads, where the bytes are the file's tensors with
only top_k of num_experts experts counted (the token embedding counts whole: it is also the unembedding), and the
bandwidth is measured in the same run: the faster of a one-thread NumPy sum over 1 GiB and a --threads
matrix-vector product over 512 MiB (both far larger than the caches). A model that fits in the caches (the
shipped one) can beat this DRAM bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minigrok.shipped import shipped_model

LARGE = dict(
    vocab_size=4096, d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4, head_dim=64, d_ff=2048,
    num_experts=8, top_k=2, context_length=1024,
)  # fmt: skip
ENGINES = ("minigrok", "minigrok-numpy", "llama.cpp", "naive")
TYPES = ("f32", "q8_0", "q4_0")
MODELS = ("shipped", "large")
WARM_UP = 2  # untimed decode steps: the first one of a process compiles or loads the decode-path kernels
SHIPPED = shipped_model()  # the 'shipped' model, unless --model names another


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


# ---- command line ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown tables")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, help="threads for every engine")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: shipped, large (default: both)")
    p.add_argument("--types", default=",".join(TYPES), help="comma-separated: f32, q8_0, q4_0 (default: all)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    p.add_argument("--model", help=f"the 'shipped' model file (default: {SHIPPED})")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="prompt length (default: 128)")
    p.add_argument("--decode-tokens", type=positive_int, default=64, help="greedy decode steps (default: 64)")
    p.add_argument("--naive-decode-tokens", type=positive_int, default=8, help="decode steps of naive (default: 8)")
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="runs of every engine, alternating; the best is kept (default: 2)",
    )
    p.add_argument("--workdir", help="where to write the large model and quantized files (default: a temp folder)")


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return items


def run(args: argparse.Namespace) -> int:
    from minigrok.checkpoint import read_config

    models = _choices(args.models, MODELS, "--models")
    types = _choices(args.types, TYPES, "--types")
    engines = _choices(args.engines, ENGINES, "--engines")
    if "llama.cpp" in engines and not _has_llama_cpp():
        if engines == ["llama.cpp"]:
            raise ValueError("--engines llama.cpp needs llama-cpp-python, not installed: pip install llama-cpp-python")
        print(
            "minigrok: llama-cpp-python is not installed: no llama.cpp rows (pip install llama-cpp-python)",
            file=sys.stderr,
        )
        engines.remove("llama.cpp")
    context = {"large": LARGE["context_length"]}
    if "shipped" in models:
        shipped = Path(args.model) if args.model else SHIPPED
        if not shipped.is_file():
            what = "is a directory, not a GGUF file" if shipped.is_dir() else "not found"
            raise FileNotFoundError(f"model file {shipped} {what}; name one with --model, or run --models large only")
        context["shipped"] = read_config(shipped).context_length  # a CheckpointError names what is wrong
    decode = max(args.decode_tokens, args.naive_decode_tokens)
    tokens = args.prompt_tokens + WARM_UP + decode
    for model in models:  # refused before any worker starts: a prompt past the context would run for minutes
        if tokens > context[model]:
            raise ValueError(
                f"--prompt-tokens {args.prompt_tokens}, {WARM_UP} warm-up steps and up to {decode} decode steps make "
                f"{tokens} tokens, more than the {model} model's context of {context[model]}; ask for fewer"
            )

    # SIGTERM ends the bench as Ctrl-C does: subprocess.run then kills the running worker instead of orphaning it
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="minigrok-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        flags = sys.argv[sys.argv.index("bench") + 1 :] if "bench" in sys.argv else []
        report = {
            "machine": machine(args.threads),
            "command": shlex.join(["python", "-m", "minigrok", "bench", *flags]),
        }
        _log(f"measuring memory bandwidth with {args.threads} threads")
        report["bandwidth"] = _worker({"task": "bandwidth"}, args.threads)
        files = {}
        for model in models:
            source = shipped if model == "shipped" else workdir / "large-f32.gguf"
            if model == "large" and not source.is_file():
                _log(f"writing the large random model to {source}")
                _worker({"task": "make-large", "path": str(source)}, args.threads)
            source_type = _worker({"task": "bytes", "path": str(source)}, args.threads)["weight_type"]
            for qtype in types:  # the file itself if it has that type, else a conversion by the quantize command
                path = source if qtype == source_type else workdir / f"{model}-{qtype}.gguf"
                if not path.is_file():
                    _log(f"converting {source.name} to {qtype}")
                    _quantize(source, path, qtype, args.threads)
                files[(model, qtype)] = path

        best: dict[tuple, dict] = {}  # (model, type, engine) -> its best run
        sizes = {key: _worker({"task": "bytes", "path": str(path)}, args.threads) for key, path in files.items()}
        for round_ in range(1, args.rounds + 1):  # engines alternate within each round: a noisy minute hits them all
            for (model, qtype), path in files.items():
                for engine in engines:
                    if engine == "naive" and qtype != "f32":
                        continue
                    _log(f"round {round_}/{args.rounds}: {model} {qtype} {engine}")
                    spec = {
                        "task": "engine", "engine": engine, "path": str(path), "threads": args.threads,
                        "prompt_tokens": args.prompt_tokens,
                        "decode_tokens": args.naive_decode_tokens if engine == "naive" else args.decode_tokens,
                    }  # fmt: skip
                    row = {"model": model, "type": qtype, "engine": engine, **sizes[model, qtype]}
                    best[model, qtype, engine] = _best(
                        best.get((model, qtype, engine)), {**row, **_worker(spec, args.threads)}
                    )
        report["rounds"] = args.rounds
        report["rows"] = _with_ratios(list(best.values()), report["bandwidth"]["bandwidth_gb_s"])
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return 0


def _best(old: dict | None, new: dict) -> dict:
    """The better of two runs of one engine: the faster decode's row, with the faster prefill of the two."""
    if old is None:
        return new
    row = dict(max(old, new, key=lambda r: r["decode_tok_s"]))
    row["prefill_tok_s"] = max(old["prefill_tok_s"], new["prefill_tok_s"])
    return row


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _quantize(src: Path, dst: Path, qtype: str, threads: int) -> None:
    cmd = [sys.executable, "-m", "minigrok", "quantize", str(src), str(dst), "--type", qtype]
    done = subprocess.run(cmd, env=_thread_env(threads), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")


def _thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {**os.environ, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}


def _worker(spec: dict, threads: int) -> dict:
    """Run one measurement in a fresh process (its own thread settings and peak memory); its last stdout line is
    the JSON result."""
    spec = {**spec, "launched": time.time()}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, env=_thread_env(threads), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {spec['task']} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _with_ratios(rows: list[dict], bandwidth_gb_s: float) -> list[dict]:
    """Each row gets decode vs llama.cpp (same model and type), vs naive (same model, F32), and vs the bound."""
    by_key = {(r["model"], r["type"], r["engine"]): r for r in rows}
    for r in rows:
        llama = by_key.get((r["model"], r["type"], "llama.cpp"))
        naive = by_key.get((r["model"], "f32", "naive"))
        r["decode_vs_llama_cpp"] = r["decode_tok_s"] / llama["decode_tok_s"] if llama else None
        r["prefill_vs_llama_cpp"] = r["prefill_tok_s"] / llama["prefill_tok_s"] if llama else None
        r["decode_vs_naive"] = r["decode_tok_s"] / naive["decode_tok_s"] if naive else None
        r["bound_tok_s"] = bandwidth_gb_s * 1e9 / r["active_bytes_per_token"]
        r["decode_vs_bound"] = r["decode_tok_s"] / r["bound_tok_s"]
    return rows


# ---- reporting ---------------------------------------------------------------------------------------------------
def machine(threads: int) -> dict:
    """CPU model, cores, memory, threads used, and the library versions (no heavy imports here)."""
    cpuinfo = _read("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    mem = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo") if line.startswith("MemTotal")), 0)
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    from minigrok.llamacpp import configuration

    versions = {}
    for name in ("numpy", "numba"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:  # not installed
            versions[name] = None
    field = lambda key: next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith(key)), "")  # noqa: E731
    from minigrok.kernels import INTEGER_DOT

    return {
        "cpu": cpu or platform.processor(),
        "cpu_kind": cpu_kind(cpu or platform.processor(), field("cpu family"), field("model\t")),
        "cpu_family": field("cpu family"),
        "cpu_model_number": field("model\t"),
        "cores": os.cpu_count(),
        "ram_gb": round(mem / 1e9, 1),
        "simd": [f for f in ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "amx_int8") if f in flags],
        "flags": flags,
        "integer_dot": INTEGER_DOT,  # minigrok's Q8_0/Q4_0 kernels on this CPU: "vnni" or "portable"
        "threads": threads,
        "python": platform.python_version(),
        **versions,
        **configuration(),  # llama_cpp_python (version), extra_bufts, extra_bufts_why
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def cpu_kind(name: str, family: str, model: str) -> str:
    """A file-name-safe label for a kind of CPU, e.g. "amd-epyc-f26-m2": the model name (virtual machines often
    show only "AMD EPYC") with the cpu family and model numbers, which tell generations apart. Results files are
    named by it (benchmarks/results-<kind>.json): speed holds per kind of CPU."""
    words = re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*|\bprocessor\b", " ", name.lower())
    slug = "-".join(re.findall(r"[a-z0-9]+", words)) or "unknown-cpu"
    return slug + (f"-f{family}" if family else "") + (f"-m{model}" if model else "")


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def markdown(report: dict) -> str:
    m, bw = report["machine"], report["bandwidth"]
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    llama = "llama-cpp-python not installed"
    if m.get("llama_cpp_python") and "extra_bufts" in m:
        repack = f"{'on' if m['extra_bufts'] else 'off'}: {m['extra_bufts_why']}"
        llama = f"llama-cpp-python {m['llama_cpp_python']} (extra buffer types, i.e. weight repacking, {repack})"
    elif m.get("llama_cpp_python"):  # results written before the bench recorded llama.cpp's configuration
        llama = f"llama-cpp-python {m['llama_cpp_python']}"
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    n = report.get("rounds", 1)
    rounds = "one run per engine" if n == 1 else f"each engine's best of {n} runs, alternating"
    lines = [
        f"Machine: {m['cpu']} ({m.get('cpu_kind', '?')}), {m['cores']} cores ({', '.join(m['simd'])}), "
        f"{m['ram_gb']} GB RAM; {threads}; minigrok's integer kernels: {m.get('integer_dot', '?')}; "
        f"Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}, {llama}; {m['date']}.",
        f"Command: `{report['command']}` ({rounds})",
        f"Memory bandwidth: {bw['bandwidth_gb_s']:.1f} GB/s (NumPy sum, 1 thread: {bw['sum_gb_s']:.1f} GB/s; "
        f"matrix-vector, {threads}: {bw['matvec_gb_s']:.1f} GB/s).",
        "",
        "| model | type | engine | prefill tok/s | decode tok/s | time to 1st token s | start to 1st token s "
        "| peak RSS MB | decode / llama.cpp | prefill / llama.cpp | decode / naive | bound tok/s | decode / bound |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['type']} | {r['engine']} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} "
            f"| {r['ttft_s']:.3f} | {r['start_to_first_token_s']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {fmt(r['decode_vs_llama_cpp'], '.2f')} | {fmt(r['prefill_vs_llama_cpp'], '.2f')} "
            f"| {fmt(r['decode_vs_naive'], '.1f')} | {r['bound_tok_s']:.0f} | {r['decode_vs_bound']:.2f} |"
        )
    decode = {(r["model"], r["type"], r["engine"]): r["decode_tok_s"] for r in report["rows"]}
    pays = [
        f"{model} {engine}: Q8_0 {decode[model, 'q8_0', engine] / f32:.2f}x, "
        f"Q4_0 {decode[model, 'q4_0', engine] / f32:.2f}x"
        for (model, qtype, engine), f32 in decode.items()
        if qtype == "f32" and (model, "q8_0", engine) in decode and (model, "q4_0", engine) in decode
    ]
    if pays:
        lines += ["", "Decode speed of Q8_0 and Q4_0 over the same engine's F32: " + "; ".join(pays) + "."]
    sizes = {(r["model"], r["type"]): r for r in report["rows"]}
    lines += ["", "| model | type | file MB | read per decoded token MB |", "|---|---|--:|--:|"]
    for (model, qtype), r in sizes.items():
        lines.append(f"| {model} | {qtype} | {r['file_bytes'] / 1e6:.1f} | {r['active_bytes_per_token'] / 1e6:.1f} |")
    return "\n".join(lines)


# ---- workers: each runs in its own process -----------------------------------------------------------------------
def prompt_ids(vocab_size: int, n: int):
    """The benchmark prompt: n token ids drawn uniformly (seed 0), never the last id (the end-of-text token)."""
    import numpy as np

    return np.random.default_rng(0).integers(0, vocab_size - 1, n)


def _bandwidth() -> dict:
    import numpy as np

    a = np.ones(1 << 28, np.float32)  # 1 GiB
    sum_s = min(_timed(a.sum) for _ in range(3))
    del a
    w = np.ones((16384, 8192), np.float32)  # 512 MiB
    x = np.ones(8192, np.float32)
    matvec_s = min(_timed(lambda: w @ x) for _ in range(5))
    sum_gb_s, matvec_gb_s = (1 << 30) / sum_s / 1e9, w.nbytes / matvec_s / 1e9
    return {"sum_gb_s": sum_gb_s, "matvec_gb_s": matvec_gb_s, "bandwidth_gb_s": max(sum_gb_s, matvec_gb_s)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _make_large(path: str) -> dict:
    from minigrok.checkpoint import save_gguf
    from minigrok.config import ModelConfig, grok1_constants
    from minigrok.model import init_params
    from minigrok.tokenizer import Tokenizer

    config = ModelConfig(**LARGE, **grok1_constants(LARGE["d_model"], LARGE["head_dim"]))
    # A byte-level BPE of exactly vocab_size tokens: the 256 bytes, then two-character tokens of letters and digits.
    chars = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    pairs = [bytes([a, b]) for a in chars for b in chars][: config.vocab_size - 257]
    tokenizer = Tokenizer([bytes([b]) for b in range(256)] + pairs)
    save_gguf(path, init_params(config, seed=0), config, tokenizer, metadata={"bench": "random weights"})
    return {"path": path}


def _bytes(path: str) -> dict:
    """File size, the bytes one decode step reads (every tensor, but only top_k / num_experts of the experts) and
    the type of the attention weights ("f32", "f16", "q8_0", "q4_0")."""
    import gguf

    from minigrok.checkpoint import read_config

    config = read_config(path)
    active, weight_type = 0.0, "f32"
    for t in gguf.GGUFReader(path).tensors:
        share = config.top_k / config.num_experts if "_exps." in t.name else 1.0
        active += int(t.n_bytes) * share
        if t.name == "blk.0.attn_q.weight":
            weight_type = t.tensor_type.name.lower()
    return {"file_bytes": os.path.getsize(path), "active_bytes_per_token": active, "weight_type": weight_type}


def _engine(spec: dict) -> dict:
    import numpy as np

    engine, n_prompt, n_decode = spec["engine"], spec["prompt_tokens"], spec["decode_tokens"]
    run_prompt, step = (_llama_engine if engine == "llama.cpp" else _minigrok_engine)(
        spec, n_prompt + WARM_UP + n_decode
    )
    start = time.perf_counter()
    token = run_prompt()
    ttft = time.perf_counter() - start
    first_token_at = time.time()
    for _ in range(WARM_UP):
        token = step(token)
    tokens = []
    start = time.perf_counter()
    for _ in range(n_decode):
        token = step(token)
        tokens.append(token)
    decode_s = time.perf_counter() - start
    prefill_s = statistics.median(_timed(run_prompt) for _ in range(3))
    return {
        "prefill_tok_s": n_prompt / prefill_s,
        "decode_tok_s": n_decode / decode_s,
        "ttft_s": ttft,
        "start_to_first_token_s": first_token_at - spec["launched"],
        "peak_rss_mb": peak_rss_mb(),
        "decoded": [int(t) for t in np.asarray(tokens)[:8]],  # the first greedy tokens, to compare engines
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM from /proc/self/status, which exec resets. (ru_maxrss also
    counts the parent's memory at fork, which exec carries over: Linux exec_mmap.) ru_maxrss where there is no /proc."""
    for line in _read("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _minigrok_engine(spec: dict, max_len: int):
    """(run_prompt, step) for minigrok: run_prompt() -> first token (a fresh KV cache), step(token) -> next token."""
    import numpy as np

    from minigrok import engine, model
    from minigrok.checkpoint import load_gguf

    params, config, _ = load_gguf(spec["path"], mmap=True)
    ids = prompt_ids(config.vocab_size, spec["prompt_tokens"])
    if spec["engine"] == "naive":  # no cache: each token recomputes everything (picoGPT's generate loop)
        sequence: list[int] = []

        def run_prompt():
            sequence[:] = ids.tolist()
            return int(np.argmax(engine.forward(params, config, np.array([sequence]))[0, -1]))

        def step(token):
            sequence.append(token)
            return int(np.argmax(engine.forward(params, config, np.array([sequence]))[0, -1]))

        return run_prompt, step

    compiled = spec["engine"] == "minigrok"  # minigrok-numpy: the readable NumPy model.forward throughout
    state = {}

    def run_prompt():
        state["cache"] = model.init_cache(config, 1, max_len)
        return int(np.argmax(engine.forward(params, config, ids[None], state["cache"], compiled)[0, -1]))

    def step(token):
        return int(np.argmax(engine.forward(params, config, np.array([[token]]), state["cache"], compiled)[0, -1]))

    return run_prompt, step


def _llama_engine(spec: dict, max_len: int):
    """(run_prompt, step) for llama.cpp via llama-cpp-python, on the same file, prompt and threads."""
    import numpy as np

    from minigrok.llamacpp import open_llama

    llm = open_llama(  # extra buffer types (weight repacking) off on CPUs with AMX, where they crash
        spec["path"],
        n_ctx=max_len,
        n_batch=spec["prompt_tokens"],
        n_ubatch=spec["prompt_tokens"],
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
    )
    vocab = llm.n_vocab()
    ids = prompt_ids(vocab, spec["prompt_tokens"]).tolist()

    def last_token() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,))))

    def run_prompt():
        llm.reset()
        llm.eval(ids)
        return last_token()

    def step(token):
        llm.eval([token])
        return last_token()

    return run_prompt, step


def _worker_main(spec: dict) -> None:
    task = spec["task"]
    if task == "bandwidth":
        result = _bandwidth()
    elif task == "make-large":
        result = _make_large(spec["path"])
    elif task == "bytes":
        result = _bytes(spec["path"])
    else:
        result = _engine(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit("run the benchmark with: python -m minigrok bench --help")
