"""Tests for minigrok.tokenizer: the BPE trainer, its agreement with tiktoken, decoding, GGUF and JSON round trips."""

import json

import numpy as np
import pytest
from gguf.vocab import bytes_to_unicode as gguf_bytes_to_unicode
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.checkpoint import tokenizer_from_gguf_fields, tokenizer_gguf_fields
from minigrok.tokenizer import (
    EOT,
    GPT2_PATTERN,
    Tokenizer,
    bpe_encode_reference,
    learn_merges,
    pre_split,
    train_bpe,
)

CORPUS = """\
A tokenizer turns text into numbers. It doesn't know words: it knows bytes, and pairs of bytes that it has seen
together often enough to give them a number of their own. We'll train one here on this very paragraph, so it's
small, but the idea is the one they're using in every large model you've heard of. I'm told that 1234 and 56.78
are numbers, that naïve café menus say "crème brûlée", that 日本語 is three characters and nine bytes, and that
🙂 takes four bytes by itself.

    Indented lines,\ttabs, and blank lines

matter too: whitespace is split off in runs, and the last space before a word stays with the word.
"""
TOK = train_bpe(CORPUS, 400)

# Characters that exercise every branch of GPT2_PATTERN: contractions, letters, digits, punctuation, each kind of
# whitespace (Python's isspace() but not Unicode White_Space: \x1c), multi-byte characters, the special token text.
TRICKY = [*"ab sT'dmtlvre19.,!-\"\n\t\r\x0b\x0c\x1c\x85\xa0\u2009\u3000éß日🙂", "'s", "'ll", "'ve", "  ", "\r\n", EOT]


def texts(exclude_categories=("Cs",)):
    """Text mixing TRICKY pieces with arbitrary characters (no lone surrogates: they have no UTF-8 form)."""
    piece = st.one_of(st.sampled_from(TRICKY), st.characters(exclude_categories=exclude_categories))
    return st.lists(piece, max_size=40).map("".join)


# Characters this Python's Unicode database has assigned (not Cn): the pre-split classes letters and numbers from
# it, while tiktoken's tables are newer, so only these are guaranteed to be classed alike.
assigned_texts = texts(exclude_categories=("Cs", "Cn"))


# ---------------------------------------------------------------------------------------------------------------
# Pre-split


def test_pre_split_known_answer():
    assert pre_split("Hello world's  123 !!\n\n x") == ["Hello", " world", "'s", " ", " 123", " !!", "\n\n", " x"]
    assert pre_split("I'M it's\x1c \xa0x") == ["I", "'", "M", " it", "'s", "\x1c", " ", "\xa0", "x"]


@given(assigned_texts)
def test_pre_split_matches_regex_module(text):
    regex = pytest.importorskip("regex")  # installed with tiktoken, which uses it; an independent engine
    assert pre_split(text) == regex.findall(GPT2_PATTERN, text)


@given(texts())
def test_pre_split_keeps_every_character(text):
    assert "".join(pre_split(text)) == text


# ---------------------------------------------------------------------------------------------------------------
# Training


def test_known_answer_merges_and_tie_break():
    # Classic BPE example. Counts: aa 4, ab 2, others 1 -> merge (a, a) = 256. "aaab" is now [aa, a, b]:
    # (a, b) and (aa, a) both occur twice; the tie goes to the smaller pair (97, 98) = 257; then (aa, ab) = 258.
    assert learn_merges("aaabdaaabac", 3) == [(97, 97), (97, 98), (256, 257)]
    tok = train_bpe("aaabdaaabac", 260)
    assert tok.tokens[256:] == [b"aa", b"ab", b"aaab"]
    assert tok.eot_id == 259 and tok.vocab_size == 260
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]


def test_merges_never_cross_chunks():
    # "dog. " * 50 splits into "dog" ".", " dog" "." ... " ": "g." and ". " are never pairs, however frequent.
    tok = train_bpe("dog. " * 50, 260)
    assert tok.tokens[256:] == [b"do", b"dog", b" dog"]  # do/og tie at 50: (100, 111) < (111, 103)
    assert tok.encode("dog. dog.") == [257, ord("."), 258, ord(".")]
    with pytest.raises(ValueError, match=r"only 3 possible merges.*at most 260"):
        train_bpe("dog. " * 50, 261)


@pytest.mark.parametrize("vocab_size", [0, 100, 256])
def test_vocab_size_too_small(vocab_size):
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe(CORPUS, vocab_size)


def test_smallest_vocab_is_bytes_plus_eot():
    tok = train_bpe(CORPUS, 257)
    assert tok.merges == [] and tok.eot_id == 256
    assert tok.encode("hé") == [104, 0xC3, 0xA9]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", " ", "'", "s", "1", "\n", "é", "日", "!", "  "]), max_size=80).map("".join),
    st.integers(1, 30),
)
def test_trained_tokenizer_is_consistent(train_text, num_merges):
    """On any training text, the merges the trainer learned are the ones the vocabulary implies (the merges
    tiktoken will use) and the reference encoder agrees with tiktoken."""
    try:
        merges = learn_merges(train_text, num_merges)
    except ValueError as e:  # too little text for that many merges
        assert "possible merges" in str(e)
        return
    tok = train_bpe(train_text, 257 + num_merges)
    assert tok.merges == merges
    for text in (train_text, train_text[::-1], "a'sb  日é!!\n1" + train_text[:20]):
        assert tok.encode(text) == bpe_encode_reference(text, merges)


# ---------------------------------------------------------------------------------------------------------------
# Encoding and decoding


@given(texts())
def test_decode_encode_round_trip(text):
    ids = TOK.encode(text)
    assert all(0 <= i < TOK.eot_id for i in ids)
    assert TOK.decode(ids) == text


@given(assigned_texts)
def test_reference_encoder_agrees_with_tiktoken(text):
    assert bpe_encode_reference(text, TOK.merges) == TOK.encode(text)


def test_reference_agrees_on_corpus_and_compresses():
    ids = TOK.encode(CORPUS)
    assert bpe_encode_reference(CORPUS, TOK.merges) == ids
    assert len(ids) < len(CORPUS.encode()) / 2  # trained on it: well under one token per two bytes


@given(texts(), texts())
def test_endoftext_in_text_is_plain_text(before, after):
    text = before + EOT + after
    ids = TOK.encode(text)
    assert TOK.eot_id not in ids
    assert TOK.decode(ids) == text
    assert TOK.decode([TOK.eot_id]) == EOT


def test_decode_rejects_unknown_ids_and_takes_numpy():
    assert TOK.decode(np.array(TOK.encode("café"), dtype=np.int64)) == "café"
    for bad in (-1, TOK.vocab_size):
        with pytest.raises(ValueError, match="not in this vocabulary"):
            TOK.decode([5, bad])


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def stream(tok, ids):
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    return pieces, decoder.flush()


@given(st.lists(st.integers(0, TOK.vocab_size - 1), max_size=60))
def test_stream_equals_full_decode_for_any_ids(ids):
    # Random ids include lone continuation bytes (0x80..0xBF), lead bytes cut short and 0xFF: invalid UTF-8.
    pieces, rest = stream(TOK, ids)
    assert "".join(pieces) + rest == TOK.decode(ids)


@given(texts())
def test_stream_byte_by_byte_never_emits_a_partial_character(text):
    ids = list(text.encode("utf-8"))  # ids 0..255 are the single bytes: one token per byte
    pieces, rest = stream(TOK, ids)
    assert "".join(pieces) == text and rest == ""


def test_stream_known_answers():
    assert stream(TOK, [0xC3, 0xA9]) == (["", "é"], "")  # é = C3 A9 split over two tokens
    assert stream(TOK, [0xE6, 0x97]) == (["", ""], "\ufffd")  # 日 cut short: held back, then replaced
    assert stream(TOK, [0xFF, ord("x")]) == (["\ufffd", "x"], "")  # never valid: replaced at once
    decoder = TOK.stream_decoder()
    assert decoder.push(0xE6) == "" and decoder.flush() == "\ufffd"
    assert decoder.push(ord("a")) == "a"  # usable again after flush


# ---------------------------------------------------------------------------------------------------------------
# GGUF fields


def test_gguf_fields_known_values():
    fields = tokenizer_gguf_fields(TOK)
    table = gguf_bytes_to_unicode()  # gguf-py's copy of GPT-2's table
    assert fields["tokens"][:256] == [table[b] for b in range(256)]
    assert fields["tokens"][ord(" ")] == "Ġ" and fields["tokens"][ord("\n")] == "Ċ"
    assert fields["tokens"][TOK.eot_id] == EOT and len(fields["tokens"]) == TOK.vocab_size
    assert fields["token_types"] == [1] * TOK.eot_id + [3]
    assert fields["bos_id"] == fields["eos_id"] == TOK.eot_id and fields["pre"] == "gpt-2"
    assert len(fields["merges"]) == TOK.vocab_size - 257
    for i, merge in enumerate(fields["merges"]):
        left, right = merge.split(" ")
        assert left + right == fields["tokens"][256 + i]
        assert fields["tokens"].index(left) < 256 + i and fields["tokens"].index(right) < 256 + i


@given(texts())
def test_gguf_round_trip(text):
    fields = tokenizer_gguf_fields(TOK)
    again = tokenizer_from_gguf_fields(fields["tokens"], fields["merges"], fields["token_types"])
    assert again == TOK and again.merges == TOK.merges and again.eot_id == TOK.eot_id
    assert again.encode(text) == TOK.encode(text)


def _first_merge_of_length(fields, n):
    return next(i for i, m in enumerate(fields["merges"]) if len(m) == n + 1)  # n characters + the space


def _corrupt(kind):
    f = tokenizer_gguf_fields(TOK)
    tokens, merges, types = list(f["tokens"]), list(f["merges"]), list(f["token_types"])
    if kind == "unknown char":
        tokens[300] = "a b"  # a space is never in GPT-2's table (it is written Ġ)
    elif kind == "merge makes unknown token":
        merges[0] = "Ā Ā"  # bytes 0, 0: "ĀĀ" is not a token
    elif kind == "merges out of order":
        merges[0], merges[1] = merges[1], merges[0]
    elif kind == "other split":
        i = _first_merge_of_length(f, 3)
        token = tokens[256 + i]
        merges[i] = next(f"{token[:k]} {token[k:]}" for k in (1, 2) if f"{token[:k]} {token[k:]}" != merges[i])
    elif kind == "merges missing":
        merges.pop()
    elif kind == "types length":
        types.pop()
    elif kind == "token type":
        types[300] = 2
    elif kind == "normal after control":
        tokens[-1], tokens[-2] = tokens[-2], tokens[-1]
        types[-1], types[-2] = types[-2], types[-1]
    elif kind == "token before its parts":
        longest = max(range(256, TOK.eot_id), key=lambda i: len(tokens[i]))
        tokens.insert(256, tokens.pop(longest))
    elif kind == "duplicate token":
        tokens[301] = tokens[300]
    elif kind == "no endoftext":
        tokens[-1] = "<|end|>"
    return tokens, merges, types


@pytest.mark.parametrize(
    "kind, message",
    [
        ("unknown char", "outside GPT-2's byte-to-unicode table"),
        ("merge makes unknown token", "not in the token list"),
        ("merges out of order", "is token 257"),
        ("other split", "is not how BPE builds token"),
        ("merges missing", "merges for"),
        ("types length", "one type per token"),
        ("token type", "token type 2"),
        ("normal after control", "comes after a control token"),
        ("token before its parts", "not the merge of two lower-ranked tokens"),
        ("duplicate token", "repeats token 300"),
        ("no endoftext", "lack"),
    ],
)
def test_from_gguf_fields_rejects_inconsistent_input(kind, message):
    with pytest.raises(ValueError, match=message):
        tokenizer_from_gguf_fields(*_corrupt(kind))


def test_constructor_rejects_bad_vocabularies():
    with pytest.raises(ValueError, match="256 single bytes"):
        Tokenizer([bytes([b]) for b in range(255)])
    with pytest.raises(ValueError, match="right after the ordinary tokens"):
        Tokenizer(TOK.tokens, {EOT: TOK.vocab_size})


# ---------------------------------------------------------------------------------------------------------------
# JSON files


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "tokenizer.json"
    TOK.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # the temporary file was renamed
    data = json.loads(path.read_text())
    assert data["tokens"][256] == TOK.tokens[256].hex() and data["special"] == {EOT: TOK.eot_id}
    again = Tokenizer.load(path)
    assert again == TOK and again.encode(CORPUS) == TOK.encode(CORPUS)
    TOK.save(path)  # overwriting is fine
    assert Tokenizer.load(path) == TOK


def test_load_rejects_bad_files(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        Tokenizer.load(path)
    path.write_text(json.dumps({"tokens": []}))
    with pytest.raises(ValueError, match="not a minigrok tokenizer file"):
        Tokenizer.load(path)
    TOK.save(path)
    data = json.loads(path.read_text())
    data["tokens"][256], data["tokens"][-1] = data["tokens"][-1], data["tokens"][256]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer\.json: .*lower-ranked"):
        Tokenizer.load(path)
    data["tokens"][300] = "zz"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bad tokenizer file"):
        Tokenizer.load(path)
