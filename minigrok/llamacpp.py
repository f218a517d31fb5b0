"""llama.cpp beside minigrok, safely: the parity tests and the bench run it on the same GGUF files.

llama.cpp comes from llama-cpp-python (an optional install that builds it from source). Two precautions, both for
machines this project runs on:

- **No AMX weight repacking.** On CPUs with AMX (``amx_int8`` in /proc/cpuinfo: Intel Xeon Sapphire Rapids and
  later) llama.cpp repacks Q8_0/Q4_0 weights into its AMX buffer type, and its AMX matrix product segfaults
  (``ggml_backend_amx_mul_mat``; ggml-org/llama.cpp #20824, closed without a fix). :func:`open_llama` turns
  llama.cpp's extra buffer types off there: ``llama_model_params.use_extra_bufts`` (llama.h), which
  llama-cpp-python 0.3.36 sets from its default-params function and offers no keyword for. Elsewhere they stay
  on, as llama.cpp ships (on AVX2/AVX-512 they repack Q4_0 into its faster 8x8-interleaved layout). Repacking
  changes llama.cpp's speed, so the bench reports which configuration ran (:func:`configuration`).
- **A native crash is one failure, not the end of the run.** :class:`LlamaCpp` runs llama.cpp in a child process
  (``python -m minigrok.llamacpp``, one JSON request per line on stdin, one reply per line); if that process dies,
  the call raises :class:`LlamaCppCrashed` naming the signal, and the next call starts a fresh one.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MAX_OPEN_MODELS = 4  # llama.cpp models a child keeps loaded (least recently used dropped first)


class LlamaCppCrashed(RuntimeError):
    """llama.cpp's child process died (a native crash) while answering a request."""


class LlamaCppError(RuntimeError):
    """llama.cpp refused a request (e.g. a file it cannot load); the message is its own."""


@functools.cache
def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True if the CPU lists AMX (``amx_int8`` or ``amx_tile``) among its flags; False where that is unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_int8" in flags or "amx_tile" in flags


def extra_bufts_default() -> bool:
    """Whether llama.cpp may use its extra buffer types (weight repacking) here: not on a CPU with AMX."""
    return not cpu_has_amx()


def configuration(extra_bufts: bool | None = None) -> dict:
    """What llama.cpp runs with, for reports: the llama-cpp-python version and whether repacking was on, and why."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("llama-cpp-python")
    except PackageNotFoundError:
        installed = None
    on = extra_bufts_default() if extra_bufts is None else extra_bufts
    why = "CPU has AMX: ggml-org/llama.cpp #20824" if cpu_has_amx() and not on else "llama.cpp's default"
    return {"llama_cpp_python": installed, "extra_bufts": on, "extra_bufts_why": why}


def open_llama(path, *, extra_bufts: bool | None = None, **kwargs):
    """``llama_cpp.Llama(model_path=path, verbose=False, **kwargs)`` with llama.cpp's extra buffer types on or off
    (default: :func:`extra_bufts_default`). Runs llama.cpp in this process: see :class:`LlamaCpp` for a child.
    Raises ImportError without llama-cpp-python, ValueError if llama.cpp cannot load the file."""
    import llama_cpp
    from llama_cpp import llama_cpp as lib

    on = extra_bufts_default() if extra_bufts is None else extra_bufts
    default_params = lib.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = on
        return p

    lib.llama_model_default_params = params  # read by Llama.__init__ (llama_cpp/llama.py), for this call only
    try:
        return llama_cpp.Llama(model_path=str(path), **{"verbose": False, **kwargs})
    finally:
        lib.llama_model_default_params = default_params


# ---- the child process -------------------------------------------------------------------------------------------
def _encode(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "float32": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["float32"]), dtype=np.float32).reshape(d["shape"])


def _answer(llm, request: dict):
    op = request["op"]
    if op == "logits":  # (T, vocab) for ids at positions 0..T-1, one batch, a fresh KV cache
        llm.reset()
        llm.eval(request["ids"])
        return _encode(np.asarray(llm.scores[: llm.n_tokens], dtype=np.float32))
    if op == "greedy":  # the prompt in one batch, then one token per decode call
        llm.reset()
        llm.eval(request["ids"])
        out: list[int] = []
        while len(out) < request["n"]:
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if out[-1] == request["eot_id"]:
                break
            llm.eval([out[-1]])
        return out
    if op == "tokenize":
        return llm.tokenize(request["text"].encode("utf-8"), add_bos=False, special=False)
    if op == "detokenize":
        return base64.b64encode(llm.detokenize(request["ids"])).decode("ascii")
    raise ValueError(f"unknown request {op!r}")


def _serve() -> None:
    """The child: read requests from stdin, answer on the original stdout. llama.cpp's own prints go to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    models: dict[str, object] = {}  # model spec (JSON) -> llama_cpp.Llama, least recently used first
    for line in sys.stdin:
        request = json.loads(line)
        key = json.dumps(request["model"], sort_keys=True)
        try:
            if key not in models:
                if len(models) >= MAX_OPEN_MODELS:
                    models.pop(next(iter(models))).close()
                spec = dict(request["model"])
                models[key] = open_llama(spec.pop("path"), **spec)
            models[key] = models.pop(key)  # most recently used last
            reply = {"ok": _answer(models[key], request)}
        except Exception as e:  # a refusal, not a crash: reported to the caller, the child carries on
            reply = {"error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class _Child:
    """One child process running :func:`_serve`, started on first use and again after a crash."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.stderr = None

    def request(self, request: dict):
        if self.proc is None or self.proc.poll() is not None:
            self.stderr = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "minigrok.llamacpp"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                text=True,
            )
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise LlamaCppCrashed(self._obituary(request))
        reply = json.loads(line)
        if "error" in reply:
            raise LlamaCppError(f"llama.cpp on {request['model']['path']}: {reply['error']}")
        return reply["ok"]

    def _obituary(self, request: dict) -> str:
        code = self.proc.wait()
        self.proc = None
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        self.stderr.seek(0)
        tail = self.stderr.read().decode("utf-8", "replace").strip().splitlines()[-5:]
        return (
            f"llama.cpp's process died with {how} during {request['op']!r} on {request['model']['path']} "
            f"(extra buffer types {'on' if request['model']['extra_bufts'] else 'off'})"
            + (": " + " | ".join(tail) if tail else "")
        )

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.proc = None


_child = _Child()


class LlamaCpp:
    """llama.cpp on one GGUF file, answered by a child process (shared by every LlamaCpp of this process).

    path: the GGUF file. n_ctx: context length (tokens). n_threads: llama.cpp's threads. f32_cache: K/V cache in
    F32 (False: llama.cpp's default, F16). vocab_only: load only the tokenizer. extra_bufts: weight repacking (None:
    :func:`extra_bufts_default`). Each call raises LlamaCppCrashed if the child dies (the next call starts a fresh
    one) and LlamaCppError if llama.cpp refuses the request.
    """

    def __init__(
        self,
        path,
        *,
        n_ctx: int = 256,
        n_threads: int = 1,
        f32_cache: bool = True,
        vocab_only: bool = False,
        extra_bufts: bool | None = None,
    ):
        cache_type = 0 if f32_cache else None  # GGML_TYPE_F32 = 0 (ggml.h); None = llama.cpp's default, F16
        self.model = {
            "path": str(path),
            "n_ctx": n_ctx,
            "n_threads": n_threads,
            "n_threads_batch": n_threads,
            "logits_all": True,
            "type_k": cache_type,
            "type_v": cache_type,
            "vocab_only": vocab_only,
            "extra_bufts": extra_bufts_default() if extra_bufts is None else extra_bufts,
        }

    @property
    def pid(self) -> int | None:
        """The id of the child process that answers (None before the first call or after a crash)."""
        return None if _child.proc is None else _child.proc.pid

    def _call(self, op: str, **args):
        return _child.request({"op": op, "model": self.model, **args})

    def logits(self, ids: list[int]) -> np.ndarray:
        """llama.cpp's logits (T, vocab) float32 for ids at positions 0..T-1 (one batch, a fresh KV cache)."""
        return _decode(self._call("logits", ids=[int(i) for i in ids]))

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eot_id: int) -> list[int]:
        """llama.cpp's greedy continuation: the prompt in one batch, then one token per decode call (KV cache)."""
        return self._call("greedy", ids=[int(i) for i in prompt_ids], n=max_new_tokens, eot_id=eot_id)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's token ids for text (no BOS, special tokens as plain text)."""
        return self._call("tokenize", text=text)

    def detokenize(self, ids: list[int]) -> bytes:
        """The bytes llama.cpp decodes ids to."""
        return base64.b64decode(self._call("detokenize", ids=[int(i) for i in ids]))


if __name__ == "__main__":
    _serve()
