"""Sentence vectors: l2-normalisation, BERT-whitening, and search over l2-normalised
vectors, exact (numpy, chunked) or faiss.

Scores are cosine similarities: `score(q, x) = q . x` with `|q| = |x| = 1`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

VECTORS_FILE = "vectors.npy"
TEXTS_FILE = "texts.jsonl"
META_FILE = "index.json"


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
        with np.load(path, allow_pickle=False) as saved:
            return cls(saved["mean"], saved["transform"])


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


class SimilarityIndex:
    """Texts with their l2-normalised vectors, searched by cosine similarity.

    Args:
        dimension: vector width.
        dtype: "float32", or "float16" to halve memory (scores computed in float32 per chunk).
        backend: "exact" (matrix product + partial sort, in chunks of `chunk_size` rows,
            so 1M x 768 fits in memory) or "faiss" (`faiss_index` "hnsw" or "ivf").
        model_name: recorded in the metadata; loading checks the dimension.

    Example:
        >>> index = SimilarityIndex(2)
        >>> index.add(["a", "b"], np.array([[1, 0], [0, 1]]))
        >>> index.search(np.array([[1, 0.1]]), 1)[0][0][0]
        'a'
    """

    def __init__(self, dimension: int, dtype: str = "float32", backend: str = "exact",
                 model_name: str = "", faiss_index: str = "hnsw", chunk_size: int = 65536):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype should be 'float32' or 'float16', got {dtype!r}")
        if backend not in ("exact", "faiss"):
            raise ValueError(f"backend should be 'exact' or 'faiss', got {backend!r}")
        self.dimension = dimension
        self.dtype = dtype
        self.backend = backend
        self.model_name = model_name
        self.faiss_index = faiss_index
        self.chunk_size = chunk_size
        self.texts: list[str] = []
        self._chunks: list[np.ndarray] = []
        self._vectors: np.ndarray | None = None
        self._faiss = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = (np.concatenate(self._chunks) if self._chunks
                             else np.zeros((0, self.dimension), self.dtype))
            self._chunks = [self._vectors]
        return self._vectors

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Add texts and their vectors (normalised here)."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension or len(vectors) != len(texts):
            raise ValueError(f"expected {len(texts)} vectors of dimension {self.dimension}, got shape {vectors.shape}")
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
            chunk = vectors[start:start + self.chunk_size].astype("float32", copy=False)
            indices, scores = top_n(queries @ chunk.T, topn)
            merged_indices = np.concatenate([best_indices, indices + start], axis=1)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            order, best_scores = top_n(merged_scores, topn)
            best_indices = np.take_along_axis(merged_indices, order, axis=1)
        return best_indices, best_scores

    def _faiss_search(self, queries: np.ndarray, topn: int):
        import faiss

        if self._faiss is None:
            vectors = np.ascontiguousarray(self.vectors, dtype="float32")
            if self.faiss_index == "hnsw":
                index = faiss.IndexHNSWFlat(self.dimension, 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = 128
            elif self.faiss_index == "ivf":
                lists = max(1, min(4096, int(np.sqrt(len(vectors)))))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dimension), self.dimension, lists,
                                           faiss.METRIC_INNER_PRODUCT)
                index.train(vectors)
                index.nprobe = max(1, lists // 8)
            else:
                raise ValueError(f"faiss_index should be 'hnsw' or 'ivf', got {self.faiss_index!r}")
            index.add(vectors)
            self._faiss = index
        scores, indices = self._faiss.search(np.ascontiguousarray(queries), min(topn, len(self)))
        return indices, scores

    def save(self, directory: str | os.PathLike) -> None:
        """vectors.npy, texts.jsonl (one JSON string a line) and index.json (metadata)."""
        os.makedirs(directory, exist_ok=True)
        np.save(os.path.join(directory, VECTORS_FILE), self.vectors)
        with open(os.path.join(directory, TEXTS_FILE), "w", encoding="utf-8") as writer:
            for text in self.texts:
                writer.write(json.dumps(text, ensure_ascii=False) + "\n")
        meta = {"dimension": self.dimension, "dtype": self.dtype, "backend": self.backend,
                "model_name": self.model_name, "faiss_index": self.faiss_index, "size": len(self)}
        with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as writer:
            json.dump(meta, writer, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike, expected_dimension: int | None = None) -> "SimilarityIndex":
        """Load a saved index; refuse one whose dimension differs from `expected_dimension`."""
        meta_path = os.path.join(directory, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{directory} holds no {META_FILE}; not a saved index")
        with open(meta_path, encoding="utf-8") as reader:
            meta = json.load(reader)
        if expected_dimension is not None and meta["dimension"] != expected_dimension:
            raise ValueError(f"index {directory} was built with vectors of dimension {meta['dimension']} "
                             f"(model {meta.get('model_name') or 'unknown'}), but this model gives "
                             f"{expected_dimension}; rebuild the index with this model")
        index = cls(meta["dimension"], meta["dtype"], meta["backend"], meta.get("model_name", ""),
                    meta.get("faiss_index", "hnsw"))
        vectors = np.load(os.path.join(directory, VECTORS_FILE), allow_pickle=False)
        with open(os.path.join(directory, TEXTS_FILE), encoding="utf-8") as reader:
            texts = [json.loads(line) for line in reader]
        if vectors.shape != (len(texts), meta["dimension"]):
            raise ValueError(f"{directory}: {VECTORS_FILE} has shape {vectors.shape} but there are "
                             f"{len(texts)} texts of dimension {meta['dimension']}")
        index.texts = texts
        index._chunks = [vectors.astype(index.dtype, copy=False)]
        return index


def read_lines(path: str) -> Iterable[str]:
    """Non-empty stripped lines of a UTF-8 text file (BOM tolerated)."""
    with open(path, encoding="utf-8-sig") as reader:
        for line in reader:
            line = line.strip()
            if line:
                yield line
