"""SimilarityIndex: exact search equals numpy brute force; fp16; faiss recall; save/load;
an index directory written whole or not at all, and its damaged or foreign files named."""

import json
import logging
import os

import numpy as np
import pytest

from simbert.atomic_files import is_leftover
from simbert.errors import FileFormatError
from simbert.retrieval import SimilarityIndex, top_n


def random_corpus(count, dimension, seed=0):
    rng = np.random.default_rng(seed)
    return [f"text {i}" for i in range(count)], rng.normal(size=(count, dimension)).astype("float32")


def brute_force(vectors, queries, topn):
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ v.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :topn]
    return order, np.take_along_axis(scores, order, axis=1)


def test_exact_search_equals_brute_force_across_chunks():
    texts, vectors = random_corpus(5000, 32)
    queries = np.random.default_rng(1).normal(size=(20, 32)).astype("float32")
    index = SimilarityIndex(32, chunk_size=777)  # chunk boundaries inside the corpus
    index.add(texts[:3000], vectors[:3000])
    index.add(texts[3000:], vectors[3000:])
    results = index.search(queries, topn=15)
    order, scores = brute_force(vectors, queries, 15)
    for row, result in enumerate(results):
        assert [t for t, _ in result] == [texts[i] for i in order[row]]
        np.testing.assert_allclose([s for _, s in result], scores[row], atol=1e-5)


def test_top_n_partial_sort():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    indices, values = top_n(scores, 2)
    assert indices.tolist() == [[1, 3], [2, 0]] and values.tolist() == [[0.9, 0.7], [0.8, 0.3]]
    assert top_n(scores, 10)[0].shape == (2, 4)


def test_float16_halves_memory_and_keeps_the_ranking():
    texts, vectors = random_corpus(4000, 64)
    exact, half = SimilarityIndex(64), SimilarityIndex(64, dtype="float16")
    exact.add(texts, vectors)
    half.add(texts, vectors)
    assert half.vectors.nbytes * 2 == exact.vectors.nbytes
    queries = vectors[:50] + 0.3 * np.random.default_rng(2).normal(size=(50, 64)).astype("float32")
    for a, b in zip(exact.search(queries, 10), half.search(queries, 10)):
        assert a[0][0] == b[0][0] and abs(a[0][1] - b[0][1]) < 2e-3
        assert len({t for t, _ in a} & {t for t, _ in b}) >= 9


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_recall_against_exact(kind):
    texts, vectors = random_corpus(20000, 64, seed=3)
    queries = vectors[:200] + 0.5 * np.random.default_rng(4).normal(size=(200, 64)).astype("float32")
    exact = SimilarityIndex(64)
    exact.add(texts, vectors)
    approximate = SimilarityIndex(64, backend="faiss", faiss_index=kind)
    approximate.add(texts, vectors)
    hits = 0
    for a, b in zip(exact.search(queries, 10), approximate.search(queries, 10)):
        hits += len({t for t, _ in a} & {t for t, _ in b})
    recall = hits / (10 * len(queries))
    print(f"faiss {kind} recall@10 against exact search: {recall:.3f}")
    assert recall > (0.9 if kind == "hnsw" else 0.6)


def test_save_load_round_trip_and_dimension_check(tmp_path):
    texts, vectors = random_corpus(300, 16)
    texts[5] = "含\n换行与\"引号\"的文本"
    index = SimilarityIndex(16, dtype="float16", model_name="tiny")
    index.add(texts, vectors)
    index.save(tmp_path / "index")
    loaded = SimilarityIndex.load(tmp_path / "index", expected_dimension=16)
    assert loaded.texts == texts and loaded.dtype == "float16" and loaded.model_name == "tiny"
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.search(vectors[5], 1)[0][0][0] == texts[5]
    with pytest.raises(ValueError, match="dimension 16 .*model tiny.*gives 32"):
        SimilarityIndex.load(tmp_path / "index", expected_dimension=32)
    with pytest.raises(FileNotFoundError, match="not a saved index"):
        SimilarityIndex.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^index directory {tmp_path / 'absent'} does not exist$"):
        SimilarityIndex.load(tmp_path / "absent")
    with pytest.raises(ValueError, match="dimension 16"):
        index.add(["x"], np.zeros((1, 8)))


TEXTS = ["w10 w11 w12", "w20 w21", "w30 w31 w32 w33"]


def test_an_index_write_killed_midway_leaves_the_old_index_whole(two_models, tmp_path, monkeypatch):
    model = two_models[0]
    model.make_index(TEXTS).save(tmp_path / "index")
    bigger = model.make_index(TEXTS[::-1] + ["w40 w41"])

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # as kill -9 would stop it: after the vectors, before the texts

    monkeypatch.setattr("simbert.retrieval.json.dumps", killed)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(tmp_path / "index")
    monkeypatch.undo()
    loaded = SimilarityIndex.load(tmp_path / "index")
    assert loaded.texts == TEXTS
    assert loaded.search(model.encode(["w20 w21"]), 1)[0][0][0] == "w20 w21"
    bigger.save(tmp_path / "index")  # the next write replaces it whole
    assert SimilarityIndex.load(tmp_path / "index").texts == TEXTS[::-1] + ["w40 w41"]
    assert sorted(os.listdir(tmp_path)) == ["index"] or all(is_leftover(name) for name in
                                                             sorted(os.listdir(tmp_path)) if name != "index")


def test_an_index_refuses_to_overwrite_a_directory_that_is_not_an_index(two_models, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a simbert index"):
        two_models[0].make_index(TEXTS).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_an_index_of_another_model_is_flagged(two_models, tmp_path, caplog):
    first, second = two_models
    first.make_index(TEXTS).save(tmp_path / "index")
    index = SimilarityIndex.load(tmp_path / "index")
    assert index.check_model(first.fingerprint, "first")
    with caplog.at_level(logging.WARNING):
        assert not index.check_model(second.fingerprint, "second")
    assert "rebuild the index with this model" in caplog.text
    with pytest.raises(ValueError, match=f"fingerprint {first.fingerprint}"):
        index.check_model(second.fingerprint, "second", strict=True)


@pytest.mark.parametrize("tamper, message", [
    (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 0, np.nan, v), "row 0 has non-finite values"),
    (lambda v: v * 1000, "row 0 has norm 1000"),
])
def test_tampered_index_vectors_are_refused(two_models, tmp_path, tamper, message):
    two_models[0].make_index(TEXTS).save(tmp_path / "index")
    path = tmp_path / "index" / "vectors.npy"
    np.save(path, tamper(np.load(path)).astype("float32"))
    with pytest.raises(FileFormatError, match=rf"vectors.npy: {message}"):
        SimilarityIndex.load(tmp_path / "index")


def test_a_bad_texts_line_is_named(two_models, tmp_path):
    two_models[0].make_index(TEXTS).save(tmp_path / "index")
    path = tmp_path / "index" / "texts.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == '"w20 w21"'
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n", encoding="utf-8")  # same size
    index = SimilarityIndex.load(tmp_path / "index")  # texts stay on disk: the line is read when needed
    with pytest.raises(FileFormatError, match=r"texts.jsonl: line 2 is not a JSON string"):
        index.search(two_models[0].encode(["w20 w21"]), 1)
    path.write_text("\n".join([lines[0], "{not json at all", lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(FileFormatError, match=r"texts.jsonl: has \d+ bytes but index.json records \d+"):
        SimilarityIndex.load(tmp_path / "index")
    # Without the writer's size and offsets (an index written by hand), the file is read through.
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    del meta["texts_bytes"]
    (tmp_path / "index" / "index.json").write_text(json.dumps(meta))
    os.remove(tmp_path / "index" / "text_offsets.npy")
    with pytest.raises(FileFormatError, match=r"texts.jsonl: line 2 is not a JSON string"):
        SimilarityIndex.load(tmp_path / "index")
