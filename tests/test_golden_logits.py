"""The shipped model's logits at a few positions, against values recorded once (tests/golden_logits.npz).

tests/make_golden_logits.py wrote them at commit 0881e43 with minigrok's NumPy ``model.forward`` (llama.cpp was
not installed then; tests/test_llama_parity.py compares with llama.cpp when it is). A plain ``python -m pytest``
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


def test_prefill_gives_the_recorded_logits():
    ids, positions = GOLDEN["ids"], GOLDEN["positions"]
    logits = forward(PARAMS, CONFIG, ids[None])[0]  # (T, vocab_size)
    np.testing.assert_allclose(logits[positions], GOLDEN["logits"], rtol=0, atol=2e-4)


@pytest.mark.parametrize("compiled", [True, False])  # kernels/decode.py, or model.forward through the cache
def test_decode_steps_give_the_recorded_logits(compiled):
    ids, positions = GOLDEN["ids"], GOLDEN["positions"]
    cache = init_cache(CONFIG, 1, len(ids))
    steps = [engine.forward(PARAMS, CONFIG, np.array([[t]]), cache, compiled)[0, 0] for t in ids]
    logits = np.stack(steps)  # (T, vocab_size)
    np.testing.assert_allclose(logits[positions], GOLDEN["logits"], rtol=0, atol=2e-4)
