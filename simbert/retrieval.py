"""Sentence vectors: l2-normalisation, BERT-whitening, and search over l2-normalised
vectors, exact (numpy, chunked) or faiss.

Scores are cosine similarities: `score(q, x) = q . x` with `|q| = |x| = 1`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from simbert.errors import FileFormatError, unreadable

logger = logging.getLogger(__name__)

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


class SimilarityIndex:
    """Texts with their l2-normalised vectors, searched by cosine similarity.

    Args:
        dimension: vector width.
        dtype: "float32", or "float16" to halve memory (scores computed in float32 per chunk).
        backend: "exact" (matrix product + partial sort, in chunks of `chunk_size` rows,
            so 1M x 768 fits in memory) or "faiss" (`faiss_index` "hnsw" or "ivf").
        model_name, model_fingerprint: the model that made the vectors (recorded in the
            metadata; `check_model` compares them with the model searching).

    Example:
        >>> index = SimilarityIndex(2)
        >>> index.add(["a", "b"], np.array([[1, 0], [0, 1]]))
        >>> index.search(np.array([[1, 0.1]]), 1)[0][0][0]
        'a'
    """

    def __init__(self, dimension: int, dtype: str = "float32", backend: str = "exact",
                 model_name: str = "", faiss_index: str = "hnsw", chunk_size: int = 65536,
                 model_fingerprint: str = ""):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype should be 'float32' or 'float16', got {dtype!r}")
        if backend not in ("exact", "faiss"):
            raise ValueError(f"backend should be 'exact' or 'faiss', got {backend!r}")
        self.dimension = dimension
        self.dtype = dtype
        self.backend = backend
        self.model_name = model_name
        self.model_fingerprint = model_fingerprint
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
        """vectors.npy, texts.jsonl (one JSON string a line) and index.json (metadata),
        written to a temporary directory that then replaces `directory` (an index
        already there is swapped out whole, so a crash leaves either the old index or the
        new one, never a mix). A directory that is not an index is refused."""
        directory = os.path.normpath(str(directory))
        if os.path.exists(directory) and not os.path.isfile(os.path.join(directory, META_FILE)) and os.listdir(
                directory):
            raise FileExistsError(f"{directory} exists and is not a simbert index (no {META_FILE}); "
                                  f"choose another output directory")
        parent, name = os.path.split(directory)
        temporary = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
        np.save(os.path.join(temporary, VECTORS_FILE), self.vectors)
        with open(os.path.join(temporary, TEXTS_FILE), "w", encoding="utf-8") as writer:
            for text in self.texts:
                writer.write(json.dumps(text, ensure_ascii=False) + "\n")
        meta = {"dimension": self.dimension, "dtype": self.dtype, "backend": self.backend,
                "model_name": self.model_name, "model_fingerprint": self.model_fingerprint,
                "faiss_index": self.faiss_index, "size": len(self)}
        with open(os.path.join(temporary, META_FILE), "w", encoding="utf-8") as writer:
            json.dump(meta, writer, indent=2)
        old = os.path.join(parent, f".{name}.old-{os.getpid()}")
        if os.path.exists(directory):
            os.replace(directory, old)
        os.replace(temporary, directory)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: str | os.PathLike, expected_dimension: int | None = None) -> "SimilarityIndex":
        """Load a saved index; refuse one whose dimension differs from `expected_dimension`,
        and any file that does not read or whose vectors are not finite unit vectors."""
        directory = str(directory)
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
            vectors = np.load(vectors_path, allow_pickle=False)
        except Exception as error:  # a torn or foreign file
            raise unreadable(vectors_path, "a .npy matrix of vectors", error) from error
        texts = list(read_json_strings(os.path.join(directory, TEXTS_FILE)))
        if vectors.shape != (len(texts), dimension):
            raise FileFormatError(vectors_path, f"has shape {vectors.shape} but the index has {len(texts)} texts "
                                                f"of dimension {dimension}")
        check_unit_vectors(vectors, vectors_path)
        index.texts = texts
        index._chunks = [vectors.astype(index.dtype, copy=False)]
        return index


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


def read_json_strings(path: str) -> Iterator[str]:
    """One JSON string a line (an index's texts.jsonl); a bad line raises naming it."""
    try:
        with open(path, encoding="utf-8") as reader:
            for number, line in enumerate(reader, 1):
                try:
                    text = json.loads(line)
                except json.JSONDecodeError as error:
                    raise FileFormatError(path, f"line {number} is not a JSON string ({error.msg})") from None
                if not isinstance(text, str):
                    raise FileFormatError(path, f"line {number} holds a {type(text).__name__}, expected a string")
                yield text
    except UnicodeDecodeError as error:
        raise FileFormatError(path, f"is not UTF-8 ({error.reason})") from None


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """`(line number, stripped text)` for every line of a UTF-8 text file (BOM tolerated),
    blank ones included; a line that is not UTF-8 raises naming the file and line."""
    with open(path, "rb") as reader:
        for number, raw in enumerate(reader, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise FileFormatError(path, f"line {number} is not UTF-8 ({error.reason} at byte {error.start}); "
                                            f"convert the file, e.g. iconv -f gbk -t utf-8") from None
            yield number, line.strip()


def read_lines(path: str) -> Iterable[str]:
    """Non-empty stripped lines of a UTF-8 text file (BOM tolerated)."""
    return (text for _, text in numbered_lines(path) if text)
