"""An index of millions of vectors on one machine: written in chunks, loaded memory-mapped,
searched exactly (chunked float16) and through faiss IVF-PQ with exact re-ranking of
10, 50 or 200 candidates a result.

    python -m benchmarks.index_scale --sizes 1000000 10000000 [--dimension 256] [--queries 100]

Synthetic unit vectors around 10,000 centres (whitened SimBERT vectors at `--dim 256`
have this width), texts "row <i>". Per size: write time and disk use, IVF-PQ build time,
the process's private memory (RssAnon; the memory-mapped matrix is file cache, RssFile),
query latency, and IVF-PQ's recall@10 against exact search on the same queries.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import machine_line
from simbert.retrieval import IndexWriter, SimilarityIndex

CHUNK = 262_144


def memory_mb() -> dict:
    """RssAnon (private) and RssFile (mapped files) of this process, in MB."""
    with open("/proc/self/status") as reader:
        fields = dict(line.split(":", 1) for line in reader)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile")}


def synthetic_chunks(count: int, dimension: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10_000, dimension)).astype("float32")
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        vectors = centres[rng.integers(0, len(centres), size)] + 0.6 * rng.normal(size=(size, dimension)).astype(
            "float32")
        yield [f"row {i}" for i in range(start, start + size)], vectors


def directory_mb(path: str) -> dict:
    return {name: os.path.getsize(os.path.join(path, name)) / 2**20 for name in sorted(os.listdir(path))}


def measure(size: int, dimension: int, queries: int, work: str) -> dict:
    result = {"vectors": size, "dimension": dimension}
    for kind in ("exact", "ivfpq"):
        path = os.path.join(work, f"{kind}-{size}")
        meta = {"dimension": dimension, "dtype": "float16", "backend": "exact" if kind == "exact" else "faiss",
                "faiss_index": "ivfpq"}
        started = time.perf_counter()
        with IndexWriter(path, meta, size) as writer:
            for texts, vectors in synthetic_chunks(size, dimension):
                writer.add(texts, vectors)
        result[f"{kind}_write_s"] = round(time.perf_counter() - started, 1)
        result[f"{kind}_files_mb"] = {k: round(v, 1) for k, v in directory_mb(path).items()}
    rng = np.random.default_rng(1)
    sample = rng.choice(size, queries, replace=False)
    exact = SimilarityIndex.load(os.path.join(work, f"exact-{size}"))
    query_vectors = np.asarray(exact.vectors[np.sort(sample)], "float32") + 0.05 * rng.normal(
        size=(queries, dimension)).astype("float32")
    started = time.perf_counter()
    truth = exact.search(query_vectors, 10)
    result["exact_ms_per_query"] = round(1000 * (time.perf_counter() - started) / queries, 2)
    result["exact_memory_mb"] = {k: round(v) for k, v in memory_mb().items()}
    del exact
    started = time.perf_counter()
    approximate = SimilarityIndex.load(os.path.join(work, f"ivfpq-{size}"))
    result["ivfpq_load_s"] = round(time.perf_counter() - started, 1)
    for rerank in (10, 50, 200):  # candidates re-scored exactly, per result
        approximate.RERANK = rerank
        started = time.perf_counter()
        found = approximate.search(query_vectors, 10)
        result[f"ivfpq_rerank{rerank}_ms_per_query"] = round(1000 * (time.perf_counter() - started) / queries, 2)
        hits = sum(len({t for t, _ in a} & {t for t, _ in b}) for a, b in zip(truth, found))
        result[f"ivfpq_rerank{rerank}_recall_at_10"] = round(hits / (10 * queries), 3)
    result["ivfpq_memory_mb"] = {k: round(v) for k, v in memory_mb().items()}
    result["ivfpq_lists"], result["ivfpq_nprobe"] = approximate._faiss.nlist, approximate._faiss.nprobe
    result["ivfpq_code_bytes"] = approximate._faiss.code_size
    shutil.rmtree(os.path.join(work, f"exact-{size}"))
    shutil.rmtree(os.path.join(work, f"ivfpq-{size}"))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dimension", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--work", help="directory for the index files (default: a temporary one)")
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for size in args.sizes:
            print(json.dumps(measure(size, args.dimension, args.queries, work)), flush=True)


if __name__ == "__main__":
    main()
