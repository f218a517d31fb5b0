"""Checkpoints: minigrok models as GGUF files in llama.cpp's ``grok`` architecture.

A file written by :func:`save_gguf` runs in llama.cpp, and :func:`load_gguf` reads llama.cpp's grok files
(F32/F16 tensors, a byte-level BPE tokenizer, tied embeddings). The file format itself is the ``gguf``
package's job (``gguf.GGUFWriter`` / ``gguf.GGUFReader``, from llama.cpp's gguf-py); this module only decides
what goes in and checks what comes out.

Sources: tensor names and metadata keys from llama.cpp src/models/grok.cpp (``load_arch_hparams``,
``load_arch_tensors``) and src/llama-arch.cpp; tensor types from llama.cpp convert_hf_to_gguf.py.

Parameters are a flat dict ``{gguf_name: np.ndarray}`` with the NumPy shapes of ``ModelConfig.param_shapes()``.
NumPy order is the reverse of GGML's ``ne``; ``GGUFWriter.add_tensor`` writes a NumPy shape reversed and
``GGUFReader`` reverses it back, so arrays go in and come out in NumPy order with no transposes here.

Quantized files (``python -m minigrok quantize``): Q8_0 and Q4_0 tensors are read as ``quant.QuantizedTensor``
(written back as the same blocks) for the weights the forward pass multiplies through ``layers.linear``: attn_q,
attn_k, attn_v, attn_output, ffn_gate_exps, ffn_up_exps, ffn_down_exps. Norms, the router (ffn_gate_inp) and the
token embedding stay F32/F16 in the files minigrok writes (``quant.storage_type`` says why); a quantized one in
another tool's file is dequantized on load, since minigrok uses them as plain arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from minigrok.config import ModelConfig
from minigrok.fileio import atomic_write
from minigrok.gguf_layout import GGUFLayoutError, check_layout
from minigrok.quant import Q4_0, Q8_0, QuantizedTensor
from minigrok.tokenizer import Tokenizer

ARCH = "grok"
_PREFIX = "minigrok."  # our own metadata keys (training info); llama.cpp ignores them
# llama.cpp reads float hyperparameters as FLOAT32 grok.* keys. The exact float64 values ride along under
# minigrok.config.<field>, so a config survives a round trip exactly (the trainer compares configs on resume).
_EXACT = _PREFIX + "config."
_FLOAT_FIELDS = (
    "rope_theta", "rms_eps", "embedding_multiplier", "attention_multiplier", "attn_logit_softcap", "output_multiplier"
)  # fmt: skip
_F16_MAX = float(np.finfo(np.float16).max)  # 65504: larger values would become inf in an F16 tensor
_Q = gguf.GGMLQuantizationType
_QUANT_TYPES = {_Q.Q8_0: Q8_0, _Q.Q4_0: Q4_0}  # GGML type -> quant.py's name
# Tensors the forward pass multiplies through layers.linear, which takes a QuantizedTensor as is.
_LINEAR_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
# F16 tensors that load_gguf(mmap=True) maps as float16 instead of copying to float32: what both paths read as F16
# (layers.linear and kernels/decode.py's final_logits widen it as they go). Other F16 weights are widened on load.
_KEPT_F16 = ("token_embd.weight",)


def _kept_f16(t: gguf.ReaderTensor) -> bool:
    """Is t an F16 tensor that load_gguf(mmap=True) keeps F16?"""
    return t.tensor_type == _Q.F16 and t.name in _KEPT_F16


_T = gguf.GGUFValueType
_VALUE_TYPES = {
    "int": {_T.UINT8, _T.INT8, _T.UINT16, _T.INT16, _T.UINT32, _T.INT32, _T.UINT64, _T.INT64},
    "float": {_T.FLOAT32, _T.FLOAT64},
    "bool": {_T.BOOL},
    "str": {_T.STRING},
}
_REQUIRED = object()

# llama.cpp's values for grok keys a file may lack: Grok-1's constants (grok.cpp load_arch_hparams,
# "defaults for old GGUFs"). expert_weights_norm: the grok graph always renormalises the top-k gates.
_GROK1_DEFAULTS = {
    "embedding_scale": 78.38367176906169,
    "attention.output_scale": 0.08838834764831845,
    "attn_logit_softcapping": 30.0,
    "logit_scale": 0.5773502691896257,
    "final_logit_softcapping": 0.0,
    "expert_weights_norm": True,
    "rope.freq_base": 10000.0,  # llama.cpp's default for every architecture
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read. The message is one line naming the key or tensor,
    what was expected, and the fix."""


# ---- writing ----------------------------------------------------------------------------------


def save_gguf(
    path: str | os.PathLike,
    params: dict[str, np.ndarray],
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    dtype: str = "f32",
    metadata: dict | None = None,
) -> None:
    """Write a model to ``path`` as a GGUF file llama.cpp can run (architecture ``grok``).

    Args:
        path: destination file. Written atomically: a temp file in the same directory, then ``os.replace``,
            so a failed save never leaves a partial file or clobbers an existing one.
        params: ``{gguf_name: array}`` with exactly the names and NumPy shapes of ``config.param_shapes()``,
            floating point, all finite; a ``quant.QuantizedTensor`` value is written as its Q8_0/Q4_0 blocks.
        config: the hyperparameters, stored as ``grok.*`` keys (floats as float32, which llama.cpp reads, plus
            exact float64 copies as ``minigrok.config.*``).
        tokenizer: its ``tokenizer_gguf_fields`` go to the ``tokenizer.ggml.*`` keys; it must have
            ``config.vocab_size`` tokens.
        dtype: ``"f32"`` or ``"f16"``: the type of the 2-D and 3-D float weight matrices. 1-D norms and the router
            (``ffn_gate_inp``) are always F32, as llama.cpp's convert_hf_to_gguf.py does.
        metadata: extra ``{name: str | int | float | bool}`` pairs, stored as ``minigrok.<name>``
            (e.g. training steps, loss); read them back with :func:`read_metadata`.

    Raises:
        CheckpointError: a missing, unexpected, wrong-shape, non-float or non-finite tensor; a value too large
            for F16; a tokenizer of the wrong size; bad metadata; an unwritable destination. Nothing is written.

    llama.cpp itself also needs ``n_heads * head_dim == d_model`` and ``attn_logit_softcap > 0`` (it divides by
    the cap); minigrok reads such files back but llama.cpp cannot run them.
    """
    path = Path(path)
    if dtype not in ("f32", "f16"):
        raise CheckpointError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    params = _check_params(params, config, "params")
    tok = tokenizer_gguf_fields(tokenizer)
    if len(tok["tokens"]) != config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {len(tok['tokens'])} tokens but config.vocab_size is {config.vocab_size}; "
            "use the tokenizer the model was built for"
        )
    extra = _check_metadata(metadata or {})

    tensors = {}
    for name, arr in params.items():
        if isinstance(arr, QuantizedTensor):
            tensors[name] = arr
            continue
        store_f16 = dtype == "f16" and arr.ndim >= 2 and not name.endswith("ffn_gate_inp.weight")
        if store_f16 and np.abs(arr).max() > _F16_MAX:
            raise CheckpointError(
                f"tensor {name!r} has values beyond ±{_F16_MAX:g}, which F16 cannot hold; save with dtype='f32'"
            )
        tensors[name] = np.ascontiguousarray(arr, dtype=np.float16 if store_f16 else np.float32)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)  # also writes general.architecture = "grok"
        try:
            quant_types = {arr.type for arr in tensors.values() if isinstance(arr, QuantizedTensor)}
            _add_hparams(writer, config, dtype, quant_types)
            writer.add_tokenizer_model("gpt2")  # byte-level BPE, llama.cpp's name for it
            writer.add_tokenizer_pre(tok["pre"])
            writer.add_token_list(tok["tokens"])
            writer.add_token_types([int(t) for t in tok["token_types"]])
            writer.add_token_merges(tok["merges"])  # the writer skips an empty list; load_gguf reads it back as []
            writer.add_bos_token_id(int(tok["bos_id"]))
            writer.add_eos_token_id(int(tok["eos_id"]))
            for key, value, vtype in extra:
                writer.add_key_value(key, value, vtype)
            for name, arr in tensors.items():
                if isinstance(arr, QuantizedTensor):  # uint8 blocks; the writer turns the byte shape into the real one
                    ggml_type = next(t for t, q in _QUANT_TYPES.items() if q == arr.type)
                    writer.add_tensor(name, arr.to_blocks(), raw_dtype=ggml_type)
                else:
                    writer.add_tensor(name, arr)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    check_destination(path)
    atomic_write(path, write)  # temp file beside path, fsync, rename: never a half-written checkpoint


def check_destination(path: str | os.PathLike) -> None:
    """Raise CheckpointError unless a file can be written at ``path`` (its folder exists and is writable): what
    save_gguf checks first, for callers that want to refuse before long work. A symlink is followed: its
    target is the file written (fileio.atomic_write)."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: the directory {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"cannot write {path}: the directory {path.parent} is not writable")


def _add_hparams(writer: gguf.GGUFWriter, c: ModelConfig, dtype: str, quant_types: set[str]) -> None:
    """The ``grok.*`` keys llama.cpp reads (grok.cpp load_arch_hparams and llama_model::load_hparams)."""
    writer.add_name("minigrok")
    if quant_types:  # general.file_type names the main type (informational: llama.cpp reads each tensor's own)
        file_type = gguf.LlamaFileType.MOSTLY_Q4_0 if Q4_0 in quant_types else gguf.LlamaFileType.MOSTLY_Q8_0
    else:
        file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(file_type)
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.d_ff)
    writer.add_expert_feed_forward_length(c.d_ff)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_expert_count(c.num_experts)
    writer.add_expert_used_count(c.top_k)
    writer.add_embedding_scale(c.embedding_multiplier)
    # llama.cpp (llama-graph.cpp build_attn_mha, LLM_ARCH_GROK) computes cap · tanh(q·k · output_scale / cap).
    writer.add_attn_output_scale(c.attention_multiplier)
    writer.add_attn_logit_softcapping(c.attn_logit_softcap)
    writer.add_logit_scale(c.output_multiplier)
    writer.add_final_logit_softcapping(0.0)
    # Stored so minigrok can read the choice back. llama.cpp's grok graph ignores this key and always
    # renormalises the top-k gates: grok.cpp calls build_moe_ffn(..., LLM_FFN_GELU, /*norm_w=*/true, ...).
    writer.add_expert_weights_norm(c.renormalize_gates)
    for field in _FLOAT_FIELDS:
        writer.add_float64(_EXACT + field, float(getattr(c, field)))
    # The attention pattern (minigrok.attention) has no llama.cpp key: its grok graph is always dense.
    writer.add_string(_EXACT + "attention", c.attention)


def _check_metadata(metadata: dict) -> list[tuple[str, object, gguf.GGUFValueType]]:
    """``[(minigrok.key, value, GGUF type)]`` for the user's extra metadata, or CheckpointError."""
    out = []
    for key, value in metadata.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str) or not key or (_PREFIX + key).startswith(_EXACT):
            raise CheckpointError(f"metadata key {key!r} must be a non-empty string not starting with 'config.'")
        if isinstance(value, bool):
            vtype = _T.BOOL
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            vtype = _T.INT64
        elif isinstance(value, float):
            vtype = _T.FLOAT64
        elif isinstance(value, str):
            vtype = _T.STRING
        else:
            raise CheckpointError(f"metadata[{key!r}] is {value!r}; values must be str, int (64-bit), float or bool")
        out.append((_PREFIX + key, value, vtype))
    return out


def _check_params(params: dict, config: ModelConfig, where: str) -> dict[str, np.ndarray]:
    """The params in ``param_shapes()`` order, after checking names, shapes, dtypes and finiteness."""
    expected = config.param_shapes()
    missing = [name for name in expected if name not in params]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{where} has no tensor {missing[0]!r}{more}; this config needs every name in config.param_shapes()"
        )
    unexpected = [name for name in params if name not in expected]
    if unexpected:
        raise CheckpointError(
            f"{where} has an unexpected tensor {unexpected[0]!r}; this config has no such parameter "
            "(check n_layers and the tensor names in config.param_shapes())"
        )
    out = {}
    for name, shape in expected.items():
        arr = params[name]
        if isinstance(arr, QuantizedTensor):
            if arr.shape != shape:
                raise CheckpointError(f"tensor {name!r} in {where} has shape {arr.shape}; the config needs {shape}")
            if not np.all(np.isfinite(arr.d)):
                raise CheckpointError(f"tensor {name!r} in {where} has non-finite {arr.type.upper()} block scales")
            out[name] = arr
            continue
        arr = np.asarray(arr)
        if arr.dtype.kind != "f":
            raise CheckpointError(f"tensor {name!r} in {where} has dtype {arr.dtype}; expected floating point")
        if arr.shape != shape:
            raise CheckpointError(
                f"tensor {name!r} in {where} has shape {arr.shape}; the config needs {shape} "
                "(do the params and the config belong to the same model?)"
            )
        bad = arr.size - int(np.isfinite(arr).sum())
        if bad:
            raise CheckpointError(f"tensor {name!r} in {where} has {bad} non-finite values (NaN or inf)")
        out[name] = arr
    return out


# ---- reading ----------------------------------------------------------------------------------


def load_gguf(
    path: str | os.PathLike, *, dtype=np.float32, mmap: bool = False
) -> tuple[dict[str, np.ndarray], ModelConfig, Tokenizer]:
    """Read a grok GGUF file: ``(params, config, tokenizer)``.

    Args:
        path: a file written by :func:`save_gguf` or by llama.cpp's tools (F32/F16/Q8_0/Q4_0 tensors, tied
            embeddings, a ``gpt2`` byte-level BPE tokenizer).
        dtype: NumPy float dtype of the returned arrays (F16 tensors are upcast, but see mmap).
        mmap: F32 tensors (with dtype float32) come back as read-only views of the file's memory map, not
            copies, as llama.cpp maps its files: no time spent copying, and no second copy in memory (a 1.7 GB
            F32 file loaded in 0.5 s instead of 2.7 s). An F16 token embedding (as in F16, Q8_0 and Q4_0 files)
            comes back as a read-only float16 view: the unembedding reads it every token, and at F16 that is half
            the bytes of a float32 copy (``layers.linear`` and the compiled decode step widen it as they read it).
            For inference; training needs float copies it can update.

    Returns:
        params: ``{gguf_name: array}`` in the NumPy shapes of ``config.param_shapes()``, copied out of the file
            (but see mmap).
            Q8_0/Q4_0 weights that go through ``layers.linear`` come back as ``quant.QuantizedTensor``; any other
            quantized tensor (norm, router, embedding) is dequantized to ``dtype``.
        config: from the ``grok.*`` keys; a key llama.cpp treats as optional falls back to llama.cpp's default
            (Grok-1's constants; ``expert_weights_norm`` -> True; ``key_length`` -> d_model / n_heads).
            Float hyperparameters come back exactly as saved (float64 copies under ``minigrok.config.*``);
            in other files they are llama.cpp's float32 values.
        tokenizer: ``tokenizer_from_gguf_fields`` of the ``tokenizer.ggml.*`` keys.

    Raises:
        CheckpointError: unreadable file, not GGUF, unsupported version, truncated or corrupt, architecture not
            ``grok``, a missing or mistyped key, a missing/unexpected/wrong-shape tensor, a tensor type other than
            F32/F16/Q8_0/Q4_0, non-finite values. The message names the path.
    """
    if np.dtype(dtype).kind != "f":
        raise CheckpointError(f"dtype must be a floating point NumPy dtype, got {dtype!r}")
    reader = _open(path)
    config = _read_config(reader, path)

    params = {}
    for t in reader.tensors:
        if t.name == "output.weight":
            raise CheckpointError(
                f"{path} has an untied unembedding 'output.weight'; minigrok only supports tied embeddings "
                "(logits = norm(h) @ token_embd.T)"
            )
        shape = tuple(int(n) for n in reversed(t.shape))  # NumPy order (the reader lists GGML's ne)
        if t.tensor_type in _QUANT_TYPES:
            try:
                w = QuantizedTensor.from_blocks(_QUANT_TYPES[t.tensor_type], shape, t.data)  # a copy
            except ValueError as e:
                raise CheckpointError(f"{path}: tensor {t.name!r}: {e}") from None
            is_linear = t.name.startswith("blk.") and t.name.split(".")[2] in _LINEAR_WEIGHTS
            params[t.name] = w if is_linear else w.dequantize().astype(dtype, copy=False)
        elif mmap and np.dtype(dtype) == np.float32 and (t.tensor_type == _Q.F32 or _kept_f16(t)):
            params[t.name] = t.data.view(np.ndarray)  # read-only, in NumPy shape (the reader reverses ne)
        elif t.tensor_type in (_Q.F32, _Q.F16):
            params[t.name] = np.array(t.data, dtype=dtype)  # a copy, in NumPy shape (the reader reverses ne)
        else:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} is {t.tensor_type.name}; minigrok reads F32, F16, Q8_0 and Q4_0 tensors: "
                "convert the model with llama.cpp's llama-quantize to one of those, or use an F16 export"
            )
    tokenizer = _read_tokenizer(reader, path)
    del reader  # the memory map is released once no array views it
    return _check_params(params, config, str(path)), config, tokenizer


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a grok GGUF file, from its metadata only (no tensor data is read).

    Raises:
        CheckpointError: as :func:`load_gguf`, for the file and its metadata.
    """
    return _read_config(_open(path), path)


def read_metadata(path: str | os.PathLike) -> dict[str, str | int | float | bool]:
    """The extra ``minigrok.*`` metadata a file was saved with, keys without the prefix (``{}`` if none)."""
    reader = _open(path)
    fields = reader.fields.items()
    return {k[len(_PREFIX) :]: f.contents() for k, f in fields if k.startswith(_PREFIX) and not k.startswith(_EXACT)}


def _open(path: str | os.PathLike) -> gguf.GGUFReader:
    """A GGUFReader on ``path`` after checking the magic, version and architecture, or CheckpointError."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if len(head) < 8 and b"GGUF".startswith(head[:4]):
        raise CheckpointError(f"{path} is truncated: {len(head)} bytes, shorter than a GGUF header")
    if head[:4] != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file: it starts with {head[:4]!r}, not b'GGUF'")
    byteorder = "little"
    version = int.from_bytes(head[4:8], byteorder)
    if version & 0xFFFF == 0:  # a big-endian file (gguf_reader.py does the same test)
        byteorder = "big"
        version = int.from_bytes(head[4:8], byteorder)
    if version not in (2, 3):
        raise CheckpointError(f"{path} is GGUF version {version}; minigrok reads versions 2 and 3")
    try:
        check_layout(path, byteorder)  # GGUFReader trusts the header's lengths: check them against the file first
    except GGUFLayoutError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, OSError) as e:  # UnicodeDecodeError is a ValueError
        # GGUFReader slices its memory map without bounds checks: a short file shows up as a failed reshape,
        # an empty slice, or garbage lengths, so any parse error here means a truncated or corrupt file.
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{path} ({size} bytes) is truncated or corrupt ({type(e).__name__}: {e}); write or copy it again"
        ) from None
    arch = _value(reader, path, "general.architecture", "str")
    if arch != ARCH:
        raise CheckpointError(f"{path} has general.architecture {arch!r}; minigrok reads only {ARCH!r} models")
    return reader


def _value(reader: gguf.GGUFReader, path, key: str, kind: str, default=_REQUIRED):
    """The value of metadata ``key`` checked to be ``kind`` ("int", "float", "bool", "str", or
    "array of <kind>"); ``default`` if absent, CheckpointError if absent and required or mistyped."""
    field = reader.get_field(key)
    if field is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path} has no metadata key {key!r}, which a grok model needs")
        return default
    item = kind.removeprefix("array of ")
    if item != kind:  # an array: GGUFReader lists [ARRAY, item type] (just [ARRAY] when empty)
        ok = field.types[0] == _T.ARRAY and (len(field.types) == 1 or field.types[-1] in _VALUE_TYPES[item])
    else:
        ok = len(field.types) == 1 and field.types[0] in _VALUE_TYPES[item]
    if not ok:
        got = " of ".join(t.name for t in field.types)
        raise CheckpointError(f"{path}: metadata key {key!r} is {got}; expected {kind}")
    try:
        return field.contents()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: metadata key {key!r} holds invalid UTF-8; the file is corrupt") from None


def _read_tokenizer(reader: gguf.GGUFReader, path) -> Tokenizer:
    """Tokenizer from the ``tokenizer.ggml.*`` keys (a byte-level BPE, llama.cpp's "gpt2" model)."""
    model = _value(reader, path, "tokenizer.ggml.model", "str")
    if model != "gpt2":
        raise CheckpointError(
            f"{path} has tokenizer.ggml.model {model!r}; minigrok reads only byte-level BPE ('gpt2') tokenizers"
        )
    tokens = _value(reader, path, "tokenizer.ggml.tokens", "array of str")
    token_types = _value(reader, path, "tokenizer.ggml.token_type", "array of int")
    if len(token_types) != len(tokens):
        raise CheckpointError(
            f"{path} has {len(token_types)} tokenizer.ggml.token_type entries for {len(tokens)} tokens; need one each"
        )
    merges = _value(reader, path, "tokenizer.ggml.merges", "array of str", [])
    try:
        tokenizer = tokenizer_from_gguf_fields(tokens, merges, token_types)
    except ValueError as e:
        raise CheckpointError(f"{path}: the tokenizer.ggml.* vocabulary is inconsistent: {e}") from None
    pre, ours = _value(reader, path, "tokenizer.ggml.pre", "str", "default"), tokenizer_gguf_fields(tokenizer)["pre"]
    if pre != ours:
        raise CheckpointError(
            f"{path} has tokenizer.ggml.pre {pre!r}; minigrok's tokenizer splits text only like {ours!r}"
        )
    return tokenizer


def _read_config(reader: gguf.GGUFReader, path) -> ModelConfig:
    """ModelConfig from the ``grok.*`` keys, with llama.cpp's defaults for the optional ones."""

    def grok(key: str, kind: str, default=_REQUIRED):
        return _value(reader, path, f"{ARCH}.{key}", kind, _GROK1_DEFAULTS.get(key, default))

    d_model = grok("embedding_length", "int")
    n_heads = grok("attention.head_count", "int")
    head_dim = grok("attention.key_length", "int", d_model // n_heads if n_heads else 0)
    value_length = grok("attention.value_length", "int", head_dim)
    if value_length != head_dim:
        raise CheckpointError(
            f"{path}: {ARCH}.attention.value_length ({value_length}) differs from key_length ({head_dim}); "
            "minigrok uses one head_dim for both"
        )
    final_cap = grok("final_logit_softcapping", "float")
    if final_cap != 0.0:
        raise CheckpointError(
            f"{path}: {ARCH}.final_logit_softcapping is {final_cap}; minigrok has no final logit soft-cap (needs 0)"
        )
    d_ff = grok("feed_forward_length", "int")
    hparams = dict(
        vocab_size=len(_value(reader, path, "tokenizer.ggml.tokens", "array of str")),
        d_model=d_model,
        n_layers=grok("block_count", "int"),
        n_heads=n_heads,
        n_kv_heads=grok("attention.head_count_kv", "int", n_heads),
        head_dim=head_dim,
        d_ff=grok("expert_feed_forward_length", "int", d_ff),  # grok.cpp: n_ff_exp, else n_ff
        num_experts=grok("expert_count", "int"),
        top_k=grok("expert_used_count", "int"),
        rope_theta=grok("rope.freq_base", "float"),
        rms_eps=grok("attention.layer_norm_rms_epsilon", "float"),
        embedding_multiplier=grok("embedding_scale", "float"),
        attention_multiplier=grok("attention.output_scale", "float"),
        attn_logit_softcap=grok("attn_logit_softcapping", "float"),
        output_multiplier=grok("logit_scale", "float"),
        renormalize_gates=grok("expert_weights_norm", "bool"),
        context_length=grok("context_length", "int"),
        attention=_value(reader, path, _EXACT + "attention", "str", "dense"),  # minigrok's own key; else dense
    )
    for field in _FLOAT_FIELDS:  # the exact value minigrok wrote, unless the grok.* key was changed since
        exact = _value(reader, path, _EXACT + field, "float", None)
        if exact is not None and np.float32(exact) == np.float32(hparams[field]):
            hparams[field] = exact
    try:
        return ModelConfig(**hparams)
    except ValueError as e:  # ModelConfig's own checks, e.g. n_heads not a multiple of n_kv_heads
        raise CheckpointError(f"{path}: the grok.* hyperparameters do not make a valid model: {e}") from None


# ---- the tokenizer's GGUF fields (llama.cpp "gpt2" tokenizer model) ---------------------------------------------
# Token types of GGUF's tokenizer.ggml.token_type (gguf-py gguf/constants.py, TokenType).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (openai/gpt-2 src/encoder.py; gguf-py gguf/vocab.py).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) take the characters
    from U+0100 on, in byte order: the space 0x20 becomes "Ġ", the newline 0x0A "Ċ". GGUF vocabularies of
    llama.cpp's "gpt2" tokenizer model store tokens and merges in this form.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


_BYTE_TO_CHAR = _bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _token_string(token: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def tokenizer_gguf_fields(tokenizer: Tokenizer) -> dict:
    """The vocabulary as GGUF ``tokenizer.ggml.*`` values, in llama.cpp's "gpt2" (byte-level BPE) form.

    Ordinary tokens and merges are written with GPT-2's byte-to-character table (``_bytes_to_unicode``), merges
    as "left right" in rank order; special tokens are written as themselves, with token type 3 (control).
    Same layout as llama.cpp's convert_hf_to_gguf.py (_set_vocab_gpt2) writes.

    Returns:
        {"tokens": list[str], "merges": list[str], "token_types": list[int], "bos_id": int, "eos_id": int,
        "pre": "gpt-2"} (llama.cpp's pre-tokenizer name for GPT2_PATTERN).
    """
    by_id = sorted(tokenizer.special, key=tokenizer.special.get)
    return {
        "tokens": [_token_string(t) for t in tokenizer.tokens] + by_id,
        "merges": [
            f"{_token_string(tokenizer.tokens[a])} {_token_string(tokenizer.tokens[b])}" for a, b in tokenizer.merges
        ],
        "token_types": [TOKEN_TYPE_NORMAL] * len(tokenizer.tokens) + [TOKEN_TYPE_CONTROL] * len(by_id),
        "bos_id": tokenizer.eot_id,
        "eos_id": tokenizer.eot_id,
        "pre": "gpt-2",
    }


def tokenizer_from_gguf_fields(tokens: list[str], merges: list[str], token_types: list[int]) -> Tokenizer:
    """Rebuild a tokenizer from the GGUF values that ``tokenizer_gguf_fields`` wrote.

    Normal tokens (type 1) must come first, in id order, then the control tokens (type 3). The merges are
    redundant with the token order (merge i makes token 256 + i), but llama.cpp encodes with the merges and
    tiktoken with the order, so they are checked to agree.

    Raises:
        ValueError: names the first inconsistency: lengths that differ, another token type, a character that
            is not in GPT-2's byte table, a merge that makes a token not in the list or out of order, ...
    """
    if len(tokens) != len(token_types):
        raise ValueError(f"{len(tokens)} tokens but {len(token_types)} token types; need one type per token")
    ordinary: list[bytes] = []
    special: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(tokens, token_types, strict=True)):
        kind = int(kind)
        if kind == TOKEN_TYPE_NORMAL:
            if special:
                raise ValueError(f"normal token {i} {text!r} comes after a control token; specials must be last")
            bad = [c for c in text if c not in _CHAR_TO_BYTE]
            if bad or not text:
                raise ValueError(
                    f"token {i} {text!r} has characters {bad!r} outside GPT-2's byte-to-unicode table (or is "
                    "empty); is this a byte-level BPE ('gpt2') vocabulary?"
                )
            ordinary.append(bytes(_CHAR_TO_BYTE[c] for c in text))
        elif kind == TOKEN_TYPE_CONTROL:
            special[text] = i
        else:
            raise ValueError(f"token {i} {text!r} has token type {kind}; minigrok reads 1 (normal) and 3 (control)")

    tokenizer = Tokenizer(ordinary, special)
    expected = tokenizer_gguf_fields(tokenizer)["merges"]
    if len(merges) != len(expected):
        raise ValueError(
            f"{len(merges)} merges for {len(ordinary)} normal tokens; a byte-level BPE has one merge for each "
            f"token after the 256 bytes ({len(expected)})"
        )
    position = {text: i for i, text in enumerate(tokens)}
    for i, (merge, want) in enumerate(zip(merges, expected, strict=True)):
        if merge == want:
            continue
        made = merge.replace(" ", "", 1)
        if made != tokens[256 + i]:
            where = "is not in the token list" if made not in position else f"is token {position[made]}"
            raise ValueError(
                f"merge {i} {merge!r} makes {made!r}, which {where}; merge i must make token 256 + i "
                f"({tokens[256 + i]!r})"
            )
        raise ValueError(f"merge {i} {merge!r} is not how BPE builds token {256 + i}: that is {want!r}")
    return tokenizer
