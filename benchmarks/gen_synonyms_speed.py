"""gen_synonyms speed against bert4keras, same weights, one run.

    python -m benchmarks.gen_synonyms_speed [--n 100] [--maxlen 32] [--repeats 3]
    python -m benchmarks.gen_synonyms_speed --end-to-end [--n 100] [--k 20]

Sampling: our KV-cached sampler against bert4keras' original
`AutoRegressiveDecoder.random_sample` (full recompute every step). End to end:
`SimBERT.gen_synonyms(text, n, k)` (sampling, dedupe, encoding the candidates, ranking)
against the original script's gen_synonyms on bert4keras, each side in a fresh process:
the first call (with an empty and with a warm compilation cache for ours) and the
median of later calls.

Model: 6 layers, hidden 384, 12 heads, FFN 1536, vocabulary 13685 (random weights,
written as a TF checkpoint that both sides load). Source: 16 tokens. Both sides draw n
samples with top-k 5 for `maxlen` steps (the end token is kept out, so that the work does
not depend on when random weights happen to end a sample).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import CJK_CONFIG, machine_line, median_seconds, run_child, write_random_model
from reference.invoke import run_job
from simbert.generation import CachedDecoder

END_ID = 3  # [SEP] of `cjk_vocabulary`
TEXT = "今天北京的天气怎么样"


def time_ours(model, source, n, maxlen, repeats):
    decoder = CachedDecoder(model, END_ID, max_source_len=len(source), max_target_len=maxlen)
    decoder.sample(source, n=n, topk=5, seed=0)  # compile
    times, lengths = [], []
    for seed in range(repeats):
        start = time.perf_counter()
        samples = decoder.sample(source, n=n, topk=5, seed=seed + 1)
        times.append(time.perf_counter() - start)
        lengths.append(float(np.mean([len(s) + (len(s) < maxlen) for s in samples])))
    return times, lengths


def time_bert4keras(directory, source, n, maxlen, repeats):
    result = run_job({"kind": "time_sample", "config": f"{directory}/bert_config.json",
                      "checkpoint": f"{directory}/bert_model.ckpt", "model": "bert", "end_id": END_ID,
                      "maxlen": maxlen, "source": source, "n": n, "topk": 5, "repeats": repeats}, directory)
    return result["seconds"], result["mean_length"]


def child_ours(directory, cache, n, k, maxlen, repeats):
    """In a fresh process: load, first gen_synonyms call, median of later calls."""
    start = time.perf_counter()
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(directory, max_tokens=maxlen, compilation_cache=cache)
    loaded = time.perf_counter()
    model.gen_synonyms(TEXT, n=n, k=k)
    first = time.perf_counter()
    steady = median_seconds(lambda: model.gen_synonyms(TEXT, n=n, k=k), repeats, warmup=0)
    return {"load_s": loaded - start, "first_s": first - loaded, "steady_s": steady}


def end_to_end(args):
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        write_random_model(directory, CJK_CONFIG, never_end=True)
        cache = os.path.join(directory, "cache")
        for label in ("empty cache", "warm cache"):
            report = run_child("benchmarks.gen_synonyms_speed", directory, cache, args.n, args.k, args.maxlen,
                               args.repeats)
            rows.append((f"simbert SimBERT.gen_synonyms, {label}", report, report["process_s"]))
        started = time.perf_counter()
        report = run_job({"kind": "time_gen_synonyms", "config": f"{directory}/bert_config.json",
                          "checkpoint": f"{directory}/bert_model.ckpt", "vocab": f"{directory}/vocab.txt",
                          "maxlen": args.maxlen, "text": TEXT, "n": args.n, "k": args.k, "repeats": args.repeats},
                         directory)
        rows.append(("bert4keras 0.11.5, the original script's gen_synonyms", report, time.perf_counter() - started))
    theirs = rows[-1][1]
    print(machine_line(", CPU only"))
    print(f"gen_synonyms end to end, n={args.n}, k={args.k}, {args.maxlen} new tokens, top-k 5, 6L/384H/13685V, "
          f"each side in a fresh process; steady = median of {args.repeats}")
    print("| implementation | process s (to the end) | load s | first call s | steady s | first call speed-up | "
          "steady speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, report, process in rows:
        print(f"| {name} | {process:.1f} | {report['load_s']:.2f} | {report['first_s']:.2f} | "
              f"{report['steady_s']:.3f} | {theirs['first_s'] / report['first_s']:.1f}x | "
              f"{theirs['steady_s'] / report['steady_s']:.1f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--maxlen", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true", help="gen_synonyms with ranking, fresh processes")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory, cache, n, k, maxlen, repeats = args.child
        print(json.dumps(child_ours(directory, cache, int(n), int(k), int(maxlen), int(repeats))))
        return
    if args.end_to_end:
        end_to_end(args)
        return
    source = [2] + list(range(100, 114)) + [END_ID]
    with tempfile.TemporaryDirectory() as directory:
        model = write_random_model(directory, CJK_CONFIG, never_end=True)
        ours, ours_len = time_ours(model, source, args.n, args.maxlen, args.repeats)
        theirs, theirs_len = time_bert4keras(directory, source, args.n, args.maxlen, args.repeats)
    ours_s, theirs_s = float(np.median(ours)), float(np.median(theirs))
    print(machine_line(", CPU only"))
    print(f"gen_synonyms sampling, n={args.n}, maxlen={args.maxlen}, top-k 5, 6L/384H/13685V, "
          f"median of {args.repeats}")
    print("| implementation | seconds per call | mean tokens per sample |")
    print("|---|---|---|")
    print(f"| bert4keras 0.11.5 random_sample (full recompute) | {theirs_s:.3f} | {np.mean(theirs_len):.1f} |")
    print(f"| simbert CachedDecoder.sample (KV cache, compiled loop) | {ours_s:.3f} | {np.mean(ours_len):.1f} |")
    print(f"| speed-up | {theirs_s / ours_s:.1f}x | |")


if __name__ == "__main__":
    main()
