"""Byte-level BPE: a readable trainer, with encoding and decoding served by tiktoken.

Text becomes token ids in two stages, as in GPT-2 (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners", §2.2; openai/gpt-2 src/encoder.py):

1. Pre-split. ``GPT2_PATTERN`` cuts the text into chunks: a contraction ("'s", "'ll"), a word with at most one
   leading space (" dog"), a number, a run of punctuation, a run of whitespace. Merges never cross a chunk
   boundary, so " dog" and "." stay separate tokens however often " dog." occurs.
2. Byte pair encoding (Sennrich, Haddow and Birch 2016, "Neural Machine Translation of Rare Words with Subword
   Units") on the UTF-8 bytes of each chunk: start from single bytes and repeatedly merge the adjacent pair that
   was learned first. Working on bytes rather than characters means every string can be encoded, with no
   unknown token, and 256 base tokens suffice.

Token ids: 0..255 are the single bytes (id b is byte b); 256.. are the merged tokens in the order they were learned,
so a token's id is also its merge rank; the special tokens (``<|endoftext|>`` by default) come last.

``train_bpe`` learns the merges in plain Python. ``Tokenizer`` hands the learned vocabulary to a
``tiktoken.Encoding``, which encodes and decodes fast (Rust); ``bpe_encode_reference`` is the same encoding
written out in Python, and the tests check that the two agree.
"""

from __future__ import annotations

import codecs
import functools
import heapq
import json
import re
import unicodedata
from collections import Counter, defaultdict
from itertools import pairwise

import tiktoken
from tqdm import tqdm

from .fileio import atomic_write

EOT = "<|endoftext|>"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # tiktoken's "gpt2"

# Unicode's White_Space property (PropList.txt), which is what \s means in tiktoken's Rust regex. Python's own \s
# (str.isspace) also matches U+001C..U+001F, so it cannot be used as is.
_WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: pre-split


def _char_class(codepoints) -> str:
    """The inside of a regex character class matching exactly these code points (sorted), as ranges."""
    ranges: list[list[int]] = []
    for cp in codepoints:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(rf"\U{lo:08x}" if lo == hi else rf"\U{lo:08x}-\U{hi:08x}" for lo, hi in ranges)


@functools.cache
def _pre_split_regex() -> re.Pattern:
    """GPT2_PATTERN for Python's ``re``, which has no \\p{...}: the classes are spelled out from ``unicodedata``.

    \\p{L} is every code point of general category L* (letters), \\p{N} of N* (numbers), and \\s is White_Space.
    The alternatives, their order and the backtracking are GPT2_PATTERN's, so the chunks are the ones tiktoken
    makes, for every character this Python's Unicode database knows (Python 3.11 has Unicode 14; tiktoken's
    tables are newer, so a letter assigned since then is "punctuation" here and a letter there).
    """
    chars = [chr(cp) for cp in range(0x110000)]
    L = _char_class(ord(c) for c in chars if unicodedata.category(c)[0] == "L")
    N = _char_class(ord(c) for c in chars if unicodedata.category(c)[0] == "N")
    S = _char_class(sorted(map(ord, _WHITE_SPACE)))
    return re.compile(
        r"'(?:[sdmt]|ll|ve|re)"  # a contraction: 's 'd 'm 't 'll 've 're (lower case only, as in GPT-2)
        rf"| ?[{L}]+"  # a word (letters), with at most one leading space
        rf"| ?[{N}]+"  # a number
        rf"| ?[^{S}{L}{N}]+"  # anything else: punctuation, symbols
        rf"|[{S}]+(?![^{S}])"  # whitespace, but not the last space before a word: " dog" keeps its space
        rf"|[{S}]+"  # whitespace at the end of the text
    )


def pre_split(text: str) -> list[str]:
    """Cut ``text`` into the chunks that BPE works on, as GPT2_PATTERN does; "".join(chunks) == text.

    The first call builds the regex from the Unicode database (about 0.4 s); later calls reuse it.
    """
    return _pre_split_regex().findall(text)


def _replace_lone_surrogates(text: str) -> str:
    """Lone surrogates have no UTF-8 form; replace them with U+FFFD, as tiktoken's Encoding.encode does (core.py)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: byte pair encoding


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, left to right, by ``new_id`` ("aaa" with (a, a) -> [aa, a])."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_encode_reference(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """Encode ``text`` the slow, readable way: the reference that ``Tokenizer.encode`` (tiktoken) must match.

    For each chunk of ``pre_split(text)``: start from its UTF-8 bytes and, while some adjacent pair is in
    ``merges``, merge the pair that was learned first (merge i makes token 256 + i). This is GPT-2's
    ``Encoder.bpe`` (openai/gpt-2 src/encoder.py) on bytes.

    Args:
        text: any string (lone surrogates become U+FFFD, as in tiktoken).
        merges: (left id, right id) in the order learned, e.g. ``Tokenizer.merges``.
    Returns:
        token ids (no special tokens: "<|endoftext|>" in ``text`` is plain text).
    """
    rank = {pair: 256 + i for i, pair in enumerate(merges)}
    not_a_merge = len(merges) + 256
    out: list[int] = []
    for chunk in pre_split(_replace_lone_surrogates(text)):
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            first = min(pairwise(ids), key=lambda pair: rank.get(pair, not_a_merge))
            if first not in rank:
                break
            ids = merge_pair(ids, first, rank[first])
        out.extend(ids)
    return out


def learn_merges(text: str, num_merges: int, progress: bool = False) -> list[tuple[int, int]]:
    """Learn ``num_merges`` BPE merges from ``text``: the algorithm behind ``train_bpe``.

    1. Pre-split the text and count how often each distinct chunk occurs (" the" may occur 30,000 times but is
       stored once, with its count). Each chunk starts as its list of byte ids.
    2. Count every adjacent pair of ids, weighted by chunk count, and remember which chunks hold each pair.
    3. Repeat: take the most frequent pair (a, b), give it the next id (256, 257, ...), and replace (a, b) by the
       new id in the chunks that hold it. Only those chunks change, so only their pair counts are updated
       (incremental update), instead of recounting the whole text after every merge; a heap keeps the counts
       ordered, with stale entries skipped when popped.

    Ties: among pairs with the same count, the smallest (a, b) wins (compare a, then b), so training is
    deterministic. Sennrich et al. 2016 (Algorithm 1) learn merges this way on words; GPT-2 applies it to the
    UTF-8 bytes of pre-split chunks.

    Args:
        text: training text.
        num_merges: how many merges to learn.
        progress: show a tqdm progress bar over the merges.
    Returns:
        (left id, right id) of each merge, in the order learned; merge i made token 256 + i.
    Raises:
        ValueError: the text runs out of pairs before ``num_merges`` merges (too little text for that many).
    """
    chunk_counts = Counter(pre_split(_replace_lone_surrogates(text)))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each distinct chunk, as ids
    counts = list(chunk_counts.values())  # how often each occurs in the text

    pair_count: dict[tuple[int, int], int] = defaultdict(int)  # occurrences in the whole text
    holders: dict[tuple[int, int], set[int]] = defaultdict(set)  # which words hold the pair
    for w, ids in enumerate(words):
        for pair in pairwise(ids):
            pair_count[pair] += counts[w]
            holders[pair].add(w)
    heap = [(-n, pair) for pair, n in pair_count.items()]  # max count first, then smallest pair
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    for new_id in tqdm(range(256, 256 + num_merges), desc="BPE merges", unit="merge", disable=not progress):
        best = None
        while heap:
            neg_n, pair = heapq.heappop(heap)
            if pair_count.get(pair) == -neg_n:  # else a stale entry: the count has changed since it was pushed
                best = pair
                break
        if best is None:
            raise ValueError(
                f"the text has only {len(merges)} possible merges, so vocab_size can be at most {257 + len(merges)}; "
                f"asked for {num_merges} merges: use more text or a smaller vocab_size"
            )
        merges.append(best)

        changed: set[tuple[int, int]] = set()
        for w in holders.pop(best):
            old, new = words[w], merge_pair(words[w], best, new_id)
            words[w] = new
            old_pairs, new_pairs = Counter(pairwise(old)), Counter(pairwise(new))
            for pair in old_pairs | new_pairs:
                delta = new_pairs[pair] - old_pairs[pair]
                if delta:
                    pair_count[pair] += delta * counts[w]
                    changed.add(pair)
                if pair not in new_pairs and pair != best:
                    holders[pair].discard(w)
                elif pair not in old_pairs:
                    holders[pair].add(w)
        for pair in changed:
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], pair))
            else:  # the pair is gone from the text
                del pair_count[pair]
                holders.pop(pair, None)
    return merges


def train_bpe(text: str, vocab_size: int, progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer of ``vocab_size`` tokens on ``text`` (see ``learn_merges``).

    Ids 0..255 are the 256 bytes, ids 256..vocab_size - 2 the merges in the order learned, and the last id
    (vocab_size - 1) is the ``<|endoftext|>`` special token, so there are vocab_size - 257 merges. Pure Python:
    vocab_size 4096 on 4.9 MB of Shakespeare (35,582 distinct chunks) takes about 5 s on one core.

    Raises:
        ValueError: vocab_size < 257, or the text has fewer possible merges than vocab_size - 257.
    """
    if vocab_size < 257:
        raise ValueError(
            f"vocab_size must be at least 257 (the 256 single bytes + {EOT}); got {vocab_size}. "
            "Each token past 257 is one learned merge."
        )
    merges = learn_merges(text, vocab_size - 257, progress=progress)
    tokens = [bytes([b]) for b in range(256)]
    for left, right in merges:
        tokens.append(tokens[left] + tokens[right])
    return Tokenizer(tokens)


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer: vocabulary + tiktoken


def _recover_merge(rank: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens whose merge makes ``token``, found the way tiktoken encodes it.

    Run BPE on the token's bytes using only tokens of lower rank (repeatedly merge the adjacent pair whose
    concatenation has the lowest rank); a consistent vocabulary ends with exactly two parts. Same procedure as
    llama.cpp's convert_hf_to_gguf.py (QwenModel.bpe) uses to list the merges of a tiktoken vocabulary.
    """
    parts = [bytes([b]) for b in token]
    while True:
        ranked = [(rank.get(a + b, len(rank)), i) for i, (a, b) in enumerate(pairwise(parts))]
        best, i = min(ranked)
        if best >= rank[token]:  # no merge below this token's own rank
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(
            f"token {rank[token]} {token!r} is not the merge of two lower-ranked tokens (BPE with the tokens "
            f"before it ends in {len(parts)} parts: {parts!r}); in a byte-level BPE vocabulary every token after the "
            "256 bytes must come after the two tokens it is merged from"
        )
    return parts[0], parts[1]


class Tokenizer:
    """A byte-level BPE vocabulary, encoded and decoded by tiktoken.

    Attributes:
        tokens: ``tokens[i]`` is the bytes of ordinary token id i; ids 0..255 are the single bytes.
        special: special token string -> id; ids len(tokens), len(tokens) + 1, ... in some order.
        merges: ``merges[i]`` = (left id, right id) whose merge makes token 256 + i.
        vocab_size: len(tokens) + len(special) (the model's embedding rows).
        eot_id: id of ``<|endoftext|>``, the document separator (also GGUF's BOS and EOS).
    """

    def __init__(self, tokens: list[bytes], special: dict[str, int] | None = None):
        """Check the vocabulary and build its tiktoken Encoding.

        Args:
            tokens: bytes of each ordinary token, in rank (= id) order; the first 256 must be bytes 0..255.
            special: special token string -> id; default ``{EOT: len(tokens)}``.
        Raises:
            ValueError: a missing or misplaced byte token, a repeated token, a token that is not the merge of
                two lower-ranked tokens, no ``<|endoftext|>``, or special ids other than len(tokens), ...
        """
        tokens = [bytes(t) for t in tokens]
        if len(tokens) < 256 or any(tokens[b] != bytes([b]) for b in range(256)):
            raise ValueError("tokens must start with the 256 single bytes in order (tokens[b] == bytes([b]))")
        rank: dict[bytes, int] = {}
        for i, token in enumerate(tokens):
            if token in rank:
                raise ValueError(f"token {i} {token!r} repeats token {rank[token]}; every token must be unique")
            rank[token] = i
        merged_from = [_recover_merge(rank, token) for token in tokens[256:]]

        special = {EOT: len(tokens)} if special is None else dict(special)
        if EOT not in special:
            raise ValueError(f"special tokens {sorted(special)} lack {EOT!r}, which minigrok uses between documents")
        if sorted(special.values()) != list(range(len(tokens), len(tokens) + len(special))):
            raise ValueError(
                f"special token ids {sorted(special.values())} must be {len(tokens)}..{len(tokens) + len(special) - 1}"
                ", right after the ordinary tokens"
            )

        self.tokens = tokens
        self.special = special
        self.merges = [(rank[left], rank[right]) for left, right in merged_from]
        self.vocab_size = len(tokens) + len(special)
        self.eot_id = special[EOT]
        self._encoding = tiktoken.Encoding(
            name=f"minigrok-bpe-{self.vocab_size}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=rank,
            special_tokens=special,
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and (self.tokens, self.special) == (other.tokens, other.special)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special={self.special})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``. Special-token strings in it ("<|endoftext|>") are plain text, never special ids."""
        return self._encoding.encode_ordinary(text)

    def decode_bytes(self, ids) -> bytes:
        """The bytes of token ids (any iterable of ints, e.g. a NumPy array); raises ValueError on an unknown id."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is not in this vocabulary (ids 0..{self.vocab_size - 1})")
        return self._encoding.decode_bytes(ids)

    def decode(self, ids) -> str:
        """The text of token ids; bytes that are not valid UTF-8 (a cut character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for tokens that arrive one at a time (generation); see ``StreamDecoder``."""
        return StreamDecoder(self)

    # ------------------------------------------------------------------------------------------------------------
    # JSON files (the GGUF fields are in checkpoint.py: tokenizer_gguf_fields, tokenizer_from_gguf_fields)

    def save(self, path) -> None:
        """Write the tokenizer as JSON (token bytes in hex, in id order, and the special tokens), atomically."""
        data = {
            "format": "minigrok-bpe",
            "version": 1,
            "pattern": GPT2_PATTERN,
            "tokens": [t.hex() for t in self.tokens],
            "special": self.special,
        }
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=0), encoding="utf-8"))

    @classmethod
    def load(cls, path) -> Tokenizer:
        """Read a tokenizer written by ``save``. Raises ValueError if the file is not one, or is inconsistent."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not JSON ({e}); write tokenizer files with Tokenizer.save") from e
        if not isinstance(data, dict) or data.get("format") != "minigrok-bpe" or data.get("version") != 1:
            raise ValueError(f'{path} is not a minigrok tokenizer file ("format": "minigrok-bpe", "version": 1)')
        if data.get("pattern") != GPT2_PATTERN:
            raise ValueError(f"{path} was made with the pre-split pattern {data.get('pattern')!r}, not GPT2_PATTERN")
        try:
            tokens = [bytes.fromhex(h) for h in data["tokens"]]
            special = {str(name): int(i) for name, i in data["special"].items()}
            return cls(tokens, special)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: bad tokenizer file: {e}") from e


class StreamDecoder:
    """Turns token ids into text one at a time, never splitting a UTF-8 character.

    A token may end halfway through a character ("é" is two bytes and can be two tokens), so the bytes of
    each token go through an incremental UTF-8 decoder (``codecs``) that holds back an unfinished character
    until the next token completes it. For any ids, ``"".join(map(push, ids)) + flush() == decode(ids)``.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token ("" while a character is still unfinished)."""
        return self._utf8.decode(self._tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """The end of the stream: any held-back bytes, as U+FFFD. The decoder can then be reused."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
