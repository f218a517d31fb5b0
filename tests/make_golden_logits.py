"""Write tests/golden_logits.npz: the shipped model's logits at a few positions of a fixed prompt.

    python tests/make_golden_logits.py

Run once, at commit 0881e43 (before the engine/reference split of issue 16), with minigrok's own NumPy path
(``model.forward`` over the whole prompt, no cache): llama-cpp-python was not available on the machine then, so the
values are minigrok's, not llama.cpp's; tests/make_golden_llama_logits.py adds llama.cpp's to the same file, and
tests/test_llama_parity.py compares the two at length when llama.cpp is installed. Running this script again
rewrites the file without them.
tests/test_golden_logits.py holds every later version of the forward pass, and the compiled decode step, to them.
"""

from pathlib import Path

import numpy as np

from minigrok.checkpoint import load_gguf
from minigrok.model import forward

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "weights" / "minigrok-shakespeare.gguf"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
POSITIONS = [0, 10, 20, 31]  # the positions whose logits are kept (the prompt has at least 32 tokens)


def main() -> None:
    params, config, tokenizer = load_gguf(MODEL)
    ids = np.array(tokenizer.encode(PROMPT)[: POSITIONS[-1] + 1])  # (T,)
    logits = forward(params, config, ids[None])[0]  # (T, vocab_size)
    np.savez_compressed(
        HERE / "golden_logits.npz", ids=ids, positions=np.array(POSITIONS), logits=logits[POSITIONS].astype(np.float32)
    )


if __name__ == "__main__":
    main()
