"""The lessons as a course: nbgrader markup, the student edition, and exercise checks that reject wrong answers.

The solved notebooks (the answer key) run under nbmake like any test. Here each notebook's student edition
(``minigrok.lessons.student_notebook``: nbgrader's ClearSolutions and ClearOutput) is executed once, top to bottom,
in one kernel. At every autograded check cell we assert that the check fails with the stub, then with each wrong
answer listed in WRONG_ANSWERS, and finally passes once the answer key's solution cells are run, so the rest of the
notebook continues from a solved state. A check that a wrong answer passes is a defect, so every check must have at
least one wrong answer here.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from minigrok import __main__ as cli
from minigrok.lessons import student_notebook

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))

GQA = """\
def gqa_attention(q, k, v, multiplier, cap, window=None):
    T, n_heads, _ = q.shape
    group = n_heads // k.shape[0]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    visible = (j <= i) if window is None else (j <= i) & (i - j < window)
    out = np.empty_like(q)
    for h in range(n_heads):
        scores = (q[:, h] @ k[h // group].T) * multiplier
        scores = cap * np.tanh(scores / cap)
        scores = np.where(visible, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, h] = (probs / probs.sum(-1, keepdims=True)) @ v[h // group]
    return out
"""

ROUTER = """\
def route_by_hand(x, w_router, top_k, renormalize):
    logits = x @ w_router.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ids = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
    g = np.take_along_axis(p, ids, axis=-1)
    if renormalize:
        g = g / g.sum(-1, keepdims=True)
    return ids, g, p
"""

FILTERS = """\
def top_k_by_hand(p, k):
    if k <= 0 or k >= len(p):
        return p / p.sum()
    keep = np.argsort(-p, kind="stable")[:k]
    out = np.zeros_like(p)
    out[keep] = p[keep]
    return out / out.sum()


def top_p_by_hand(p, top_p):
    order = np.argsort(-p, kind="stable")
    mass_before = np.cumsum(p[order]) - p[order]
    kept = mass_before < top_p
    kept[0] = True
    keep = order[kept]
    out = np.zeros_like(p)
    out[keep] = p[keep]
    return out / out.sum()
"""

Q4_QUANTIZER = """\
def quantize_q4_0_rows(w):
    blocks = w.reshape(-1, 32)
    m = np.take_along_axis(blocks, np.argmax(np.abs(blocks), axis=1)[:, None], axis=1)
    d = m / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.minimum(15, np.trunc(blocks * inv_d + np.float32(8.5))).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    out = np.concatenate([d.astype("<f2").view(np.uint8), packed], axis=1)
    return out.reshape(w.shape[0], -1)
"""

Q4_BYTES = """\
def q4_0_bytes_per_token(c):
    attn = c.n_heads * c.head_dim * c.d_model * 2 + c.n_kv_heads * c.head_dim * c.d_model * 2
    experts = c.top_k * 3 * c.d_ff * c.d_model
    per_layer_q4 = (attn + experts) * 18 / 32
    per_layer_f32 = 4 * (c.num_experts * c.d_model + 4 * c.d_model)
    return c.n_layers * (per_layer_q4 + per_layer_f32) + 2 * c.vocab_size * c.d_model + 4 * c.d_model
"""


def edit(old: str, new: str):
    """A wrong answer made from the answer key's solution: its source with old replaced by new."""

    def wrong(solution: str) -> str:
        assert old in solution, f"{old!r} is not in the solution any more"
        return solution.replace(old, new)

    return wrong


# notebook -> check's grade_id -> wrong solutions: source code, or edit(...) of the answer key's solution cells
WRONG_ANSWERS: dict[str, dict[str, list]] = {
    "00_overview.ipynb": {
        "ex1-count-check": [
            edit("c.n_kv_heads * c.head_dim * c.d_model * 2", "c.n_heads * c.head_dim * c.d_model * 2"),  # no GQA
            edit("c.n_layers * 4 * c.d_model + c.d_model", "c.n_layers * 4 * c.d_model"),  # the final norm
            edit("c.n_heads * c.head_dim * c.d_model * 2", "c.d_model * c.d_model * 2"),  # d_model for n_heads*head_dim
        ],
        "ex2-devices-check": [  # rounds down: 4 devices cannot hold 335 GB
            "def devices_needed(config, dtype, device_bytes):\n"
            "    return int(weight_bytes(config, dtype)[0] // device_bytes)\n",
            "def devices_needed(config, dtype, device_bytes):\n"  # one too many at exact multiples
            "    return int(weight_bytes(config, dtype)[0] // device_bytes) + 1\n",
            "def devices_needed(config, dtype, device_bytes):\n"  # all at dtype: no f32 norms, no f16 embedding
            "    return math.ceil(config.n_params() * BYTES_PER_WEIGHT[dtype] / device_bytes)\n",
        ],
        "ex3-kv-cache-check": [  # every query head cached: plain multi-head attention
            "def kv_bytes_per_token(config, bytes_per_number):\n"
            "    return 2 * config.n_layers * config.n_heads * config.head_dim * bytes_per_number\n",
            "def kv_bytes_per_token(config, bytes_per_number):\n"  # K only
            "    return config.n_layers * config.n_kv_heads * config.head_dim * bytes_per_number\n",
        ],
        "ex4-active-check": [  # top_k of the experts idle instead of num_experts - top_k
            "def active_fraction(config):\n"
            "    parts = count_by_hand(config)\n"
            "    return 1 - parts['experts'] * config.top_k / config.num_experts / sum(parts.values())\n"
        ],
    },
    "01_tokenization.ipynb": {
        "ex-merge-step-check": [
            edit("i += 2", "i += 1"),  # overlapping matches: a a a -> [aa] [aa] a
            edit(
                "min(counts, key=lambda pair: (-counts[pair], pair))",
                "max(counts, key=lambda pair: (counts[pair], pair))",
            ),
        ],
        "ex1-bpe-encode-check": [
            "def bpe_encode_chunk(chunk, merges):\n"  # merges applied latest first
            "    ids = list(chunk)\n"
            "    for i in reversed(range(len(merges))):\n"
            "        ids = merge_pair(ids, merges[i], 256 + i)\n"
            "    return ids\n",
            "def bpe_encode_chunk(chunk, merges):\n"  # only the first merge
            "    return merge_pair(list(chunk), merges[0], 256)\n",
        ],
        "ex2-n-merges-check": ["def n_merges_for(vocab_size):\n    return vocab_size - 256\n"],  # forgets the EOT
        "ex3-held-back-check": [
            "def held_back(tokenizer, text):\n    return 2\n",  # the count of the example only
            "def held_back(tokenizer, text):\n    return sum(ord(ch) > 127 for ch in text)\n",  # non-ASCII chars
        ],
    },
    "02_embeddings_norm_rope.ipynb": {
        "ex1-knee-check": ["def knee(eps):\n    return eps\n", "def knee(eps):\n    return 1 / np.sqrt(2)\n"],
        "ex2-rope-sequence-check": [
            "def rope_one_head(x, theta):\n"  # positions 1..T: off by one
            "    out = np.stack([rope_by_hand(row, t + 1) for t, row in enumerate(x)])\n"
            "    return out\n",
            "def rope_one_head(x, theta):\n"  # neighbouring pairs instead of rotate-half
            "    return np.stack([rope_interleaved_wrong(row, t) for t, row in enumerate(x)])\n"
            "def rope_interleaved_wrong(x, pos):\n"
            "    out = x.copy()\n"
            "    for i in range(len(x) // 2):\n"
            "        a = pos * theta ** (-2 * i / len(x))\n"
            "        out[2 * i] = np.cos(a) * x[2 * i] - np.sin(a) * x[2 * i + 1]\n"
            "        out[2 * i + 1] = np.sin(a) * x[2 * i] + np.cos(a) * x[2 * i + 1]\n"
            "    return out\n",
        ],
        "ex3-rope-interleaved-check": [
            "def rope_interleaved(x, pos):\n    return rope_by_hand(x, pos)\n",  # rotate-half again
            "def rope_interleaved(x, pos):\n"  # neighbouring pairs, but the angle of pair 2i
            "    out = np.empty_like(x)\n"
            "    for i in range(len(x) // 2):\n"
            "        a = pos * theta ** (-4 * i / len(x))\n"
            "        out[2 * i] = np.cos(a) * x[2 * i] - np.sin(a) * x[2 * i + 1]\n"
            "        out[2 * i + 1] = np.sin(a) * x[2 * i] + np.cos(a) * x[2 * i + 1]\n"
            "    return out\n",
        ],
    },
    "03_attention.ipynb": {
        "ex1-largest-ratio-check": ["def largest_ratio(cap):\n    return np.exp(cap)\n"],
        "ex2-kv-head-check": ["def kv_head_of(h, n_heads, n_kv_heads):\n    return h % n_kv_heads\n"],
        "ex3-cache-size-check": [
            "def cache_nbytes(config, batch_size, max_len):\n"  # every query head cached
            "    return 2 * config.n_layers * batch_size * config.n_heads * max_len * config.head_dim * 4\n"
        ],
        "ex4-decode-step-check": [
            edit("k_cache[h // group] @ q[h]", "k_cache[h % k_cache.shape[0]] @ q[h]"),  # interleaved head map
            edit("scores = cap * np.tanh(scores / cap)", "pass"),  # no soft-cap
            edit("probs / probs.sum() @ v_cache[h // group]", "v_cache[h // group][-1]"),  # only the newest token
        ],
        "ex5-gqa-attention-check": [
            GQA.replace("scores = cap * np.tanh(scores / cap)", "pass  # no soft-cap"),
            GQA.replace("k[h // group]", "k[h % k.shape[0]]").replace("v[h // group]", "v[h % k.shape[0]]"),
            GQA.replace("i - j < window", "i - j <= window"),  # window + 1 keys (the Mistral paper's code)
            GQA.replace(  # masked before the soft-cap: masked keys end at -cap, not -inf, and take probability
                "        scores = cap * np.tanh(scores / cap)\n        scores = np.where(visible, scores, -np.inf)\n",
                "        scores = np.where(visible, scores, -1e30)\n        scores = cap * np.tanh(scores / cap)\n",
            ),
        ],
    },
    "04_sparse_attention.ipynb": {
        "ex1-keys-seen-check": [
            "def keys_seen(i, W, S=0):\n    return np.minimum(i + 1, S + W + 1)\n",  # the Mistral paper's W + 1
            "def keys_seen(i, W, S=0):\n    return np.minimum(i + 1, W) + S\n",  # sinks counted before they exist
        ],
        "ex2-patterns-check": [
            edit("(j <= i) & ((j < S) | (i - j < W))", "(j < S) | ((j <= i) & (i - j < W))"),  # sinks seen early
            edit("(j <= i) & ((qb - kb < local)", "(kb <= qb) & ((qb - kb < local)"),  # block-causal: sees ahead
            edit("qb - kb < local", "qb - kb <= local"),  # one local block too many
        ],
        "ex3-slot-map-check": [
            "def slot_of(p, S, W):\n    return p % (S + W)\n",  # the sinks get overwritten
            "def slot_of(p, S, W):\n    return p if p < S else S + (p - S - 1) % W\n",  # off by one
        ],
        "ex4-measurement-check": [
            "def penalty(results, a, b):\n"  # the whole text, not past the context
            "    return results[a]['nats_per_char'] - results[b]['nats_per_char']\n"
            "def cache_ratio(spec, n_tokens):\n"
            "    return kv_cache_size(parse_attention(spec)) / n_tokens\n",
            "def penalty(results, a, b):\n"
            "    return results[a]['nats_per_char_past_context'] - results[b]['nats_per_char_past_context']\n"
            "def cache_ratio(spec, n_tokens):\n"  # one slot too many
            "    return (kv_cache_size(parse_attention(spec)) + 1) / n_tokens\n",
        ],
    },
    "05_mixture_of_experts.ipynb": {
        "ex1-router-check": [
            ROUTER.replace(
                'np.argsort(-p, axis=-1, kind="stable")[:, :top_k]',
                "np.argsort(p, axis=-1, kind='stable')[:, ::-1][:, :top_k]",
            ),  # ties to the highest id
            ROUTER.replace("if renormalize:", "if not renormalize:"),  # renormalised where raw gates were asked
            ROUTER.replace("    if renormalize:\n        g = g / g.sum(-1, keepdims=True)\n", ""),  # always raw
        ],
        "ex2-moe-cost-check": [
            "def moe_cost(config):\n"  # every expert's FLOPs
            "    return config.top_k / config.num_experts, 2 * config.num_experts * 3 * config.d_ff * config.d_model\n"
        ],
        "ex3-balanced-check": [
            "def balanced_router(N, E):\n"  # uniform probabilities: any routing scores 2
            "    ids = np.stack([np.arange(N) % E, (np.arange(N) + 1) % E], axis=1)\n"
            "    return np.full((N, E), 1 / E, np.float32), ids\n",
            "def balanced_router(N, E):\n"  # confident, but every token picks experts 0 and 1
            "    p = np.full((N, E), 0.1 / (E - 2), np.float32)\n"
            "    p[:, 0], p[:, 1] = 0.6, 0.3\n"
            "    return p, np.tile([0, 1], (N, 1))\n",
        ],
        "ex4-z-loss-check": [
            "def z_loss_minimiser(E):\n    return np.zeros(E, np.float32)\n",
            "def z_loss_minimiser(E):\n    return np.full(E, np.log(E), np.float32)\n",
        ],
    },
    "05b_moe_vs_dense.ipynb": {
        "ex1-distinct-check": [
            "def predict_distinct(n, k, B):\n    return min(n, k * B)\n",  # no collisions between tokens
            # the k picks of a token made with replacement
            "def predict_distinct(n, k, B):\n    return n * (1 - ((n - 1) / n) ** (k * B))\n",
            edit("((n - k) / n) ** B", "((n - k) / n) ** (B - 1)"),  # off by one token
        ],
        "ex2-simulate-check": [
            edit(  # the k picks of a token made with replacement
                "np.argsort(rng.random((trials, B, n)), axis=-1)[:, :, :k]", "rng.integers(0, n, (trials, B, k))"
            ),
            edit("len(np.unique(batch))", "batch.size"),  # every pick counted, shared experts too
            edit(  # k neighbouring experts from a random start: the right mean, not every set equally likely
                "np.argsort(rng.random((trials, B, n)), axis=-1)[:, :, :k]",
                "(rng.integers(0, n, (trials, B, 1)) + np.arange(k)) % n",
            ),
        ],
        "ex3-step-bytes-check": [
            edit("expert * np.sum(distinct_per_layer)", "expert * config.top_k * config.n_layers"),  # ignores the batch
            edit("    return bytes_per_weight * (shared + ", "    return bytes_per_weight * ("),  # no shared weights
            edit("config.n_params() - config.n_layers * config.num_experts * expert", "config.n_params()"),  # twice
        ],
    },
    "06_block_and_generation.ipynb": {
        "ex1-filters-check": [
            FILTERS.replace("    kept[0] = True\n", ""),  # top_p = 0 keeps nothing: 0 / 0
            FILTERS.replace('np.argsort(-p, kind="stable")[:k]', 'np.argsort(p, kind="stable")[::-1][:k]'),  # ties
            FILTERS.replace("if k <= 0 or k >= len(p):", "if k >= len(p):"),  # k = 0 is 'off', not 'nothing'
            FILTERS.replace('kind="stable"', 'kind="quicksort"'),  # NumPy's default, unstable: ties in any order
        ],
        "ex2-distribution-check": [
            "def sampling_distribution(logits, temperature, top_k=0, top_p=1.0):\n"  # top-p before top-k
            "    p = sampling.softmax_with_temperature(logits, temperature)\n"
            "    return top_k_by_hand(top_p_by_hand(p, top_p), top_k)\n",
            "def sampling_distribution(logits, temperature, top_k=0, top_p=1.0):\n"  # logits times T, not over T
            "    p = sampling.softmax_with_temperature(logits * temperature, 1.0)\n"
            "    return top_p_by_hand(top_k_by_hand(p, top_k), top_p)\n",
        ],
        "ex3-recompute-check": [
            "def greedy_by_recompute(params, config, ids, n, vocab_size):\n"  # only the last token as context
            "    ids, new = list(ids), []\n"
            "    for _ in range(n):\n"
            "        new.append(int(np.argmax(forward(params, config, np.array([ids[-1:]]))[0, -1, :vocab_size])))\n"
            "        ids.append(new[-1])\n"
            "    return new\n",
            "def greedy_by_recompute(params, config, ids, n, vocab_size):\n"  # lets generate do the work
            "    prompt = tokenizer.decode(list(ids))\n"
            "    return generate(params, config, tokenizer, prompt, n, temperature=0.0).token_ids\n",
            "def greedy_by_recompute(params, config, ids, n, vocab_size):\n"  # the KV cache: what is to be checked
            "    from minigrok.model import init_cache\n"
            "    cache = init_cache(config, batch_size=1, max_len=len(ids) + n)\n"
            "    logits, new = forward(params, config, np.array([list(ids)]), cache), []\n"
            "    for _ in range(n):\n"
            "        new.append(int(np.argmax(logits[0, -1, :vocab_size])))\n"
            "        logits = forward(params, config, np.array([new[-1:]]), cache)\n"
            "    return new\n",
        ],
    },
    "07_training.ipynb": {
        "ex1-rmsnorm-backward-check": [
            edit(" - r**3 * x * np.mean(g * x, axis=-1, keepdims=True)", ""),  # as if r did not depend on x
            edit("np.mean(g * x, axis=-1, keepdims=True)", "np.sum(g * x, axis=-1, keepdims=True)"),  # the 1/d lost
        ],
        "ex2-softcap-grad-check": ["def softcap_grad(s, cap):\n    return 1 - np.tanh(s) ** 2\n"],  # no 1/cap inside
        "ex3-adamw-step-check": [
            edit("m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)", "m_hat, v_hat = m, v"),  # no bias correction
            edit("if p.ndim >= 2:", "if True:"),  # decays the norm scales too
            edit(  # L2 regularisation, which Adam's normalisation undoes, instead of decoupled decay
                "    m = beta1 * m + (1 - beta1) * g\n",
                "    g = g + weight_decay * p * (p.ndim >= 2)\n    m = beta1 * m + (1 - beta1) * g\n",
            ),
            edit("p = p * (1 - lr * weight_decay)", "p *= 1 - lr * weight_decay"),  # changes the caller's array
        ],
    },
    "08_quantization.ipynb": {
        "ex1-unpack-q4-check": [
            "def dequantize_q4_0_block(block):\n"  # neighbouring nibbles: the wrong order
            "    d = block[:2].view('<f2').astype(np.float32)[0]\n"
            "    nibbles = np.stack([block[2:] & 0x0F, block[2:] >> 4], axis=1).ravel()\n"
            "    return (nibbles.astype(np.float32) - 8) * d\n",
            "def dequantize_q4_0_block(block):\n"  # forgets the offset of 8
            "    d = block[:2].view('<f2').astype(np.float32)[0]\n"
            "    return np.concatenate([block[2:] & 0x0F, block[2:] >> 4]).astype(np.float32) * d\n",
        ],
        "ex2-quantize-q4-check": [
            Q4_QUANTIZER.replace("q[:, :16] | (q[:, 16:] << 4)", "q[:, 0::2] | (q[:, 1::2] << 4)"),  # nibble order
            Q4_QUANTIZER.replace(  # the magnitude instead of the signed value: a positive m gets the wrong sign
                "np.take_along_axis(blocks, np.argmax(np.abs(blocks), axis=1)[:, None], axis=1)",
                "np.max(np.abs(blocks), axis=1, keepdims=True)",
            ),
            Q4_QUANTIZER.replace("np.float32(8.5)", "np.float32(8)"),  # truncates instead of rounding
            Q4_QUANTIZER.replace(  # divides by d where ggml multiplies by 1/d: a level off on some values
                "blocks * inv_d", "np.where(d == 0, np.float32(0), blocks / np.where(d == 0, np.float32(1), d))"
            ),
            Q4_QUANTIZER.replace(  # the last value of largest magnitude on ties, not the first
                "np.argmax(np.abs(blocks), axis=1)", "31 - np.argmax(np.abs(blocks)[:, ::-1], axis=1)"
            ),
        ],
    },
    "09_speed.ipynb": {
        "ex1-q8-matvec-check": [
            edit(
                "qs.reshape(R, K // QK, QK).astype(np.float32)",
                "qs.view(np.uint8).reshape(R, K // QK, QK).astype(np.float32)",
            ),  # unsigned quants
            edit("(per_block * d.astype(np.float32))", "(per_block * d[:, :1].astype(np.float32))"),  # one scale a row
            edit(  # blocks taken down the row's columns instead of 32 neighbours
                'np.einsum("rbj,bj->rb", blocks, x.reshape(K // QK, QK))',
                'np.einsum("rjb,jb->rb", qs.reshape(R, QK, K // QK).astype(np.float32), x.reshape(QK, K // QK))',
            ),
        ],
        "ex2-q4-bytes-check": [
            Q4_BYTES.replace("+ 2 * c.vocab_size * c.d_model ", ""),  # forgets the tied unembedding
            Q4_BYTES.replace("c.top_k * 3", "c.num_experts * 3"),  # reads every expert
            Q4_BYTES.replace("* 18 / 32", "* 34 / 32"),  # Q8_0's block size
            # q and output as d_model x d_model: right only where n_heads * head_dim == d_model
            Q4_BYTES.replace("c.n_heads * c.head_dim * c.d_model * 2", "c.d_model * c.d_model * 2"),
            Q4_BYTES.replace(" + 4 * c.d_model\n", "\n"),  # forgets output_norm
            Q4_BYTES.replace("+ 4 * c.d_model)", "+ 3 * c.d_model)"),  # three norms a layer
            Q4_BYTES.replace("c.top_k * 3", "2 * 3"),  # top_k = 2 written in
        ],
        "ex3-share-check": [
            "def share_of_bound(tokens_per_s, bandwidth, bytes_per_token):\n"  # inverted
            "    return (bandwidth / bytes_per_token) / tokens_per_s\n",
            "def share_of_bound(tokens_per_s, bandwidth, bytes_per_token):\n"  # bandwidth taken as GB/s
            "    return tokens_per_s / (bandwidth * 1e9 / bytes_per_token)\n",
        ],
    },
    "10_scale.ipynb": {
        "ex1-device-share-check": [
            "def expert_params_per_device(config, n_devices):\n"  # one expert a device, whatever n_devices
            "    return config.n_layers * 3 * config.d_ff * config.d_model\n",
            "def expert_params_per_device(config, n_devices):\n"  # one layer only
            "    return config.num_experts // n_devices * 3 * config.d_ff * config.d_model\n",
        ],
        "ex2-routing-counts-check": [
            "def routing_counts(expert_ids, n_devices, num_experts):\n"  # experts dealt round-robin
            "    send = np.zeros((n_devices, n_devices), int)\n"
            "    for src in range(n_devices):\n"
            "        send[src] = np.bincount((expert_ids[src] % n_devices).ravel(), minlength=n_devices)\n"
            "    return send\n"
        ],
        "ex3-bytes-moved-check": [
            "def bytes_moved(config, remote_slots, bytes_per_number=2):\n"  # dispatch only, no combine
            "    return remote_slots * config.d_model * bytes_per_number\n"
        ],
        "ex4-capacity-check": [
            edit("kept[s] = taken[e] < capacity", "kept[s] = taken[e] <= capacity"),  # one slot too many
            edit("slots = expert_ids.reshape(-1)", "slots = expert_ids.T.reshape(-1)"),  # every token's 1st slot first
            edit("taken[e] += kept[s]", "taken[e] += 1\n        kept[s] = True"),  # never drops
        ],
    },
    "11_backprop_attention_moe.ipynb": {
        "ex1-softcap-backward-check": [edit("np.tanh(s / cap)", "np.tanh(s)")],  # no 1/cap inside
        "ex2-softmax-backward-check": [edit("p * (dp - np.sum(dp * p, axis=-1, keepdims=True))", "dp * p")],
        "ex3-gqa-backward-check": [
            edit("dv[b, kv] += p.T @ do", "dv[b, kv] = p.T @ do"),  # the last head of a group overwrites dv
            edit("dk[b, kv] += ds.T @ q[b, :, h]", "dk[b, kv] = ds.T @ q[b, :, h]"),  # ... and dk
            edit("softcap_backward(dcapped, s, cap)", "dcapped"),  # forgets the soft-cap
            edit("dv[b, kv] += p.T @ do", "dv[:, kv] += p.T @ do"),  # sums dv over the batch (B = 1 hid it)
            edit("do @ v[b, kv].T", "do @ v[0, kv].T"),  # the first batch entry's values for every entry
            edit(  # T/S mix-up: probabilities recomputed as if the queries started at position 0 (S = T hid it)
                "p, do = probs[b, kv, g], dout[b, :, h]  # (T, S), (T, hd)",
                "do = dout[b, :, h]\n"
                "            sc = softcap((q[b, :, h] @ k[b, kv].T) * multiplier, cap)  # (T, S)\n"
                "            p = softmax(np.where(A.causal_mask(T, k.shape[2], 0), sc, A.MASKED))  # (T, S)",
            ),
        ],
        "ex4-router-backward-check": [
            edit("if renormalize:", "if False:"),  # raw-gate gradient where renormalised gates were used
            edit("return masked_softmax_backward(dprobs, probs)", "return dprobs"),  # stops before the softmax
        ],
        "ex5-loss-grads-check": [
            edit("(2 * lse / n)", "(lse / n)"),  # the square's factor 2
            edit("num_experts * f / n", "num_experts * f"),  # P is a mean over N tokens
        ],
    },
}


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def estimated_study_hours(nb) -> float:
    """SYLLABUS.md's rule: prose at 100 words/min, code at 10 non-blank lines/min, 20 min per autograded exercise,
    5 min per conceptual question; hours rounded to the nearest half (at least half an hour)."""
    words = lines = exercises = questions = 0
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if cell.cell_type == "markdown" and meta.get("solution"):
            questions += 1
        elif cell.cell_type == "markdown":
            words += len(cell.source.split())
        elif meta.get("grade"):
            exercises += 1
        elif not meta.get("solution"):
            lines += sum(1 for line in cell.source.splitlines() if line.strip())
    minutes = words / 100 + lines / 10 + 20 * exercises + 5 * questions
    return max(0.5, int(minutes / 30 + 0.5) / 2)


def checks(nb) -> list:
    return [c for c in nb.cells if nbgrader_meta(c).get("grade") and c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markup_is_nbgrader_and_every_check_has_a_wrong_answer(path):
    nb = nbformat.read(path, as_version=4)
    ids = [nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {path.name}"
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        has_region = "### BEGIN SOLUTION" in cell.source
        assert has_region == bool(meta.get("solution")) or cell.cell_type == "markdown", (path.name, cell.source[:80])
        if has_region:
            assert cell.source.count("### BEGIN SOLUTION") == cell.source.count("### END SOLUTION")
        if meta.get("grade") and cell.cell_type == "code":  # an autograded check
            assert meta["locked"] and meta["points"] > 0 and not meta["solution"], meta
        if meta.get("grade") and cell.cell_type == "markdown":  # a manually graded answer to a question
            assert meta["solution"] and meta["points"] > 0 and cell.source.strip(), meta
    graded = checks(nb)
    assert len(graded) >= 2, f"{path.name} has {len(graded)} autograded exercises"
    questions = [c for c in nb.cells if nbgrader_meta(c).get("grade") and c.cell_type == "markdown"]
    assert 3 <= len(questions) <= 5, f"{path.name} has {len(questions)} conceptual questions"
    assert nb.cells[1].source.startswith("**Objectives.**")
    stated = re.search(r"\*\*Study time:\*\* about ([0-9.]+) h, estimated", nb.cells[1].source)
    assert stated, f"{path.name}: no '**Study time:** about N h, estimated' line"
    assert float(stated.group(1)) == estimated_study_hours(nb), f"{path.name}: study time by the rule in SYLLABUS.md"
    wrong = WRONG_ANSWERS.get(path.name, {})
    for cell in graded:
        gid = nbgrader_meta(cell)["grade_id"]
        assert wrong.get(gid), f"{path.name}: no wrong answer tests the check {gid}"
    assert set(wrong) <= {nbgrader_meta(c)["grade_id"] for c in graded}, "WRONG_ANSWERS names an unknown check"


def _errored(cell) -> bool:
    return any(o.output_type == "error" for o in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_checks_fail_until_solved_and_reject_wrong_answers(path):
    solved = nbformat.read(path, as_version=4)
    student = student_notebook(solved)
    assert len(student.cells) == len(solved.cells)
    client = NotebookClient(
        student, timeout=600, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(LESSONS)}}
    )
    failures = []
    n_checks = 0

    def run(source_or_cell, index):
        cell = source_or_cell if not isinstance(source_or_cell, str) else nbformat.v4.new_code_cell(source_or_cell)
        return client.execute_cell(cell, index)

    with client.setup_kernel():
        solutions = []  # the answer key's solution cells since the last check
        for index, cell in enumerate(student.cells):
            if cell.cell_type != "code":
                continue
            meta = nbgrader_meta(cell)
            if not meta.get("grade"):
                run(cell, index)
                if meta.get("solution"):
                    assert "NotImplementedError" in cell.source and "BEGIN SOLUTION" not in cell.source
                    solutions.append(solved.cells[index].source)
                continue
            gid = meta["grade_id"]
            n_checks += 1
            if not _errored(run(cell, index)):
                failures.append(f"{gid} passes in the student edition, unsolved")
            for k, wrong in enumerate(WRONG_ANSWERS.get(path.name, {}).get(gid, [])):
                if callable(wrong):
                    wrong = wrong("\n\n".join(solutions))
                if _errored(run(wrong, index)):
                    failures.append(f"{gid}: wrong answer {k} does not even run")
                elif not _errored(run(cell, index)):
                    failures.append(f"{gid} passes with wrong answer {k}")
            for source in solutions:
                assert not _errored(run(source, index)), f"{gid}: the answer key's solution raised"
            result = run(cell, index)
            assert not _errored(result), f"{gid} fails with the answer key's solution: {result.outputs}"
            solutions = []
    assert n_checks >= 2
    assert not failures, failures


def test_cli_writes_the_student_edition(tmp_path, capsys):
    dest = tmp_path / "student"
    assert cli.main(["lessons", "--student", str(dest)]) == 0
    assert sorted(p.name for p in dest.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    nb = nbformat.read(dest / "03_attention.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert not any("BEGIN SOLUTION" in c.source for c in nb.cells)
    stubs = [c for c in code if nbgrader_meta(c).get("solution")]
    assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)
    answers = [c for c in nb.cells if c.cell_type == "markdown" and nbgrader_meta(c).get("solution")]
    assert answers and all(c.source == "YOUR ANSWER HERE" for c in answers)
    assert all(c.source.lstrip().startswith("def ") for c in stubs if c.source.count("def ") == 1)
    assert "wrote the student edition of" in capsys.readouterr().out


def test_cli_without_nbgrader_says_how_to_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nbgrader.preprocessors", None)  # makes the import raise ImportError
    assert cli.main(["lessons", "--student", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minigrok: error:") and 'pip install -e ".[course]"' in err
    assert not (tmp_path / "s").exists()


def test_cli_refuses_to_overwrite_the_answer_key(capsys):
    assert cli.main(["lessons", "--student", str(LESSONS)]) != 0
    assert "answer key" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["05b_moe_vs_dense", "09_speed"])  # REPO and ROOT; benchmarks/*.json, bench.py
def test_student_edition_finds_the_repository_from_any_folder(tmp_path, name):
    """Written outside the repository, the notebooks still read benchmarks/: every error is the student's to fix
    (a stub, a failing check), none a missing file or module."""
    dest = tmp_path / "student"
    assert cli.main(["lessons", "--student", str(dest)]) == 0
    nb = nbformat.read(dest / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, allow_errors=True, resources={"metadata": {"path": str(dest)}}).execute()
    errors = {o.ename for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"}
    assert errors and errors <= {"NotImplementedError", "AssertionError", "NameError", "TypeError"}, errors


def test_student_edition_keeps_a_students_work_and_stays_out_of_the_key(tmp_path, capsys):
    dest = tmp_path / "student"
    assert cli.main(["lessons", "--student", str(dest)]) == 0
    work = dest / "03_attention.ipynb"
    work.write_text(work.read_text() + " ")  # a student's edit
    assert cli.main(["lessons", "--student", str(dest)]) == 1
    assert "pass --force" in capsys.readouterr().err and work.read_text().endswith(" ")
    assert cli.main(["lessons", "--student", str(dest), "--force"]) == 0
    assert cli.main(["lessons", "--student", str(LESSONS / "student")]) == 1  # pytest would collect the stubs
    assert "inside the answer key" in capsys.readouterr().err and not (LESSONS / "student").exists()


def test_student_edition_never_overwrites_a_readme_and_says_what_it_is(tmp_path, capsys):
    dest = tmp_path / "course"
    dest.mkdir()
    (dest / "README.md").write_text("my own notes")
    assert cli.main(["lessons", "--student", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "README.md" in err and "--force" in err and err.count("\n") == 1
    assert (dest / "README.md").read_text() == "my own notes" and not list(dest.glob("*.ipynb"))
    assert cli.main(["lessons", "--student", str(dest), "--force"]) == 0
    readme = (dest / "README.md").read_text()
    assert "student edition" in readme and "answer key" in readme and "NotImplementedError" in readme
    assert (dest / "SYLLABUS.md").read_text() == (LESSONS / "SYLLABUS.md").read_text()
    assert not list(dest.glob("*.tmp"))


def test_lessons_find_the_repository_through_the_package(monkeypatch, tmp_path):
    from minigrok import shipped

    assert (shipped.repository_dir() / "benchmarks" / "bench.py").is_file()
    for path in NOTEBOOKS:  # no lesson looks for the repository from the folder it runs in
        assert "Path.cwd()" not in path.read_text(), path.name
    monkeypatch.setattr(shipped, "__file__", str(tmp_path / "site-packages" / "minigrok" / "shipped.py"))
    with pytest.raises(FileNotFoundError, match=r"pip install -e"):
        shipped.repository_dir()


def test_student_edition_refuses_an_empty_path_and_a_source_without_notebooks(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lessons", "--student", ""]) == 1
    assert "needs a folder name" in capsys.readouterr().err and not list(tmp_path.iterdir())
    (tmp_path / "empty").mkdir()
    assert cli.main(["lessons", "--student", "out", "--from", "empty/.."]) == 1
    assert "no notebooks" in capsys.readouterr().err and not (tmp_path / "out").exists()
