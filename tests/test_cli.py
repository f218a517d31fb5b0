"""generate() and the command line, end to end on a small random grok-tiny model written as GGUF."""

import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from minigrok import __main__ as cli
from minigrok.checkpoint import load_gguf, save_gguf
from minigrok.config import get_preset
from minigrok.generate import generate
from minigrok.model import forward, init_params
from minigrok.tokenizer import train_bpe

TINY = get_preset("grok-tiny")  # vocab 512, context 64
STATS = re.compile(
    r"^generated (\d+) tokens \((end of text|max -n)\) \| prefill: (\d+) tokens, [\d.]+ tok/s \| "
    r"decode: (\d+) tokens, ([\d.]+|-) tok/s \| time to first token [\d.]+ s \| kernel warm-up [\d.]+ s$"
)


def training_text() -> str:
    """Varied pseudo-English (fixed seed): enough distinct byte pairs for 255 BPE merges."""
    rnd = random.Random(0)
    syllables = ["ro", "me", "o", "ju", "li", "et", "thou", "art", "wher", "fore", "sweet", "night", "kiss", "day"]
    lines = []
    for _ in range(300):
        words = ["".join(rnd.choices(syllables, k=rnd.randint(1, 3))) for _ in range(rnd.randint(3, 9))]
        lines.append(rnd.choice(["ROMEO: ", "JULIET: ", ""]) + " ".join(words) + rnd.choice([".", ",", "!", "?"]))
    return "\n".join(lines) + "\n" + "".join(chr(c) for c in range(32, 127))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    tokenizer = train_bpe(training_text(), TINY.vocab_size)
    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    save_gguf(path, init_params(TINY, seed=0), TINY, tokenizer)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load_gguf(model_path)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minigrok", *args], capture_output=True, text=True, timeout=120, check=False
    )


# ---- generate(), in process -----------------------------------------------------------------------------------


def test_greedy_generation_with_the_kv_cache_equals_full_recomputation(model):
    params, config, tokenizer = model
    streamed = []
    result = generate(params, config, tokenizer, "ROMEO:", 12, temperature=0.0, on_text=streamed.append)
    assert result.prompt_ids == tokenizer.encode("ROMEO:")
    ids = list(result.prompt_ids)
    for token in result.token_ids:  # each token is the argmax of an uncached forward over everything before it
        assert token == int(np.argmax(forward(params, config, np.array([ids]))[0, -1, : tokenizer.vocab_size]))
        ids.append(token)
    assert "".join(streamed) == result.text
    generated = [t for t in result.token_ids if t != tokenizer.eot_id]
    assert result.text == tokenizer.decode(generated)
    if result.finish_reason == "length":
        assert result.n_generated == 12 and tokenizer.eot_id not in result.token_ids
    else:
        assert result.token_ids[-1] == tokenizer.eot_id and result.token_ids.count(tokenizer.eot_id) == 1
    assert result.n_prompt_tokens == len(result.prompt_ids) and result.n_decode_steps == result.n_generated - 1
    assert 0 < result.prefill_seconds <= result.time_to_first_token


def test_sampling_is_reproducible_for_a_seed(model):
    a = generate(*model, "JULIET:", 15, temperature=1.0, top_k=40, top_p=0.95, seed=3)
    b = generate(*model, "JULIET:", 15, temperature=1.0, top_k=40, top_p=0.95, seed=3)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_empty_prompt_starts_from_end_of_text(model):
    result = generate(*model, "", 5, temperature=0.0)
    assert result.prompt_ids == [model[2].eot_id]


def test_too_long_a_request_fails_before_any_work(model):
    _, config, tokenizer = model
    prompt = "ROMEO: wherefore art thou"
    n_prompt = len(tokenizer.encode(prompt))
    # params={} would fail with a KeyError inside forward(): the ValueError proves nothing ran.
    with pytest.raises(ValueError, match=f"{n_prompt} tokens.*{config.context_length}.*smaller -n"):
        generate({}, config, tokenizer, prompt, config.context_length - n_prompt + 1, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate({}, config, tokenizer, prompt, 0)
    with pytest.raises(ValueError, match="top_p"):
        generate({}, config, tokenizer, prompt, 5, top_p=1.5)


# ---- the command line ---------------------------------------------------------------------------------------------


def test_cli_generate_streams_the_same_text_as_generate(model_path, model):
    proc = run("generate", "-m", str(model_path), "-p", "ROMEO:", "-t", "0", "-n", "20")
    assert proc.returncode == 0, proc.stderr
    expected = generate(*model, "ROMEO:", 20, temperature=0.0)
    assert proc.stdout == "ROMEO:" + expected.text + "\n"
    match = STATS.match(proc.stderr.strip())
    assert match, proc.stderr
    n_generated, reason, n_prompt, n_decode, _ = match.groups()
    assert int(n_generated) == expected.n_generated and int(n_decode) == expected.n_decode_steps
    assert int(n_prompt) == expected.n_prompt_tokens
    assert (reason == "max -n") == (expected.finish_reason == "length")


def test_cli_no_stream_prints_the_same_text(model_path):
    args = ["generate", "-m", str(model_path), "-p", "JULIET:", "-n", "25", "-t", "1.0", "--top-p", "0.9", "-s", "7"]
    streamed, at_end = run(*args), run(*args, "--no-stream")
    assert streamed.returncode == at_end.returncode == 0, streamed.stderr + at_end.stderr
    assert streamed.stdout == at_end.stdout and streamed.stdout.startswith("JULIET:")


def test_cli_prompt_file_is_used_as_is(model_path, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\n", encoding="utf-8")
    proc = run("generate", "-m", str(model_path), "--prompt-file", str(prompt), "-t", "0", "-n", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:\n")
    refused = run("generate", "-m", str(model_path), "--prompt-file", str(tmp_path))  # a folder, not a file
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(f"prompt file {tmp_path} is a directory, not a file")


def test_cli_info_preset_grok1():
    proc = run("info", "--preset", "grok-1")
    assert proc.returncode == 0, proc.stderr
    assert "315.68 B total, 83.76 B active per token" in proc.stdout
    # Q8_0: 34 bytes per 32 weights except norms and router (f32) and the token embedding (f16), from the shapes.
    shapes = get_preset("grok-1").param_shapes().items()
    f32_weights = sum(np.prod(s) for n, s in shapes if len(s) == 1 or "ffn_gate_inp" in n)
    f16_weights = np.prod(get_preset("grok-1").param_shapes()["token_embd.weight"])
    q8_weights = get_preset("grok-1").n_params() - f32_weights - f16_weights
    q8_bytes = f32_weights * 4 + f16_weights * 2 + q8_weights * 34 / 32
    assert re.search(rf"Q8_0\s+8\.5\s+{q8_bytes / 1e9:.2f} GB", proc.stdout), proc.stdout


def test_cli_info_on_a_file(model_path):
    proc = run("info", str(model_path))
    assert proc.returncode == 0, proc.stderr
    n_params = TINY.n_params()
    assert "F32" in proc.stdout and f"{n_params / 1e3:.2f} K weights" in proc.stdout
    assert f"{n_params / 1e3:.2f} K total" in proc.stdout


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minigrok: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "-1"], "-n/--max-new-tokens"),
        (["-n", "many"], "-n/--max-new-tokens"),
        (["-t", "-1"], "-t/--temperature"),
        (["--top-p", "2"], "--top-p"),
        (["-s", "-4"], "-s/--seed"),
        (["-p", "x", "--prompt-file", "f"], "not allowed with"),
        (["-n", "64"], "context length of 64"),
    ],
)
def test_cli_bad_generate_flags(model_path, args, message):
    assert message in one_error_line(run("generate", "-m", str(model_path), *args))


def test_cli_missing_and_broken_model_files(tmp_path):
    assert "not found" in one_error_line(run("generate", "-m", str(tmp_path / "nope.gguf")))
    assert "not found" in one_error_line(run("info", str(tmp_path / "nope.gguf")))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(100))
    one_error_line(run("generate", "-m", str(broken)))
    one_error_line(run("info", str(broken)))


def test_cli_default_model_missing_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "weights" / "minigrok-shakespeare.gguf")
    assert cli.main(["generate", "-n", "5"]) == 1
    err = capsys.readouterr().err
    assert "weights" in err and "python -m minigrok train --config configs/shakespeare.toml" in err


def test_cli_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        print("partial", end="")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_generate", interrupted)
    assert cli.main(["generate"]) == 130
    out, err = capsys.readouterr()
    assert out == "partial" and err == ""


def test_refused_generate_prints_no_prompt(model_path):
    proc = run("generate", "-m", str(model_path), "-p", "ROMEO:", "-n", "100000")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "context length" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("file", "dtype"),
    [
        ("minigrok-shakespeare.gguf", "f16"),
        ("minigrok-shakespeare-q8_0.gguf", "Q8_0"),
        ("minigrok-shakespeare-q4_0.gguf", "Q4_0"),
    ],
)
def test_info_prices_each_tensor_as_the_file_stores_it(file, dtype):
    """info's weight bytes for a type are the tensor bytes of the shipped file of that type, exactly (the token
    embedding at f16 in Q8_0/Q4_0 files, norms and router at f32), not an estimate at one type for all."""
    import gguf

    from minigrok.checkpoint import read_config

    path = cli.DEFAULT_MODEL.parent / file
    config = read_config(path)
    assert cli.weight_bytes(config, dtype)[0] == sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)


def test_a_bad_kernel_choice_is_one_line_for_every_command(tmp_path):
    """MINIGROK_INTEGER_DOT is read when the kernels are imported, which for eval and train is while the parser
    is built: still one line, no traceback."""
    env = {**os.environ, "MINIGROK_INTEGER_DOT": "foo"}
    for args in (["eval", "--help"], ["train", "--help"], ["generate", "-n", "1", "-p", "hi"]):
        done = subprocess.run([sys.executable, "-m", "minigrok", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("minigrok: error: MINIGROK_INTEGER_DOT='foo': use 'portable'")
