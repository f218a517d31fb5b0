"""Attention patterns (dense, window, sinks, block-sparse), the rolling KV cache and the Numba decode kernel."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok import __main__ as cli
from minigrok import attention as attn
from minigrok import engine
from minigrok.attention import (
    KVCache,
    attend_pattern,
    attention,
    keys_needed,
    kv_cache_size,
    pattern_mask,
    sink_query_positions,
)
from minigrok.config import AttentionPattern, ModelConfig, grok1_constants, parse_attention
from minigrok.generate import generate
from minigrok.kernels.attention_kernels import decode_attention
from minigrok.layers import apply_rope, linear, rope_tables, softmax
from minigrok.model import forward, init_cache, init_params
from minigrok.train import backward as bw

CFG = ModelConfig(
    vocab_size=64,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_ff=16,
    num_experts=4,
    top_k=2,
    context_length=64,
    **grok1_constants(32, 8),
)
PARAMS = init_params(CFG, seed=3)
for _name, _w in PARAMS.items():  # larger attention weights: sharp, position-dependent attention, so masks matter
    if "attn_q" in _name or "attn_k" in _name:
        PARAMS[_name] = _w * np.float32(8)
N = 40  # tokens in the long tests: several times every rolling cache below
PATTERNS = ["dense", "window:5", "sinks:2,5", "block:size=4,local=2,global=1", "block:size=4,local=1,stride=2"]


def tokens_for(seed: int, B: int, T: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, size=(B, T))


def with_pattern(text: str) -> ModelConfig:
    return CFG.replace(attention=text)


@st.composite
def patterns(draw) -> AttentionPattern:
    kind = draw(st.sampled_from(["dense", "window", "sinks", "block"]))
    small = st.integers(1, 9)
    if kind == "window":
        return AttentionPattern("window", window=draw(small))
    if kind == "sinks":
        return AttentionPattern("sinks", sinks=draw(st.integers(0, 4)), window=draw(small))
    if kind == "block":
        return AttentionPattern(
            "block", block=draw(small), local=draw(st.integers(1, 3)), global_blocks=draw(st.integers(0, 2)),
            stride=draw(st.integers(0, 3)),
        )  # fmt: skip
    return AttentionPattern()


# ---- the patterns ----------------------------------------------------------------------------------------------------


@given(patterns())
def test_pattern_spelling_round_trips(pattern):
    assert parse_attention(str(pattern)) == pattern
    assert with_pattern(str(pattern)).pattern == pattern


@pytest.mark.parametrize(
    "text, problem",
    [("window", "one number"), ("window:0", ">= 1"), ("sinks:4", "two numbers"), ("window:x", "integer"),
     ("block:local=2", "size=B"), ("block:size=4,width=2", "name=value"), ("causal", "unknown kind")],
)  # fmt: skip
def test_bad_patterns_raise_value_error_naming_the_problem_and_the_syntax(text, problem):
    with pytest.raises(ValueError, match=f"(?s){problem}.*expected dense \\| window:W"):
        parse_attention(text)
    with pytest.raises(ValueError, match=problem):
        CFG.replace(attention=text)


def test_the_default_is_dense_and_spellings_are_canonical():
    assert CFG.attention == "dense" and CFG.pattern == AttentionPattern()
    assert CFG.replace(attention=" Window:007 ").attention == "window:7"
    assert CFG.replace(attention="block:size=8").attention == "block:size=8,local=1,global=0,stride=0"


def test_window_counts_the_query_itself_known_values():
    # window:3 -> query i sees i-2, i-1, i: three keys, own included (llama.cpp LLAMA_SWA_TYPE_STANDARD)
    expected = np.array(
        [[1, 0, 0, 0, 0, 0],
         [1, 1, 0, 0, 0, 0],
         [1, 1, 1, 0, 0, 0],
         [0, 1, 1, 1, 0, 0],
         [0, 0, 1, 1, 1, 0],
         [0, 0, 0, 1, 1, 1]], bool,
    )  # fmt: skip
    pos = np.arange(6)
    np.testing.assert_array_equal(pattern_mask(parse_attention("window:3"), pos, pos), expected)
    # sinks:1,2: position 0 plus the last two
    sinks = pattern_mask(parse_attention("sinks:1,2"), pos, pos)
    np.testing.assert_array_equal(sinks[5], [1, 0, 0, 0, 1, 1])
    assert sinks.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3]


def test_block_sparse_known_values():
    # blocks of 2; own block, global block 0, and every 2nd block back
    mask = pattern_mask(parse_attention("block:size=2,local=1,global=1,stride=2"), np.arange(10), np.arange(10))
    assert np.flatnonzero(mask[9]).tolist() == [0, 1, 4, 5, 8, 9]  # block 4 sees blocks 0 (global, stride), 2, 4
    assert np.flatnonzero(mask[6]).tolist() == [0, 1, 2, 3, 6]  # block 3 sees blocks 0 (global), 1 (stride), 3


@settings(max_examples=60, deadline=None)
@given(patterns(), st.integers(1, 30), st.integers(0, 30))
def test_every_pattern_is_causal_and_sees_its_own_position(pattern, T, offset):
    q_pos, k_pos = offset + np.arange(T), np.arange(offset + T)
    mask = pattern_mask(pattern, q_pos, k_pos)  # (T, S)
    assert not np.any(mask & (k_pos[None, :] > q_pos[:, None]))
    assert np.all(mask[np.arange(T), q_pos])
    np.testing.assert_array_equal(pattern_mask(pattern, q_pos, np.full(3, -1)), np.zeros((T, 3), bool))  # empty


@settings(max_examples=60, deadline=None)
@given(patterns(), st.integers(0, 40), st.integers(1, 20))
def test_keys_needed_lists_exactly_the_keys_some_query_sees(pattern, q_lo, n):
    k_pos = np.arange(-1, q_lo + n + 5)  # includes an empty slot and keys after the queries
    visible = pattern_mask(pattern, np.arange(q_lo, q_lo + n), k_pos)  # (n, S)
    np.testing.assert_array_equal(keys_needed(pattern, q_lo, q_lo + n, k_pos), visible.any(axis=0))
    later = pattern_mask(pattern, np.arange(q_lo, q_lo + 200), k_pos).any(axis=0)  # queries far into the future
    assert np.all(keys_needed(pattern, q_lo, None, k_pos) >= later)  # never evicts what a later query sees
    size = kv_cache_size(pattern)
    if size is not None:
        assert visible.sum(axis=1).max() <= size
        assert keys_needed(pattern, q_lo, None, np.arange(q_lo)).sum() <= size - 1  # + the new token = size


@pytest.mark.parametrize("T", [20, 150])  # one query block, and several (QUERY_BLOCK = 64)
def test_lesson_pictures_are_the_models_mask(T):
    """The attention probabilities the model computes are zero exactly where the lessons' pictures (pattern_mask)
    are False. Values are one-hot (value j = unit vector j), so the output of each query is its row of
    probabilities: read from the model's own blocked attention, not from the mask it was given."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, T, 4, T)).astype(np.float32)
    k = rng.standard_normal((1, 2, T, T)).astype(np.float32)
    v = np.broadcast_to(np.eye(T, dtype=np.float32), (1, 2, T, T))  # (B, n_kv, S, hd): key j carries e_j
    for text in PATTERNS:
        pattern = parse_attention(text)
        probs = attn.attend_pattern(q, k, v, np.arange(T), np.arange(T), pattern, 0.3, 30.0)  # (1, T, 4, T)
        picture = pattern_mask(pattern, np.arange(T), np.arange(T))  # (T, T)
        for h in range(4):
            np.testing.assert_array_equal(probs[0, :, h] > 0, picture, err_msg=text)


# ---- the model under a pattern ---------------------------------------------------------------------------------------


def test_window_at_least_the_sequence_equals_dense_exactly():
    tokens = tokens_for(1, 2, 30)
    dense = forward(PARAMS, CFG, tokens)
    for text in ["window:30", "window:1000", "sinks:3,30", "block:size=8,local=4", "block:size=64"]:
        np.testing.assert_array_equal(forward(PARAMS, with_pattern(text), tokens), dense)
    assert not np.allclose(forward(PARAMS, with_pattern("window:29"), tokens), dense, atol=1e-3)


def test_sinks_with_no_sinks_equal_the_window_exactly_in_prefill_and_decode():
    tokens = tokens_for(2, 1, N)
    window, sinks0 = with_pattern("window:6"), with_pattern("sinks:0,6")
    np.testing.assert_array_equal(forward(PARAMS, sinks0, tokens), forward(PARAMS, window, tokens))
    np.testing.assert_array_equal(decode_all(sinks0, tokens, 5), decode_all(window, tokens, 5))


@pytest.mark.parametrize("text", PATTERNS[1:])
def test_a_pattern_changes_the_logits_only_where_it_hides_keys(text):
    tokens = tokens_for(3, 1, N)
    sparse, dense = forward(PARAMS, with_pattern(text), tokens), forward(PARAMS, CFG, tokens)
    pattern = parse_attention(text)
    first_hidden = np.flatnonzero(~pattern_mask(pattern, np.arange(N), np.arange(N)) & np.tri(N, dtype=bool))
    first_row = first_hidden[0] // N  # the first query that misses a key
    np.testing.assert_allclose(sparse[:, :first_row], dense[:, :first_row], rtol=0, atol=1e-5)
    assert not np.allclose(sparse[:, first_row:], dense[:, first_row:], atol=1e-3)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(PATTERNS), st.integers(0, N - 1), st.integers(0, 2**32 - 1))
def test_every_pattern_is_causal_in_the_whole_model(text, t, seed):
    config = with_pattern(text)
    tokens = tokens_for(seed, 1, N)
    changed = tokens.copy()
    changed[0, t] = (changed[0, t] + 1) % CFG.vocab_size
    a, b = forward(PARAMS, config, tokens), forward(PARAMS, config, changed)
    # not bit-exact: a changed token can change which tokens an expert's matmul batches together, and BLAS may
    # then round other rows differently (~1e-8); a leak of the future would show at the 1e-2 scale here
    np.testing.assert_allclose(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not np.allclose(a[:, t], b[:, t], rtol=0, atol=1e-3)


# ---- the rolling KV cache --------------------------------------------------------------------------------------------


def decode_all(config, tokens, prefill, chunk=1, compiled=True, max_len=None):
    """Logits of every position: one call on tokens[:, :prefill], then calls of ``chunk`` tokens through one cache
    (engine.forward: compiled decode steps for a batch of one, else model.forward)."""
    B, T = tokens.shape
    if max_len is None and kv_cache_size(config.pattern) is None:
        max_len = T  # dense and strided patterns need one slot per token
    cache = init_cache(config, batch_size=B, max_len=max_len)
    out = [engine.forward(PARAMS, config, tokens[:, :prefill], cache, compiled)]
    for t in range(prefill, T, chunk):
        out.append(engine.forward(PARAMS, config, tokens[:, t : t + chunk], cache, compiled))
    assert cache.pos == T
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("text", PATTERNS)
@pytest.mark.parametrize("batch", [1, 2])  # a batch of 1 decodes in compiled code, a batch of 2 with model.forward
def test_rolling_cache_decode_equals_the_prefill_at_every_position(text, batch):
    config = with_pattern(text)
    tokens = tokens_for(4, batch, N)
    full = forward(PARAMS, config, tokens)  # (batch, N, vocab): one prefill of all N tokens under the pattern
    np.testing.assert_allclose(decode_all(config, tokens, 1, 1), full, rtol=0, atol=2e-5)
    np.testing.assert_allclose(decode_all(config, tokens, 7, 1), full, rtol=0, atol=2e-5)
    np.testing.assert_allclose(decode_all(config, tokens, 7, 1, compiled=False), full, rtol=0, atol=2e-5)
    # chunks longer than the free slots of a rolling cache: attention over kept entries + the chunk
    np.testing.assert_allclose(decode_all(config, tokens, 3, 9), full, rtol=0, atol=2e-5)


@pytest.mark.parametrize("text, size", [("window:5", 5), ("sinks:2,5", 7), ("block:size=4,local=2,global=1", 12)])
def test_a_rolling_cache_stays_flat_and_keeps_what_later_queries_see(text, size):
    config = with_pattern(text).replace(context_length=8)  # far past the context length
    cache = init_cache(config)
    assert cache.max_len == size and cache.rolling
    nbytes = cache.nbytes()
    tokens = tokens_for(5, 1, 200)
    forward(PARAMS, config, tokens[:, :30], cache)
    for t in range(30, 200):
        forward(PARAMS, config, tokens[:, t : t + 1], cache)
        assert cache.nbytes() == nbytes
        kept = np.sort(cache.positions[cache.positions >= 0])
        expected = np.flatnonzero(pattern_mask(config.pattern, [t], np.arange(t + 1))[0])  # what t attended to
        np.testing.assert_array_equal(kept, expected)
    if text == "sinks:2,5":
        assert kept.tolist() == [0, 1, 195, 196, 197, 198, 199]  # S sinks + the W latest


def test_a_full_dense_cache_still_raises_and_loses_nothing():
    cache = init_cache(CFG, max_len=4)
    tokens = tokens_for(6, 1, 6)
    forward(PARAMS, CFG, tokens[:, :3], cache)
    with pytest.raises(ValueError, match="exceeds the 4-token limit"):
        forward(PARAMS, CFG, tokens[:, 3:5], cache)
    assert cache.pos == 3 and cache.positions.tolist() == [0, 1, 2, -1]
    with pytest.raises(ValueError, match="the cache was made for attention dense"):
        forward(PARAMS, with_pattern("window:4"), tokens[:, 3:4], cache)


def test_prefill_blocks_compute_only_the_keys_the_pattern_keeps():
    T, W, sizes = 1000, 48, []
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, T, 2, 4)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, 1, T, 4)).astype(np.float32)
    original = attn.attend

    def spy(q, k, v, mask, *args):
        sizes.append(mask.shape)
        return original(q, k, v, mask, *args)

    attn.attend = spy
    try:
        out = attn.attend_pattern(q, k, v, np.arange(T), np.arange(T), parse_attention(f"window:{W}"), 0.5, 30.0)
    finally:
        attn.attend = original
    assert max(s for _, s in sizes) <= W + attn.QUERY_BLOCK - 1  # never a T x T score matrix
    assert sum(t * s for t, s in sizes) < 0.15 * T * T
    mask = pattern_mask(parse_attention(f"window:{W}"), np.arange(T), np.arange(T))
    np.testing.assert_allclose(out, original(q, k, v, mask, 0.5, 30.0)[0], rtol=0, atol=1e-5)


# ---- RoPE positions with sinks: StreamingLLM's positions within the cache ------------------------------------------


def test_sinks_score_with_positions_within_the_cache_as_streamingllm():
    """Decode at position t with sinks:S,W equals dense attention over [sinks | last W] re-rotated at cache positions
    0 .. S+W-1, the query at S+W-1 (Xiao et al. 2023, section 3.2); absolute positions would give something else."""
    S, W, T = 2, 4, 30
    config = with_pattern(f"sinks:{S},{W}")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, T, CFG.d_model)).astype(np.float32)
    layer = {f"attn_{n}": PARAMS[f"blk.0.attn_{n}.weight"] for n in ("q", "k", "v", "output")}
    w = {n: layer[f"attn_{n}"] for n in ("q", "k", "v", "output")}
    cache = init_cache(config.replace(n_layers=1))
    outs = []
    for t in range(T):
        step = cache.begin(1)
        outs.append(attention(x[:, t : t + 1], layer, config, np.array([t]), cache, 0, step))
        cache.commit(step)

    def literal(t, positions_in_cache):
        keep = [j for j in range(t + 1) if j < S or t - j < W]  # what the rolling cache holds at step t
        p = np.array(positions_in_cache(keep, t))
        cos, sin = rope_tables(p, CFG.head_dim, CFG.rope_theta)
        q = apply_rope(linear(x[:, t : t + 1], w["q"]).reshape(1, 1, 4, 8), cos[-1:], sin[-1:])[0, 0]  # (4, 8)
        k = apply_rope(linear(x[:, keep], w["k"]).reshape(1, -1, 2, 8), cos, sin)[0]  # (n, 2, 8)
        v = linear(x[:, keep], w["v"]).reshape(-1, 2, 8)
        out = np.zeros((4, 8))
        for h in range(4):
            s = (k[:, h // 2] @ q[h]) * CFG.attention_multiplier
            out[h] = softmax(30 * np.tanh(s / 30)) @ v[:, h // 2]
        return linear(out.reshape(1, -1).astype(np.float32), w["output"])[0]

    def in_cache(keep, t):
        return list(range(len(keep)))

    def absolute(keep, t):
        return keep

    for t in range(T):
        np.testing.assert_allclose(outs[t][0, 0], literal(t, in_cache), rtol=0, atol=1e-5)
    assert not np.allclose(outs[-1][0, 0], literal(T - 1, absolute), atol=1e-3)
    assert sink_query_positions(config.pattern, np.arange(T)).tolist() == [min(t, S + W - 1) for t in range(T)]


def test_training_refuses_sinks_that_would_need_moved_query_positions():
    tokens = tokens_for(8, 1, 12)
    with pytest.raises(ValueError, match="train with window:W"):
        bw.loss_and_grads(PARAMS, with_pattern("sinks:2,5"), tokens, tokens)
    bw.loss_and_grads(PARAMS, with_pattern("sinks:2,10"), tokens, tokens)  # S + W >= T: no moved positions


# ---- the decode kernel and its NumPy twin (attend_pattern, the route of every chunk in attention) ------------------


@settings(max_examples=40, deadline=None)
@given(patterns(), st.integers(1, 40), st.integers(0, 12), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 30.0]))
def test_the_numba_decode_kernel_equals_the_reference_attention(pattern, t, extra_slots, seed, cap):
    rng = np.random.default_rng(seed)
    B, n_heads, n_kv, hd = 2, 4, 2, 8
    slots = t + 1 + extra_slots
    k_pos = np.full(slots, -1, np.int64)
    k_pos[rng.permutation(slots)[: t + 1]] = np.arange(t + 1)  # positions 0..t in random slots, the rest empty
    q, q_sink = (rng.standard_normal((2, B, n_heads, hd)) * 2).astype(np.float32)
    k, v = rng.standard_normal((2, B, n_kv, slots + 3, hd)).astype(np.float32)  # 3 slots past k_pos: never read
    k[:, :, slots:] = np.nan
    out = decode_attention(q, q_sink, k, v, k_pos, t, pattern, 0.35, cap)  # (B, n_heads, hd)
    ref = attend_pattern(q[:, None], k[:, :, :slots], v[:, :, :slots], [t], k_pos, pattern, 0.35, cap, q_sink[:, None])
    np.testing.assert_allclose(out, ref[:, 0], rtol=0, atol=1e-5)
    assert np.all(np.isfinite(out))


def test_the_decode_kernel_refuses_bad_input_with_value_error():
    q = np.zeros((1, 4, 8), np.float32)
    k = np.zeros((1, 2, 5, 8), np.float32)
    dense = AttentionPattern()
    with pytest.raises(ValueError, match="no cached key is visible"):
        decode_attention(q, q, k, k, np.full(5, -1), 3, dense, 1.0, 0.0)
    with pytest.raises(ValueError, match="S <= 5"):
        decode_attention(q, q, k, k, np.arange(6), 3, dense, 1.0, 0.0)
    with pytest.raises(ValueError, match="does not fit"):
        decode_attention(np.zeros((1, 3, 8), np.float32), np.zeros((1, 3, 8), np.float32), k, k, [0], 0, dense, 1, 0)


# ---- training with a pattern -----------------------------------------------------------------------------------------


def test_training_gradients_with_a_window_pass_a_finite_difference_check():
    config = CFG.replace(vocab_size=13, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=6, attention="window:3")
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) * (10 if v.ndim > 1 else 1) for k, v in init_params(config, 1).items()}
    tokens, targets = rng.integers(0, 13, (2, 7)), rng.integers(0, 13, (2, 7))
    loss, grads, _ = bw.loss_and_grads(params, config, tokens, targets)
    for name in ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.attn_v.weight", "token_embd.weight"]:
        x = params[name].reshape(-1)
        for i in rng.choice(x.size, 6, replace=False):
            old = x[i]
            x[i] = old + 1e-6
            plus = bw.loss_and_grads(params, config, tokens, targets)[0]
            x[i] = old - 1e-6
            minus = bw.loss_and_grads(params, config, tokens, targets)[0]
            x[i] = old
            num, ana = (plus - minus) / 2e-6, grads[name].reshape(-1)[i]
            assert abs(num - ana) / max(1e-3, abs(num) + abs(ana)) < 1e-5, (name, i, num, ana)
    # the training forward is the model's forward under the same pattern
    logits = forward(params, config, tokens).reshape(-1, 13)
    ce = np.mean(np.log(np.sum(np.exp(logits), -1)) - logits[np.arange(14), targets.reshape(-1)])
    np.testing.assert_allclose(loss, ce, rtol=1e-9)
    dense_loss = bw.loss_and_grads(params, config.replace(attention="dense"), tokens, targets)[0]
    assert abs(dense_loss - loss) > 1e-6


# ---- the command line ------------------------------------------------------------------------------------------------


def test_cli_rejects_a_bad_attention_flag_before_loading_anything(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "-m", "missing.gguf", "--attention", "window:0"])
    assert e.value.code == 2
    assert "window:0" in capsys.readouterr().err
    assert cli.attention_pattern("sinks:4,60") == "sinks:4,60"


# ---- generation past the context length ------------------------------------------------------------------------------


class CharTokenizer:
    """Just enough of a tokenizer for generate(): one id per character, id 63 is the end of text."""

    vocab_size, eot_id = 64, 63

    def encode(self, text):
        return [ord(c) % 63 for c in text]

    def stream_decoder(self):
        class Decoder:
            def push(self, token):
                return chr(48 + token)

            def flush(self):
                return ""

        return Decoder()


def test_generate_with_sinks_runs_past_the_context_in_a_flat_cache_and_matches_full_recomputation(monkeypatch):
    config = with_pattern("sinks:2,6").replace(context_length=16)
    caches = []
    original = KVCache.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        caches.append(self)

    monkeypatch.setattr(KVCache, "__init__", spy)
    result = generate(PARAMS, config, CharTokenizer(), "to be or not", 40, temperature=0.0)
    assert len(result.prompt_ids) + result.n_generated > 2 * config.context_length
    assert caches[0].max_len == 8 and caches[0].pos == len(result.prompt_ids) + result.n_generated - 1
    ids = list(result.prompt_ids)
    for token in result.token_ids:  # greedy from a full forward of everything so far, under the same pattern
        assert token == int(np.argmax(forward(PARAMS, config, np.array([ids]))[0, -1]))
        ids.append(token)
    with pytest.raises(ValueError, match="context length of 16.*--attention sinks:4,12"):
        generate(PARAMS, CFG.replace(context_length=16), CharTokenizer(), "to be or not", 40)
