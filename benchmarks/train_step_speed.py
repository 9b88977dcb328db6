"""Training step speed: our trainer's compiled model against the original recipe on
bert4keras (UniLM model, both losses written with TF ops, tf_keras AdamW), one run.

    python -m benchmarks.train_step_speed [--steps 30]

Model L4/H256/A4/V13000 (FFN 1024), batch 32, length 64 (32 source + 32 target tokens).
The anchor runs in float32 and under tf_keras' mixed_bfloat16 policy; each of ours is
compared with the anchor in its own precision and in float32.
Also measures the machine's peak matmul GFLOP/s in float32 and bfloat16 and each row's
fraction of the peak of its precision.
"""

import argparse
import json
import tempfile
import time

import keras
import numpy as np

from benchmarks.common import machine_line, median_seconds, pair_rows
from reference.invoke import run_job
from simbert import build_transformer_model
from simbert.config import TrainingConfig
from simbert.data import target_positions
from simbert.kernels import Platform
from simbert.training_model import build_training_model

CONFIG = {"vocab_size": 13000, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
          "intermediate_size": 1024, "max_position_embeddings": 512, "hidden_act": "gelu"}
BATCH, SOURCE, TARGET = 32, 32, 32


def make_batch(seed=0):
    return pair_rows(BATCH, SOURCE, TARGET, CONFIG["vocab_size"], seed)


def peak_gflops(dtype, size=2048, repeats=10):
    """GFLOP/s of a `size`^3 matmul in `dtype`: the machine's roofline for that precision."""
    a = keras.ops.cast(keras.random.normal((size, size)), dtype)
    matmul = keras.ops.matmul
    np.asarray(keras.ops.cast(matmul(a, a), "float32"))
    start = time.perf_counter()
    for _ in range(repeats):
        result = matmul(a, a)
    np.asarray(keras.ops.cast(result, "float32"))
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def step_gflop(last_layer_rows, mlm_rows):
    """Matmul GFLOP of one training step (forward x 3) when the last layer computes
    `last_layer_rows` rows per sequence (the others compute all) and the MLM projection
    reads `mlm_rows` of them."""
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    layers = CONFIG["num_hidden_layers"]
    length = SOURCE + TARGET

    def layer(query_rows):  # q and output projections, FFN, attention on the query rows; k, v on all
        return 2 * BATCH * (query_rows * (2 * h * h + 2 * h * i + 2 * length * h) + length * 2 * h * h)

    mlm = 2 * BATCH * mlm_rows * (h * h + h * v)
    return 3 * ((layers - 1) * layer(length) + layer(last_layer_rows) + mlm) / 1e9


def time_ours(token_ids, segment_ids, steps, precision="float32", jit_compile=False, warmup=3):
    training = TrainingConfig(learning_rate=1e-5, precision=precision, jit_compile=jit_compile)
    keras.config.set_dtype_policy(precision)
    backbone = build_transformer_model(CONFIG, application="unilm", with_pool="linear", with_mlm="linear")
    keras.config.set_dtype_policy("float32")
    model = build_training_model(backbone, training, Platform.current())
    positions, seq2seq = target_positions(token_ids, segment_ids)
    similarity = np.arange(BATCH, dtype="int32")
    x, y = [token_ids, segment_ids, positions], {"seq2seq": seq2seq, "similarity": similarity}
    # train_on_batch returns the losses as numbers: the step has finished
    return median_seconds(lambda: model.train_on_batch(x, y), steps, warmup)


def time_bert4keras(directory, steps, precision="float32", warmup=3):
    """The original recipe's step under a tf_keras dtype policy ("float32" or "mixed_bfloat16")."""
    token_ids, segment_ids = make_batch()
    np.savez(f"{directory}/inputs.npz", token_ids=token_ids, segment_ids=segment_ids)
    with open(f"{directory}/bert_config.json", "w") as writer:
        json.dump(CONFIG, writer)
    return run_job({"kind": "time_train", "config": f"{directory}/bert_config.json",
                    "inputs": f"{directory}/inputs.npz", "scale": 30.0, "steps": steps, "warmup": warmup,
                    "precision": precision},
                   directory)["seconds_per_step"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    token_ids, segment_ids = make_batch()
    variants = {"float32": ("float32", False), "float32, jit_compile": ("float32", True),
                "mixed_bfloat16": ("mixed_bfloat16", False)}
    ours = {name: time_ours(token_ids, segment_ids, args.steps, *options) for name, options in variants.items()}
    with tempfile.TemporaryDirectory() as directory:
        theirs = {precision: time_bert4keras(directory, args.steps, precision)
                  for precision in ("float32", "mixed_bfloat16")}
    peaks = {"float32": peak_gflops("float32"), "bfloat16": peak_gflops("bfloat16")}
    ours_gflop = step_gflop(last_layer_rows=1 + TARGET, mlm_rows=TARGET)  # [CLS] and the target positions
    theirs_gflop = step_gflop(last_layer_rows=SOURCE + TARGET, mlm_rows=SOURCE + TARGET)
    print(machine_line(f", CPU only; backend {keras.backend.backend()}"))
    print(f"training step, L4/H256/A4/V13000, batch {BATCH}, length {SOURCE + TARGET}, median of {args.steps} steps")
    print("| implementation | ms / step | matmul GFLOP / step | GFLOP/s "
          "| fraction of the matmul peak of its precision |")
    print("|---|---|---|---|---|")
    rows = [(f"bert4keras 0.11.5 + TF losses + tf_keras AdamW, {precision}", seconds, theirs_gflop, precision)
            for precision, seconds in theirs.items()]
    rows += [(f"simbert trainer model, {name}", seconds, ours_gflop, variants[name][0])
             for name, seconds in ours.items()]
    for name, seconds, gflop, precision in rows:
        peak_name = "bfloat16" if "bfloat16" in precision else "float32"
        print(f"| {name} | {seconds * 1e3:.1f} | {gflop:.1f} | {gflop / seconds:.0f} | "
              f"{gflop / seconds / peaks[peak_name]:.0%} of {peak_name} |")
    print("speed-up over bert4keras in the same precision: "
          + ", ".join(f"{name} {theirs[variants[name][0]] / s:.2f}x" for name, s in ours.items()))
    print("speed-up over bert4keras in float32: "
          + ", ".join(f"{name} {theirs['float32'] / s:.2f}x" for name, s in ours.items()))
    print(f"peak matmul (2048^3): float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
