"""Bucketed shapes: the buckets themselves, and `SimBERT.encode` on them: the same
vectors as each text alone, with a bounded number of compiled programs (TensorFlow and,
through test_jax_backend, JAX)."""

import logging
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from helpers import TINY_CONFIG, write_model_dir
from simbert import SimBERT
from simbert.shapes import ShapeBuckets, padded_ids


def test_buckets_round_lengths_and_rows():
    shapes = ShapeBuckets(length_step=16, max_length=40)
    assert [shapes.length(n) for n in (1, 16, 17, 32, 33, 40)] == [16, 16, 32, 32, 40, 40]
    with pytest.raises(ValueError, match="length 41 exceeds the longest bucket 40"):
        shapes.length(41)
    assert [shapes.rows(n, 64) for n in (1, 2, 3, 5, 33, 64, 70)] == [1, 2, 4, 8, 64, 64, 70]
    exact = ShapeBuckets(length_step=1, max_length=40, pad_rows=False)  # TensorFlow's encode: no padding
    assert [exact.rows(n, 64) for n in (3, 33)] == [3, 33] and exact.pad([[2, 5, 3], [2, 3]], 8).shape == (2, 3)
    assert shapes.count(8) == 4 * 3  # rows 1, 2, 4, 8 x lengths 16, 32, 40
    padded = shapes.pad([[2, 5, 3], [2, 3]], batch_size=8)
    np.testing.assert_array_equal(padded, [[2, 5, 3] + [0] * 13, [2, 3] + [0] * 14])
    assert padded.dtype == np.int32


def test_padded_ids_are_keras_pad_sequences():
    rows = [[5, 1, 7], [], [9], [4, 4, 4, 4, 2]]
    for length in (5, 9):
        expected = keras.utils.pad_sequences(rows, maxlen=length, dtype="int32", padding="post")
        padded = padded_ids(rows, length)
        assert padded.dtype == np.int32
        np.testing.assert_array_equal(padded, expected)
    with pytest.raises(ValueError, match="row 3 has 5 ids, more than the padded length 4"):
        padded_ids(rows, 4)


def test_long_lengths_take_coarser_buckets_of_bounded_padding():
    """Past 512 tokens the step doubles with each doubling of the length: 80 buckets up to
    4096 (256 at a step of 16), none padding a length by more than 1/16."""
    shapes = ShapeBuckets(length_step=16, max_length=4096)
    lengths = sorted({shapes.length(n) for n in range(1, 4097)})
    assert len(lengths) == 32 + 16 * 3 and shapes.count(1) == 80
    assert [shapes.length(n) for n in (512, 513, 1024, 1025, 2049, 4000)] == [512, 544, 1024, 1088, 2176, 4096]
    assert all(shapes.length(n) >= n and shapes.length(n) - n <= max(15, n / 16) for n in range(1, 4097))
    assert ShapeBuckets(length_step=1, max_length=4096).length(1025) == 1025  # no padding stays none


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = write_model_dir(str(tmp_path_factory.mktemp("model")), TINY_CONFIG, seed=3)
    return SimBERT.from_pretrained(directory, max_tokens=TINY_CONFIG["max_position_embeddings"])


def test_encode_on_buckets_equals_each_text_alone(model):
    """Texts of 1 to 38 tokens: vectors equal the pooled [CLS] of each text unpadded
    (1e-5), and encode compiles one program on TensorFlow (a signature of unknown
    dimensions), one per distinct padded shape on JAX, at most the bucket count."""
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, 90, length)) for length in range(1, 39)]
    vectors = model.encode(texts, batch_size=8, normalize=False)
    for text, vector in zip(texts, vectors):
        token_ids = np.array([model.tokenizer.encode(text)[0]], "int32")
        alone = model.backbone.predict([token_ids, np.zeros_like(token_ids)], verbose=0)[0]
        np.testing.assert_allclose(vector, alone[0], atol=1e-5, rtol=0)
    order = np.argsort([len(model.tokenizer.encode(t)[0]) for t in texts], kind="stable")
    shapes = {model.shapes.pad([model.tokenizer.encode(texts[i])[0] for i in order[s:s + 8]], 8).shape
              for s in range(0, len(texts), 8)}
    expected = 1 if keras.backend.backend() == "tensorflow" else len(shapes)
    assert model.compiled_programs == expected <= model.shapes.count(8)
    model.encode(texts[::-1], batch_size=8)  # the same shapes again: nothing new compiles
    assert model.compiled_programs == expected


def test_threads_calling_encode_first_compile_once(tmp_path, caplog):
    """A threaded service's first requests: 8 threads call `encode` and `gen_synonyms` on
    a fresh model at once. Each gets the results of a call alone, the programs are those
    of one call, and TensorFlow does not warn of retracing (it counted calls that waited
    for another thread's first trace as traces of their own)."""
    directory = write_model_dir(str(tmp_path), TINY_CONFIG, seed=3)
    texts = [f"w{i} w{i + 1} w{i + 2}" for i in range(16)]
    alone = SimBERT.from_pretrained(directory, max_tokens=20, compilation_cache=None)
    expected = alone.encode(texts, batch_size=16), alone.gen_synonyms(texts[0], n=8, k=4, seed=1, with_scores=True)
    model = SimBERT.from_pretrained(directory, max_tokens=20, compilation_cache=None)
    with caplog.at_level(logging.WARNING, logger="tensorflow"), ThreadPoolExecutor(8) as threads:
        results = list(threads.map(lambda _: (model.encode(texts, batch_size=16),
                                              model.gen_synonyms(texts[0], n=8, k=4, seed=1, with_scores=True)),
                                   range(8)))
    for vectors, synonyms in results:
        np.testing.assert_allclose(vectors, expected[0], atol=1e-6, rtol=0)
        assert [text for text, _ in synonyms] == [text for text, _ in expected[1]]
        np.testing.assert_allclose([score for _, score in synonyms], [score for _, score in expected[1]], atol=1e-6)
    assert model.compiled_programs == alone.compiled_programs
    assert "retracing" not in caplog.text
