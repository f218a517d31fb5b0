"""The mixture-of-experts feed-forward layer: router, top-k selection, gates, dispatch, GeGLU experts, combine.

Grok-1 (xai-org/grok-1 model.py, ``Router`` and ``MoELayer``): router logits in float32 from a bias-free
linear map, softmax over all experts, the top-2 experts per token, each a GeGLU FFN
``down(gelu(x @ gate) * (x @ up))``, outputs summed with the router probabilities as weights.
"""

from __future__ import annotations

import numpy as np

from .layers import gelu_tanh, linear, softmax


def route(x: np.ndarray, w_router: np.ndarray, top_k: int, renormalize: bool):
    """Pick top_k experts per token and their gates.

    x (N, d_model); w_router (num_experts, d_model) (GGUF ``ffn_gate_inp``).
    Returns expert_ids (N, top_k) int, best first, ties going to the lowest id; gates (N, top_k) float32;
    probs (N, num_experts) float32, the softmax over all experts.
    renormalize=False is xAI's rule (raw probabilities as gates); True is llama.cpp's grok graph
    (build_moe_ffn with norm_w=true): gates divided by their sum.
    """
    dtype = np.result_type(x, w_router, np.float32)  # float32 at least, as Grok-1's router (float64 in grad checks)
    router_logits = x.astype(dtype, copy=False) @ w_router.T.astype(dtype, copy=False)  # (N, num_experts)
    probs = softmax(router_logits, axis=-1)  # (N, num_experts)
    expert_ids = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]  # (N, top_k): stable -> lowest id on ties
    gates = np.take_along_axis(probs, expert_ids, axis=-1)  # (N, top_k)
    if renormalize:
        gates = gates / np.sum(gates, axis=-1, keepdims=True)  # (N, top_k)
    return expert_ids, gates, probs


def expert_ffn(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """One GeGLU expert: ``down(gelu_tanh(x @ gate.T) * (x @ up.T))``.

    x (n, d_model); w_gate, w_up (d_ff, d_model); w_down (d_model, d_ff) -> (n, d_model).
    The weights may be float arrays or quantized (``linear`` dispatches).
    """
    hidden = gelu_tanh(linear(x, w_gate)) * linear(x, w_up)  # (n, d_ff)
    return linear(hidden, w_down)  # (n, d_model)


def moe(x: np.ndarray, w: dict, top_k: int, renormalize: bool) -> np.ndarray:
    """The MoE layer for any number of tokens: each expert runs only on the tokens routed to it.

    x (..., d_model); w the layer's tensors by short GGUF name: "ffn_gate_inp" (num_experts, d_model) (the router),
    "ffn_gate_exps", "ffn_up_exps" (num_experts, d_ff, d_model), "ffn_down_exps" (num_experts, d_model, d_ff).
    Returns (..., d_model) float32.
    """
    w_router, w_gate, w_up, w_down = w["ffn_gate_inp"], w["ffn_gate_exps"], w["ffn_up_exps"], w["ffn_down_exps"]
    x2 = x.reshape(-1, x.shape[-1])  # (N, d_model): every token of every sequence
    expert_ids, gates, _ = route(x2, w_router, top_k, renormalize)  # (N, top_k) each
    out = np.zeros_like(x2)  # (N, d_model)
    for e in range(w_router.shape[0]):
        tokens, slot = np.nonzero(expert_ids == e)  # which tokens chose expert e, and in which of their k slots
        if tokens.size == 0:
            continue
        y = expert_ffn(x2[tokens], w_gate[e], w_up[e], w_down[e])  # (n_e, d_model)
        out[tokens] += gates[tokens, slot, None] * y  # a token picks an expert at most once: no index repeats
    return out.reshape(x.shape)  # (..., d_model)
