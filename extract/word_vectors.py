"""Word vectors from a user-given file: word2vec text or binary, or GloVe text.

:class:`WordVectors` (backbone ``word-vectors``, ``--set path=FILE`` or ``--weights FILE``)
reads the file once in the main process (:func:`load_word_vectors`; ``limit`` keeps its first
words, which such files list by frequency); the decoding workers only split texts into words
(``\\w+`` after NFC). Tokens: one per word found in the file, in text order; a word absent as
written is tried in lower case (``lowercase_fallback``), then skipped. ``pooled`` is the mean of
the tokens, zeros for a text with no word found. The cache key holds the file's sha256 (and its
absolute path, from which a run's store rebuilds the encoder). Why a parser of its own:
docs/notes/extract.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mmx.cache.files import sha256_of
from mmx.extract import decode
from mmx.extract.encoder_base import Encoder, Output, Preparer, local_path

FORMATS = ("auto", "word2vec-text", "word2vec-binary", "glove")
WORD = re.compile(r"\w+")


def _header(line: bytes) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def detect_format(path: Path) -> str:
    """word2vec files open with a ``count dim`` line; a binary one's first vector is not text."""
    with open(path, "rb") as f:
        first = f.readline()
        head = _header(first)
        if head is None:
            return "glove"
        second = f.read(head[1] * 4 + 200)
    try:
        fields = second.split(b"\n", 1)[0].decode("utf-8").rstrip().split(" ")
        [float(x) for x in fields[-head[1]:]]
        return "word2vec-text" if len(fields) >= head[1] + 1 else "word2vec-binary"
    except (UnicodeDecodeError, ValueError):
        return "word2vec-binary"


def load_word_vectors(path: Path, fmt: str = "auto", limit: int | None = None) -> tuple[dict, np.ndarray, str]:
    """``(word -> row, (N, D) float32 matrix, format read)``; the first of repeated words wins."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    words: dict = {}
    rows: list = []
    with open(path, "rb") as f:
        head = None if fmt == "glove" else _header(f.readline())
        if fmt != "glove" and head is None:
            raise ValueError(f"{path}: a {fmt} file opens with a 'count dim' line")
        dim = head[1] if head else None
        count = head[0] if head else None
        if limit is not None:
            count = min(count, limit) if count is not None else limit
        if fmt == "word2vec-binary":
            _read_binary(f, path, dim, count, words, rows)
        else:
            _read_text(f, path, dim, count, words, rows, 2 if head else 1)
    if not rows:
        raise ValueError(f"{path}: no word vectors in it")
    return words, np.stack(rows).astype(np.float32, copy=False), fmt


def _read_text(f, path, dim, count, words, rows, lineno):
    for lineno, raw in enumerate(f, lineno):
        if count is not None and len(rows) >= count:
            break
        parts = raw.decode("utf-8", errors="replace").rstrip("\r\n ").split(" ")
        if len(parts) < 2:
            continue  # a blank line
        dim = dim or len(parts) - 1
        if len(parts) < dim + 1:
            raise ValueError(f"{path}, line {lineno}: {len(parts) - 1} numbers where {dim} are expected")
        try:
            vector = np.array(parts[-dim:], dtype=np.float32)
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: not a word followed by {dim} numbers") from None
        _add(" ".join(parts[:-dim]), vector, words, rows)


def _read_binary(f, path, dim, count, words, rows):
    size = dim * 4
    for n in range(count):
        word = bytearray()
        while (c := f.read(1)) not in (b" ", b""):
            if c != b"\n":  # some writers end each vector with a newline
                word += c
        data = f.read(size)
        if len(data) < size:
            raise ValueError(f"{path}: ends inside vector {n + 1} of {count} (a truncated word2vec binary file)")
        _add(word.decode("utf-8", errors="replace"), np.frombuffer(data, "<f4").copy(), words, rows)


def _add(word, vector, words, rows):
    if word not in words:
        words[word] = len(rows)
        rows.append(vector)


class WordsPreparer(Preparer):
    """A text -> its words (``\\w+`` after NFC), in the decoding workers."""

    def prepare(self, item: dict) -> list:
        text = decode.normalise_text(item["text"]) if item.get("text") else decode.read_text(local_path(item))
        return WORD.findall(text)

    def collate(self, samples: list):
        return samples


class WordVectors(Encoder):
    """One token per word found in the file; ``pooled`` their mean."""

    def __init__(self, info, options):
        super().__init__(info, options)
        given = options.get("path") or options.get("weights")
        if not given:
            raise ValueError("backbone 'word-vectors' needs a word vector file: --set path=FILE (or --weights FILE)")
        path = self.path = Path(str(given)).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"word vector file not found: {path}")
        if options["format"] not in FORMATS:
            raise ValueError(f"unknown word vector format {options['format']!r}; known: {', '.join(FORMATS)}")
        limit = options.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive whole number of words, not {limit!r}")
        self.sha256 = sha256_of(path)
        self.words, self.vectors, self.format = load_word_vectors(path, options["format"], limit)
        self.dim = int(self.vectors.shape[1])
        self.prep = WordsPreparer()

    def meta(self) -> dict:
        return {**super().meta(), "weights": str(self.path)}

    def preprocessing(self) -> dict:
        pre = {k: v for k, v in super().preprocessing().items() if k != "path"}
        return {**pre, "format": self.format, "sha256": self.sha256, "words": r"\w+ after NFC", "vocabulary_size": len(self.words)}

    def lookup(self, word: str) -> int | None:
        row = self.words.get(word)
        if row is None and self.options["lowercase_fallback"]:
            row = self.words.get(word.lower())
        return row

    def forward(self, batch, batch_size: int) -> list[Output]:
        out = []
        for words in batch:
            rows = [r for r in map(self.lookup, words) if r is not None]
            tokens = self.vectors[rows] if rows else np.zeros((0, self.dim), np.float32)
            out.append((tokens, tokens.mean(0) if rows else np.zeros(self.dim, np.float32)))
        return out
