"""Training that is stopped (by a signal, by non-finite gradients, by bad flags) loses nothing (issue 12)."""

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_train import corpus, tiny_run  # noqa: F401 (corpus is a fixture)

import minigrok.train.trainer as trainer
from minigrok import __main__ as cli
from minigrok.checkpoint import load_gguf, read_metadata
from minigrok.train.optim import clip_grad_norm
from minigrok.train.trainer import MAX_SKIPPED_IN_A_ROW, TrainingDiverged, train


@pytest.fixture(autouse=True)
def no_matmul_benchmark(monkeypatch):
    monkeypatch.setattr(trainer, "measure_matmul_gflops", lambda: 1.0)  # a second per run otherwise


def log_entries(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def checkpoint(out):
    params, _, _ = load_gguf(out / "ckpt.gguf")
    with np.load(out / "ckpt.opt.npz") as opt:
        return params, {k: opt[k] for k in opt.files}


def assert_same_state(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---- non-finite gradients -------------------------------------------------------------------------------------------


def test_clip_grad_norm_leaves_non_finite_gradients_as_they_are():
    # Before: returned inf and scaled by max_norm / inf = 0, so [3, 4] became [0, 0] and inf became NaN.
    g = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([[np.inf]], np.float32)}
    assert clip_grad_norm(g, 1.0) == math.inf
    np.testing.assert_array_equal(g["a"], [3.0, 4.0])
    np.testing.assert_array_equal(g["b"], [[np.inf]])
    assert math.isnan(clip_grad_norm({"a": np.array([np.nan, 1.0], np.float32)}, 1.0))


def poison(monkeypatch, bad_calls):
    """Make loss_and_grads return an infinite gradient on the calls (0-based) in ``bad_calls``."""
    real, calls = trainer.loss_and_grads, [0]

    def fake(*args, **kw):
        loss, grads, stats = real(*args, **kw)
        if calls[0] in bad_calls:
            grads["blk.0.attn_q.weight"][0, 0] = np.inf
        calls[0] += 1
        return loss, grads, stats

    monkeypatch.setattr(trainer, "loss_and_grads", fake)


def test_a_step_with_non_finite_gradients_is_skipped_and_counted(corpus, tmp_path, monkeypatch, capsys):  # noqa: F811
    train(tiny_run(corpus, tmp_path / "clean", max_steps=10, stop_after=2), progress=False)
    poison(monkeypatch, {2})
    summary = train(tiny_run(corpus, tmp_path / "bad", max_steps=10, stop_after=3), progress=True)
    # Before: the inf reached AdamW and wrote NaN into the weights. Now step 3 changes nothing: the weights and
    # the AdamW moments after it are those after step 2.
    assert summary["skipped"] == 1 and summary["step"] == 3
    assert_same_state(checkpoint(tmp_path / "bad"), checkpoint(tmp_path / "clean"))
    entry = log_entries(tmp_path / "bad")[3]
    assert entry["step"] == 3 and entry["skipped_total"] == 1 and "inf" in entry["skipped"] and "loss" not in entry
    assert read_metadata(tmp_path / "bad" / "ckpt.gguf")["train.skipped"] == 1
    assert "skipped=1" in capsys.readouterr().err.splitlines()[-1]  # the progress bar counts it


def test_a_run_that_keeps_producing_non_finite_gradients_stops(corpus, tmp_path, monkeypatch):  # noqa: F811
    train(tiny_run(corpus, tmp_path / "clean", max_steps=30, stop_after=1), progress=False)
    poison(monkeypatch, set(range(1, 100)))
    with pytest.raises(TrainingDiverged, match=f"last {MAX_SKIPPED_IN_A_ROW} steps had non-finite") as e:
        train(tiny_run(corpus, tmp_path / "bad", max_steps=30), progress=False)
    assert "ckpt.gguf holds the weights from step 1" in str(e.value)
    params, opt = checkpoint(tmp_path / "bad")
    assert all(np.all(np.isfinite(p)) for p in params.values())
    assert_same_state((params, opt), checkpoint(tmp_path / "clean"))  # the last good weights, nothing else
    assert read_metadata(tmp_path / "bad" / "ckpt.gguf")["train.step"] == 1 + MAX_SKIPPED_IN_A_ROW


# ---- the progress bar and the warm-up warning ------------------------------------------------------------------------


def test_progress_bar_shows_the_last_validation_loss_between_evaluations(corpus, tmp_path, capsys):  # noqa: F811
    train(tiny_run(corpus, tmp_path / "run", max_steps=10, eval_interval=2, stop_after=3), progress=True)
    val = [e["val_loss"] for e in log_entries(tmp_path / "run") if "val_loss" in e]
    assert len(val) == 1  # step 2 only; step 3 is not an evaluation
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"val={val[0]:.3f}" in last_line and "nan" not in last_line  # before: val=nan


def test_warmup_longer_than_the_run_is_warned_about(corpus, tmp_path, capsys):  # noqa: F811
    train(tiny_run(corpus, tmp_path / "run", max_steps=2, warmup_steps=5), progress=False)
    assert "warmup_steps (5) is larger than max_steps (2)" in capsys.readouterr().err


# ---- flags -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-steps", "0"], "max_steps must be > 0, got 0"),
        (["--max-steps", "-3"], "max_steps must be > 0, got -3"),
        (["--stop-after", "0"], "stop_after must be >= 1, got 0"),
        (["--stop-after", "-1"], "stop_after must be >= 1, got -1"),
    ],
)
def test_train_refuses_non_positive_step_flags(tmp_path, capsys, flags, message):
    # Before: exit 0 and "model in .../ckpt.gguf", a file never written.
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\ndata_dir = "{tmp_path}/none"\nout_dir = "{tmp_path}/out"\n[train]\nmax_steps = 5\n')
    assert cli.main(["train", "--config", str(config), *flags]) == 1
    assert capsys.readouterr().err == f"minigrok: error: train setting {message}\n".replace(
        "train setting stop_after", "stop_after"
    )
    assert not (tmp_path / "out").exists()


# ---- Ctrl-C and SIGTERM ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_writes_a_checkpoint_and_resume_continues_exactly(corpus, tmp_path, sig):  # noqa: F811
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(
        f'[model]\npreset = "grok-tiny"\ncontext_length = 32\n[data]\ndata_dir = "{corpus}"\nout_dir = "{out}"\n'
        "[train]\nseed = 0\nbatch_size = 4\nmax_steps = 100000\nlr = 1e-2\nmin_lr = 1e-3\nwarmup_steps = 5\n"
        "eval_interval = 20\neval_windows = 4\ncheckpoint_minutes = 1e9\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "minigrok", "train", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT at its default in the child, whatever this process inherited: a shell's background job, or
        # GNU time, starts with it ignored, and the trainer rightly leaves an ignored signal alone
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(1 for e in _entries(out) if "loss" in e) < 3:
        time.sleep(0.05)
    child.send_signal(sig)
    _, stderr = child.communicate(timeout=60)
    # Before: exit 130 with nothing written since the last periodic checkpoint (here: none at all).
    assert child.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and f"checkpoint written to {out / 'ckpt.gguf'}" in stderr
    done = read_metadata(out / "ckpt.gguf")["train.step"]
    assert done >= 3 and [e["step"] for e in log_entries(out) if "loss" in e] == list(range(1, done + 1))

    cfg = trainer.TrainConfig.from_toml(config)
    cfg.stop_after = done + 2
    train(cfg, resume=True, progress=False)
    cfg.out_dir, reference = str(tmp_path / "unbroken"), tmp_path / "unbroken"
    train(cfg, progress=False)
    a, b = log_entries(out), log_entries(reference)
    assert [(e["step"], e["loss"]) for e in a if "loss" in e] == [(e["step"], e["loss"]) for e in b if "loss" in e]
    assert [e.get("event") for e in a] == ["start"] + [None] * (done + 2) + ["paused"]
    assert_same_state(checkpoint(out), checkpoint(reference))


def _entries(out):
    try:
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.endswith("}")]
    except FileNotFoundError:
        return []
