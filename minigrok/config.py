"""Model hyperparameters: one dataclass, and the presets minigrok knows.

Every number a forward pass needs lives here, so a reader can see the whole architecture
at a glance. Values for the ``grok-1`` preset come from xai-org/grok-1: run.py sets the sizes (emb_size 48 * 128,
num_q_heads 48, num_kv_heads 8, key_size 128, num_layers 64, num_experts 8, num_selected_experts 2, vocab_size
128 * 1024, sequence_len 8192) and the multipliers (embedding_multiplier_scale 78.38367176906169,
attn_output_multiplier 0.08838834764831845, output_multiplier_scale 0.5773502691896257); model.py applies them and
soft-caps the attention logits at 30 (``max_attn_val``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Grok-style mixture-of-experts transformer.

    Attributes:
        vocab_size: number of token ids (tokens).
        d_model: width of the residual stream.
        n_layers: number of decoder layers.
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads (grouped-query attention); divides n_heads.
        head_dim: width of one attention head. llama.cpp's grok graph needs n_heads * head_dim == d_model.
        d_ff: hidden width of one GeGLU expert (llama.cpp: ``expert_feed_forward_length``).
        num_experts: experts per MoE layer.
        top_k: experts selected per token (Grok-1: 2).
        rope_theta: RoPE base frequency.
        rms_eps: epsilon inside RMSNorm's square root.
        embedding_multiplier: scales the embedding lookup (Grok-1: sqrt(6144)).
        attention_multiplier: scales q·k, in place of 1/sqrt(head_dim) (Grok-1: 1/sqrt(128)).
        attn_logit_softcap: c in c·tanh(s/c) on attention logits (Grok-1: 30); 0 turns it off.
        output_multiplier: scales the final logits (Grok-1: 1/sqrt(3)).
        renormalize_gates: False = xAI's raw top-k softmax probabilities as gates;
            True = llama.cpp's grok graph (build_moe_ffn with norm_w=true), gates divided by their sum.
        context_length: longest sequence the model is meant to see (tokens). Dense attention cannot go past it;
            a pattern with a bounded KV cache (window, sinks) can, with a rolling cache (minigrok.attention).
        attention: which keys each query may see: "dense", "window:W", "sinks:S,W" or
            "block:size=B,local=L,global=G,stride=R"; see :func:`parse_attention`. Stored in its canonical spelling.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    num_experts: int = 8
    top_k: int = 2
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    embedding_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    attn_logit_softcap: float = 30.0
    output_multiplier: float = 1.0
    renormalize_gates: bool = False
    context_length: int = 256
    attention: str = "dense"

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"invalid ModelConfig: {msg}")

        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
            "num_experts",
            "top_k",
            "context_length",
        ):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(
            self.n_heads % self.n_kv_heads == 0,
            f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})",
        )
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        need(self.top_k <= self.num_experts, f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        need(self.rms_eps > 0, f"rms_eps must be > 0, got {self.rms_eps}")
        need(self.attn_logit_softcap >= 0, f"attn_logit_softcap must be >= 0, got {self.attn_logit_softcap}")
        object.__setattr__(self, "attention", str(parse_attention(self.attention)))  # canonical spelling

    @property
    def pattern(self) -> AttentionPattern:
        """The attention pattern, parsed from ``attention``."""
        return parse_attention(self.attention)

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---- parameter arithmetic -------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """NumPy shapes of every tensor, keyed by llama.cpp's grok GGUF names.

        NumPy order is the reverse of GGML's ``ne``: a weight used as ``y = x @ W.T`` is (out, in).
        """
        d, hd = self.d_model, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.vocab_size, d),
            "output_norm.weight": (d,),
        }
        for i in range(self.n_layers):
            p = f"blk.{i}."
            shapes.update(
                {
                    p + "attn_norm.weight": (d,),
                    p + "attn_q.weight": (self.n_heads * hd, d),
                    p + "attn_k.weight": (self.n_kv_heads * hd, d),
                    p + "attn_v.weight": (self.n_kv_heads * hd, d),
                    p + "attn_output.weight": (d, self.n_heads * hd),
                    p + "attn_output_norm.weight": (d,),
                    p + "ffn_norm.weight": (d,),
                    p + "ffn_gate_inp.weight": (self.num_experts, d),
                    p + "ffn_gate_exps.weight": (self.num_experts, self.d_ff, d),
                    p + "ffn_up_exps.weight": (self.num_experts, self.d_ff, d),
                    p + "ffn_down_exps.weight": (self.num_experts, d, self.d_ff),
                    p + "layer_output_norm.weight": (d,),
                }
            )
        return shapes

    def n_params(self) -> int:
        """Total number of parameters (the unembedding is tied, so counted once)."""
        return sum(math.prod(s) for s in self.param_shapes().values())

    def n_active_params(self) -> int:
        """Parameters used per token: everything except the (num_experts - top_k) unselected experts."""
        expert = 3 * self.d_ff * self.d_model  # gate, up, down of one expert
        return self.n_params() - self.n_layers * (self.num_experts - self.top_k) * expert


@dataclass(frozen=True)
class AttentionPattern:
    """Which earlier positions a query may attend to; the masks themselves are in minigrok.attention.

    kind "dense": every earlier position (causal attention).
    kind "window": the last ``window`` positions, the query's own included (Mistral's sliding window, llama.cpp's
        LLAMA_SWA_TYPE_STANDARD).
    kind "sinks": the first ``sinks`` positions plus the last ``window`` (StreamingLLM's attention sinks).
    kind "block": the sequence cut into blocks of ``block`` positions; a query sees its own block and the
        ``local - 1`` blocks before it, the first ``global_blocks`` blocks, and every ``stride``-th block back
        (0 = none) (Sparse Transformer / BigBird style).
    All sizes are in tokens, except local, global_blocks and stride, which count blocks.
    """

    kind: str = "dense"
    window: int = 0
    sinks: int = 0
    block: int = 0
    local: int = 0
    global_blocks: int = 0
    stride: int = 0

    def __str__(self) -> str:
        if self.kind == "window":
            return f"window:{self.window}"
        if self.kind == "sinks":
            return f"sinks:{self.sinks},{self.window}"
        if self.kind == "block":
            return f"block:size={self.block},local={self.local},global={self.global_blocks},stride={self.stride}"
        return "dense"


ATTENTION_SYNTAX = "dense | window:W | sinks:S,W | block:size=B[,local=L][,global=G][,stride=R]"


@functools.lru_cache(maxsize=64)
def parse_attention(text: str) -> AttentionPattern:
    """Parse an attention pattern: "dense", "window:W", "sinks:S,W" or "block:size=B,local=L,global=G,stride=R".

    W >= 1 keys per query (its own position included), S >= 0 sink positions, B >= 1 tokens per block, L >= 1
    local blocks (own block included; default 1), G >= 0 global blocks (default 0), R >= 0 stride in blocks
    (default 0 = none). Raises ValueError naming the problem and the accepted syntax.
    """
    kind, _, args = str(text).strip().partition(":")
    kind = kind.strip().lower()

    def fail(problem: str):
        raise ValueError(f"bad attention pattern {text!r}: {problem}; expected {ATTENTION_SYNTAX}")

    def integer(value: str, name: str, low: int) -> int:
        try:
            n = int(value)
        except ValueError:
            fail(f"{name} must be an integer, got {value!r}")
        if n < low:
            fail(f"{name} must be >= {low}, got {n}")
        return n

    parts = [a.strip() for a in args.split(",")] if args.strip() else []
    if kind == "dense":
        if parts:
            fail("dense takes no arguments")
        return AttentionPattern()
    if kind == "window":
        if len(parts) != 1:
            fail("window takes one number, the window W in tokens")
        return AttentionPattern("window", window=integer(parts[0], "W", 1))
    if kind == "sinks":
        if len(parts) != 2:
            fail("sinks takes two numbers, S sink tokens and the window W")
        return AttentionPattern("sinks", sinks=integer(parts[0], "S", 0), window=integer(parts[1], "W", 1))
    if kind == "block":
        names = {"size": ("block", 1), "local": ("local", 1), "global": ("global_blocks", 0), "stride": ("stride", 0)}
        values, seen = {"local": 1}, set()
        for part in parts:
            name, eq, value = part.partition("=")
            if not eq or name.strip() not in names:
                fail(f"block arguments are name=value with names {', '.join(names)}, got {part!r}")
            if name.strip() in seen:
                fail(f"{name.strip()} is given twice; give each of {', '.join(names)} at most once")
            seen.add(name.strip())
            values[names[name.strip()][0]] = integer(value.strip(), name.strip(), names[name.strip()][1])
        if "block" not in values:
            fail("block needs size=B, the block size in tokens")
        return AttentionPattern("block", **values)
    fail(f"unknown kind {kind!r}")


def grok1_constants(d_model: int, head_dim: int) -> dict[str, float]:
    """Grok-1's multipliers expressed for any width: sqrt(d_model), 1/sqrt(head_dim), 1/sqrt(3)."""
    return {
        "embedding_multiplier": math.sqrt(d_model),
        "attention_multiplier": 1.0 / math.sqrt(head_dim),
        "output_multiplier": 1.0 / math.sqrt(3.0),
        "attn_logit_softcap": 30.0,
    }


PRESETS: dict[str, ModelConfig] = {
    # The real thing (xai-org/grok-1 run.py): 314 B parameters, ~86 B active per token.
    "grok-1": ModelConfig(
        vocab_size=131072,
        d_model=6144,
        n_layers=64,
        n_heads=48,
        n_kv_heads=8,
        head_dim=128,
        d_ff=32768,
        num_experts=8,
        top_k=2,
        rope_theta=10000.0,
        rms_eps=1e-5,
        embedding_multiplier=78.38367176906169,
        attention_multiplier=0.08838834764831845,
        attn_logit_softcap=30.0,
        output_multiplier=0.5773502691896257,
        renormalize_gates=False,
        context_length=8192,
    ),
    # The model we train on Shakespeare: Grok-1 scaled down, same shape of everything.
    "grok-mini": ModelConfig(
        vocab_size=4096,
        d_model=256,
        n_layers=6,
        n_heads=8,
        n_kv_heads=2,
        head_dim=32,
        d_ff=256,
        num_experts=8,
        top_k=2,
        context_length=256,
        **grok1_constants(256, 32),
    ),
    # A few-second model for tests and lessons.
    "grok-tiny": ModelConfig(
        vocab_size=512,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        d_ff=64,
        num_experts=4,
        top_k=2,
        context_length=64,
        **grok1_constants(64, 16),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``. Raises KeyError naming the presets that exist."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
