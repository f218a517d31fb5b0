"""A bounds-checked walk over a GGUF file's header, before ``gguf.GGUFReader`` parses it.

GGUFReader trusts every length and count in the header: a 49-byte file declaring an array of 2**63 items makes it
loop and allocate until memory runs out (llama.cpp PR #27188 added such guards to gguf-py later). This walk reads the
same layout (llama.cpp ggml/docs/gguf.md, "File Structure"), checks each length, count, dimension and data offset
against the bytes the file really has before using it, and stops at the first one that does not fit, naming it.
It only reads the header; tensor data is not touched.

Layout (little-endian, or big-endian when the version reads as a multiple of 65536, as gguf_reader.py decides):
    magic "GGUF", version u32, tensor_count u64, kv_count u64,
    kv_count x (key: string, value_type u32, value),            string = length u64 + UTF-8 bytes
    tensor_count x (name: string, n_dims u32, n_dims x u64, ggml_type u32, offset u64),
    padding to general.alignment (default 32), then the tensor data; each tensor starts at data start + offset.
"""

from __future__ import annotations

import math
import mmap
import os

import gguf

_T = gguf.GGUFValueType
_SCALAR_BYTES = {
    _T.UINT8: 1, _T.INT8: 1, _T.BOOL: 1, _T.UINT16: 2, _T.INT16: 2, _T.UINT32: 4, _T.INT32: 4, _T.FLOAT32: 4,
    _T.UINT64: 8, _T.INT64: 8, _T.FLOAT64: 8,
}  # fmt: skip
_MIN_KV_BYTES = 8 + 4 + 1  # an empty key, its type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # an empty name, n_dims = 0, type, offset
_MAX_DIMS = 4  # GGML_MAX_DIMS (ggml/include/ggml.h)


class GGUFLayoutError(ValueError):
    """A length, count, dimension or offset in a GGUF header that the file cannot hold. One line, naming the key
    or tensor, the bytes needed and the bytes there."""


def check_layout(path: str | os.PathLike, byteorder: str = "little") -> None:
    """Walk the header of the GGUF file at ``path`` (magic and version already checked by the caller), checking
    every length and count against the file size before reading on. Time and memory are bounded by the header's
    real size, whatever it declares.

    Args:
        path: the file.
        byteorder: "little" or "big", as decided from the version field.

    Raises:
        GGUFLayoutError: the first field that does not fit, e.g. an array longer than the rest of the file, more
            keys or tensors than the file has room for, a tensor of more than 4 dimensions or of an unknown type,
            tensor data that runs past the end of the file (a truncated download).
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        _Walk(data, byteorder).header()


class _Walk:
    """A read position in the file's bytes; every read first checks that the bytes are there."""

    def __init__(self, data: mmap.mmap, byteorder: str):
        self.data, self.size, self.byteorder, self.pos = data, len(data), byteorder, 8  # after magic and version

    def left(self) -> int:
        return self.size - self.pos

    def skip(self, n: int, what: str) -> int:
        """Step over ``n`` bytes holding ``what``; their start offset."""
        if n > self.left():
            raise GGUFLayoutError(
                f"{what} needs {n:,} bytes at offset {self.pos:,}, but the file ({self.size:,} bytes) has only "
                f"{self.left():,} left: it is truncated or corrupt"
            )
        self.pos += n
        return self.pos - n

    def uint(self, n_bytes: int, what: str) -> int:
        start = self.skip(n_bytes, what)
        return int.from_bytes(self.data[start : start + n_bytes], self.byteorder)

    def string(self, what: str, name: bool = False) -> str:
        """A string; a ``name`` (of a key or tensor) must be UTF-8, other strings are decoded for messages only
        (checkpoint.py names the key whose value is not UTF-8)."""
        length = self.uint(8, f"the length of {what}")
        start = self.skip(length, f"{what} (a string of {length:,} bytes)")
        try:
            return self.data[start : start + length].decode("utf-8", errors="strict" if name else "replace")
        except UnicodeDecodeError as e:
            raise GGUFLayoutError(f"{what} is not UTF-8 (byte {start + e.start:,}): the file is corrupt") from None

    def count(self, n: int, min_bytes: int, what: str) -> int:
        """``n`` items of at least ``min_bytes`` each must fit in the rest of the file before any is read."""
        if n * min_bytes > self.left():
            raise GGUFLayoutError(
                f"the header declares {n:,} {what}, which need at least {n * min_bytes:,} bytes, but the file "
                f"({self.size:,} bytes) has only {self.left():,} left: it is corrupt"
            )
        return n

    def header(self) -> None:
        n_tensors = self.uint(8, "the tensor count")
        n_kv = self.uint(8, "the metadata key count")
        self.count(n_kv, _MIN_KV_BYTES, "metadata keys")
        alignment = gguf.GGUF_DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key = self.string(f"the name of metadata key {i}", name=True)
            value_type = self.uint(4, f"the type of metadata key {key!r}")
            value = self.value(value_type, f"metadata key {key!r}")
            if key == "general.alignment" and value_type == _T.UINT32:
                alignment = value
        self.count(n_tensors, _MIN_TENSOR_INFO_BYTES, "tensors")
        tensors = [self.tensor_info(i) for i in range(n_tensors)]
        if alignment == 0 or alignment & (alignment - 1):
            raise GGUFLayoutError(f"general.alignment is {alignment}; it must be a power of two")
        data_start = -(-self.pos // alignment) * alignment  # the header rounded up to the alignment
        for name, offset, n_bytes in tensors:
            have = max(0, min(n_bytes, self.size - data_start - offset))
            if have < n_bytes:
                raise GGUFLayoutError(
                    f"tensor {name!r} needs {n_bytes:,} bytes at offset {data_start + offset:,}, but the file "
                    f"({self.size:,} bytes) holds only {have:,} of them: it is truncated"
                )

    def value(self, value_type: int, what: str, in_array: bool = False):
        """Step over one value; an integer value is returned (for general.alignment)."""
        if value_type in _SCALAR_BYTES:
            return self.uint(_SCALAR_BYTES[value_type], what)
        if value_type == _T.STRING:
            return self.string(what)
        if value_type == _T.ARRAY and not in_array:  # llama.cpp's gguf.cpp refuses nested arrays too
            item_type = self.uint(4, f"the item type of {what}")
            n = self.uint(8, f"the length of {what}")
            if item_type in _SCALAR_BYTES:
                self.skip(n * _SCALAR_BYTES[item_type], f"{what} (an array of {n:,} {_T(item_type).name})")
            elif item_type == _T.STRING:
                self.count(n, 8, f"strings in {what}")
                for j in range(n):
                    self.string(f"item {j} of {what}")
            else:
                raise GGUFLayoutError(f"{what} is an array of unknown or nested type {item_type}")
            return None
        raise GGUFLayoutError(f"{what} has unknown value type {value_type}")

    def tensor_info(self, i: int) -> tuple[str, int, int]:
        """(name, data offset, data bytes) of tensor ``i``'s entry, its dimensions and type checked."""
        name = self.string(f"the name of tensor {i}", name=True)
        n_dims = self.uint(4, f"the dimension count of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise GGUFLayoutError(f"tensor {name!r} has {n_dims:,} dimensions; GGUF allows at most {_MAX_DIMS}")
        dims = [self.uint(8, f"dimension {j} of tensor {name!r}") for j in range(n_dims)]
        type_id = self.uint(4, f"the type of tensor {name!r}")
        offset = self.uint(8, f"the data offset of tensor {name!r}")
        try:
            block_size, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):
            raise GGUFLayoutError(f"tensor {name!r} has unknown GGML type {type_id}") from None
        if 0 in dims or (dims and dims[0] % block_size):
            raise GGUFLayoutError(
                f"tensor {name!r} has dimensions {dims}: each must be >= 1, the first a multiple of "
                f"{block_size} (its type's block size)"
            )
        return name, offset, math.prod(dims) // block_size * block_bytes
