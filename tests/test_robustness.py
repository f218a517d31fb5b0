"""Hostile and extreme inputs (issue 12): each kind of failure is checked everywhere it can occur."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_checkpoint import TINY, make_tokenizer, random_params
from test_train import corpus  # noqa: F401 (a fixture)

import minigrok.kernels.decode as decode
from minigrok import __main__ as cli
from minigrok import quant
from minigrok.checkpoint import load_gguf, save_gguf
from minigrok.config import parse_attention
from minigrok.fileio import atomic_write
from minigrok.layers import rms_norm
from minigrok.model import init_params
from minigrok.tokenizer import Tokenizer
from minigrok.train import backward as bw
from minigrok.train import data

EPS = 1e-5

# ---- RMSNorm for every finite float32 input -------------------------------------------------------------------------

# Rows of any finite float32 values, from subnormals to ±3.4e38, and rows spread over a single wide magnitude.
any_finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
rows = st.one_of(
    arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 24)), elements=any_finite32),
    st.builds(
        lambda x, e: (x * np.float32(10.0**e)).astype(np.float32),
        arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 24)), elements=st.floats(-3, 3, width=32)),
        st.integers(-40, 37),
    ),
)


def rms_norm_64(x, w, eps):
    x = x.astype(np.float64)
    return w.astype(np.float64) * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


@settings(max_examples=50, deadline=None)
@given(rows)
def test_rms_norm_matches_float64_for_every_finite_input(x):
    # Before: squares above ~1.8e19 overflowed float32, so inputs of 1e20 normalised to 0 (and 3e38 to NaN).
    w = np.linspace(-2, 2, x.shape[-1], dtype=np.float32)
    want = rms_norm_64(x, w, EPS)
    got = rms_norm(x, w, EPS)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-37)  # atol: outputs that are float32 subnormals
    out = np.empty((1, x.shape[-1]), np.float32)  # the compiled decode step's RMSNorm, one row at a time
    for row, want_row in zip(x, want, strict=True):
        decode._rms_norm(row[None, :], w, np.float32(EPS), out)
        np.testing.assert_allclose(out[0], want_row, rtol=1e-6, atol=1e-37)


def test_rms_norm_of_huge_inputs_known_answer():
    # [3e30, 4e30]: rms = 5e30/sqrt(2), so x/rms = [0.6, 0.8]·sqrt(2); float32 squares (9e60) would be inf.
    x = np.array([[3e30, 4e30]], np.float32)
    want = np.array([[0.6, 0.8]]) * np.sqrt(2)
    np.testing.assert_allclose(rms_norm(x, np.ones(2, np.float32), EPS), want, rtol=1e-6)
    out = np.empty_like(x)
    decode._rms_norm(x, np.ones(2, np.float32), np.float32(EPS), out)
    np.testing.assert_allclose(out, want, rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(rows, st.integers(0, 2**31 - 1))
def test_rms_norm_backward_matches_float64_for_every_finite_input(x, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(x.shape[-1]).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dw = bw.rms_norm_backward(dy, x, w, EPS)
    dx64, dw64 = bw.rms_norm_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), EPS)
    assert dx.dtype == np.float32 and np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))
    # dx is a difference of terms of size |dy·w| / rms: compare at that scale, row by row.
    x64 = x.astype(np.float64)
    scale = np.abs(dy * w).max(axis=-1, keepdims=True) / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + EPS)
    assert np.all(np.abs(dx - dx64) <= 1e-5 * scale + 1e-37)
    np.testing.assert_allclose(dw, dw64, rtol=1e-5, atol=1e-5 * np.abs(dy).sum())


# ---- quantization does not depend on NumPy's global error state ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 3), st.just(64)), elements=st.floats(-1, 1, width=32)),
    st.integers(-45, 3),
    st.sampled_from(["q8_0", "q4_0"]),
)
def test_quantize_gives_the_same_bytes_whatever_the_callers_error_state(x, e, qtype):
    x = (x * np.float64(10.0) ** e).astype(np.float32)  # blocks from subnormal to ~1000
    want = quant.quantize(x, qtype)
    with np.errstate(all="raise"):  # before: FloatingPointError (underflow) once the scale was subnormal
        np.testing.assert_array_equal(quant.quantize(x, qtype), want)
        np.testing.assert_array_equal(quant.dequantize(want, qtype), quant.dequantize(want, qtype))


def test_quantize_of_a_block_of_1e_38_is_zeros_under_errstate_raise():
    # max 1e-38: d is subnormal in float32 and ±0 in fp16, and 1/d overflows, so every quant is 0.
    # Q8_0's d = amax/127 is +0 (bytes 00 00); Q4_0's d = max/-8 is -0 (fp16 sign bit: bytes 00 80).
    x = np.zeros(32, np.float32)
    x[3] = 1e-38
    for qtype, scale in (("q8_0", [0, 0]), ("q4_0", [0, 0x80])):
        with np.errstate(all="raise"):
            blocks = quant.quantize(x, qtype)
        np.testing.assert_array_equal(blocks, scale + [0] * (quant.BLOCK_BYTES[qtype] - 2))


# ---- atomic writes follow symlinks and keep permissions --------------------------------------------------------------


def test_atomic_write_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.gguf"
    target.write_text("old weights")
    target.chmod(0o600)
    link = tmp_path / "model.gguf"
    link.symlink_to(target)
    atomic_write(link, lambda tmp: tmp.write_text("new weights"))
    # Before: the link became a regular file with the new weights, the target kept the old ones, mode 0644.
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new weights"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["model.gguf"]  # no temp file left
    dangling = tmp_path / "new.gguf"  # a link to a file not yet there: the file is created where it points
    dangling.symlink_to(tmp_path / "real" / "new-target.gguf")
    atomic_write(dangling, lambda tmp: tmp.write_text("x"))
    assert dangling.is_symlink() and (tmp_path / "real" / "new-target.gguf").read_text() == "x"
    assert stat.S_IMODE((tmp_path / "real" / "new-target.gguf").stat().st_mode) == 0o644


def test_save_gguf_onto_a_symlink_updates_the_linked_model(tmp_path):
    tokenizer = make_tokenizer(TINY.vocab_size)
    target = tmp_path / "model-v1.gguf"
    save_gguf(target, random_params(TINY, seed=1), TINY, tokenizer)
    link = tmp_path / "latest.gguf"
    link.symlink_to(target.name)  # a relative link, as `ln -s model-v1.gguf latest.gguf` makes
    new = random_params(TINY, seed=2)
    save_gguf(link, new, TINY, tokenizer)
    assert link.is_symlink() and os.readlink(link) == "model-v1.gguf"
    params, _, _ = load_gguf(target)
    np.testing.assert_array_equal(params["token_embd.weight"], new["token_embd.weight"])


# ---- messages a new user met -----------------------------------------------------------------------------------------


def test_temperature_beyond_the_limit_names_the_limit(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "-t", "1e300"])  # before: "expected a finite number >= 0", yet 1e300 is finite
    assert "expected a number from 0 to 1e30, got 1e300" in capsys.readouterr().err


def test_a_block_pattern_with_a_repeated_key_is_refused():
    # Before: "block:size=16,size=8" was accepted (the last size won).
    with pytest.raises(ValueError, match="size is given twice"):
        parse_attention("block:size=16,size=8")
    assert parse_attention("block:size=16,local=2").block == 16


def test_data_from_a_file_says_it_is_a_file(tmp_path, capsys):
    text = tmp_path / "play.txt"
    text.write_text("To be, or not to be.\n")
    assert cli.main(["data", "--from", str(text), "--out", str(tmp_path / "out")]) == 1
    # Before: "folder .../play.txt does not exist".
    assert capsys.readouterr().err == (
        f"minigrok: error: {text} is a file, not a folder; pass --from the folder of .txt files that holds it\n"
    )


def test_data_out_onto_a_file_or_an_unwritable_folder_is_one_clear_line(tmp_path, capsys, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text("To be, or not to be.\n" * 20)
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert cli.main(["data", "--from", str(docs), "--out", str(taken)]) == 1  # before: [Errno 17] File exists
    assert (
        capsys.readouterr().err
        == f"minigrok: error: --out {taken} is a file; pass a folder (it is created if missing)\n"
    )
    assert cli.main(["data", "--from", str(docs), "--out", str(taken / "sub")]) == 1
    assert (
        capsys.readouterr().err
        == f"minigrok: error: cannot create --out {taken / 'sub'}: {taken} is a file, not a folder\n"
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(data.os, "access", lambda path, mode: Path(path) != locked)  # tests may run as root
    assert cli.main(["data", "--from", str(docs), "--out", str(locked / "new")]) == 1  # before: [Errno 13]
    assert capsys.readouterr().err == (
        f"minigrok: error: cannot write to --out {locked / 'new'}: {locked} is not writable; pick another folder\n"
    )


def test_eval_json_keeps_progress_on_stderr(corpus, tmp_path, capsys):  # noqa: F811
    tokenizer = Tokenizer.load(corpus / "tokenizer.json")
    config = TINY.replace(vocab_size=tokenizer.vocab_size, context_length=32)
    save_gguf(tmp_path / "m.gguf", init_params(config, 0), config, tokenizer)
    assert cli.main(["eval", str(tmp_path / "m.gguf"), "--data", str(corpus), "--json", "--max-tokens", "200"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["tokens"] == 199  # stdout: the JSON object only
    assert "eval: 100%" in err  # before: no progress at all with --json
