"""Word vectors from a file: the three formats read alike, words not in the file, the key, errors."""

import numpy as np
import pytest

from mmx.cache.modality import Modality
from mmx.cache.store import StoreSpec
from mmx.extract.backbones import build_encoder
from mmx.extract.word_vectors import detect_format, load_word_vectors

WORDS = ["the", "Dog", "dog", "car", "New_York", "naïve"]


@pytest.fixture
def vectors():
    return np.random.default_rng(1).standard_normal((len(WORDS), 4)).astype(np.float32)


def write(path, fmt, vectors, words=WORDS):
    if fmt == "word2vec-binary":
        with open(path, "wb") as f:
            f.write(f"{len(words)} {vectors.shape[1]}\n".encode())
            for w, v in zip(words, vectors):
                f.write(w.encode() + b" " + v.astype("<f4").tobytes() + b"\n")
        return path
    lines = [w + " " + " ".join(repr(float(x)) for x in v) for w, v in zip(words, vectors)]
    head = [f"{len(words)} {vectors.shape[1]}"] if fmt == "word2vec-text" else []
    path.write_text("\n".join(head + lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["word2vec-text", "word2vec-binary", "glove"])
def test_each_format_is_detected_and_read_exactly(fmt, tmp_path, vectors):
    path = write(tmp_path / "v", fmt, vectors)
    assert detect_format(path) == fmt
    words, matrix, read = load_word_vectors(path)
    assert read == fmt and list(words) == WORDS
    np.testing.assert_allclose(matrix, vectors, rtol=1e-6)
    _, first_two, _ = load_word_vectors(path, fmt, limit=2)
    assert first_two.shape == (2, 4)


def _encoder(path, **options):
    return build_encoder("word-vectors", {"path": str(path), **options})


def _run(encoder, texts):
    return encoder.forward(encoder.prep.collate([encoder.prep.prepare({"text": t}) for t in texts]), 8)


def test_words_found_as_written_then_in_lower_case_else_skipped(tmp_path, vectors):
    encoder = _encoder(write(tmp_path / "v.txt", "glove", vectors))
    assert encoder.dim == 4
    (tokens, pooled), (none, zeros), (exact, _) = _run(encoder, ["The DOG, the parakeet; naïve New_York", "parakeets!", "Dog dog"])
    want = vectors[[0, 2, 0, 5, 4]]  # "The"->"the", "DOG"->"dog"; "parakeet" is in no form
    np.testing.assert_allclose(tokens, want)
    np.testing.assert_allclose(pooled, want.mean(0), rtol=1e-6)
    assert none.shape == (0, 4) and not zeros.any()  # no word found: no tokens, a zero pooled vector
    np.testing.assert_allclose(exact, vectors[[1, 2]])  # "Dog" as written first
    strict = _encoder(tmp_path / "v.txt", lowercase_fallback=False)
    (tokens, _), = _run(strict, ["The DOG the"])
    np.testing.assert_allclose(tokens, vectors[[0]])


def _key(encoder):
    return StoreSpec("d", Modality.TEXT, encoder.meta(), encoder.preprocessing(), "ids").key()


def test_the_key_holds_the_files_sha256(tmp_path, vectors, monkeypatch):
    import hashlib

    a = write(tmp_path / "a.txt", "glove", vectors)
    ea = _encoder(a)
    assert ea.preprocessing()["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest() and "path" not in ea.preprocessing()
    before = _key(ea)
    write(a, "glove", vectors + 1)  # the same file, changed
    assert _key(_encoder(a)) != before
    assert _key(_encoder(a, limit=3)) != _key(_encoder(a))
    monkeypatch.chdir(tmp_path)
    assert _key(build_encoder("word-vectors", weights="a.txt")) == _key(_encoder(a))  # --weights FILE, relative or not


def test_bad_files_and_options_are_clear_errors(tmp_path, vectors):
    with pytest.raises(ValueError, match="needs a word vector file: --set path=FILE"):
        build_encoder("word-vectors")
    with pytest.raises(FileNotFoundError, match="word vector file not found"):
        _encoder(tmp_path / "absent.txt")
    ok = write(tmp_path / "v.txt", "glove", vectors)
    with pytest.raises(ValueError, match="unknown word vector format 'fasttext'"):
        _encoder(ok, format="fasttext")
    with pytest.raises(ValueError, match="limit must be a positive whole number"):
        _encoder(ok, limit=0)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("a 1 2 3\nb 1 2\n")
    with pytest.raises(ValueError, match="line 2: 2 numbers where 3 are expected"):
        _encoder(ragged)
    words = tmp_path / "words.txt"
    words.write_text("a 1 2\nb x y\n")
    with pytest.raises(ValueError, match="line 2: not a word followed by 2 numbers"):
        _encoder(words)
    cut = write(tmp_path / "v.bin", "word2vec-binary", vectors)
    cut.write_bytes(cut.read_bytes()[:-9])
    with pytest.raises(ValueError, match="truncated word2vec binary file"):
        _encoder(cut)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no word vectors in it"):
        _encoder(empty)
