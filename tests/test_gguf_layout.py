"""Hostile GGUF headers (issue 12): every length, count, dimension and offset is checked against the file size
before anything is allocated or iterated, and the error names the key or tensor and the bytes."""

import contextlib
import resource
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checkpoint import TINY, make_tokenizer, random_params

from minigrok.checkpoint import CheckpointError, load_gguf, read_config, save_gguf

ARRAY, UINT8, STRING = 9, 0, 8


def header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


# The 49-byte file of the issue: one key whose value is an array of 2**63 UINT8.
HOSTILE = header(0, 1) + string(b"a") + struct.pack("<IIQ", ARRAY, UINT8, 2**63)


@contextlib.contextmanager
def address_space_cap(extra_bytes: int):
    """Let this process map at most ``extra_bytes`` more than it has now (RLIMIT_AS), then restore the limit."""
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    save_gguf(path, random_params(TINY), TINY, make_tokenizer(TINY.vocab_size))
    return path.read_bytes()


@pytest.mark.parametrize(
    "data, message",
    [
        (HOSTILE, "metadata key 'a' (an array of 9,223,372,036,854,775,808 UINT8) needs 9,223,372,036,854,775,808 "
                  "bytes at offset 49, but the file (49 bytes) has only 0 left"),
        (header(0, 2**62), "declares 4,611,686,018,427,387,904 metadata keys"),
        (header(2**40, 0), "declares 1,099,511,627,776 tensors"),
        (header(0, 1) + struct.pack("<Q", 2**64 - 1) + b"key" + b"\0" * 16,
         "the name of metadata key 0 (a string of 18,446,744,073,709,551,615 bytes) needs"),
        (header(0, 1) + string(b"toks") + struct.pack("<IIQ", ARRAY, STRING, 2**60) + b"\0" * 8,
         "declares 1,152,921,504,606,846,976 strings in metadata key 'toks'"),
        (header(0, 1) + string(b"k") + struct.pack("<I", 77) + b"\0" * 8, "metadata key 'k' has unknown value type 77"),
        (header(1, 0) + string(b"w") + struct.pack("<I", 5) + b"\0" * 40, "tensor 'w' has 5 dimensions"),
        (header(1, 0) + string(b"w") + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0),
         "tensor 'w' needs 4,835,703,278,458,516,698,824,704 bytes at offset 96"),
        (header(1, 0) + string(b"w") + struct.pack("<IQIQ", 1, 8, 0, 2**63),
         "tensor 'w' needs 32 bytes at offset 9,223,372,036,854,775,872, but the file (57 bytes) holds only 0"),
        (header(1, 0) + string(b"w") + struct.pack("<IQIQ", 1, 8, 999, 0), "tensor 'w' has unknown GGML type 999"),
        (header(1, 0) + string(b"w") + struct.pack("<IQIQ", 1, 40, 8, 0), "the first a multiple of 32"),
        (header(0, 1) + string(b"\xffkey") + struct.pack("<II", 4, 0),
         "the name of metadata key 0 is not UTF-8 (byte 32)"),
    ],
    ids=["array-2**63", "keys-2**62", "tensors-2**40", "key-name-2**64", "strings-2**60", "value-type", "dims-5",
         "dims-huge", "offset-2**63", "ggml-type", "block-size", "utf-8"],
)  # fmt: skip
def test_hostile_headers_are_refused_naming_the_field(tmp_path, data, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with address_space_cap(256 * 2**20), pytest.raises(CheckpointError) as e:
        read_config(path)  # before: the first one looped over 2**63 items until MemoryError
    assert message in str(e.value) and str(e.value).startswith(f"{path}: ")


def test_a_tensor_cut_short_names_the_tensor_and_the_bytes(tmp_path, valid_bytes):
    path = tmp_path / "cut.gguf"
    path.write_bytes(valid_bytes[:-100])
    # Before: "cannot reshape array of size 0 into shape ..." (NumPy's words).
    with pytest.raises(CheckpointError, match=r"tensor 'blk\.1\.layer_output_norm\.weight' needs 256 bytes at offset "
                       r"[\d,]+, but the file \([\d,]+ bytes\) holds only 156 of them: it is truncated"):  # fmt: skip
        load_gguf(path)


def test_a_metadata_string_running_past_the_end_names_the_key(tmp_path, valid_bytes):
    key = b"general.architecture"
    at = valid_bytes.index(key) + len(key) + 4  # the length of the value string, after the key and its type
    data = valid_bytes[:at] + struct.pack("<Q", len(valid_bytes)) + valid_bytes[at + 8 :]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="metadata key 'general.architecture' .a string of [0-9,]+ bytes. needs"):
        load_gguf(path)  # before: "IndexError: index 0 is out of bounds"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    at=st.integers(8, 13_000),  # inside the header (the tensor data starts at 13,088)
    value=st.one_of(st.sampled_from([2**63, 2**64 - 1, 2**32, 2**31, 640_033, 0, 1, 5, 9]), st.integers(0, 2**64 - 1)),
    width=st.sampled_from([4, 8]),
    cut=st.one_of(st.none(), st.integers(0, 640_031)),
)
def test_any_corrupted_length_or_truncation_is_refused_with_a_checkpoint_error(
    tmp_path, valid_bytes, at, value, width, cut
):
    data = bytearray(valid_bytes)
    data[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data[:cut]))
    with address_space_cap(256 * 2**20):
        try:
            load_gguf(path)  # a harmless change (e.g. a weight's bytes) may still load
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)


def test_generate_refuses_the_hostile_file_with_one_line_under_a_memory_cap(tmp_path):
    path = tmp_path / "hostile.gguf"
    path.write_bytes(HOSTILE)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))

    proc = subprocess.run(
        [sys.executable, "-m", "minigrok", "generate", "-m", str(path)],
        capture_output=True, text=True, timeout=120, preexec_fn=cap, check=False,
    )  # fmt: skip
    # Before: 63 s, 4 GB, then MemoryError with exit code 120 and no minigrok: error line.
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"minigrok: error: {path}: metadata key 'a' (an array of 9,223,372,036,854,775,808")
    assert len(proc.stderr.splitlines()) == 1
