"""Add llama.cpp's logits to tests/golden_logits.npz (key ``llama_logits``), for the same ids and positions.

    python tests/make_golden_llama_logits.py        # in an environment with llama-cpp-python

Uses llama-cpp-python only (not minigrok), on weights/minigrok-shakespeare.gguf, as tests/test_llama_parity.py calls
it: one batch of all ids through a fresh F32 KV cache, one thread, the logits of every position kept. Run once, with
llama-cpp-python 0.3.36; tests/test_golden_logits.py compares minigrok with them without needing llama.cpp.
"""

from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "weights" / "minigrok-shakespeare.gguf"


def main() -> None:
    golden = dict(np.load(HERE / "golden_logits.npz"))
    llm = llama_cpp.Llama(
        model_path=str(MODEL),
        n_ctx=256,
        n_threads=1,
        n_threads_batch=1,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    llm.eval(golden["ids"].tolist())
    logits = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)  # (T, vocab_size)
    golden["llama_logits"] = logits[golden["positions"]]
    golden["llama_cpp_python_version"] = np.array(llama_cpp.__version__)
    np.savez_compressed(HERE / "golden_logits.npz", **golden)


if __name__ == "__main__":
    main()
