"""minigrok computes what llama.cpp computes: logits, greedy tokens and tokenization of the same grok GGUF file.

Needs llama-cpp-python (``pip install llama-cpp-python``, which builds llama.cpp from source: ~6 minutes on 2 cores);
every test here is skipped, with that reason, where it is not installed. llama.cpp runs in a child process
(minigrok/llamacpp.py), so a native crash fails one test and names the signal; on CPUs with AMX its extra buffer
types (weight repacking) are off, because its AMX matrix product segfaults there (ggml-org/llama.cpp #20824).

Where llama.cpp and minigrok differ on purpose, and how big that is (max |logit difference|, relative to the largest
|logit|, measured on the models below):

1. Gates. llama.cpp's grok graph always divides the top-k gates by their sum (src/models/grok.cpp calls
   build_moe_ffn with norm_w = true, whatever ``grok.expert_weights_norm`` says); minigrok follows
   ``config.renormalize_gates`` (False = xAI's raw probabilities). A per-token gate scale cancels in the post-MoE
   RMSNorm up to its eps, so the difference is small but real when the MoE output is small: 2.7e-3 on logits of 9.5
   for a trained grok-mini checkpoint (raw gates): 2.9e-4 relative; below 1e-6 on the random models here.
   Every comparison below is made against minigrok with ``renormalize_gates=True``; for files with raw gates the
   tests also bound the difference by the effect of renormalizing.
2. GELU. ggml's CPU GELU reads a table of fp16 values (ggml/src/ggml-cpu/vec.h, GGML_GELU_FP16 and
   ggml_vec_geglu_f32): the input is rounded to fp16, the output is fp16 (2^-11 relative each), outside [-10, 10]
   it returns 0 or x. minigrok computes the tanh formula in float32. This is most of what remains with F32
   weights: 0.9e-4 to 2.4e-4 relative on the random models, 3.3e-5 on the trained one; with :func:`ggml_gelu` in
   its place it falls to 1e-6 to 4e-5 (float32 rounding and summation order; the larger values where a GELU input
   sits on an fp16 rounding boundary), 1.7e-6 on the trained model.
3. KV cache. llama.cpp stores K and V as F16 by default (``type_k``, ``type_v``): 3e-4 to 6e-4 relative on the
   random models. The comparisons use F32 caches, except :func:`test_shipped_model_default_settings`.
4. F16 weights. ggml's F16 matrix product also rounds the activations to fp16 (the ``vec_dot_type`` of F16 is F16,
   ggml/src/ggml-cpu/ggml-cpu.c type_traits_cpu); minigrok upcasts the weights and keeps float32 activations:
   3.3e-4 relative on the random models, 1.8e-4 on the shipped (F16) model, and the fp16 GELU table no longer
   matters next to it. (Rounding minigrok's activations to fp16 as well removes only a few % of it on the shipped
   model: what else differs in ggml's F16 path is not pinned down here.)
5. Q8_0 and Q4_0 weights. llama.cpp multiplies them with activations quantized to Q8_0 (``vec_dot_type``), and
   so does minigrok on its decode path (fewer than 16 tokens per call, minigrok/quant.py ``quantized_linear``);
   the two then differ by llama.cpp's fp16 activation scales, its F16 unembedding and the GELU table: 2.7e-4 (Q8_0)
   and 5.1e-4 (Q4_0) relative on the interim checkpoint, 5.1e-3 (Q8_0) and 6e-3 (Q4_0, before its first router
   near tie) on the shipped model, whose larger activations amplify them. On random models with large weights,
   every small difference upstream flips some activations across an 8-bit rounding boundary, and those flips add
   up: 4.5e-3 to 9.5e-3 on the cases here. minigrok's prefill (16 tokens or more per call) instead multiplies float32
   activations with dequantized weights through BLAS, without the 8-bit activation rounding: 2.4e-2 (Q8_0) and
   3.1e-2 (Q4_0) relative from llama.cpp on the trained model, the size of that rounding. The quantized
   comparisons therefore use the decode path (:func:`decode_logits`).

Top-k routing is discontinuous: at a near tie between the k-th and (k+1)-th router probability, a difference of
1e-6 picks another expert and the logits of that token change by O(1). Such a tie is not a disagreement. For the
random models, the seeds are ones without near ties (the tests check that first, with the greedy argmax margins
too); for the trained model, whose routers often sit near ties, a difference is accepted only at or after a near
tie, and the comparison stops there (causal attention leaves the earlier positions as they were).

Trained-model figures are from an interim F32 checkpoint of the Shakespeare run (grok-mini, raw gates) unless they
say "shipped" (weights/minigrok-shakespeare.gguf, F16).
"""

from __future__ import annotations

import importlib.util
import os
import signal

import numpy as np
import pytest

import minigrok.model
import minigrok.moe
from minigrok import engine
from minigrok.checkpoint import load_gguf, save_gguf
from minigrok.config import ModelConfig, grok1_constants
from minigrok.generate import generate
from minigrok.layers import gelu_tanh
from minigrok.llamacpp import LlamaCpp, LlamaCppCrashed, configuration, cpu_has_amx
from minigrok.model import forward, init_cache
from minigrok.quantize import convert
from minigrok.shipped import shipped_model
from minigrok.tokenizer import Tokenizer, train_bpe

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install llama-cpp-python; it builds llama.cpp)",
)
DEFAULT_MODEL = shipped_model()

# Tolerances: max |logit difference| / max |logit| over every position. Measured values are in the module
# docstring; each tolerance is about 3x the worst measured case.
RTOL = {"f32": 7e-4, "f16": 1e-3}  # minigrok as is
RTOL_GGML_GELU = 1e-4  # minigrok with ggml's fp16 GELU table, F32 weights
# Closer router probabilities count as a tie (see the module docstring): about 3x the largest change of a router
# probability that swapping in ggml's GELU table makes (4e-4 on the random models), or for the shipped F16 model
# ggml's fp16 activations and GELU table (1.5e-4). For Q8_0/Q4_0 weights, whose logits differ ~30x more, these are
# the margin of the random seeds chosen and 2x the quantized shipped model's relative logit difference.
ROUTER_TIE = {"random": 1e-3, "trained": 5e-4, "quantized": 5e-3, "trained-quantized": 1e-2}
# Q8_0/Q4_0 weights (difference 5), comparing the decode path.
RTOL_QUANT = {"random": 3e-2, "trained": 1.5e-2}

PROMPT = "To be, or not to be: that is the question"


# ---- llama.cpp itself, on this CPU -------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_llama_cpp_gives_logits_for_quantized_files_on_this_cpu(qtype):
    """The files that crashed llama.cpp on AMX CPUs (its repacked Q8_0/Q4_0 weights): logits come back, finite,
    and the same with repacking forced off as with this CPU's default configuration."""
    path = shipped_model(f"minigrok-shakespeare-{qtype}.gguf")
    _, config, tokenizer = load_gguf(path)
    ids = tokenizer.encode(PROMPT)
    logits = LlamaCpp(path, n_ctx=config.context_length).logits(ids)  # (T, vocab)
    assert logits.shape == (len(ids), config.vocab_size) and np.isfinite(logits).all()
    assert np.abs(logits).max() > 1  # real logits, not an empty buffer
    plain = LlamaCpp(path, n_ctx=config.context_length, extra_bufts=False).logits(ids)  # (T, vocab)
    assert relative_diff(plain, logits) < 1e-3  # repacking reorders sums only
    assert configuration()["extra_bufts"] == (not cpu_has_amx())


def test_a_crash_in_llama_cpp_fails_one_call_and_names_the_signal():
    llm = LlamaCpp(DEFAULT_MODEL, vocab_only=True)
    assert llm.tokenize("ROMEO:")
    os.kill(llm.pid, signal.SIGSEGV)  # what the AMX matrix product did to the whole test run
    with pytest.raises(LlamaCppCrashed, match="SIGSEGV"):
        llm.tokenize("ROMEO:")
    assert llm.tokenize("ROMEO:") == load_gguf(DEFAULT_MODEL)[2].encode("ROMEO:")  # a fresh child answers


def test_cpu_has_amx_reads_the_cpu_flags(tmp_path):
    for flags, amx in [("fpu avx2 avx512f", False), ("fpu avx512f amx_bf16 amx_tile amx_int8", True)]:
        cpuinfo = tmp_path / f"cpuinfo-{amx}"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_amx(str(cpuinfo)) is amx
    assert cpu_has_amx(str(tmp_path / "missing")) is False


# ---- helpers -----------------------------------------------------------------------------------------------------


def ggml_gelu(x: np.ndarray) -> np.ndarray:
    """GELU as ggml's CPU backend computes it: ``fp16(gelu(fp16(x)))``, 0 for x <= -10, x for x >= 10.

    ggml/src/ggml-cpu/vec.h (GGML_GELU_FP16, ggml_vec_geglu_f32); the table is filled in ggml-cpu.c
    (ggml_cpu_init) with ``ggml_table_gelu_f16[i] = fp16(ggml_gelu_f32(fp16_to_fp32(i)))``.
    x float32 (any shape) -> float32, same shape.
    """
    table = gelu_tanh(x.astype(np.float16).astype(np.float32)).astype(np.float16).astype(np.float32)
    return np.where(x <= -10, np.float32(0), np.where(x >= 10, x, table))


def random_params(config: ModelConfig, seed: int, std: float = 0.3) -> dict[str, np.ndarray]:
    """Weights ~ N(0, std²), norm scales ~ 1 + N(0, 0.3²): logits of order 10, so every op matters."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in config.param_shapes().items():
        mean, scale = (1.0, 0.3) if len(shape) == 1 else (0.0, std)
        params[name] = (mean + scale * rng.standard_normal(shape)).astype(np.float32)
    return params


_TOKENIZERS: dict[int, Tokenizer] = {}


def tokenizer_for(vocab_size: int) -> Tokenizer:
    """A byte-level BPE with exactly vocab_size tokens (llama.cpp needs merges, so at least one): 256 bytes,
    then the letter pairs "aa", "ab", ..., then <|endoftext|>."""
    if vocab_size not in _TOKENIZERS:
        letters = "abcdefghijklmnopqrstuvwxyz"
        pairs = [(a + b).encode() for a in letters for b in letters][: vocab_size - 257]
        _TOKENIZERS[vocab_size] = Tokenizer([bytes([b]) for b in range(256)] + pairs)
    return _TOKENIZERS[vocab_size]


def router_margins(params, config, ids, monkeypatch, one_by_one: bool = False) -> np.ndarray:
    """(T,) for each position of ids, the smallest gap over the layers between the k-th and (k+1)-th largest router
    probability in minigrok: how far that token is from being routed differently. one_by_one: on the decode path
    (:func:`decode_logits`) rather than one forward over all of ids."""
    gaps: list[np.ndarray] = []
    route = minigrok.moe.route

    def recording_route(x, w_router, top_k, renormalize):
        expert_ids, gates, probs = route(x, w_router, top_k, renormalize)
        ranked = -np.sort(-probs, axis=-1)  # (T, num_experts), descending
        gaps.append(ranked[:, top_k - 1] - ranked[:, top_k] if top_k < probs.shape[-1] else np.ones(len(probs)))
        return expert_ids, gates, probs

    with monkeypatch.context() as m:
        m.setattr(minigrok.moe, "route", recording_route)
        if one_by_one:  # on the NumPy twin of the compiled decode step, which routes inside Numba
            decode_logits(params, config, ids, use_kernel=False)
            return np.concatenate(gaps).reshape(len(ids), config.n_layers).min(axis=1)  # (T,)
        forward(params, config, np.array([ids]))
    return np.min(gaps, axis=0)  # (T,)


def decode_logits(params, config, ids, use_kernel: bool = True) -> np.ndarray:
    """minigrok's logits (T, vocab) computed as generate's decode steps do: one token at a time through a KV cache
    (with Q8_0/Q4_0 weights, the path whose activations are quantized to 8 bits as llama.cpp's are); use_kernel:
    the compiled decode step (kernels/decode.py), else the NumPy path of model.forward."""
    cache = init_cache(config, 1, len(ids))
    return np.concatenate([engine.forward(params, config, np.array([[i]]), cache, use_kernel)[0] for i in ids])


def logit_margins(logits: np.ndarray) -> np.ndarray:
    """(T,) the gap between the largest and second largest logit at each position: how far greedy is from a tie."""
    ranked = -np.sort(-logits, axis=-1)
    return ranked[:, 0] - ranked[:, 1]


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def minigrok_logits(params, config, ids, monkeypatch=None, gelu=None) -> np.ndarray:
    """minigrok's logits (T, vocab) for ids at positions 0..T-1, optionally with another GELU in the experts."""
    if gelu is None:
        return forward(params, config, np.array([ids]))[0]
    with monkeypatch.context() as m:
        m.setattr(minigrok.moe, "gelu_tanh", gelu)
        return forward(params, config, np.array([ids]))[0]


# ---- random models -----------------------------------------------------------------------------------------------


def grok(d_model, n_layers, n_heads, n_kv_heads, num_experts, top_k, renormalize, d_ff=64, vocab=300, **kw):
    head_dim = d_model // n_heads  # llama.cpp's grok graph needs n_heads * head_dim == d_model
    constants = grok1_constants(d_model, head_dim) | kw
    return ModelConfig(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        num_experts=num_experts,
        top_k=top_k,
        renormalize_gates=renormalize,
        context_length=128,
        **constants,
    )


CASES = {
    # name: (config, dtype, seed); each seed is one whose routers have no near tie on PROMPT and the greedy prompt
    "gqa2-e4-top2-renorm": (grok(64, 2, 4, 2, 4, 2, True), "f32", 3),
    "mha-e8-top2-raw": (grok(64, 2, 4, 4, 8, 2, False), "f32", 5),
    "mqa-e8-top1-raw": (grok(64, 2, 8, 1, 8, 1, False, vocab=400), "f32", 0),
    "gqa4-e6-top3-renorm-3layers": (grok(64, 3, 8, 2, 6, 3, True, d_ff=96), "f32", 39),
    "gqa2-e4-top2-softcap5-theta500": (
        grok(32, 2, 2, 1, 4, 2, True, attn_logit_softcap=5.0, rope_theta=500.0),
        "f32",
        0,
    ),
    "gqa2-e4-top2-renorm-f16": (grok(64, 2, 4, 2, 4, 2, True), "f16", 3),
    "mqa-e8-top1-raw-f16": (grok(64, 2, 8, 1, 8, 1, False, vocab=400), "f16", 0),
}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Each case saved once as a GGUF file: {name: (path, params as loaded back, config)}."""
    folder = tmp_path_factory.mktemp("llama-parity")
    files = {}
    for name, (config, dtype, seed) in CASES.items():
        path = folder / f"{name}.gguf"
        save_gguf(path, random_params(config, seed), config, tokenizer_for(config.vocab_size), dtype=dtype)
        params, loaded, _ = load_gguf(path)  # F16 files: the same rounded weights llama.cpp reads
        files[name] = (path, params, loaded)
    return files


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_llama_cpp_at_every_position(name, model_files, monkeypatch):
    path, params, config = model_files[name]
    dtype = CASES[name][1]
    ids = tokenizer_for(config.vocab_size).encode(PROMPT)  # 38 tokens: letter pairs and bytes
    as_llama = config.replace(renormalize_gates=True)  # llama.cpp's gate rule, difference 1 in the docstring
    margin = router_margins(params, as_llama, ids, monkeypatch).min()
    assert margin > ROUTER_TIE["random"], f"router near tie ({margin:.1e}): pick another seed for this case"

    theirs = LlamaCpp(path, n_ctx=config.context_length).logits(ids)  # (T, vocab)
    ours = minigrok_logits(params, as_llama, ids)  # (T, vocab)
    assert theirs.shape == ours.shape == (len(ids), config.vocab_size)
    assert relative_diff(ours, theirs) < RTOL[dtype]
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))

    if dtype == "f32":  # ggml's fp16 GELU table explains most of what is left (difference 2)
        with_table = minigrok_logits(params, as_llama, ids, monkeypatch, gelu=ggml_gelu)
        assert relative_diff(with_table, theirs) < RTOL_GGML_GELU
        assert relative_diff(with_table, theirs) < relative_diff(ours, theirs) / 2

    if not config.renormalize_gates:  # the file's own rule: differs only by the renormalization's effect
        raw = minigrok_logits(params, config, ids)
        assert np.abs(raw - theirs).max() <= np.abs(raw - ours).max() + RTOL[dtype] * np.abs(theirs).max()


def trusted_greedy_tokens(
    params, config, prompt_ids, token_ids, router_tie, rtol, monkeypatch, one_by_one=False
) -> int:
    """How many of the greedy tokens minigrok generated are far from any tie, so that llama.cpp must pick them too:
    generated token j comes from the logits at position P-1+j (P prompt tokens); it is trusted if no position up to
    there has a router near tie and its logits have a clear winner (gap > rtol * max |logit|). one_by_one: check
    the decode path (:func:`decode_logits`), which generate takes for prompts under 16 tokens."""
    ids = prompt_ids + token_ids[:-1]  # every position whose logits chose a token
    p = len(prompt_ids)
    margins = router_margins(params, config, ids, monkeypatch, one_by_one)  # (len(ids),)
    router_ok = np.minimum.accumulate(margins > router_tie)[p - 1 :]
    logits = decode_logits(params, config, ids) if one_by_one else minigrok_logits(params, config, ids)
    chosen_from = logits[p - 1 :]  # (n_generated, vocab)
    clear_winner = np.minimum.accumulate(logit_margins(chosen_from) > rtol * np.abs(chosen_from).max())
    return int(np.sum(router_ok & clear_winner))


@pytest.mark.parametrize("name", ["gqa2-e4-top2-renorm", "mqa-e8-top1-raw", "gqa2-e4-top2-renorm-f16"])
def test_greedy_generation_picks_the_same_tokens(name, model_files, monkeypatch):
    path, params, config = model_files[name]
    tokenizer = tokenizer_for(config.vocab_size)
    as_llama = config.replace(renormalize_gates=True)
    ours = generate(params, as_llama, tokenizer, "ROMEO: but soft", 24, temperature=0.0)
    theirs = LlamaCpp(path, n_ctx=config.context_length).greedy(ours.prompt_ids, 24, tokenizer.eot_id)
    rtol = RTOL[CASES[name][1]]
    n = trusted_greedy_tokens(
        params, as_llama, ours.prompt_ids, ours.token_ids, ROUTER_TIE["random"], rtol, monkeypatch
    )
    assert n == len(ours.token_ids), "a router or greedy near tie: pick another seed for this case"
    assert ours.token_ids == theirs
    assert len(theirs) == 24 or theirs[-1] == tokenizer.eot_id


QUANT_CASES = {
    # name: (a case of CASES, type, seed); seeds whose routers on QUANT_PROMPT are clear of ties
    "gqa2-e4-top2-renorm-q8_0": ("gqa2-e4-top2-renorm", "q8_0", 1),
    "gqa2-e4-top2-renorm-q4_0": ("gqa2-e4-top2-renorm", "q4_0", 1),
    "mqa-e8-top1-raw-q8_0": ("mqa-e8-top1-raw", "q8_0", 0),
    "mqa-e8-top1-raw-q4_0": ("mqa-e8-top1-raw", "q4_0", 1),
}
QUANT_PROMPT = "To be, or not"  # 12 tokens


def save_quantized(path, params, config, tokenizer, qtype: str) -> None:
    """What ``python -m minigrok quantize IN OUT --type qtype`` writes (minigrok/quantize.py)."""
    save_gguf(path, convert(params, qtype), config, tokenizer, dtype="f16")


@pytest.mark.parametrize("name", list(QUANT_CASES))
def test_quantized_logits_equal_llama_cpp_at_every_position(name, tmp_path, monkeypatch):
    base, qtype, seed = QUANT_CASES[name]
    config, tokenizer = CASES[base][0], tokenizer_for(CASES[base][0].vocab_size)
    path = tmp_path / f"{name}.gguf"
    save_quantized(path, random_params(config, seed), config, tokenizer, qtype)
    params, config, _ = load_gguf(path)
    ids = tokenizer.encode(QUANT_PROMPT)
    as_llama = config.replace(renormalize_gates=True)
    margin = router_margins(params, as_llama, ids, monkeypatch, one_by_one=True).min()
    assert margin > ROUTER_TIE["quantized"], f"router near tie ({margin:.1e}): pick another seed for this case"
    theirs = LlamaCpp(path, n_ctx=config.context_length).logits(ids)
    ours = decode_logits(params, as_llama, ids)
    assert relative_diff(ours, theirs) < RTOL_QUANT["random"]
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


def test_ggml_gelu_is_the_tanh_formula_at_fp16_precision():
    """What difference 2 is, in numbers: ggml's table GELU is the tanh formula rounded twice to fp16."""
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    exact, table = gelu_tanh(x), ggml_gelu(x)
    inside = np.abs(x) < 10
    # input rounding (2^-11 relative, times |d gelu/dx| <= 1.13) plus output rounding (2^-11 relative)
    assert np.all(np.abs(table - exact)[inside] <= 2.2 * 2.0**-11 * np.maximum(np.abs(x[inside]), 1e-3) + 1e-7)
    assert np.abs(table - exact)[inside].max() > 1e-3  # and it is not nothing: ~4e-3 at |x| near 8
    assert np.array_equal(table[x <= -10], np.zeros(np.sum(x <= -10), np.float32))
    assert np.array_equal(table[x >= 10], x[x >= 10])


# ---- tokenization ------------------------------------------------------------------------------------------------

TEXTS = [
    "Hello world",
    "  multiple   spaces\n\n\ttabs  ",
    "don't I'll we've DON'T 'tis",
    "naïve café résumé Straße",
    "日本語のテキストです。",
    "emoji 🎉👍🏽 ok 😀😀",
    "numbers 12345 3.14 ٣٤٥",
    "Ελληνικά и русский",
    "हिन्दी भाषा e\u0301 combining marks",
    "العربية",
    "<|endoftext|> is plain text here",
    "a\r\nb\u00a0c\u2028d\u3000e\u200bf\x1c",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ǅ ǈ",
    "",
    " ",
]
_CORPUS = (
    "The quick brown fox jumps over the lazy dog's tail, don't it? 1234 " * 30
    + "naïve café résumé Straße 日本語のテキストです " * 30
    + "Ελληνικά русский हिन्दी العربية 🎉   \n\n " * 30
)


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    """(minigrok Tokenizer, llama.cpp vocabulary-only model) of a BPE trained on text in several scripts."""
    tokenizer = train_bpe(_CORPUS, 393)  # every merge this text has
    config = grok(32, 1, 2, 1, 2, 1, True, vocab=tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("tok") / "vocab.gguf"
    save_gguf(path, random_params(config, 0), config, tokenizer)
    return tokenizer, LlamaCpp(path, vocab_only=True)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenization_equals_llama_cpp(text, multilingual):
    tokenizer, llm = multilingual
    assert llm.tokenize(text) == tokenizer.encode(text)


def test_tokenization_uses_merges_across_scripts(multilingual):
    """The comparison above is not trivially bytes: the vocabulary merges non-ASCII text, as llama.cpp does."""
    tokenizer, llm = multilingual
    text = "naïve café 日本語のテキスト Ελληνικά"
    ids = llm.tokenize(text)
    assert len(ids) < len(text.encode("utf-8")) / 3
    assert llm.detokenize(ids).decode("utf-8") == text == tokenizer.decode(ids)


# ---- the shipped model -------------------------------------------------------------------------------------------

SHIPPED_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
GREEDY_PROMPT = "ROMEO:\n"


@pytest.fixture(scope="module")
def shipped():
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"{DEFAULT_MODEL} is not there (it ships with the repository once trained)")
    params, config, tokenizer = load_gguf(DEFAULT_MODEL)
    return params, config, tokenizer


def weight_type(path) -> str:
    """ "f32" or "f16": the type of a GGUF file's attention weights."""
    import gguf

    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    return tensor.tensor_type.name.lower()


def first_tie(margins: np.ndarray, threshold: float) -> int:
    """Number of leading positions whose margin is above threshold (all of them if none is below)."""
    below = np.flatnonzero(margins <= threshold)
    return int(below[0]) if below.size else len(margins)


def agreeing_positions(ours, theirs, margins, tie: float, rtol: float) -> int:
    """How many leading positions of two (T, vocab) logits agree within rtol (relative to the largest |logit|).
    All must, except that from a router near tie on (margin <= tie), where llama.cpp may have picked another
    expert, a disagreement ends the comparison. Fails if a position disagrees with no near tie at or before it."""
    worst = np.abs(ours - theirs).max(axis=-1)  # (T,)
    bad = np.flatnonzero(worst > rtol * np.abs(theirs).max())
    if bad.size == 0:
        return len(ours)
    assert bad[0] >= first_tie(margins, tie), f"position {bad[0]} differs by {worst[bad[0]]:.2e} with no near tie"
    return int(bad[0])


def agreeing_tokens(ours: list[int], theirs: list[int], trusted: int) -> int:
    """How many leading greedy tokens agree; fails if they part before the first ``trusted`` tokens (those clear of
    router and logit ties, :func:`trusted_greedy_tokens`) end."""
    n = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    assert n >= min(trusted, len(ours)), f"greedy tokens part at {n}, before any tie (first {trusted} are clear)"
    return n


def test_shipped_model_logits_and_greedy_tokens(shipped, monkeypatch):
    """A trained model routes some tokens at near ties, where llama.cpp may choose another expert: a difference is
    accepted only after such a tie, and the comparison stops there (causal attention leaves earlier positions as
    they were). The prompts are chosen so that most of them is compared."""
    params, config, tokenizer = shipped
    llm = LlamaCpp(DEFAULT_MODEL, n_ctx=config.context_length)
    ids = tokenizer.encode(SHIPPED_PROMPT)
    as_llama = config.replace(renormalize_gates=True)
    theirs = llm.logits(ids)
    ours = minigrok_logits(params, as_llama, ids)
    margins = router_margins(params, as_llama, ids, monkeypatch)
    rtol = RTOL[weight_type(DEFAULT_MODEL)]
    n = agreeing_positions(ours, theirs, margins, ROUTER_TIE["trained"], rtol)
    assert n >= 16, f"only {n} of {len(ids)} positions compared: choose another SHIPPED_PROMPT"
    ours, theirs = ours[:n], theirs[:n]
    if weight_type(DEFAULT_MODEL) == "f32":  # (with F16 weights, the fp16 activations dominate: difference 4)
        assert relative_diff(minigrok_logits(params, as_llama, ids, monkeypatch, gelu=ggml_gelu)[:n], theirs) < 1e-5
    # The file's own gate rule (raw gates for the Shakespeare model) differs only by renormalizing's effect.
    raw = minigrok_logits(params, config, ids)[:n]
    assert np.abs(raw - theirs).max() <= np.abs(raw - ours).max() + rtol * np.abs(theirs).max()

    result = generate(params, as_llama, tokenizer, GREEDY_PROMPT, 30, temperature=0.0)
    theirs = llm.greedy(result.prompt_ids, 30, tokenizer.eot_id)
    trusted = trusted_greedy_tokens(
        params, as_llama, result.prompt_ids, result.token_ids, ROUTER_TIE["trained"], rtol, monkeypatch
    )
    assert agreeing_tokens(result.token_ids, theirs, trusted) >= 10, "choose another GREEDY_PROMPT"


def test_shipped_model_default_settings(shipped):
    """llama.cpp as a user runs it (F16 KV cache) still agrees with minigrok (raw gates, exact GELU) closely."""
    params, config, tokenizer = shipped
    ids = tokenizer.encode(SHIPPED_PROMPT)
    theirs = LlamaCpp(DEFAULT_MODEL, f32_cache=False, n_ctx=config.context_length).logits(ids)
    ours = minigrok_logits(params, config, ids)
    assert relative_diff(ours, theirs) < 1e-3  # measured 2.9e-4 (mostly the gate renormalization)
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


def test_shipped_tokenizer_equals_llama_cpp(shipped):
    _, _, tokenizer = shipped
    llm = LlamaCpp(DEFAULT_MODEL, vocab_only=True)
    for text in [*TEXTS, SHIPPED_PROMPT]:
        assert llm.tokenize(text) == tokenizer.encode(text), text


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_shipped_model_quantized_logits_and_greedy_tokens(shipped, qtype, tmp_path, monkeypatch):
    params, config, tokenizer = shipped
    path = tmp_path / f"shipped-{qtype}.gguf"
    save_quantized(path, params, config, tokenizer, qtype)
    params, config, _ = load_gguf(path)
    as_llama = config.replace(renormalize_gates=True)
    llm = LlamaCpp(path, n_ctx=config.context_length)
    ids = tokenizer.encode(SHIPPED_PROMPT)
    tie, rtol = ROUTER_TIE["trained-quantized"], RTOL_QUANT["trained"]
    margins = router_margins(params, as_llama, ids, monkeypatch, one_by_one=True)
    n = agreeing_positions(decode_logits(params, as_llama, ids), llm.logits(ids), margins, tie, rtol)
    assert n >= 16, f"only {n} of {len(ids)} positions compared: choose another SHIPPED_PROMPT"

    result = generate(params, as_llama, tokenizer, GREEDY_PROMPT, 30, temperature=0.0)  # < 16 tokens: decode path
    theirs = llm.greedy(result.prompt_ids, 30, tokenizer.eot_id)
    trusted = trusted_greedy_tokens(params, as_llama, result.prompt_ids, result.token_ids, tie, rtol, monkeypatch, True)
    assert agreeing_tokens(result.token_ids, theirs, trusted) >= 10, "choose another GREEDY_PROMPT"
