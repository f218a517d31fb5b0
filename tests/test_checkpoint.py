"""GGUF checkpoints: round trips, llama.cpp's names and layout, and every way a file can be bad."""

import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.checkpoint import (
    CheckpointError,
    load_gguf,
    read_config,
    read_metadata,
    save_gguf,
    tokenizer_gguf_fields,
)
from minigrok.config import ModelConfig, get_preset
from minigrok.tokenizer import Tokenizer

T = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType


# ---- helpers ----------------------------------------------------------------------------------


def random_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 params in the shapes of config.param_shapes()."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in config.param_shapes().items()}


def make_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE with exactly vocab_size tokens: 256 bytes, letter pairs ("aa", "ab", ...), <|endoftext|>."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    pairs = [(x + y).encode() for x in letters for y in letters][: vocab_size - 257]
    return Tokenizer([bytes([b]) for b in range(256)] + pairs)


TINY = get_preset("grok-tiny")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """grok-tiny with random weights, saved as f32."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.gguf"
    save_gguf(path, random_params(TINY), TINY, make_tokenizer(TINY.vocab_size), metadata={"step": 7})
    return path


def rewrite(src, dst, *, arch="grok", drop_keys=(), put=None, tensors=None):
    """Copy a GGUF file with some keys dropped or set ({key: (value, GGUFValueType)}) and the tensor dict
    passed through ``tensors`` (a function); to fake files made by other tools."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        sub_type = field.types[-1] if field.types[0] == T.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for key, (value, vtype) in (put or {}).items():
        writer.add_key_value(key, value, vtype)
    arrays = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    for name, (arr, qtype) in (tensors(arrays) if tensors else arrays).items():
        raw = qtype if qtype not in (Q.F32, Q.F16) else None
        writer.add_tensor(name, arr, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# ---- round trips -------------------------------------------------------------------------------


@st.composite
def configs(draw) -> ModelConfig:
    n_kv_heads = draw(st.integers(1, 2))
    num_experts = draw(st.integers(1, 4))
    positive = st.floats(1e-3, 100.0)
    return ModelConfig(
        vocab_size=draw(st.integers(257, 270)),
        d_model=draw(st.sampled_from([4, 8, 12])),
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_kv_heads * draw(st.integers(1, 3)),
        n_kv_heads=n_kv_heads,
        head_dim=draw(st.sampled_from([2, 4, 6])),
        d_ff=draw(st.integers(1, 10)),
        num_experts=num_experts,
        top_k=draw(st.integers(1, num_experts)),
        rope_theta=draw(st.floats(1.0, 1e6)),
        rms_eps=draw(st.floats(1e-8, 1e-2)),
        embedding_multiplier=draw(positive),
        attention_multiplier=draw(positive),
        attn_logit_softcap=draw(st.floats(0.0, 50.0)),
        output_multiplier=draw(positive),
        renormalize_gates=draw(st.booleans()),
        context_length=draw(st.integers(1, 1 << 20)),
    )


@settings(max_examples=30, deadline=None)
@given(config=configs(), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["f32", "f16"]))
def test_round_trip(config, seed, dtype):
    params = random_params(config, seed)
    tokenizer = make_tokenizer(config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        save_gguf(path, params, config, tokenizer, dtype=dtype)
        loaded, config2, tokenizer2 = load_gguf(path)
        assert read_config(path) == config2
        assert os.listdir(tmp) == ["m.gguf"]  # no temp file left behind

    assert config2 == config
    assert tokenizer2 == tokenizer and tokenizer_gguf_fields(tokenizer2) == tokenizer_gguf_fields(tokenizer)

    assert loaded.keys() == params.keys()
    for name, arr in params.items():
        assert loaded[name].dtype == np.float32
        stays_f32 = arr.ndim == 1 or name.endswith("ffn_gate_inp.weight")
        # f16: exactly the f16 rounding of the original, so within half an f16 ulp.
        want = arr if dtype == "f32" or stays_f32 else arr.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)


def test_f16_representable_values_round_trip_exactly(tmp_path):
    params = {k: v.astype(np.float16).astype(np.float32) for k, v in random_params(TINY, 1).items()}
    save_gguf(tmp_path / "h.gguf", params, TINY, make_tokenizer(TINY.vocab_size), dtype="f16")
    loaded, _, _ = load_gguf(tmp_path / "h.gguf")
    for name in params:
        np.testing.assert_array_equal(loaded[name], params[name], err_msg=name)
    f16_bytes = (tmp_path / "h.gguf").stat().st_size
    save_gguf(tmp_path / "f.gguf", params, TINY, make_tokenizer(TINY.vocab_size), dtype="f32")
    assert f16_bytes < 0.6 * (tmp_path / "f.gguf").stat().st_size


EXACT_KEYS = [f"minigrok.config.{f}" for f in ("rope_theta", "rms_eps", "embedding_multiplier",
              "attention_multiplier", "attn_logit_softcap", "output_multiplier")]  # fmt: skip


def test_float_hyperparameters_without_exact_copies_are_llama_cpps_float32(tiny_file, tmp_path):
    config = read_config(rewrite(tiny_file, tmp_path / "f32.gguf", drop_keys=EXACT_KEYS))
    assert config.rms_eps == float(np.float32(1e-5)) != 1e-5
    assert config.output_multiplier == float(np.float32(TINY.output_multiplier))
    assert config.replace(rms_eps=1e-5, output_multiplier=TINY.output_multiplier) == TINY
    # A grok.* key edited after saving wins over the stale exact copy.
    edit = {"grok.attention.layer_norm_rms_epsilon": (1e-6, T.FLOAT32)}
    config = read_config(rewrite(tiny_file, tmp_path / "edit.gguf", drop_keys=edit, put=edit))
    assert config.rms_eps == float(np.float32(1e-6))


def test_metadata_round_trip(tiny_file, tmp_path):
    assert read_metadata(tiny_file) == {"step": 7}
    meta = {"step": 1200, "loss": 1.25, "data": "shakespeare", "renorm": False, "lr": np.float32(0.5), "note": ""}
    save_gguf(tmp_path / "m.gguf", random_params(TINY), TINY, make_tokenizer(TINY.vocab_size), metadata=meta)
    assert read_metadata(tmp_path / "m.gguf") == {**meta, "lr": 0.5}


# ---- llama.cpp's names, types and layout --------------------------------------------------------


def test_metadata_uses_llama_cpp_grok_keys(tiny_file):
    fields = gguf.GGUFReader(tiny_file).fields
    values = {k: f.contents() for k, f in fields.items()}
    expected_ints = {
        "grok.context_length": 64, "grok.embedding_length": 64, "grok.block_count": 2,
        "grok.feed_forward_length": 64, "grok.expert_feed_forward_length": 64, "grok.attention.head_count": 4,
        "grok.attention.head_count_kv": 2, "grok.attention.key_length": 16, "grok.attention.value_length": 16,
        "grok.expert_count": 4, "grok.expert_used_count": 2, "tokenizer.ggml.eos_token_id": 511,
    }  # fmt: skip
    for key, want in expected_ints.items():
        assert values[key] == want and fields[key].types == [T.UINT32], key
    expected_floats = {
        "grok.attention.layer_norm_rms_epsilon": 1e-5, "grok.rope.freq_base": 10000.0, "grok.embedding_scale": 8.0,
        "grok.attention.output_scale": 0.25, "grok.attn_logit_softcapping": 30.0,
        "grok.logit_scale": 3**-0.5, "grok.final_logit_softcapping": 0.0,
    }  # fmt: skip
    for key, want in expected_floats.items():  # llama.cpp's get_key insists on FLOAT32
        assert fields[key].types == [T.FLOAT32] and values[key] == np.float32(want), key
    assert values["general.architecture"] == "grok"
    assert values["grok.expert_weights_norm"] is False and fields["grok.expert_weights_norm"].types == [T.BOOL]
    assert values["tokenizer.ggml.model"] == "gpt2" and values["tokenizer.ggml.pre"] == "gpt-2"
    assert len(values["tokenizer.ggml.tokens"]) == 512 and values["tokenizer.ggml.token_type"][-1] == 3
    assert values["tokenizer.ggml.merges"][:2] == ["a a", "a b"]
    assert values["minigrok.step"] == 7


def test_tensor_types_and_ggml_dims(tmp_path):
    path = tmp_path / "h.gguf"
    save_gguf(path, random_params(TINY), TINY, make_tokenizer(TINY.vocab_size), dtype="f16")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert list(tensors) == list(TINY.param_shapes())
    # GGML ne is NumPy's shape reversed: grok.cpp creates ffn_gate_exps as {n_embd, n_ff_exp, n_expert}.
    assert tensors["blk.0.ffn_gate_exps.weight"].shape.tolist() == [64, 64, 4]
    assert tensors["token_embd.weight"].shape.tolist() == [64, 512]
    assert tensors["blk.1.attn_k.weight"].shape.tolist() == [64, 32]
    for name, t in tensors.items():
        f32 = name.endswith("norm.weight") or name.endswith("ffn_gate_inp.weight")
        assert t.tensor_type == (Q.F32 if f32 else Q.F16), name


# ---- files made elsewhere -----------------------------------------------------------------------


def test_missing_optional_keys_take_llama_cpp_defaults(tiny_file, tmp_path):
    optional = ["grok.embedding_scale", "grok.attention.output_scale", "grok.attn_logit_softcapping",
                "grok.logit_scale", "grok.final_logit_softcapping", "grok.expert_weights_norm",
                "grok.attention.key_length", "grok.attention.value_length", "grok.expert_feed_forward_length",
                "grok.attention.head_count_kv", "grok.rope.freq_base", *EXACT_KEYS]  # fmt: skip
    tiny_mha = TINY.replace(n_kv_heads=4)  # head_count_kv missing means n_kv_heads = n_heads
    src = tmp_path / "mha.gguf"
    save_gguf(src, random_params(tiny_mha), tiny_mha, make_tokenizer(TINY.vocab_size))
    params, config, _ = load_gguf(rewrite(src, tmp_path / "old.gguf", drop_keys=optional))
    grok1 = get_preset("grok-1")
    assert config == tiny_mha.replace(
        embedding_multiplier=grok1.embedding_multiplier,  # llama.cpp's defaults are Grok-1's constants
        attention_multiplier=grok1.attention_multiplier,
        output_multiplier=grok1.output_multiplier,
        attn_logit_softcap=30.0,
        renormalize_gates=True,  # what llama.cpp computes whatever the key says
        rms_eps=float(np.float32(1e-5)),  # a required key, read as llama.cpp's float32
    )
    assert params.keys() == tiny_mha.param_shapes().keys()


def test_f16_file_from_elsewhere_is_upcast(tiny_file, tmp_path):
    def to_f16(arrays):
        return {k: (a.astype(np.float16), Q.F16) for k, (a, _) in arrays.items()}

    params, _, _ = load_gguf(rewrite(tiny_file, tmp_path / "all16.gguf", tensors=to_f16))
    want, _, _ = load_gguf(tiny_file)
    for name in want:
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], want[name].astype(np.float16).astype(np.float32))


# ---- bad files ---------------------------------------------------------------------------------


def test_mmap_load_gives_read_only_views_with_the_same_values_and_logits(tiny_file, tmp_path):
    from minigrok.engine import forward
    from minigrok.model import init_cache

    copied, config, _ = load_gguf(tiny_file)
    mapped, config_m, _ = load_gguf(tiny_file, mmap=True)
    assert config_m == config and copied.keys() == mapped.keys()
    for name, w in mapped.items():
        np.testing.assert_array_equal(w, copied[name])
        assert not w.flags.writeable and copied[name].flags.writeable  # a view of the file, not a copy
        with pytest.raises(ValueError, match="read-only"):
            w[...] = 0
    tokens = np.array([[1, 2, 3, 4]])
    for compiled in (True, False):  # the compiled decode step and the NumPy path both read the views
        logits = []
        for params in (copied, mapped):
            cache = init_cache(config, 1)
            forward(params, config, tokens[:, :3], cache, compiled)
            logits.append(forward(params, config, tokens[:, 3:], cache, compiled))
        np.testing.assert_array_equal(logits[0], logits[1])


def test_mmap_keeps_an_f16_token_embedding_f16_and_the_logits(tmp_path):
    from minigrok.engine import forward
    from minigrok.model import init_cache

    path16 = tmp_path / "tiny16.gguf"
    save_gguf(path16, random_params(TINY), TINY, make_tokenizer(TINY.vocab_size), dtype="f16")
    copied, config, _ = load_gguf(path16)
    f16 = load_gguf(path16, mmap=True)[0]
    embd = f16["token_embd.weight"]  # a float16 view of the file, which both paths read as it is
    assert embd.dtype == np.float16 and not embd.flags.writeable and copied["token_embd.weight"].dtype == np.float32
    np.testing.assert_array_equal(embd.astype(np.float32), copied["token_embd.weight"])
    w = f16["blk.0.attn_q.weight"]  # other F16 weights are widened to float32: copies, writable
    assert w.dtype == np.float32 and w.flags.writeable
    assert not f16["blk.0.ffn_gate_inp.weight"].flags.writeable  # the router stays F32 in an F16 file
    tokens = np.array([[1, 2, 3, 4, 5]])
    for compiled in (True, False):
        steps = []
        for params in (copied, f16):
            cache = init_cache(config, 1)
            logits = [forward(params, config, tokens[:, :3], cache, compiled)[0, -1]]  # the prefill's last
            logits += [forward(params, config, tokens[:, t : t + 1], cache, compiled)[0, 0] for t in (3, 4)]
            steps.append(logits)
        a, b = np.array(steps[0]), np.array(steps[1])  # (3, vocab_size) each
        # The NumPy decode steps multiply the same float32 values one row at a time: the same logits. A prefill's
        # product (BLAS blocks of rows) and the compiled F16 loop may add in another order: float32 rounding.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())
        if not compiled:
            np.testing.assert_array_equal(a[1:], b[1:])


def read_tokens_merges(path) -> list[str]:
    return gguf.GGUFReader(path).fields["tokenizer.ggml.merges"].contents()


def load_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_gguf(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_files_are_reported(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    reader = gguf.GGUFReader(tiny_file)
    last = reader.tensors[-1]
    cuts = {
        "empty": 0,
        "magic only": 4,
        "in the header": 12,
        "in the token list": reader.fields["tokenizer.ggml.tokens"].offset + 100,
        "in the tensor infos": reader.tensors[3].field.offset + 5,
        "at the start of tensor data": reader.data_offset,
        "in the first tensor": reader.tensors[0].data_offset + 100,
        "one byte short": last.data_offset + last.n_bytes - 1,
    }
    assert len(set(cuts.values())) == len(cuts)
    for where, cut in cuts.items():
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        message = load_error(path)
        assert str(path) in message, where
        assert "truncated" in message, (where, message)


def test_missing_file_wrong_magic_and_version(tiny_file, tmp_path):
    assert "cannot read" in load_error(tmp_path / "nope.gguf") and "nope.gguf" in load_error(tmp_path / "nope.gguf")
    (tmp_path / "w.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    assert "is not a GGUF file" in load_error(tmp_path / "w.gguf")
    data = bytearray(tiny_file.read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    (tmp_path / "v.gguf").write_bytes(data)
    assert "GGUF version 7" in load_error(tmp_path / "v.gguf")
    with pytest.raises(CheckpointError, match="is not a GGUF file"):
        read_config(tmp_path / "w.gguf")


def test_wrong_architecture(tiny_file, tmp_path):
    message = load_error(rewrite(tiny_file, tmp_path / "llama.gguf", arch="llama"))
    assert "general.architecture 'llama'" in message and "'grok'" in message


def test_missing_and_mistyped_keys(tiny_file, tmp_path):
    message = load_error(rewrite(tiny_file, tmp_path / "a.gguf", drop_keys=["grok.block_count"]))
    assert "'grok.block_count'" in message
    bad = {"grok.embedding_length": ("64", T.STRING)}
    message = load_error(rewrite(tiny_file, tmp_path / "b.gguf", drop_keys=bad, put=bad))
    assert "'grok.embedding_length' is STRING" in message and "expected int" in message
    bad = {"grok.expert_weights_norm": (1, T.UINT32)}
    assert "expected bool" in load_error(rewrite(tiny_file, tmp_path / "c.gguf", drop_keys=bad, put=bad))
    bad = {"grok.final_logit_softcapping": (30.0, T.FLOAT32)}
    assert "final logit soft-cap" in load_error(rewrite(tiny_file, tmp_path / "d.gguf", drop_keys=bad, put=bad))
    bad = {"tokenizer.ggml.model": ("llama", T.STRING)}
    assert "'llama'" in load_error(rewrite(tiny_file, tmp_path / "e.gguf", drop_keys=bad, put=bad))
    bad = {"tokenizer.ggml.merges": (["a b", "a a"] + read_tokens_merges(tiny_file)[2:], T.ARRAY)}
    assert "inconsistent: merge 0 'a b'" in load_error(rewrite(tiny_file, tmp_path / "g.gguf", drop_keys=bad, put=bad))
    bad = {"grok.attention.head_count_kv": (3, T.UINT32)}  # 4 query heads cannot share 3 KV heads
    assert "n_kv_heads" in load_error(rewrite(tiny_file, tmp_path / "f.gguf", drop_keys=bad, put=bad))


def test_bad_tensors(tiny_file, tmp_path):
    cases = {
        "missing": (lambda a: a.pop("blk.1.ffn_up_exps.weight"), "no tensor 'blk.1.ffn_up_exps.weight'"),
        "extra": (lambda a: a.update({"blk.2.attn_q.weight": a["blk.1.attn_q.weight"]}), "'blk.2.attn_q.weight'"),
        "transposed": (
            lambda a: a.update({"blk.0.attn_k.weight": (a["blk.0.attn_k.weight"][0].T.copy(), Q.F32)}),
            "'blk.0.attn_k.weight' in",
        ),
        "untied": (lambda a: a.update({"output.weight": a["token_embd.weight"]}), "tied embeddings"),
        "nan": (
            lambda a: a.update({"output_norm.weight": (np.full(64, np.nan, np.float32), Q.F32)}),
            "'output_norm.weight' in",
        ),
        "q4_1": (  # a quantized type minigrok does not read (Q8_0 and Q4_0 are tested in test_quant.py)
            lambda a: a.update(
                {"blk.0.attn_q.weight": (gguf.quants.quantize(a["blk.0.attn_q.weight"][0], Q.Q4_1), Q.Q4_1)}
            ),  # fmt: skip
            "'blk.0.attn_q.weight' is Q4_1",
        ),
    }
    for case, (change, needle) in cases.items():

        def apply(arrays, change=change):
            arrays = dict(arrays)
            change(arrays)
            return arrays

        message = load_error(rewrite(tiny_file, tmp_path / f"{case}.gguf", tensors=apply))
        assert needle in message, (case, message)
    assert "shape (64, 32)" in load_error(tmp_path / "transposed.gguf")
    assert "64 non-finite" in load_error(tmp_path / "nan.gguf")
    assert "reads F32, F16, Q8_0 and Q4_0" in load_error(tmp_path / "q4_1.gguf")


# ---- bad saves, atomically ----------------------------------------------------------------------


def save_error(path, params, config=TINY, tokenizer=None, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        save_gguf(path, params, config, tokenizer or make_tokenizer(config.vocab_size), **kw)
    return str(info.value)


def test_failed_save_writes_nothing_and_keeps_the_old_file(tiny_file, tmp_path):
    good = random_params(TINY)
    path = tmp_path / "m.gguf"
    bad_params = {
        "blk.0.attn_v.weight": "no tensor 'blk.0.attn_v.weight'",
        "blk.1.ffn_down_exps.weight": "shape (4, 64, 63)",
        "token_embd.weight": "non-finite",
        "blk.0.ffn_up_exps.weight": "F16 cannot hold",
    }
    for name, needle in bad_params.items():
        params = dict(good)
        if "no tensor" in needle:
            del params[name]
        elif "shape" in needle:
            params[name] = params[name][..., :-1]
        elif "non-finite" in needle:
            params[name] = params[name].copy()
            params[name][3, 5] = np.inf
        else:
            params[name] = params[name] * 1e5
        message = save_error(path, params, dtype="f16")
        assert name in message and needle in message, message
        assert os.listdir(tmp_path) == []

    assert "'blk.9.attn_q.weight'" in save_error(path, {**good, "blk.9.attn_q.weight": good["blk.0.attn_q.weight"]})
    assert "config.vocab_size is 512" in save_error(path, good, tokenizer=make_tokenizer(300))
    assert "metadata['bad']" in save_error(path, good, metadata={"bad": [1, 2]})
    assert "'config.x'" in save_error(path, good, metadata={"config.x": 1})  # reserved for exact hyperparameters
    assert "dtype" in save_error(path, good, dtype="q4_0")
    assert "directory" in save_error(tmp_path / "no" / "dir.gguf", good)
    assert os.listdir(tmp_path) == []

    save_gguf(path, good, TINY, make_tokenizer(TINY.vocab_size))
    before = path.read_bytes()
    del good["output_norm.weight"]
    save_error(path, good)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.gguf"]


def test_write_interrupted_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    save_gguf(path, random_params(TINY), TINY, make_tokenizer(TINY.vocab_size))
    before = path.read_bytes()

    def disk_full(self, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_gguf(path, random_params(TINY, 1), TINY, make_tokenizer(TINY.vocab_size))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.gguf"]


def test_attention_pattern_round_trips(tmp_path):
    from minigrok.model import init_params
    from minigrok.tokenizer import train_bpe

    config = get_preset("grok-tiny").replace(vocab_size=270, attention="sinks:4,16")
    tokenizer = train_bpe("the cat sat on the mat. " * 50 + "a dog and a log. " * 50, 270)
    save_gguf(tmp_path / "m.gguf", init_params(config, 0), config, tokenizer)
    assert read_config(tmp_path / "m.gguf").attention == "sinks:4,16"
