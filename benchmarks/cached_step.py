"""The cached contrastive step (`training.similarity_chunk`) against the plain step: speed
at equal batch, and the largest batch each fits in one memory budget.

    python -m benchmarks.cached_step [--small] [--steps 10]
    KERAS_BACKEND=jax python -m benchmarks.cached_step [--small | --base]

Model L2/H128/A2/V8000 (FFN 512; --small: L1/H64/A2/V4000; --base: BERT-base,
L12/H768/A12/V21128, batch 128 in chunks of 32, for a GPU), rows of 32 source + 32 target
tokens, AdamW, float32, `training.jit_compile: auto`. Every measurement is a fresh
process (`--child`): the first `train_on_batch` (tracing and compiling included), then
the median of the steady steps, and the step's peak memory:
    on a GPU (JAX), `device.memory_stats()["peak_bytes_in_use"]`;
    on a CPU, the growth of the process's peak resident set (`ru_maxrss`) from just
    before the first step (model built, batch made) to after the last, so it counts the
    step's activations and workspace, and also what tracing and compiling take.
Speed: plain and cached (chunk M rows) at batch B. Memory: the budget is the plain
step's peak at batch B; the batch doubles from B until a step passes the budget (the
cached step with chunks of M rows, up to `MAX_FACTOR` x B). Targets (issue 28): the
cached step at >= 70% of the plain step's samples/s at equal batch, and a batch at least
16x the plain step's largest fits the same budget.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from benchmarks.common import device_peak_bytes, machine_line, median_seconds, pair_rows, run_child

CONFIGS = {
    "full": {"vocab_size": 8000, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 512, "max_position_embeddings": 128, "hidden_act": "gelu"},
    "small": {"vocab_size": 4000, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 256, "max_position_embeddings": 128, "hidden_act": "gelu"},
    "base": {"vocab_size": 21128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512, "hidden_act": "gelu"},
}
SOURCE, TARGET = 32, 32
BATCH_AND_CHUNK = {"full": (64, 16), "small": (32, 8), "base": (128, 32)}  # rows a step, rows a chunk
MAX_FACTOR = 16  # the target: a batch 16x the plain largest
BUDGET_SLACK = 1.1  # the plain step's own peak varies a little from process to process


def child(size: str, batch: int, chunk: int, steps: int) -> dict:
    """One process: build, time the first and the steady steps, read the peak memory."""
    import keras

    from simbert import build_transformer_model
    from simbert.config import TrainingConfig
    from simbert.data import target_positions
    from simbert.kernels import Platform
    from simbert.training_model import build_training_model

    config = CONFIGS[size]
    training = TrainingConfig(batch_size=batch, learning_rate=1e-5, similarity_chunk=chunk or None)
    backbone = build_transformer_model(config, application="unilm", with_pool="linear", with_mlm="linear")
    model = build_training_model(backbone, training, Platform.current())
    token_ids, segment_ids = pair_rows(batch, SOURCE, TARGET, config["vocab_size"])
    positions, seq2seq = target_positions(token_ids, segment_ids)
    x, y = [token_ids, segment_ids, positions], {"seq2seq": seq2seq, "similarity": np.arange(batch, dtype="int32")}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    model.train_on_batch(x, y)  # returns the losses as numbers: the step has finished
    first = time.perf_counter() - started
    step = median_seconds(lambda: model.train_on_batch(x, y), steps, warmup=0) if steps else None
    device_peak = device_peak_bytes()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
    return {"model": type(model).__name__, "first_s": first, "step_s": step,
            "peak_mb": (device_peak if device_peak is not None else grown) / 2 ** 20,
            "memory": "device peak" if device_peak is not None else "RSS growth",
            "backend": keras.backend.backend(), "keras": keras.__version__}


def measure(size: str, batch: int, chunk: int, steps: int) -> dict:
    return run_child("benchmarks.cached_step", size, batch, chunk, steps)


def largest(size: str, start: int, chunk: int, budget_mb: float, limit: int) -> tuple[int, list]:
    """The largest batch (start, 2 start, ...) whose step stays within `budget_mb`."""
    fits, tried, batch = 0, [], start
    while batch <= limit:
        report = measure(size, batch, chunk, steps=1)
        tried.append((batch, report["peak_mb"]))
        if report["peak_mb"] > budget_mb:
            break
        fits, batch = batch, batch * 2
    return fits, tried


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="the small model, for a quick check")
    size.add_argument("--base", action="store_true", help="BERT-base (for a GPU)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, batch, chunk, steps = args.child
        print(json.dumps(child(size, int(batch), int(chunk), int(steps))))
        return
    size = "small" if args.small else "base" if args.base else "full"
    batch, chunk = BATCH_AND_CHUNK[size]
    plain = measure(size, batch, 0, args.steps)
    cached = measure(size, batch, chunk, args.steps)
    config = CONFIGS[size]
    print(machine_line(f"; backend {plain['backend']}, Keras {plain['keras']}"))
    print(f"L{config['num_hidden_layers']}/H{config['hidden_size']}/V{config['vocab_size']}, rows of "
          f"{SOURCE}+{TARGET} tokens, float32; memory: {plain['memory']}")
    print("| step | batch | chunk | first call s | steady ms / step | samples/s | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name, report, rows in (("plain", plain, "-"), ("cached", cached, chunk)):
        print(f"| {name} ({report['model']}) | {batch} | {rows} | {report['first_s']:.1f} | "
              f"{report['step_s'] * 1e3:.0f} | {batch / report['step_s']:.0f} | {report['peak_mb']:.0f} |")
    ratio = plain["step_s"] / cached["step_s"]
    print(f"cached / plain samples/s at batch {batch}: {ratio:.0%} (target >= 70%)")
    budget = plain["peak_mb"] * BUDGET_SLACK
    plain_fits, plain_tried = largest(size, batch, 0, budget, MAX_FACTOR * batch)
    cached_fits, cached_tried = largest(size, batch, chunk, budget, MAX_FACTOR * batch)
    print(f"budget {budget:.0f} MB (the plain step's peak at batch {batch}, x{BUDGET_SLACK}):")
    print("  plain  (batch, peak MB): " + ", ".join(f"{b} {mb:.0f}" for b, mb in plain_tried)
          + f" -> largest {plain_fits}")
    print(f"  cached, chunks of {chunk} (batch, peak MB): " + ", ".join(f"{b} {mb:.0f}" for b, mb in cached_tried)
          + f" -> largest {cached_fits}"
          + (" (the largest tried)" if cached_fits == MAX_FACTOR * batch else ""))
    if plain_fits:
        print(f"cached / plain largest batch: {cached_fits / plain_fits:.0f}x (target >= 16x)")


if __name__ == "__main__":
    main()
