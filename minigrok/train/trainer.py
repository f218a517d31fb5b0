"""The training loop: ``python -m minigrok train --config configs/shakespeare.toml [--resume]``.

Random windows of the training tokens -> loss_and_grads (hand-written backward) -> gradient clipping -> AdamW
with warm-up and cosine decay. Deterministic for a seed: the batch of step s is drawn from a generator seeded with
(seed, s), so a run killed and resumed from a checkpoint follows the same loss curve as one that was never stopped.
A step whose loss or gradients are not finite (NaN or inf) is skipped: the weights and the AdamW state are left as
they were, the log and the progress bar count it, and after ``MAX_SKIPPED_IN_A_ROW`` such steps in a row the run
stops (its last good state written as the checkpoint). Ctrl-C (SIGINT) or SIGTERM lets the current step finish,
writes a checkpoint and returns; ``--resume`` then continues exactly as if the run had not been stopped.

Written to ``out_dir``: ``ckpt.gguf`` (the model, F32, loadable by ``generate``/``eval``/llama.cpp) with
``ckpt.opt.npz`` beside it (AdamW moments and step, plain arrays), both replaced atomically every few minutes and
at the end (and when stopped); ``log.jsonl`` (one JSON object per line: train steps, evaluations, expert load).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint import load_gguf, read_metadata, save_gguf
from ..config import ModelConfig, get_preset
from ..dataset import load_meta, load_split
from ..evaluate import token_nats
from ..fileio import atomic_write
from ..model import forward, init_params
from ..tokenizer import Tokenizer
from .backward import blas_threads, loss_and_grads
from .optim import AdamW, clip_grad_norm, lr_at

# A run stops once this many steps in a row had non-finite gradients: the weights are not going to recover.
MAX_SKIPPED_IN_A_ROW = 10


class TrainingDiverged(ValueError):
    """Too many steps in a row had a non-finite loss or gradients; the message says where the checkpoint is."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Loaded from a TOML file with [model], [data] and [train] tables."""

    preset: str = "grok-mini"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields that differ from the preset
    data_dir: str = "data/shakespeare"
    out_dir: str = "runs/shakespeare"
    seed: int = 1337
    batch_size: int = 16  # sequences per step
    max_steps: int = 1000
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.01  # Switch Transformer load-balancing loss
    z_loss_coef: float = 0.001  # ST-MoE router z-loss
    eval_interval: int = 100  # steps between validation losses
    eval_windows: int = 32  # validation windows (of context_length tokens) per evaluation
    checkpoint_minutes: float = 5.0
    init_from: str | None = None  # start from this GGUF's weights (fine-tuning) instead of a random init
    stop_after: int | None = None  # pause (with a checkpoint) after this many steps; --resume continues

    def __post_init__(self):
        positive = ("batch_size", "max_steps", "eval_interval", "eval_windows", "lr", "checkpoint_minutes")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"train setting {name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "warmup_steps", "weight_decay", "grad_clip", "aux_loss_coef", "z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train setting {name} must be >= 0, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if "vocab_size" in self.model_overrides:
            raise ValueError("[model] vocab_size comes from the data's tokenizer; remove it from the config")

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config file. Raises FileNotFoundError, or ValueError naming an unknown or mistyped key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found (example: configs/shakespeare.toml)")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
        for table, key in (("train", "max_steps"), ("data", "out_dir")):
            if key not in raw.get(table, {}):
                raise ValueError(f"{path}: [{table}] {key} is missing; every run config names it (see configs/)")
        model = dict(raw.get("model", {}))
        flat = {"preset": model.pop("preset", cls.preset), "model_overrides": model}
        flat.update(raw.get("data", {}))
        flat.update(raw.get("train", {}))
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in flat.items():
            if key not in known:
                raise ValueError(f"{path}: unknown setting {key!r}; known: {', '.join(known)}")
            default = known[key].default
            if isinstance(default, (int, float)) and not isinstance(value, (int, float)):
                raise ValueError(f"{path}: {key} must be a number, got {value!r}")
        return cls(**flat)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The preset with the overrides applied and the vocabulary of the prepared data."""
        try:
            return get_preset(self.preset).replace(vocab_size=vocab_size, **self.model_overrides)
        except KeyError as e:  # unknown preset
            raise ValueError(e.args[0]) from None
        except TypeError as e:  # an unknown ModelConfig field in [model]
            raise ValueError(f"[model] has a setting ModelConfig does not know: {e}") from None


def model_flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token: 6 per active weight (forward 2, backward 4; Kaplan et al. 2020), plus causal
    attention scores and weighted sums: 6·n_layers·T·n_heads·hd (half of the 12·L·T·d of PaLM's appendix B, because
    the causal mask halves the work). The tied (vocab_size, d_model) matrix is in n_active_params() once, which is
    right: the embedding lookup does no arithmetic and the unembedding is a full matmul."""
    active = config.n_active_params()  # the tied matrix once: as the unembedding
    attn = 6 * config.n_layers * config.context_length * config.n_heads * config.head_dim
    return 6.0 * active + attn


def measure_matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s) on n×n products, with NumPy's BLAS as configured
    (``blas_threads()`` threads): the denominator of the MFU the trainer logs."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e9


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator):
    """Random windows: inputs (B, T) and next-token targets (B, T), int64."""
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)  # (B,)
    x = np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64)  # (B, T)
    y = np.stack([tokens[s + 1 : s + seq_len + 1] for s in starts]).astype(np.int64)  # (B, T)
    return x, y


def validation_loss(params, config: ModelConfig, val_tokens: np.ndarray, n_windows: int) -> float:
    """Mean nats/token over ``n_windows`` fixed, evenly spaced windows of the validation tokens."""
    T = config.context_length
    starts = np.linspace(0, len(val_tokens) - T - 1, n_windows).astype(np.int64)
    total = 0.0
    for chunk in np.array_split(starts, max(1, n_windows // 8)):
        x = np.stack([val_tokens[s : s + T] for s in chunk]).astype(np.int64)  # (b, T)
        y = np.stack([val_tokens[s + 1 : s + T + 1] for s in chunk]).astype(np.int64)  # (b, T)
        total += float(np.sum(token_nats(forward(params, config, x), y)))
    return total / (n_windows * T)


def _save_checkpoint(out: Path, params, config, tokenizer, opt: AdamW, step: int, tokens_seen: int, elapsed: float):
    """Optimizer state first, then the model: both atomic; the model's metadata names the step it belongs to
    (``step`` batches drawn, of which ``step - opt.step`` were skipped for non-finite gradients)."""

    def write_npz(tmp: Path):
        with open(tmp, "wb") as f:  # a file object, so np.savez does not append ".npz" to the temp name
            np.savez(f, **opt.state_arrays())

    atomic_write(out / "ckpt.opt.npz", write_npz)
    meta = {
        "train.step": step,
        "train.skipped": step - opt.step,
        "train.tokens_seen": tokens_seen,
        "train.seconds": float(elapsed),
    }
    save_gguf(out / "ckpt.gguf", params, config, tokenizer, dtype="f32", metadata=meta)


def _init_from(path: str, config: ModelConfig) -> dict:
    """Weights of a trained model to fine-tune from; the tensors must have this run's shapes (the attention
    pattern, context length and multipliers may differ). Raises ValueError naming the first mismatch."""
    params, source, _ = load_gguf(path)
    want, have = config.param_shapes(), source.param_shapes()
    if want != have:
        name = next(k for k in want if have.get(k) != want[k])
        raise ValueError(f"init_from {path}: tensor {name} is {have.get(name)}, this run needs {want[name]}")
    return params


def _check_fits(cfg: TrainConfig, config: ModelConfig, n_train: int, n_val: int) -> None:
    """Refuse, before any work, a run whose windows do not fit the data or whose attention activations do not fit
    in memory: float32 probabilities and soft-cap slopes (batch, n_heads, T, T) kept for every layer, plus a few
    temporaries."""
    T = config.context_length
    if min(n_train, n_val) < T + 2:
        raise ValueError(
            f"context_length {T} needs at least {T + 2} tokens per split; the data has {n_train} train "
            f"and {n_val} val tokens: use a shorter context_length or more text"
        )
    need = 4 * cfg.batch_size * config.n_heads * T * T * (2 * config.n_layers + 3)  # bytes
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * have:
        raise ValueError(
            f"batch_size {cfg.batch_size} x context_length {T} needs about {need / 1e9:.0f} GB for "
            f"attention activations, this machine has {have / 1e9:.0f} GB; lower one of them"
        )


def _keep_on_resume(entry: dict, step: int) -> bool:
    """Log lines an unbroken run would also have at ``step``: not a "paused" marker, not past the checkpoint."""
    return entry.get("event") not in ("paused", "interrupted") and entry.get("step", 0) <= step


@contextmanager
def _stop_requests():
    """Within the block, SIGINT (Ctrl-C) and SIGTERM set ``requested[0]`` to the signal's number instead of
    stopping the process, so the loop can finish its step and write a checkpoint. A second signal stops at once
    (KeyboardInterrupt for SIGINT, the default action for SIGTERM). Outside the main thread, and for a signal the
    process was started ignoring (e.g. SIGINT in a shell's background job), nothing changes."""
    requested = [None]
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested[0] is not None:  # asked twice: stop now, the checkpoint before is left as it was
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
        requested[0] = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint (again to stop at once)",
            file=sys.stderr,
        )

    ignored = {sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) == signal.SIG_IGN}
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM) if sig not in ignored}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) training as configured. Returns a summary dict (also the last line of log.jsonl)."""
    data_meta = load_meta(cfg.data_dir)
    train_tokens = np.asarray(load_split(cfg.data_dir, "train"))
    val_tokens = np.asarray(load_split(cfg.data_dir, "val"))
    tokenizer = Tokenizer.load(Path(cfg.data_dir) / "tokenizer.json")
    config = cfg.model_config(tokenizer.vocab_size)
    T = config.context_length
    _check_fits(cfg, config, len(train_tokens), len(val_tokens))
    if cfg.warmup_steps > cfg.max_steps:
        print(
            f"warning: warmup_steps ({cfg.warmup_steps}) is larger than max_steps ({cfg.max_steps}), so the "
            f"learning rate never reaches lr ({cfg.lr:g}); lower warmup_steps",
            file=sys.stderr,
        )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

    opt_path, ckpt_path = out / "ckpt.opt.npz", out / "ckpt.gguf"
    tokens_seen, elapsed_before = 0, 0.0
    if resume and ckpt_path.is_file():
        params, ckpt_config, _ = load_gguf(ckpt_path)
        if ckpt_config != config:
            raise ValueError(f"{ckpt_path} was trained with a different model config; use a new out_dir")
        opt = AdamW(params, cfg.beta1, cfg.beta2, weight_decay=cfg.weight_decay)
        with np.load(opt_path, allow_pickle=False) as arrays:
            opt.load_state_arrays(arrays)
        meta = read_metadata(ckpt_path)
        step, skipped = int(meta["train.step"]), int(meta.get("train.skipped", 0))
        if step - skipped != opt.step:
            raise ValueError(f"{opt_path} (step {opt.step}) does not match {ckpt_path}; delete both to restart")
        tokens_seen, elapsed_before = int(meta["train.tokens_seen"]), float(meta["train.seconds"])
        # keep the log up to the checkpoint, so the resumed run appends the same lines an unbroken run would
        kept = [line for line in log_path.read_text().splitlines() if _keep_on_resume(json.loads(line), step)]
        log_path.write_text("".join(line + "\n" for line in kept))
    else:
        if resume:
            print(f"no checkpoint in {out}; starting from scratch", file=sys.stderr)
        elif ckpt_path.is_file():
            raise ValueError(
                f"{out} already holds a run (ckpt.gguf); continue it with --resume, or pick another --out-dir"
            )
        params = init_params(config, cfg.seed) if cfg.init_from is None else _init_from(cfg.init_from, config)
        opt = AdamW(params, cfg.beta1, cfg.beta2, weight_decay=cfg.weight_decay)
        step, skipped = 0, 0
        log_path.write_text("")

    matmul_gflops = measure_matmul_gflops()
    flops_per_token = model_flops_per_token(config)
    with open(log_path, "a") as log, _stop_requests() as stop_signal:
        if step == 0:
            header = {
                "event": "start",
                "config": dataclasses.asdict(config),
                "train": dataclasses.asdict(cfg),
                "n_params": config.n_params(),
                "n_active_params": config.n_active_params(),
                "train_tokens": len(train_tokens),
                "val_tokens": len(val_tokens),
                "matmul_gflops": matmul_gflops,
                "blas_threads": blas_threads(),
                "flops_per_token": flops_per_token,
            }
            log.write(json.dumps(header) + "\n")

        start = time.perf_counter()
        last_ckpt = start
        bar = tqdm(
            total=cfg.max_steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True
        )
        tok_per_s, last_val, in_a_row, saved_step = 0.0, float("nan"), 0, step
        step_seconds, first_step = 0.0, step  # time in steps (no evaluation, no checkpoints), for the summary MFU
        stop_at = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, cfg.stop_after)
        while step < stop_at and stop_signal[0] is None:
            t0 = time.perf_counter()
            x, y = get_batch(train_tokens, cfg.batch_size, T, np.random.default_rng((cfg.seed, step)))
            loss, grads, stats = loss_and_grads(params, config, x, y, cfg.aux_loss_coef, cfg.z_loss_coef)
            grad_norm = clip_grad_norm(grads, cfg.grad_clip)  # leaves non-finite gradients as they are
            lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            step += 1
            tokens_seen += x.size
            if math.isfinite(loss) and math.isfinite(grad_norm):
                opt.update(params, grads, lr)
                in_a_row = 0
            else:  # skip: params and AdamW moments untouched (one NaN would spread to every weight)
                skipped += 1
                in_a_row += 1
            dt = time.perf_counter() - t0
            tok_per_s = x.size / dt
            step_seconds += dt
            if in_a_row:
                entry = {"step": step, "skipped": f"loss {loss}, gradient norm {grad_norm}", "skipped_total": skipped}
            else:
                entry = {
                    "step": step,
                    "loss": loss,
                    "ce": stats["ce"],
                    "aux": stats["aux"],
                    "z": stats["z"],
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": tokens_seen,
                    "tok_per_s": round(tok_per_s, 1),
                    "mfu": round(tok_per_s * flops_per_token / (matmul_gflops * 1e9), 4),
                }
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                entry["val_loss"] = last_val = validation_loss(params, config, val_tokens, cfg.eval_windows)
                entry["expert_load"] = np.round(stats["expert_load"], 4).tolist()
            log.write(json.dumps(entry) + "\n")
            log.flush()
            postfix = {"loss": f"{stats['ce']:.3f}", "val": f"{last_val:.3f}", "tok_s": f"{tok_per_s:.0f}"}
            if skipped:
                postfix["skipped"] = skipped
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            now = time.perf_counter()
            diverged = in_a_row >= MAX_SKIPPED_IN_A_ROW
            if now - last_ckpt > 60 * cfg.checkpoint_minutes or step == stop_at or diverged:
                _save_checkpoint(out, params, config, tokenizer, opt, step, tokens_seen, elapsed_before + now - start)
                last_ckpt, saved_step = now, step
            if diverged:
                bar.close()
                raise TrainingDiverged(
                    f"stopped at step {step}: the last {in_a_row} steps had non-finite loss or gradients (NaN or "
                    f"inf) and were skipped; {ckpt_path} holds the weights from step {step - in_a_row} (untouched "
                    "since). Lower lr or grad_clip, or raise warmup_steps, then continue with --resume"
                )
        bar.close()
        elapsed = elapsed_before + time.perf_counter() - start
        step_tokens = (step - first_step) * cfg.batch_size * T
        if stop_signal[0] is not None and saved_step != step:  # stopped by a signal: keep every finished step
            _save_checkpoint(out, params, config, tokenizer, opt, step, tokens_seen, elapsed)
        if stop_signal[0] is not None and step < stop_at:
            event = "interrupted"
        else:
            event = "done" if step >= cfg.max_steps else "paused"
        summary = {
            "event": event,
            "step": step,
            "skipped": skipped,
            "tokens": tokens_seen,
            "seconds": round(elapsed, 1),
            "tok_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "matmul_gflops": round(matmul_gflops, 1),
            "blas_threads": blas_threads(),
            # steps of this process only, against the matmul rate measured at its start with the same threads
            "mfu": round(step_tokens / max(step_seconds, 1e-9) * flops_per_token / (matmul_gflops * 1e9), 4),
            "chars_per_token": data_meta["train"]["chars_per_token"],
        }
        if stop_signal[0] is not None:
            summary["signal"] = stop_signal[0]
        log.write(json.dumps(summary) + "\n")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="TOML run config, e.g. configs/shakespeare.toml")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/ckpt.gguf if it exists")
    p.add_argument("--max-steps", type=int, help="override max_steps (the cosine schedule follows it)")
    p.add_argument("--out-dir", help="override out_dir")
    p.add_argument(
        "--stop-after", type=int, metavar="STEPS", help="checkpoint and stop after this step; --resume goes on"
    )


def run(args) -> int:
    cfg = TrainConfig.from_toml(args.config)
    flags = {"stop_after": args.stop_after}
    if args.max_steps is not None:
        flags["max_steps"] = args.max_steps
    if args.out_dir is not None:
        flags["out_dir"] = args.out_dir
    cfg = dataclasses.replace(cfg, **flags)  # the flags are checked as the same values in the file would be
    if getattr(args, "attention", None) is not None:  # --attention PATTERN overrides the config file's [model]
        cfg.model_overrides["attention"] = args.attention
    summary = train(cfg, resume=args.resume)
    model = Path(cfg.out_dir) / "ckpt.gguf"
    if summary["event"] == "interrupted":
        print(
            f"interrupted ({signal.Signals(summary['signal']).name}) after step {summary['step']} of "
            f"{cfg.max_steps}: checkpoint written to {model}; continue with --resume",
            file=sys.stderr,
        )
    else:
        skipped = f", {summary['skipped']} skipped (non-finite gradients)" if summary["skipped"] else ""
        print(
            f"done: {summary['step']} steps{skipped}, {summary['tokens']:,} tokens in {summary['seconds']:.0f} s "
            f"({summary['tok_per_s']:.0f} tok/s); model in {model}"
        )
    return 128 + summary["signal"] if "signal" in summary else 0
