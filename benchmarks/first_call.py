"""The first call of a fresh JAX process with a warm compilation cache, with the stored
traces (`simbert.trace_store`) and with them removed: what keeping the traces saves.

    KERAS_BACKEND=jax python -m benchmarks.first_call [--data DATA_DIR] [--work WORK_DIR]
        [--layers 12] [--hidden 128] [--repeats 3]

A random BERT (HF directory, the simplified Chinese vocabulary; 12 layers at width 128 by
default, so that the host's work, not the arithmetic, sets the pace, as on a GPU). Each
measurement is its own process: `encode` of 4 x 256 AFQMC sentences (one length bucket
each, batch 128; first pass, steady pass and their difference, the host overhead),
`gen_synonyms(n=100, k=20)` (first call, steady), and a server's start
(`SimBERT.warm_up(64, (64, 10))`, what `simbert serve` runs before answering). One
process fills the cache first; then, per repeat, the processes run with the traces kept
and again with them removed first, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from benchmarks.common import (
    DATA,
    QUERY,
    ROOT,
    afqmc_path,
    read_sentences,
    run_child,
    simplified_vocab,
    timings,
    write_hf_directory,
)

TASKS = ("encode", "gen_synonyms", "warm_up")
BUCKETS = ((0, 16), (16, 32), (32, 48), (48, 64))


def bucketed_sentences(model, texts: list[str], per_bucket: int = 256) -> list[str]:
    """`per_bucket` texts of each length bucket of `BUCKETS` (tokens, [CLS] and [SEP] included)."""
    lengths = [len(model.tokenizer.encode(text, maxlen=64)[0]) for text in texts]
    chosen = []
    for low, high in BUCKETS:
        chosen += [text for text, length in zip(texts, lengths) if low < length <= high][:per_bucket]
    return chosen


def child(task: str, model_dir: str, cache: str, data: str) -> dict:
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(model_dir, max_tokens=64 if task == "encode" else 32, compilation_cache=cache)
    if task == "warm_up":
        start = time.perf_counter()
        programs = model.warm_up(64, (64, 10))
        return {"first_s": time.perf_counter() - start, "programs": programs}
    if task == "encode":
        texts = bucketed_sentences(model, read_sentences(afqmc_path(data), 8000))

        def call():
            model.encode(texts, batch_size=128)
    else:
        def call():
            model.gen_synonyms(QUERY, n=100, k=20)
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    steady, _ = timings(call, 3)
    return {"first_s": first, "steady_s": min(steady), "overhead_s": first - min(steady),
            "programs": model.compiled_programs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--work", default=os.path.join(ROOT, "outputs", "first_call"))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    model = {"hidden_size": args.hidden, "num_hidden_layers": args.layers,
             "num_attention_heads": max(1, args.hidden // 64), "intermediate_size": 4 * args.hidden}
    model_dir = write_hf_directory(os.path.join(args.work, f"hf_{args.layers}x{args.hidden}"), model,
                                   simplified_vocab(args.data))
    cache = os.path.join(args.work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    for task in TASKS:  # fills the cache: XLA's programs and the traces
        run_child("benchmarks.first_call", task, model_dir, cache, args.data)
    results = {(task, kept): [] for task in TASKS for kept in (True, False)}
    for _ in range(args.repeats):
        for kept in (True, False):
            if not kept:
                shutil.rmtree(os.path.join(cache, "traces"))
            for task in TASKS:
                results[task, kept].append(run_child("benchmarks.first_call", task, model_dir, cache, args.data))
    print(f"{args.layers} layers, width {args.hidden}; warm compilation cache; each value one fresh process")
    print("| call | traces | first s | host overhead s | steady s | programs |")
    print("|---|---|---|---|---|---|")
    for (task, kept), reports in results.items():
        def values(key, reports=reports):
            return ", ".join(f"{report[key]:.2f}" for report in reports) if key in reports[0] else ""

        print(f"| {task} | {'stored' if kept else 'removed'} | {values('first_s')} | {values('overhead_s')} | "
              f"{values('steady_s')} | {reports[0]['programs']} |")
    medians = {key: np.median([report["first_s"] for report in reports]) for key, reports in results.items()}
    for task in TASKS:
        print(f"{task}: first call {medians[task, False]:.2f} s -> {medians[task, True]:.2f} s (medians)")


if __name__ == "__main__":
    main()
