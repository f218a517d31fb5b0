"""The prepared data, read back: token ids per split and meta.json, as ``python -m minigrok data`` writes them.

Kept outside ``minigrok.train`` so that evaluation (``python -m minigrok eval``) and the benchmarks read the data
without depending on training; minigrok/train/data.py writes these files (its docstring describes them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

TOKEN_DTYPE = np.dtype("<u2")  # uint16, little-endian: ids 0..65535
SPLITS = ("train", "val")


def load_split(data_dir: str | os.PathLike, split: str) -> np.ndarray:
    """Token ids of one split: (n_tokens,) uint16 ``np.memmap``, read-only.

    Raises:
        ValueError: split is not "train" or "val", or the file is not a whole number of uint16s.
        FileNotFoundError: the file is missing (run ``python -m minigrok data ...`` first).
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path}; prepare it with `python -m minigrok data shakespeare` or `data --from DIR`"
        )
    size = path.stat().st_size
    if size == 0 or size % TOKEN_DTYPE.itemsize:
        raise ValueError(f"{path} has {size} bytes, not a whole number of uint16 tokens; prepare the data again")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")  # (n_tokens,)


def load_meta(data_dir: str | os.PathLike) -> dict:
    """The dict in ``data_dir/meta.json`` (see the module docstring). Raises FileNotFoundError if it is missing."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path}; prepare it with `python -m minigrok data shakespeare` or `data --from DIR`"
        )
    return json.loads(path.read_text())
