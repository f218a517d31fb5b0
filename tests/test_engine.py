"""engine.py: which path runs, and with how many BLAS threads."""

from __future__ import annotations

import dataclasses

import numpy as np
from threadpoolctl import threadpool_info

from minigrok import engine
from minigrok.config import get_preset
from minigrok.kernels.decode import THREADED_MODEL_WEIGHTS
from minigrok.model import forward, init_cache, init_params

TINY = get_preset("grok-tiny")


def blas_thread_counts() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_a_small_model_runs_blas_on_one_thread_and_gives_the_numpy_logits(monkeypatch):
    """Inside blas_threads a small model's BLAS has one thread, and the thread count comes back afterwards."""
    before = blas_thread_counts()
    assert before, "NumPy's BLAS was not found"
    seen = []
    monkeypatch.setattr(engine.model, "forward", lambda *a: seen.append(blas_thread_counts()) or forward(*a))
    params = init_params(TINY, seed=1)
    tokens = np.random.default_rng(1).integers(0, TINY.vocab_size, size=(1, 12))
    logits = engine.forward(params, TINY, tokens, init_cache(TINY, 1, 12))  # a prefill: model.forward
    assert seen == [[1] * len(before)] and blas_thread_counts() == before
    np.testing.assert_allclose(logits, forward(params, TINY, tokens), rtol=1e-5, atol=1e-5)


def test_a_large_model_keeps_its_blas_threads():
    large = dataclasses.replace(TINY, d_model=2048, d_ff=8192, n_layers=4)
    assert large.n_active_params() >= THREADED_MODEL_WEIGHTS > TINY.n_active_params()
    before = blas_thread_counts()
    with engine.blas_threads(large):
        assert blas_thread_counts() == before
    with engine.blas_threads(TINY):
        assert set(blas_thread_counts()) == {1}
