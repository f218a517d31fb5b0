"""The bench command: bytes read per token, ratios, and a small end-to-end run (no timing is asserted)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minigrok import __main__ as cli
from minigrok.checkpoint import save_gguf
from minigrok.config import get_preset
from minigrok.model import init_params
from minigrok.tokenizer import Tokenizer

TINY = get_preset("grok-tiny").replace(context_length=32)
_spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(_spec)  # benchmarks/bench.py: a script of the repository, not the package
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    letters = b"abcdefghijklmnopqrstuvwxyz"
    pairs = [bytes([a, b]) for a in letters for b in letters][: TINY.vocab_size - 257]
    path = tmp_path_factory.mktemp("bench") / "tiny.gguf"
    save_gguf(path, init_params(TINY, seed=0), TINY, Tokenizer([bytes([b]) for b in range(256)] + pairs))
    return path


def test_bytes_read_per_token_count_only_the_selected_experts(tiny_path):
    sizes = bench._bytes(str(tiny_path))
    expert = 3 * TINY.d_ff * TINY.d_model * 4  # gate, up, down of one expert, f32
    everything = 4 * TINY.n_params()  # tied embedding counted once
    assert sizes["active_bytes_per_token"] == everything - TINY.n_layers * (TINY.num_experts - TINY.top_k) * expert
    assert sizes["active_bytes_per_token"] == cli.weight_bytes(TINY, "f32")[1]  # the info command's estimate
    assert sizes["file_bytes"] > everything  # plus header and tokenizer


def test_ratios():
    rows = [
        {"model": "m", "type": "f32", "engine": e, "decode_tok_s": d, "prefill_tok_s": p, "active_bytes_per_token": 1e9}
        for e, d, p in (("minigrok", 20.0, 300.0), ("llama.cpp", 40.0, 600.0), ("naive", 2.0, 300.0))
    ]
    out = {r["engine"]: r for r in bench._with_ratios(rows, bandwidth_gb_s=50.0)}
    assert out["minigrok"]["decode_vs_llama_cpp"] == 0.5
    assert out["minigrok"]["prefill_vs_llama_cpp"] == 0.5
    assert out["minigrok"]["decode_vs_naive"] == 10.0
    assert out["minigrok"]["bound_tok_s"] == 50.0  # 50 GB/s over 1 GB per token
    assert out["llama.cpp"]["decode_vs_bound"] == 0.8


def test_prompt_ids_are_fixed_and_avoid_the_last_id():
    ids = bench.prompt_ids(300, 1000)
    assert np.array_equal(ids, bench.prompt_ids(300, 1000))
    assert ids.min() >= 0 and ids.max() == 298  # 299, the end-of-text token of a minigrok tokenizer, never drawn


@pytest.mark.slow
def test_bench_end_to_end_on_a_tiny_model(tiny_path, capsys):
    args = ["bench", "--models", "shipped", "--model", str(tiny_path), "--types", "f32", "--threads", "1"]
    args += ["--engines", "minigrok,minigrok-numpy,naive", "--prompt-tokens", "8", "--decode-tokens", "5"]
    assert cli.main([*args, "--naive-decode-tokens", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["engine"]: r for r in report["rows"]}
    assert set(rows) == {"minigrok", "minigrok-numpy", "naive"}
    # greedy decoding picks the same tokens with the compiled decode step, the NumPy path and recomputing everything
    assert rows["minigrok"]["decoded"] == rows["minigrok-numpy"]["decoded"]
    assert rows["minigrok"]["decoded"][:3] == rows["naive"]["decoded"]
    for r in rows.values():
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["active_bytes_per_token"] == cli.weight_bytes(TINY, "f32")[1]
    assert report["bandwidth"]["bandwidth_gb_s"] > 0
    assert "| shipped | f32 | naive |" in bench.markdown(report)


@pytest.mark.parametrize(
    "flag, value, message",
    [("--types", "f64", "--types takes"), ("--engines", "torch", "--engines takes"), ("--models", "", "--models")],
)
def test_bad_choices_are_refused(tiny_path, capsys, flag, value, message):
    assert cli.main(["bench", "--model", str(tiny_path), flag, value]) == 1
    assert message in capsys.readouterr().err


def test_a_bad_model_file_is_refused_before_any_worker_runs(tmp_path, capsys):
    truncated, text = tmp_path / "truncated.gguf", tmp_path / "text.gguf"
    truncated.write_bytes(b"GGUF" + bytes(60))
    text.write_text("# not a model")
    for path, message in [(truncated, "truncated"), (text, "not a GGUF file"), (tmp_path, "is a directory")]:
        assert cli.main(["bench", "--models", "shipped", "--model", str(path), "--engines", "minigrok"]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_prompt_past_the_context_is_refused_before_any_worker_runs(tiny_path, capsys):
    context = TINY.context_length
    args = ["bench", "--models", "shipped", "--model", str(tiny_path), "--engines", "minigrok"]
    assert cli.main([*args, "--prompt-tokens", str(context), "--decode-tokens", "1"]) == 1
    err = capsys.readouterr().err
    assert f"context of {context}" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["bench", "--models", "large", "--prompt-tokens", "1000", "--decode-tokens", "30"]) == 1
    assert "large model's context of 1024" in capsys.readouterr().err


def test_llama_cpp_alone_without_llama_cpp_python_is_an_error(tiny_path, capsys, monkeypatch):
    monkeypatch.setattr(cli._bench(), "_has_llama_cpp", lambda: False)
    assert cli.main(["bench", "--model", str(tiny_path), "--engines", "llama.cpp"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minigrok: error:") and "pip install llama-cpp-python" in err and err.count("\n") == 1
