"""most_similar search: latency, memory and recall@10 of SimilarityIndex backends over
100k and 1M vectors of dimension 768 (SimBERT base), one run.

    python -m benchmarks.retrieval_speed [--sizes 100000 1000000] [--queries 100]

Vectors are synthetic but clustered like sentence embeddings (a mixture of 2000 Gaussian
clusters); queries are perturbed corpus vectors. Recall@10 is measured against exact
float32 search. Latency: one query alone, and per query within a batch of `--queries`.
"""

import argparse
import time

import numpy as np

from benchmarks.common import machine_line
from simbert.retrieval import SimilarityIndex

DIMENSION = 768


def clustered_vectors(count, rng, clusters=2000):
    centres = rng.standard_normal((clusters, DIMENSION), dtype="float32")
    vectors = np.empty((count, DIMENSION), "float32")
    for start in range(0, count, 100_000):
        stop = min(start + 100_000, count)
        labels = rng.integers(0, clusters, stop - start)
        vectors[start:stop] = centres[labels] + 0.7 * rng.standard_normal((stop - start, DIMENSION), dtype="float32")
    return vectors


def memory_bytes(index):
    if index.backend == "faiss":
        import faiss

        return faiss.serialize_index(index._faiss).nbytes
    return index.vectors.nbytes


def measure(index, queries, truth):
    index.search(queries[:1], 10)  # builds a faiss index on first use
    start = time.perf_counter()
    for query in queries[:10]:
        index.search(query[None], 10)
    single = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    results = index.search(queries, 10)
    batched = (time.perf_counter() - start) / len(queries)
    found = [{text for text, _ in row} for row in results]
    recall = np.mean([len(f & t) / 10 for f, t in zip(found, truth)])
    return single, batched, recall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    print(machine_line(f", CPU only; dimension {DIMENSION}"))
    print("| vectors | backend | build s | memory MiB | one query ms | per query in a batch ms | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        rng = np.random.default_rng(0)
        vectors = clustered_vectors(size, rng)
        texts = [str(i) for i in range(size)]
        queries = vectors[rng.integers(0, size, args.queries)] + 0.3 * rng.standard_normal(
            (args.queries, DIMENSION), dtype="float32")
        truth = None
        for name, options in [("exact float32", {}), ("exact float16", {"dtype": "float16"}),
                              ("faiss HNSW32", {"backend": "faiss", "faiss_index": "hnsw"}),
                              ("faiss IVF", {"backend": "faiss", "faiss_index": "ivf"})]:
            if name == "faiss HNSW32" and size > 200_000:
                continue  # building HNSW over 1M x 768 on 2 cores takes too long for this run
            start = time.perf_counter()
            index = SimilarityIndex(DIMENSION, **options)
            index.add(texts, vectors)
            if truth is None:
                truth = [{t for t, _ in row} for row in index.search(queries, 10)]
            index.search(queries[:1], 1)
            build = time.perf_counter() - start
            single, batched, recall = measure(index, queries, truth)
            print(f"| {size:,} | {name} | {build:.1f} | {memory_bytes(index) / 2**20:.0f} | {single * 1e3:.1f} | "
                  f"{batched * 1e3:.2f} | {recall:.3f} |", flush=True)
            del index


if __name__ == "__main__":
    main()
