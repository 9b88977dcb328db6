"""An index that outgrows memory: written in chunks, appended to, loaded memory-mapped with
its texts on disk, searched exactly in chunks or through a stored faiss IVF-PQ index."""

import os
import sys

import numpy as np
import pytest

from helpers import TINY_CONFIG, lock_held_elsewhere, write_model_dir
from simbert.api import SimBERT
from simbert.cli import main, one_line
from simbert.retrieval import IndexWriter, SimilarityIndex, TextStore

TEXTS = [f"w{i} w{i + 1} w{(3 * i) % 90 + 5}" for i in range(5, 45)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = write_model_dir(str(tmp_path_factory.mktemp("indexing") / "model"), TINY_CONFIG)
    return SimBERT.from_pretrained(directory, max_tokens=16, compilation_cache=None)


def clustered(count, dimension, seed=0):
    """Unit vectors around 50 centres (texts are their row numbers)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dimension))
    vectors = centres[rng.integers(0, 50, count)] + 0.5 * rng.normal(size=(count, dimension))
    return [str(i) for i in range(count)], (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("float32")


def test_written_in_chunks_equals_built_in_memory(model, tmp_path, monkeypatch):
    encoded = []
    encode = model.encode

    def recording(texts, **options):
        encoded.append(len(texts))
        return encode(texts, **options)

    monkeypatch.setattr(model, "encode", recording)
    index = model.write_index(iter(TEXTS), len(TEXTS), tmp_path / "index", chunk_size=7, dtype="float16")
    assert encoded == [7, 7, 7, 7, 7, 5]  # one chunk of vectors in memory at a time
    monkeypatch.undo()
    assert isinstance(index.vectors, np.memmap) and isinstance(index.texts, TextStore)
    in_memory = model.make_index(TEXTS, dtype="float16")
    assert index.texts == TEXTS
    # Equal up to float16's last bit: on JAX chunks pad to other batch shapes, whose
    # programs may round the float32 vectors differently in their last bits.
    np.testing.assert_allclose(np.asarray(index.vectors, "float32"), np.asarray(in_memory.vectors, "float32"),
                               rtol=2 ** -10, atol=0)
    queries = model.encode(TEXTS[:5])
    found, expected = index.search(queries, 3), in_memory.search(queries, 3)
    assert [[text for text, _ in row] for row in found] == [[text for text, _ in row] for row in expected]
    np.testing.assert_allclose([[score for _, score in row] for row in found],
                               [[score for _, score in row] for row in expected], atol=1e-3)


def test_append_extends_the_index_in_order(model, tmp_path):
    model.write_index(iter(TEXTS[:25]), 25, tmp_path / "index", chunk_size=10)
    index = model.write_index(iter(TEXTS[25:]), len(TEXTS) - 25, tmp_path / "index", chunk_size=10, append=True)
    assert len(index) == len(TEXTS) and index.texts == TEXTS
    np.testing.assert_allclose(np.asarray(index.vectors), model.make_index(TEXTS).vectors, atol=1e-6)
    other = SimBERT.from_pretrained(write_model_dir(str(tmp_path / "other"), TINY_CONFIG, seed=1), max_tokens=16,
                                    compilation_cache=None)
    with pytest.raises(ValueError, match="rebuild the index with this model"):
        other.write_index(iter(["w1"]), 1, tmp_path / "index", append=True)
    assert len(SimilarityIndex.load(tmp_path / "index")) == len(TEXTS)  # refused before anything was written


def test_a_second_writer_is_refused_while_an_append_runs(model, tmp_path, monkeypatch):
    """Two appends at once kept only one's texts; now the second is refused naming the
    first, and run again after it, every text is kept."""
    import threading

    from simbert.retrieval import IndexInUse

    directory = tmp_path / "index"
    model.write_index(iter(TEXTS[:10]), 10, directory)
    encoding, finish = threading.Event(), threading.Event()
    encode = model.encode

    def slow_encode(texts, **options):
        encoding.set()
        assert finish.wait(60)
        return encode(texts, **options)

    monkeypatch.setattr(model, "encode", slow_encode)
    first = threading.Thread(target=model.write_index, args=(iter(TEXTS[10:25]), 15, directory),
                             kwargs={"append": True})
    first.start()
    assert encoding.wait(60)
    monkeypatch.setattr(model, "encode", encode)
    for write in (lambda: model.write_index(iter(TEXTS[25:]), len(TEXTS) - 25, directory, append=True),
                  lambda: model.write_index(iter(TEXTS), len(TEXTS), directory)):
        with pytest.raises(IndexInUse, match=rf"being written by another process \(PID {os.getpid()}, lock file "
                                             rf"{directory}\.lock\)"):
            write()
    finish.set()
    first.join(60)
    assert os.listdir(tmp_path) == ["index"]  # the lock file goes with its writer
    assert model.write_index(iter(TEXTS[25:]), len(TEXTS) - 25, directory, append=True).texts == TEXTS


def test_a_failed_faiss_build_leaves_the_old_index_and_no_temporary_files(model, tmp_path, monkeypatch):
    model.write_index(iter(TEXTS[:10]), 10, tmp_path / "index")

    def failing(self, seed=0):
        raise RuntimeError("faiss ran out of memory")

    monkeypatch.setattr(SimilarityIndex, "build_faiss", failing)
    with pytest.raises(RuntimeError, match="faiss ran out of memory"):
        model.write_index(iter(TEXTS), len(TEXTS), tmp_path / "index", backend="faiss")
    assert sorted(os.listdir(tmp_path)) == ["index"]
    assert SimilarityIndex.load(tmp_path / "index").texts == TEXTS[:10]


def test_a_missing_faiss_fails_before_any_text_is_encoded(model, tmp_path, monkeypatch):
    def encode(texts, **options):
        raise AssertionError("encoded before finding that faiss is missing")

    monkeypatch.setattr(model, "encode", encode)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError) as missing:
        model.write_index(iter(TEXTS), len(TEXTS), tmp_path / "index", backend="faiss")
    assert missing.value.name == "faiss" and os.listdir(tmp_path) == []
    assert one_line(missing.value) == ("this command needs faiss, which simbert installs as an option: pip install "
                                       "'simbert[faiss]' (from a checkout: pip install -e '.[faiss]')")


def test_cli_index_and_append(trained_tiny, tmp_path, capsys):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("花呗怎么还款\n信用卡怎么提高额度\n", encoding="utf-8")
    second.write_text("明天北京会下雨吗\n", encoding="utf-8")
    assert main(["index", trained_tiny, "--input", str(first), "--output", str(tmp_path / "index"),
                 "--no-compile-cache"]) == 0
    assert main(["index", trained_tiny, "--input", str(second), "--output", str(tmp_path / "index"), "--append",
                 "--no-compile-cache"]) == 0
    assert SimilarityIndex.load(tmp_path / "index").texts == ["花呗怎么还款", "信用卡怎么提高额度", "明天北京会下雨吗"]
    # An append keeps the index's settings: one given that differs is refused (was ignored).
    assert main(["index", trained_tiny, "--input", str(second), "--output", str(tmp_path / "index"), "--append",
                 "--dtype", "float16", "--no-compile-cache"]) == 1
    assert (f"simbert: error: dtype 'float16' differs from the index in {tmp_path / 'index'} (dtype 'float32'); an "
            f"append keeps the index's settings: leave dtype out, or rebuild the index without appending"
            in capsys.readouterr().err)
    assert main(["index", trained_tiny, "--input", str(second), "--output", str(tmp_path / "index"), "--append",
                 "--dtype", "float32", "--backend", "exact", "--no-compile-cache"]) == 0
    index = SimilarityIndex.load(tmp_path / "index")
    assert len(index) == 4 and index.dtype == "float32"


def test_cli_index_refused_while_another_process_writes_it(trained_tiny, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("花呗怎么还款\n", encoding="utf-8")
    output = tmp_path / "index"
    assert main(["index", trained_tiny, "--input", str(texts), "--output", str(output), "--no-compile-cache"]) == 0
    with lock_held_elsewhere("simbert.retrieval.IndexLock", output) as holder:
        capsys.readouterr()
        assert main(["index", trained_tiny, "--input", str(texts), "--output", str(output), "--append",
                     "--no-compile-cache"]) == 1
        assert (f"simbert: error: the index {output} is being written by another process (PID {holder.pid}"
                in capsys.readouterr().err)
    assert main(["index", trained_tiny, "--input", str(texts), "--output", str(output), "--append",
                 "--no-compile-cache"]) == 0  # a killed writer's lock is taken over
    assert SimilarityIndex.load(output).texts == ["花呗怎么还款", "花呗怎么还款"]


def test_exact_search_over_a_memory_mapped_float16_matrix(tmp_path):
    texts, vectors = clustered(5000, 32, seed=1)
    with IndexWriter(tmp_path / "index", {"dimension": 32, "dtype": "float16", "backend": "exact"}, 5000) as writer:
        for start in range(0, 5000, 1000):
            writer.add(texts[start:start + 1000], vectors[start:start + 1000])
    index = SimilarityIndex.load(tmp_path / "index")
    index.chunk_size = 777  # chunk boundaries inside the matrix
    queries = vectors[:20] + 0.1
    expected = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True))
                          @ vectors.astype("float16").astype("float32").T, axis=1, kind="stable")[:, :5]
    found = index.search(queries, 5)
    assert [[int(text) for text, _ in row] for row in found] == expected.tolist()


def test_ivfpq_recall_and_a_stored_faiss_index(tmp_path, monkeypatch):
    texts, vectors = clustered(20000, 64, seed=2)
    queries = vectors[:200] + 0.05 * np.random.default_rng(3).normal(size=(200, 64)).astype("float32")
    exact = SimilarityIndex(64)
    exact.add(texts, vectors)
    meta = {"dimension": 64, "dtype": "float16", "backend": "faiss", "faiss_index": "ivfpq"}
    with IndexWriter(tmp_path / "index", meta, len(texts)) as writer:
        writer.add(texts, vectors)
    monkeypatch.setattr(SimilarityIndex, "build_faiss", lambda self: pytest.fail("the stored index is read"))
    approximate = SimilarityIndex.load(tmp_path / "index")
    assert approximate._faiss.ntotal == 20000 and approximate._faiss.code_size == 8  # 64 / 8 one-byte codes
    hits = sum(len({t for t, _ in a} & {t for t, _ in b})
               for a, b in zip(exact.search(queries, 10), approximate.search(queries, 10)))
    print(f"IVF-PQ recall@10 with exact re-ranking: {hits / 2000:.3f}")
    assert hits / 2000 > 0.8


def test_concurrent_searches_read_their_own_texts(tmp_path):
    """8 threads x 1,000 searches of a loaded index (texts read from disk) return exactly
    the serial results: reads take no shared file position."""
    from concurrent.futures import ThreadPoolExecutor

    # Texts of different lengths, so a read at another thread's position would show.
    count, dimension = 3000, 16
    _, vectors = clustered(count, dimension, seed=3)
    texts = [f"文本{i}" + "长" * (i % 17) for i in range(count)]
    written = SimilarityIndex(dimension)
    written.add(texts, vectors)
    written.save(tmp_path / "index")
    index = SimilarityIndex.load(tmp_path / "index")
    assert isinstance(index.texts, TextStore)
    queries = np.random.default_rng(4).normal(size=(8000, dimension)).astype("float32")
    serial = [index.search(query, 5)[0] for query in queries]

    def search_rows(thread):
        return [index.search(query, 5)[0] for query in queries[thread::8]]

    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(search_rows, range(8)))
    for thread in range(8):
        assert parallel[thread] == serial[thread::8]
    assert index.texts[-1] == texts[-1] and index.texts[5:8] == texts[5:8]
    torn = TextStore(index.texts.path, np.array([0, 40, 20], "int64"))  # offsets that do not increase
    with pytest.raises(ValueError, match=r"line 2: its byte offsets 40\.\.20 in the offsets file do not increase"):
        torn[1]
    with pytest.raises(IndexError):
        index.texts[count]
