"""Text generation: prefill the prompt through a KV cache, then decode one token at a time.

    prompt --encode--> ids --forward(all ids)--> logits[-1] --sample--> token        (prefill)
    token  --forward(one id, cache)----------> logits[-1] --sample--> next token   (decode, repeated)

Timing is reported the way llama2.c (run.c) and llama.cpp's llama-bench do: prompt tokens per second of prefill,
generated tokens per second of decode, and the time to the first sampled token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .attention import kv_cache_size
from .config import ModelConfig
from .engine import forward, warm_up
from .model import init_cache
from .sampling import check_sampling_args, sample


@dataclass
class GenerationResult:
    """What one call to :func:`generate` produced, and how fast.

    Attributes:
        text: the generated text, without the prompt and without the end-of-text token.
        prompt_ids: the prompt's token ids ([eot_id] for an empty prompt).
        token_ids: the sampled token ids, in order; ends with eot_id when finish_reason == "eot".
        finish_reason: "eot" (the model sampled the end-of-text token) or "length" (max_new_tokens reached).
        prefill_seconds: wall time of the forward pass over the prompt (seconds).
        decode_seconds: wall time of the decode steps, each one single-token forward plus one sample (seconds).
        time_to_first_token: from the start of prefill until the first token was sampled (seconds).
        warmup_seconds: a throwaway single-token step run before the clock starts, which loads the compiled
            kernels (Numba's on-disk cache; a compile on the very first run). Not part of the other timings,
            as llama2.c starts its clock after the first token.
    """

    text: str
    prompt_ids: list[int]
    token_ids: list[int]
    finish_reason: str
    prefill_seconds: float
    decode_seconds: float
    time_to_first_token: float
    warmup_seconds: float = 0.0

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_generated(self) -> int:
        """Tokens sampled: the first one from the prefill logits, the rest from decode steps."""
        return len(self.token_ids)

    @property
    def n_decode_steps(self) -> int:
        """Single-token forward passes run (the first token comes from prefill, so n_generated - 1)."""
        return max(self.n_generated - 1, 0)

    @property
    def prefill_tokens_per_second(self) -> float:
        """Prompt tokens / prefill seconds (NaN if the clock measured 0)."""
        return _rate(self.n_prompt_tokens, self.prefill_seconds)

    @property
    def decode_tokens_per_second(self) -> float:
        """Decode steps / decode seconds (NaN if there were no decode steps)."""
        return _rate(self.n_decode_steps, self.decode_seconds)


def _rate(n: int, seconds: float) -> float:
    return n / seconds if n > 0 and seconds > 0 else float("nan")


def generate(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    on_text: Callable[[str], object] | None = None,
) -> GenerationResult:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens, streaming the text as it is decoded.

    Args:
        params: the model's tensors, keyed by GGUF name (see minigrok.model).
        config: the model's hyperparameters.
        tokenizer: a minigrok Tokenizer (encode, eot_id, vocab_size, stream_decoder).
        prompt: text to continue; an empty prompt starts from the end-of-text token, as GPT-2 does.
        max_new_tokens: most tokens to sample (>= 1); generation also stops after the end-of-text token.
        temperature, top_k, top_p: see minigrok.sampling.sample. temperature 0 is greedy.
        seed: seed of the numpy Generator used for sampling; None draws one from the OS.
        on_text: called with each piece of text as soon as it forms whole UTF-8 characters.

    Returns:
        A GenerationResult (text, ids, timings).

    Raises:
        ValueError: if max_new_tokens < 1, a sampling argument is invalid, or (dense attention only) the prompt plus
            max_new_tokens does not fit in config.context_length. All checked before the model runs. With a bounded
            pattern (config.attention window:W or sinks:S,W) generation runs past the context length, in a rolling
            KV cache of at most W or S + W entries.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_sampling_args(temperature, top_p)
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    n_total = len(prompt_ids) + max_new_tokens
    bounded = kv_cache_size(config.pattern)  # keys a query can see: None for dense attention
    if bounded is None and n_total > config.context_length:
        raise ValueError(
            f"the prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({max_new_tokens}) is {n_total} tokens, "
            f"more than this model's context length of {config.context_length}; use a smaller -n or a shorter "
            f"prompt, or an attention pattern with a rolling cache (--attention sinks:4,{config.context_length - 4})"
        )

    rng = np.random.default_rng(seed)
    # A bounded pattern keeps at most kv_cache_size entries (a rolling cache, so memory stays flat however long
    # the text); dense attention needs one slot per token.
    cache = init_cache(config, batch_size=1, max_len=n_total if bounded is None else min(n_total, bounded))
    decoder = tokenizer.stream_decoder()
    pieces: list[str] = []
    token_ids: list[int] = []

    def next_token(logits: np.ndarray) -> int:
        # (vocab,) scores of the last position; ids past the tokenizer's vocabulary (padding) are never sampled.
        return sample(logits[0, -1, : tokenizer.vocab_size], temperature, top_k, top_p, rng)

    def emit(token: int) -> None:
        token_ids.append(token)
        if token != tokenizer.eot_id:
            text = decoder.push(token)
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

    warmup_start = time.perf_counter()
    warm_up(params, config)  # loads the compiled kernels (compiles them the first time, and says so)
    warmup_seconds = time.perf_counter() - warmup_start

    start = time.perf_counter()
    logits = forward(params, config, np.array([prompt_ids]), cache)  # (1, n_prompt, vocab)
    prefill_seconds = time.perf_counter() - start
    token = next_token(logits)
    time_to_first_token = time.perf_counter() - start
    emit(token)

    decode_seconds = 0.0
    while token_ids[-1] != tokenizer.eot_id and len(token_ids) < max_new_tokens:
        step_start = time.perf_counter()
        logits = forward(params, config, np.array([[token_ids[-1]]]), cache)  # (1, 1, vocab)
        token = next_token(logits)
        decode_seconds += time.perf_counter() - step_start
        emit(token)  # streaming time is not counted as decode time

    tail = decoder.flush()
    if tail:
        pieces.append(tail)
        if on_text is not None:
            on_text(tail)
    return GenerationResult(
        text="".join(pieces),
        prompt_ids=list(prompt_ids),
        token_ids=token_ids,
        finish_reason="eot" if token_ids[-1] == tokenizer.eot_id else "length",
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        time_to_first_token=time_to_first_token,
        warmup_seconds=warmup_seconds,
    )
