"""Command line: ``python -m minigrok COMMAND ...`` (``python -m minigrok COMMAND --help`` for each).

The CLI is thin: each command parses flags and calls the module that does the work. A command's module is imported
only when that command runs, so start-up (and ``--help``) stays fast. Expected failures (a missing file, a bad
checkpoint, a bad flag value) end with one line on stderr, ``minigrok: error: ...``, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import sys
from pathlib import Path

from .config import ATTENTION_SYNTAX, PRESETS, ModelConfig, get_preset, parse_attention
from .shipped import shipped_model

DEFAULT_MODEL = shipped_model()  # weights/minigrok-shakespeare.gguf, found from any install and working directory

# command -> (module with add_arguments(parser) and run(args) -> int, or None if defined in this file; help)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "generate": (None, "generate text from a GGUF model, streaming it as it is sampled"),
    "info": (None, "describe a model file or a preset: hyperparameters, parameter counts, memory"),
    "data": ("minigrok.train.data", "prepare a training corpus and tokenizer"),
    "train": ("minigrok.train.trainer", "train a model"),
    "eval": ("minigrok.evaluate", "evaluate a model on held-out text"),
    "quantize": ("minigrok.quantize", "convert a model's weights to Q8_0, Q4_0, F16 or F32"),
    "bench": (None, "speed: prefill, decode, first token, memory; vs llama.cpp, naive NumPy, memory bound"),
    "lessons": ("minigrok.lessons", "write the lessons' student edition: solutions stubbed (needs nbgrader)"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help (exit code 2, as argparse does)."""

    def error(self, message):
        self.exit(2, f"minigrok: error: {message} (see: {self.prog} --help)\n")


# ---- flag value types: bad values are rejected before any model is loaded ----------------------------------------
def _number(kind, low: float, high: float = math.inf, what: str = ""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (low <= value <= high):  # also rejects NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


def attention_pattern(text: str) -> str:
    """--attention values: checked (minigrok.config.parse_attention) and given in canonical spelling."""
    try:
        return str(parse_attention(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


ATTENTION_COMMANDS = ("generate", "eval", "train")  # commands that take --attention
ATTENTION_HELP = (
    f"attention pattern: {ATTENTION_SYNTAX} (default: the model's own, usually dense). "
    "window:W and sinks:S,W run past the context length with a rolling KV cache"
)

positive_int = _number(int, 1, what="an integer >= 1")
non_negative_int = _number(int, 0, what="an integer >= 0")
non_negative_float = _number(float, 0.0, 1e30, what="a number from 0 to 1e30")
probability = _number(float, 0.0, 1.0, what="a number in [0, 1]")


def _model_path(model: str | None) -> Path:
    """The model file to read: ``model`` if given, else the shipped default. Raises FileNotFoundError saying how to
    get one."""
    if model is not None:
        if not Path(model).is_file():
            what = "is a directory, not a GGUF file" if Path(model).is_dir() else "not found"
            raise FileNotFoundError(f"model file {model} {what}")
        return Path(model)
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            f"default model {DEFAULT_MODEL} not found; it ships in the repository's weights/ folder; if it is "
            "missing, train one with `python -m minigrok train --config configs/shakespeare.toml`, or pass -m MODEL"
        )
    return DEFAULT_MODEL


def _read_prompt_file(path: str) -> str:
    """The prompt in a UTF-8 text file, or a one-line error naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {path} " + ("is a directory, not a file" if p.is_dir() else "not found"))
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"prompt file {path} is not UTF-8 ({e.reason} at byte {e.start}); convert it, e.g. with "
            f"`iconv -f latin1 -t utf-8`"
        ) from None


# ---- generate ----------------------------------------------------------------------------------------------------
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help=f"GGUF model file (default: {DEFAULT_MODEL})")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("-p", "--prompt", default="ROMEO:", help="text to continue (default: %(default)s)")
    prompt.add_argument("--prompt-file", metavar="F", help="read the prompt from a UTF-8 file, used exactly as is")
    p.add_argument("-n", "--max-new-tokens", type=positive_int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("-t", "--temperature", type=non_negative_float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="sample from the K most likely tokens; 0 = off")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus sampling threshold in [0, 1]; off if unset")
    p.add_argument("-s", "--seed", type=non_negative_int, default=None, help="random seed (default: a fresh one)")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="print the text once, at the end")


def run_generate(args: argparse.Namespace) -> int:
    path = _model_path(args.model)
    prompt = args.prompt if args.prompt_file is None else _read_prompt_file(args.prompt_file)
    from .checkpoint import load_gguf
    from .generate import generate

    params, config, tokenizer = load_gguf(path, mmap=True)
    if args.attention is not None:
        config = config.replace(attention=args.attention)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    echoed = False

    def stream(text: str) -> None:  # the prompt is echoed with the first text, so a refused request prints nothing
        nonlocal echoed
        if not echoed:
            write(prompt)
            echoed = True
        write(text)

    result = generate(
        params,
        config,
        tokenizer,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        on_text=stream if args.stream else None,
    )
    if not echoed:
        write(prompt + result.text)
    write("\n")
    rate = lambda x: "-" if math.isnan(x) else f"{x:.1f}"  # noqa: E731
    print(
        f"generated {result.n_generated} tokens ({'end of text' if result.finish_reason == 'eot' else 'max -n'}) | "
        f"prefill: {result.n_prompt_tokens} tokens, {rate(result.prefill_tokens_per_second)} tok/s | "
        f"decode: {result.n_decode_steps} tokens, {rate(result.decode_tokens_per_second)} tok/s | "
        f"time to first token {result.time_to_first_token:.3f} s | kernel warm-up {result.warmup_seconds:.2f} s",
        file=sys.stderr,
    )
    return 0


# ---- info --------------------------------------------------------------------------------------------------------
# The types a model file can have (``python -m minigrok quantize``), as info prints them.
FILE_TYPES = ("f32", "f16", "Q8_0", "Q4_0")


def bytes_per_weight(stored: str) -> float:
    """Bytes per weight of a tensor stored as ``stored`` ("f32", "f16", "q8_0", "q4_0"): 4, 2, or a block of
    32 weights in quant.BLOCK_BYTES (34 bytes for Q8_0, 18 for Q4_0: ggml/src/ggml-common.h)."""
    from .quant import BLOCK_BYTES, QK

    return {"f32": 4.0, "f16": 2.0}.get(stored) or BLOCK_BYTES[stored] / QK


def weight_bytes(config: ModelConfig, dtype: str) -> tuple[int, int]:
    """(total, active per token) bytes of the weights in a ``dtype`` file (one of FILE_TYPES).

    Each tensor is priced at the type ``quantize`` stores it as (quant.storage_type: norm vectors and the router
    stay f32, the token embedding f16 in a Q8_0/Q4_0 file). Active = all but the (num_experts - top_k) unselected
    experts of each layer: roughly the bytes one decoded token reads.
    """
    from .quant import storage_type

    total = active = 0.0
    for name, shape in config.param_shapes().items():
        n_bytes = math.prod(shape) * bytes_per_weight(storage_type(name, len(shape), dtype.lower()))
        total += n_bytes
        active += n_bytes * (config.top_k / config.num_experts if "_exps." in name else 1.0)
    return round(total), round(active)


def human(n: float, unit: str = "") -> str:
    """Decimal prefixes: human(1.5e9) -> '1.50 B' (billions), human(1.5e9, 'B') -> '1.50 GB' (bytes)."""
    prefixes = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")) if unit else ((1e9, "B"), (1e6, "M"), (1e3, "K"))
    for factor, prefix in prefixes:
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("model", nargs="?", help=f"GGUF model file (default: {DEFAULT_MODEL})")
    which.add_argument("--preset", choices=list(PRESETS), help="describe a preset instead of a file")


def run_info(args: argparse.Namespace) -> int:
    if args.preset is not None:
        config, lines = get_preset(args.preset), [f"preset {args.preset}"]
    else:
        path = _model_path(args.model)
        import gguf

        from .checkpoint import read_config

        config = read_config(path)
        lines = [f"file {path}: {human(path.stat().st_size, 'B')}", "tensors by type:"]
        by_type: dict[str, list[int]] = {}
        for tensor in gguf.GGUFReader(path).tensors:
            row = by_type.setdefault(tensor.tensor_type.name, [0, 0, 0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + int(tensor.n_elements), row[2] + int(tensor.n_bytes)
        for type_name, (count, n_weights, n_bytes) in by_type.items():
            lines.append(
                f"  {type_name:<6} {count:>5} tensors  {human(n_weights):>10} weights  {human(n_bytes, 'B'):>10}"
            )

    lines.append("config:")
    lines += [f"  {name:<22} {value}" for name, value in vars(config).items()]
    total, active = config.n_params(), config.n_active_params()
    lines.append(f"parameters: {human(total)} total, {human(active)} active per token ({active / total:.1%})")
    lines.append("weights in a file of each type (as quantize stores them: norms and router f32, the token")
    lines.append("embedding f16 in Q8_0/Q4_0; bits/weight of the other tensors):")
    lines.append(f"  {'type':<6} {'bits/weight':>11} {'total':>12} {'active/token':>14}")
    for dtype in FILE_TYPES:
        total_bytes, active_bytes = weight_bytes(config, dtype)
        bits = 8 * bytes_per_weight(dtype.lower())
        lines.append(f"  {dtype:<6} {bits:>11.1f} {human(total_bytes, 'B'):>12} {human(active_bytes, 'B'):>14}")
    kv_bytes = 2 * config.n_layers * config.n_kv_heads * config.head_dim * config.context_length * 4
    lines.append(f"KV cache for {config.context_length} tokens (f32): {human(kv_bytes, 'B')} per sequence")
    print("\n".join(lines))
    return 0


# ---- bench: a script of the repository, benchmarks/bench.py -------------------------------------------------------
@functools.cache
def _bench():
    """benchmarks/bench.py, loaded once from the repository (the bench is not part of the installed package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the bench runs from a checkout of the minigrok repository")
    spec = importlib.util.spec_from_file_location("minigrok_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    _bench().add_arguments(p)


def run_bench(args: argparse.Namespace) -> int:
    return _bench().run(args)


# ---- dispatch ----------------------------------------------------------------------------------------------------
def build_parser(command: str | None) -> Parser:
    """The parser, with the arguments of ``command`` only (other commands' modules are not imported)."""
    parser = Parser(
        prog="python -m minigrok",
        description="minigrok: the Grok-1 mixture-of-experts transformer in readable NumPy.",
        epilog="Run 'python -m minigrok COMMAND --help' for the flags of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        if module_name is None:
            add_arguments, run = globals()[f"add_{name}_arguments"], globals()[f"run_{name}"]
        else:
            module = importlib.import_module(module_name)
            add_arguments, run = module.add_arguments, module.run
        add_arguments(sub)
        if name in ATTENTION_COMMANDS:
            sub.add_argument("--attention", type=attention_pattern, metavar="PATTERN", help=ATTENTION_HELP)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:  # a command's module imports the kernels, which check MINIGROK_INTEGER_DOT
        parser = build_parser(command if command in COMMANDS else None)
    except ValueError as e:
        print(f"minigrok: error: {e}", file=sys.stderr)
        return 1
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, so the message points at `python -m minigrok CMD --help`
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        sys.stdout.flush()
        return 130
    except BrokenPipeError:
        # stdout was closed early (e.g. `| head`): stop quietly (Python docs, signal module, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError) as e:  # missing files, CheckpointError (a ValueError), bad values
        message = str(e).replace("\n", " ")
        print(f"minigrok: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
