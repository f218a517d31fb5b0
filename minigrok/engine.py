"""Which path runs: the readable NumPy model or its compiled twins. The one place that decides.

The readable modules (layers, attention, moe, model, quant) are NumPy only and import nothing from
minigrok.kernels; the kernels import them and are tied to them by tests. ``generate``, ``eval`` and the bench call
:func:`forward` here, which runs:

- a decode step (one token of one sequence, with a KV cache): minigrok/kernels/decode.py, one compiled call per
  layer, when every weight has a kernel form (float32, or Q8_0/Q4_0 projections and experts, or an F16 token
  embedding);
- everything else (a prefill, an evaluation window, a batch, float64 weights): ``model.forward`` itself, with the
  Q8_0/Q4_0 weights' products in the Numba kernels (``CompiledQuantizedTensor``) instead of NumPy.

Threads: BLAS runs on one thread where it does little of the work. A model below ``THREADED_MODEL_WEIGHTS``
active weights per token (the shipped one) makes many small BLAS calls in a prefill: a second thread gained 1.35x
on an idle 2-core machine, but on a busy one OpenBLAS's threads, which spin-wait for each other between calls,
made a 101-token prefill 20-60x slower (23-76 tok/s against 1,413 with one thread), and after a prefill they keep
spinning while the decode steps run. A quantized model on the VNNI path runs its products in the integer kernels,
which split big ones over Numba's threads; BLAS has only the attention scores and the router left, and its idle
threads spinning beside Numba's made the large model's Q8_0 prefill slower with two threads than with one.
``threadpoolctl`` sets the BLAS library's threads for the duration of the call.

``compiled=False`` runs ``model.forward`` unchanged: the twin the compiled path is tested against
(tests/test_decode_kernels.py) and the minigrok-numpy row of the bench. Both paths read and write the same KVCache.
Importing this module loads Numba and the compiled kernels (from Numba's on-disk cache after the first run).
"""

from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import ThreadpoolController

from . import model
from .attention import KVCache
from .config import ModelConfig
from .kernels import INTEGER_DOT, compiling
from .kernels.blocks import SERIAL
from .kernels.decode import THREADED_MODEL_WEIGHTS, decode_step, kernel_weights, thread_split
from .kernels.quant_kernels import CompiledQuantizedTensor
from .quant import QuantizedTensor

_blas = ThreadpoolController()  # the BLAS library NumPy loaded (scanning the process for it takes ~1 ms: once)


def blas_threads(config: ModelConfig, quantized: bool = False):
    """A context in which BLAS runs on one thread where it does little of the work (see above): a small model, or
    a quantized one whose products run in the VNNI kernels' own threads; else BLAS's threads as configured."""
    if config.n_active_params() >= THREADED_MODEL_WEIGHTS and not (quantized and INTEGER_DOT == "vnni"):
        return contextlib.nullcontext()
    return _blas.limit(limits=1, user_api="blas")


def compiled_params(params: dict, config: ModelConfig | None = None) -> dict:
    """params with each Q8_0/Q4_0 weight's products in Numba kernels (the same arrays; float weights unchanged).
    With the config of a model of at least THREADED_MODEL_WEIGHTS active weights, big products of many tokens
    are split over Numba's threads (blocks of PARALLEL_BLOCK weights x tokens), as its decode steps are."""
    split = SERIAL if config is None else thread_split(config)
    return {k: CompiledQuantizedTensor.of(w, split) if isinstance(w, QuantizedTensor) else w for k, w in params.items()}


def forward(
    params: dict, config: ModelConfig, tokens: np.ndarray, cache: KVCache | None = None, compiled: bool = True
) -> np.ndarray:
    """``model.forward(params, config, tokens, cache)``, on the compiled path where there is one (see above).

    Same arguments, result (B, T, vocab_size) float32 and errors as model.forward; the compiled decode step gives
    the NumPy path's logits to float32 rounding. compiled=False: model.forward on the parameters as given.
    """
    if not compiled:
        return model.forward(params, config, tokens, cache)
    tokens = np.asarray(tokens)
    weights = kernel_weights(params, config) if cache is not None and tokens.shape == (1, 1) else None
    if weights is None:
        quantized = isinstance(params["blk.0.attn_q.weight"], QuantizedTensor)
        with blas_threads(config, quantized):
            return model.forward(compiled_params(params, config), config, tokens, cache)
    model.check_inputs(config, tokens, cache)
    step = cache.begin(1)  # raises if the token does not fit
    logits = decode_step(params, config, int(tokens[0, 0]), cache, step, weights)  # (vocab_size,)
    cache.commit(step)
    return logits[None, None]  # (1, 1, vocab_size)


def warm_up(params: dict, config: ModelConfig) -> None:
    """One throwaway decode step, so that the compiled kernels are loaded before a clock starts. The first time a
    weight type runs (per version of the code) its kernels compile, and one line on stderr says so."""
    kind = getattr(params["blk.0.attn_q.weight"], "type", "f32").upper()  # F32, Q8_0 or Q4_0
    with compiling(f"the {kind} decode step"):
        forward(params, config, np.zeros((1, 1), np.int64), model.init_cache(config, 1, 1))
