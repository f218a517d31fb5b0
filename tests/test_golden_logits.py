"""The shipped model's logits at a few positions, against values recorded once (tests/golden_logits.npz).

tests/make_golden_logits.py wrote minigrok's (``logits``: its NumPy ``model.forward`` at commit 0881e43, before
the refactor of issue 16), and tests/make_golden_llama_logits.py added llama.cpp's for the same tokens
(``llama_logits``: llama-cpp-python 0.3.36, F32 KV cache). A plain ``python -m pytest``, without llama.cpp,
therefore catches any change to what the architecture computes (a norm moved, a multiplier dropped, RoPE's layout
or the routing changed), on both paths: the readable prefill and the decode steps the engine runs.
"""

from pathlib import Path

import numpy as np
import pytest

from minigrok import engine
from minigrok.checkpoint import load_gguf
from minigrok.model import forward, init_cache

HERE = Path(__file__).resolve().parent
GOLDEN = np.load(HERE / "golden_logits.npz")
PARAMS, CONFIG, _ = load_gguf(HERE.parent / "weights" / "minigrok-shakespeare.gguf")
# As generate loads it: the file's F32 tensors and its F16 token embedding as read-only views of the file.
MAPPED = load_gguf(HERE.parent / "weights" / "minigrok-shakespeare.gguf", mmap=True)[0]


@pytest.mark.parametrize("mapped", [False, True], ids=["copied", "mapped"])
def test_prefill_gives_the_recorded_logits(mapped):
    ids, positions = GOLDEN["ids"], GOLDEN["positions"]
    logits = forward(MAPPED if mapped else PARAMS, CONFIG, ids[None])[0]  # (T, vocab_size)
    np.testing.assert_allclose(logits[positions], GOLDEN["logits"], rtol=0, atol=2e-4)


@pytest.mark.parametrize("mapped", [False, True], ids=["copied", "mapped"])
@pytest.mark.parametrize("compiled", [True, False])  # kernels/decode.py, or model.forward through the cache
def test_decode_steps_give_the_recorded_logits(compiled, mapped):
    ids, positions = GOLDEN["ids"], GOLDEN["positions"]
    params = MAPPED if mapped else PARAMS
    assert params["token_embd.weight"].dtype == (np.float16 if mapped else np.float32)
    cache = init_cache(CONFIG, 1, len(ids))
    steps = [engine.forward(params, CONFIG, np.array([[t]]), cache, compiled)[0, 0] for t in ids]
    logits = np.stack(steps)  # (T, vocab_size)
    np.testing.assert_allclose(logits[positions], GOLDEN["logits"], rtol=0, atol=2e-4)


def test_the_recorded_logits_agree_with_llama_cpps():
    """minigrok against llama.cpp's recorded logits, on llama.cpp's gate rule (renormalized; see test_llama_parity
    item 1). Measured 2.6e-4 relative at most: ggml's F16 product rounds the activations to fp16 (item 4). There is
    no router near tie at these positions, so a wrong expert or a changed layer would show at the 1e-2 scale."""
    ids, positions, theirs = GOLDEN["ids"], GOLDEN["positions"], GOLDEN["llama_logits"]
    ours = forward(PARAMS, CONFIG.replace(renormalize_gates=True), ids[None])[0, positions]  # (4, vocab_size)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 5e-4
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
