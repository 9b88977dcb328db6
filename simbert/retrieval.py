"""Sentence vectors: l2-normalisation, BERT-whitening, and search over l2-normalised
vectors, exact (numpy, chunked) or faiss.

Scores are cosine similarities: `score(q, x) = q . x` with `|q| = |x| = 1`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from simbert.atomic_files import StagedDirectory
from simbert.errors import FileFormatError, missing_path, unreadable
from simbert.file_locks import FileLock

logger = logging.getLogger(__name__)

VECTORS_FILE = "vectors.npy"
TEXTS_FILE = "texts.jsonl"
OFFSETS_FILE = "text_offsets.npy"  # byte offset of each line of texts.jsonl
FAISS_FILE = "faiss.index"
META_FILE = "index.json"
INDEX_SETTINGS = ("dtype", "backend", "faiss_index")  # what `SimilarityIndex` is built with, kept in index.json


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """`v / max(|v|, 1e-12)` per row, float32."""
    vectors = np.asarray(vectors, "float32")
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass
class Whitening:
    """BERT-whitening: `y = (x - mean) @ transform`, then l2-normalised.

    With `cov = (X - mean)^T (X - mean) / n = U diag(s) U^T`, `transform = U diag(s)^(-1/2)`
    (first `dim` columns), so the whitened vectors have identity covariance.
    """

    mean: np.ndarray
    transform: np.ndarray

    @property
    def dim(self) -> int:
        return self.transform.shape[1]

    def __call__(self, vectors: np.ndarray, normalize: bool = True) -> np.ndarray:
        whitened = ((np.asarray(vectors, "float64") - self.mean) @ self.transform).astype("float32")
        if normalize:
            return l2_normalize(whitened)
        return whitened

    def save(self, path: str) -> None:
        np.savez(path, mean=self.mean, transform=self.transform)

    @classmethod
    def load(cls, path: str) -> "Whitening":
        try:
            with np.load(path, allow_pickle=False) as saved:
                return cls(saved["mean"], saved["transform"])
        except Exception as error:  # BadZipFile, KeyError, a torn array
            raise unreadable(path, "a whitening .npz (mean, transform)", error) from error


def fit_whitening(vectors: np.ndarray, dim: int | None = None) -> Whitening:
    """Fit the whitening of `vectors` (rows), keeping `dim` dimensions (all if None)."""
    vectors = np.asarray(vectors, "float64")
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"fit_whitening needs at least two vectors (rows), got shape {vectors.shape}")
    if dim is not None and not 0 < dim <= vectors.shape[1]:
        raise ValueError(f"dim should be in 1..{vectors.shape[1]}, got {dim}")
    mean = vectors.mean(axis=0, keepdims=True)
    covariance = np.cov((vectors - mean).T, bias=True)
    u, s, _ = np.linalg.svd(covariance)
    transform = u / np.sqrt(np.maximum(s, 1e-12))
    return Whitening(mean, transform[:, :dim])


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the n largest scores per row, best first (partial sort)."""
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.zeros((len(scores), 0), "int64"), np.zeros((len(scores), 0), scores.dtype)
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


class TextStore(Sequence[str]):
    """The texts of an index's texts.jsonl, read from disk when asked for: only their
    byte offsets are held (8 bytes a text), so 10M texts cost 80 MB, not their size."""

    def __init__(self, path: str, offsets: np.ndarray):
        self.path = path
        self.offsets = offsets
        self._file = open(path, "rb")
        self._size = os.fstat(self._file.fileno()).st_size
        self._seek_lock = threading.Lock()  # only where os.pread is missing (Windows)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, IndexError past the end
        start = int(self.offsets[i])
        end = int(self.offsets[i + 1]) if i + 1 < len(self.offsets) else self._size
        if not 0 <= start < end:
            raise FileFormatError(self.path, f"line {i + 1}: its byte offsets {start}..{end} in the offsets file do "
                                             f"not increase (a torn or foreign index)")
        # One positioned read, no shared file position: safe from several threads.
        line = self._read_at(start, end - start)
        try:
            text = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FileFormatError(self.path, f"line {i + 1} is not a JSON string ({error})") from None
        if not isinstance(text, str):
            raise FileFormatError(self.path, f"line {i + 1} holds a {type(text).__name__}, expected a string")
        return text

    def _read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` (os.pread where the OS has it, else a locked seek + read)."""
        if hasattr(os, "pread"):
            return os.pread(self._file.fileno(), size, offset)
        with self._seek_lock:
            self._file.seek(offset)
            return self._file.read(size)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    @classmethod
    def open(cls, path: str, offsets_path: str, count: int) -> "TextStore":
        """The store of `path`, with the offsets the writer saved (checked against
        `count` and the file size), else found by reading the file once (every line is
        then checked to be a JSON string)."""
        if os.path.isfile(offsets_path):
            try:
                offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
            except Exception as error:  # a torn or foreign file
                raise unreadable(offsets_path, "a .npy of text offsets", error) from error
            if offsets.shape != (count,) or (count and int(offsets[-1]) >= os.path.getsize(path)):
                raise FileFormatError(offsets_path, f"holds offsets of shape {offsets.shape} that do not fit "
                                                    f"{count} texts in {path}")
            return cls(path, offsets)
        offsets, position = [], 0
        with open(path, "rb") as reader:
            for line in reader:
                offsets.append(position)
                position += len(line)
        store = cls(path, np.asarray(offsets, "int64"))
        for i in range(len(store)):
            store[i]  # noqa: B018 (reading checks the line)
        return store


class SimilarityIndex:
    """Texts with their l2-normalised vectors, searched by cosine similarity.

    Args:
        dimension: vector width.
        dtype: "float32", or "float16" to halve memory (scores computed in float32 per chunk).
        backend: "exact" (matrix product + partial sort, in chunks of `chunk_size` rows,
            so a memory-mapped matrix larger than memory is searched too) or "faiss"
            (`faiss_index` "hnsw", "ivf", or "ivfpq": product-quantised codes of
            `dimension / 8` bytes a vector, for tens of millions).
        model_name, model_fingerprint: the model that made the vectors (recorded in the
            metadata; `check_model` compares them with the model searching).

    A loaded index keeps its vectors memory-mapped and its texts on disk (`TextStore`).

    Example:
        >>> index = SimilarityIndex(2)
        >>> index.add(["a", "b"], np.array([[1, 0], [0, 1]]))
        >>> index.search(np.array([[1, 0.1]]), 1)[0][0][0]
        'a'
    """

    FAISS_KINDS = ("hnsw", "ivf", "ivfpq")
    RERANK = 50  # IVF-PQ candidates re-scored exactly, per result asked for (docs/benchmarks.md, "Index scale")

    def __init__(self, dimension: int, dtype: str = "float32", backend: str = "exact",
                 model_name: str = "", faiss_index: str = "hnsw", chunk_size: int = 65536,
                 model_fingerprint: str = ""):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype should be 'float32' or 'float16', got {dtype!r}")
        if backend not in ("exact", "faiss"):
            raise ValueError(f"backend should be 'exact' or 'faiss', got {backend!r}")
        if faiss_index not in self.FAISS_KINDS:
            raise ValueError(f"faiss_index should be one of {self.FAISS_KINDS}, got {faiss_index!r}")
        self.dimension = dimension
        self.dtype = dtype
        self.backend = backend
        self.model_name = model_name
        self.model_fingerprint = model_fingerprint
        self.faiss_index = faiss_index
        self.chunk_size = chunk_size
        self.texts: Sequence[str] = []
        self._chunks: list[np.ndarray] = []
        self._vectors: np.ndarray | None = None
        self._faiss = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def meta(self) -> dict:
        """index.json's contents."""
        return {"dimension": self.dimension, "dtype": self.dtype, "backend": self.backend,
                "model_name": self.model_name, "model_fingerprint": self.model_fingerprint,
                "faiss_index": self.faiss_index, "size": len(self)}

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            if len(self._chunks) == 1:  # as it is: a memory-mapped matrix stays on disk
                self._vectors = self._chunks[0]
            else:
                self._vectors = (np.concatenate(self._chunks) if self._chunks
                                 else np.zeros((0, self.dimension), self.dtype))
            self._chunks = [self._vectors]
        return self._vectors

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Add texts and their vectors (normalised here), in memory; see `IndexWriter`
        for an index built or extended on disk."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension or len(vectors) != len(texts):
            raise ValueError(f"expected {len(texts)} vectors of dimension {self.dimension}, got shape {vectors.shape}")
        if not isinstance(self.texts, list):  # a loaded index's texts on disk: read in to grow
            self.texts = list(self.texts)
        self.texts.extend(texts)
        self._chunks.append(l2_normalize(vectors).astype(self.dtype))
        self._vectors = None
        self._faiss = None

    def search(self, query_vectors: np.ndarray, topn: int = 10) -> list[list[tuple[str, float]]]:
        """For each query vector, the `topn` most similar texts with cosine scores."""
        queries = l2_normalize(np.atleast_2d(query_vectors))
        if queries.shape[1] != self.dimension:
            raise ValueError(f"query vectors have dimension {queries.shape[1]}, the index {self.dimension}")
        if self.backend == "faiss":
            indices, scores = self._faiss_search(queries, topn)
        else:
            indices, scores = self._exact_search(queries, topn)
        return [[(self.texts[i], float(s)) for i, s in zip(row_i, row_s) if i >= 0]
                for row_i, row_s in zip(indices, scores)]

    def _exact_search(self, queries: np.ndarray, topn: int):
        best_indices = np.zeros((len(queries), 0), "int64")
        best_scores = np.zeros((len(queries), 0), "float32")
        vectors = self.vectors
        for start in range(0, len(vectors), self.chunk_size):
            chunk = np.asarray(vectors[start:start + self.chunk_size], "float32")
            indices, scores = top_n(queries @ chunk.T, topn)
            merged_indices = np.concatenate([best_indices, indices + start], axis=1)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            order, best_scores = top_n(merged_scores, topn)
            best_indices = np.take_along_axis(merged_indices, order, axis=1)
        return best_indices, best_scores

    def build_faiss(self, seed: int = 0):
        """The faiss index of the vectors, built chunk by chunk (a memory-mapped matrix is
        never copied whole): "hnsw" (graph, flat vectors), "ivf" (sqrt(n) lists, flat
        vectors) or "ivfpq" (sqrt(n) lists, `dimension / 8` one-byte codes a vector);
        the inverted-file kinds train on a sample of at most 256 rows a list."""
        faiss = faiss_module()
        vectors, dimension = self.vectors, self.dimension
        lists = max(1, min(65536, int(np.sqrt(len(vectors)))))
        if self.faiss_index == "hnsw":
            index = faiss.IndexHNSWFlat(dimension, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
        else:
            quantizer = faiss.IndexFlatIP(dimension)
            if self.faiss_index == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dimension, lists, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(quantizer, dimension, lists, pq_subquantizers(dimension), 8,
                                         faiss.METRIC_INNER_PRODUCT)
            sample = np.sort(np.random.default_rng(seed).choice(len(vectors), min(len(vectors), 256 * lists),
                                                                replace=False))
            index.train(np.ascontiguousarray(vectors[sample], "float32"))
            index.nprobe = max(1, lists // 8)
        for start in range(0, len(vectors), self.chunk_size):
            index.add(np.ascontiguousarray(vectors[start:start + self.chunk_size], "float32"))
        self._faiss = index
        return index

    def _faiss_search(self, queries: np.ndarray, topn: int):
        """faiss's nearest; IVF-PQ's `RERANK x topn` candidates (scored from lossy codes)
        are re-scored exactly from the stored vectors, a few rows read per query."""
        if self._faiss is None:
            self.build_faiss()
        if self.faiss_index != "ivfpq":
            scores, indices = self._faiss.search(np.ascontiguousarray(queries), min(topn, len(self)))
            return indices, scores
        _, candidates = self._faiss.search(np.ascontiguousarray(queries), min(self.RERANK * topn, len(self)))
        rows = np.where(candidates >= 0, candidates, 0)
        exact = np.einsum("qd,qkd->qk", queries, np.asarray(self.vectors[rows.ravel()], "float32").reshape(
            *rows.shape, self.dimension))
        exact = np.where(candidates >= 0, exact, -np.inf)
        order, scores = top_n(exact, topn)
        return np.take_along_axis(candidates, order, axis=1), scores

    def check_model(self, fingerprint: str, name: str = "", strict: bool = False) -> bool:
        """Whether the vectors come from the model with this fingerprint; when not, warn
        (or with `strict` raise): another model's vectors live in another space, and
        searching them gives meaningless scores. An index without a fingerprint passes."""
        if not self.model_fingerprint or self.model_fingerprint == fingerprint:
            return True
        message = (f"the index was built by model {self.model_name or '?'} (fingerprint {self.model_fingerprint}) "
                   f"but is searched with {name or '?'} (fingerprint {fingerprint}); its scores are not cosines "
                   f"of this model's vectors: rebuild the index with this model")
        if strict:
            raise ValueError(message)
        logger.warning("%s", message)
        return False

    def save(self, directory: str | os.PathLike) -> None:
        """Write the index to `directory` through an `IndexWriter` (a new directory
        swapped in whole; a directory that is not an index is refused), with the faiss
        index when one is built."""
        with IndexWriter(directory, self.meta, len(self)) as writer:
            for start in range(0, len(self), self.chunk_size):
                writer.add(self.texts[start:start + self.chunk_size],
                           self.vectors[start:start + self.chunk_size])
            writer.faiss = self._faiss

    @classmethod
    def load(cls, directory: str | os.PathLike, expected_dimension: int | None = None) -> "SimilarityIndex":
        """Load a saved index, its vectors memory-mapped and its texts left on disk;
        refuse one whose dimension differs from `expected_dimension`, and any file that
        does not read or whose vectors are not finite unit vectors."""
        directory = str(directory)
        if not os.path.exists(directory):
            raise missing_path("index directory", directory)
        meta_path = os.path.join(directory, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{directory} holds no {META_FILE}; not a saved index")
        try:
            with open(meta_path, encoding="utf-8") as reader:
                meta = json.load(reader)
            dimension, dtype = int(meta["dimension"]), meta["dtype"]
        except Exception as error:  # JSONDecodeError, a missing key, a non-number
            raise unreadable(meta_path, "index metadata with dimension and dtype", error) from error
        if expected_dimension is not None and dimension != expected_dimension:
            raise ValueError(f"index {directory} was built with vectors of dimension {dimension} "
                             f"(model {meta.get('model_name') or 'unknown'}), but this model gives "
                             f"{expected_dimension}; rebuild the index with this model")
        index = cls(dimension, dtype, meta.get("backend", "exact"), meta.get("model_name", ""),
                    meta.get("faiss_index", "hnsw"), model_fingerprint=meta.get("model_fingerprint", ""))
        vectors_path = os.path.join(directory, VECTORS_FILE)
        try:
            vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
        except Exception as error:  # a torn or foreign file
            raise unreadable(vectors_path, "a .npy matrix of vectors", error) from error
        if vectors.ndim != 2 or vectors.shape[1] != dimension or vectors.dtype != np.dtype(dtype):
            raise FileFormatError(vectors_path, f"holds {vectors.dtype} of shape {vectors.shape}; index.json says "
                                                f"{dtype} rows of dimension {dimension}")
        texts_path = os.path.join(directory, TEXTS_FILE)
        if not os.path.isfile(texts_path):
            raise FileNotFoundError(f"{directory} holds no {TEXTS_FILE}")
        if meta.get("texts_bytes") not in (None, os.path.getsize(texts_path)):
            raise FileFormatError(texts_path, f"has {os.path.getsize(texts_path)} bytes but {META_FILE} records "
                                              f"{meta['texts_bytes']}: it changed after the index was written")
        texts = TextStore.open(texts_path, os.path.join(directory, OFFSETS_FILE), len(vectors))
        if len(texts) != len(vectors):
            raise FileFormatError(vectors_path, f"has {len(vectors)} rows but {TEXTS_FILE} has {len(texts)} texts")
        check_unit_vectors(vectors, vectors_path)
        index.texts = texts
        index._chunks = [vectors]
        faiss_path = os.path.join(directory, FAISS_FILE)
        if index.backend == "faiss" and os.path.isfile(faiss_path):
            faiss = faiss_module()
            try:
                index._faiss = faiss.read_index(faiss_path)
            except RuntimeError as error:
                raise unreadable(faiss_path, "a faiss index", error) from error
            if index._faiss.ntotal != len(vectors):
                raise FileFormatError(faiss_path, f"holds {index._faiss.ntotal} vectors, the index {len(vectors)}")
        return index


def pq_subquantizers(dimension: int) -> int:
    """Product-quantiser parts for `dimension`: one a group of 8 dimensions (the largest
    divisor of `dimension` at most dimension / 8, faiss's usual trade-off)."""
    target = max(1, dimension // 8)
    return next(m for m in range(target, 0, -1) if dimension % m == 0)


class IndexInUse(RuntimeError):
    """Another live process is writing the index directory."""


class IndexLock(FileLock):
    """The lock of the one process writing an index directory: `<directory>.lock` beside
    it while it is written (not inside: a write replaces the directory whole). Taken by `IndexWriter`, or
    first by whoever reads the index it is about to extend (`SimBERT.write_index(append=True)`)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.normpath(str(directory))
        super().__init__(self.directory + ".lock", remove=True)

    def in_use(self, owner: str) -> IndexInUse:
        return IndexInUse(f"the index {self.directory} is being written by another process (PID {owner}, lock "
                          f"file {self.path}); wait for it to end, then run again (an --append then extends "
                          f"what it wrote)")


class IndexWriter:
    """Writes an index directory in chunks, holding one chunk at a time: vectors into a
    preallocated `vectors.npy` (memory-mapped), texts and their byte offsets streamed.
    The files go to a temporary directory that replaces `directory` whole when the
    writer closes (a crash or an error leaves the old index, or none, never a mix); a
    directory that is not an index is refused. The writer holds the directory's
    `IndexLock` until it closes (`lock`: one already taken, now the writer's to release),
    so a second writer is refused naming the first.

    Example:
        >>> with IndexWriter("index", {"dimension": 2, "dtype": "float32"}, total=2) as writer:
        ...     writer.add(["a", "b"], np.array([[1, 0], [0, 1]]))
    """

    def __init__(self, directory: str | os.PathLike, meta: dict, total: int, lock: IndexLock | None = None):
        directory = os.path.normpath(str(directory))
        self.lock = lock or IndexLock(directory)
        self.lock.acquire()
        try:
            self._open(directory, meta, total)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, directory: str, meta: dict, total: int) -> None:
        if os.path.exists(directory) and not os.path.isfile(os.path.join(directory, META_FILE)) and os.listdir(
                directory):
            raise FileExistsError(f"{directory} exists and is not a simbert index (no {META_FILE}); "
                                  f"choose another output directory")
        if meta.get("backend") == "faiss":
            faiss_module()  # a missing faiss fails now, not after every text is encoded
        self.directory = directory
        self.meta = {**meta, "size": total}
        self.total = total
        self.written = 0
        self.faiss = None
        self.staged = StagedDirectory(directory)
        self.temporary = self.staged.temporary
        self._vectors = np.lib.format.open_memmap(os.path.join(self.temporary, VECTORS_FILE), mode="w+",
                                                  dtype=meta["dtype"], shape=(total, meta["dimension"]))
        self._texts = open(os.path.join(self.temporary, TEXTS_FILE), "wb")
        self._offsets = np.zeros(total, "int64")

    def add(self, texts: Sequence[str], vectors: np.ndarray, normalized: bool = False) -> None:
        """Append texts and their vectors (normalised here, unless `normalized` says they
        are unit vectors already, such as another index's: then stored as they are)."""
        vectors = np.asarray(vectors)
        if vectors.shape != (len(texts), self.meta["dimension"]):
            raise ValueError(f"expected {len(texts)} vectors of dimension {self.meta['dimension']}, got shape "
                             f"{vectors.shape}")
        if self.written + len(texts) > self.total:
            raise ValueError(f"the writer was opened for {self.total} texts; {self.written + len(texts)} given")
        rows = vectors if normalized else l2_normalize(vectors)
        self._vectors[self.written:self.written + len(texts)] = rows.astype(self.meta["dtype"])
        for i, text in enumerate(texts):
            self._offsets[self.written + i] = self._texts.tell()
            self._texts.write((json.dumps(text, ensure_ascii=False) + "\n").encode("utf-8"))
        self.written += len(texts)

    def close(self) -> None:
        if self.written != self.total:
            raise ValueError(f"the writer was opened for {self.total} texts but {self.written} were written")
        self._vectors.flush()
        if self.meta.get("backend") == "faiss" and self.faiss is None:
            staged = SimilarityIndex(self.meta["dimension"], self.meta["dtype"], "faiss",
                                     faiss_index=self.meta.get("faiss_index", "hnsw"))
            staged._chunks = [self._vectors]
            self.faiss = staged.build_faiss()
        del self._vectors
        self._texts.close()
        np.save(os.path.join(self.temporary, OFFSETS_FILE), self._offsets)
        if self.faiss is not None:
            faiss_module().write_index(self.faiss, os.path.join(self.temporary, FAISS_FILE))
        meta = {**self.meta, "texts_bytes": os.path.getsize(os.path.join(self.temporary, TEXTS_FILE))}
        with open(os.path.join(self.temporary, META_FILE), "w", encoding="utf-8") as writer:
            json.dump(meta, writer, indent=2)
        self.staged.commit()
        self.lock.release()

    def abort(self) -> None:
        self._texts.close()
        self.staged.abort()
        self.lock.release()

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()  # e.g. building the faiss index failed: no temporary directory is left
            raise


def faiss_module():
    """The faiss package, an optional dependency (`pip install simbert[faiss]`)."""
    import faiss

    return faiss


def check_unit_vectors(vectors: np.ndarray, source: str, chunk_size: int = 65536, tolerance: float = 1e-2) -> None:
    """Every row finite with norm 1 (within float16's precision), checked in chunks."""
    for start in range(0, len(vectors), chunk_size):
        chunk = np.asarray(vectors[start:start + chunk_size], "float32")
        finite = np.isfinite(chunk).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], chunk, 0.0), axis=1)
        bad = np.flatnonzero(~finite | (np.abs(norms - 1.0) > tolerance))
        if len(bad):
            row = start + int(bad[0])
            what = "non-finite values" if not finite[bad[0]] else f"norm {norms[bad[0]]:.4g}"
            raise FileFormatError(source, f"row {row} has {what}; an index holds finite unit vectors "
                                          f"({len(bad)} bad rows in rows {start}..{start + len(chunk) - 1})")
