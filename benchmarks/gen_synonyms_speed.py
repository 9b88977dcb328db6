"""gen_synonyms sampling speed: our KV-cached sampler against bert4keras' original
`AutoRegressiveDecoder.random_sample` (full recompute every step), same weights, one run.

    python -m benchmarks.gen_synonyms_speed [--n 100] [--maxlen 32] [--repeats 3]

Model: 6 layers, hidden 384, 12 heads, FFN 1536, vocabulary 13685 (random weights,
written as a TF checkpoint that both sides load). Source: 16 tokens. Both sides draw n
samples with top-k 5 for `maxlen` steps (the end token is kept out, so that the work does
not depend on when random weights happen to end a sample).
"""

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from reference.invoke import run_job

from simbert import build_transformer_model
from simbert.directories import save_pretrained
from simbert.generation import CachedDecoder

CONFIG = {"vocab_size": 13685, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "max_position_embeddings": 512, "hidden_act": "gelu"}
END_ID = 3


def write_model(directory):
    model = build_transformer_model(CONFIG, application="unilm", with_mlm="linear", with_pool="linear")
    bias = model.mlm_bias.bias.numpy()
    bias[[0, END_ID]] = -30.0  # no [PAD] and no end token: every sample runs all maxlen steps on both sides
    model.mlm_bias.bias.assign(bias)
    save_pretrained(model, directory, {f"t{i}": i for i in range(CONFIG["vocab_size"])})
    return model


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--maxlen", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = [2] + list(range(100, 114)) + [END_ID]
    with tempfile.TemporaryDirectory() as directory:
        model = write_model(directory)
        ours, ours_len = time_ours(model, source, args.n, args.maxlen, args.repeats)
        theirs, theirs_len = time_bert4keras(directory, source, args.n, args.maxlen, args.repeats)
    ours_s, theirs_s = float(np.median(ours)), float(np.median(theirs))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only")
    print(f"gen_synonyms sampling, n={args.n}, maxlen={args.maxlen}, top-k 5, 6L/384H/13685V, "
          f"median of {args.repeats}")
    print("| implementation | seconds per call | mean tokens per sample |")
    print("|---|---|---|")
    print(f"| bert4keras 0.11.5 random_sample (full recompute) | {theirs_s:.3f} | {np.mean(theirs_len):.1f} |")
    print(f"| simbert CachedDecoder.sample (KV cache, compiled loop) | {ours_s:.3f} | {np.mean(ours_len):.1f} |")
    print(f"| speed-up | {theirs_s / ours_s:.1f}x | |")


if __name__ == "__main__":
    main()
