"""The training loop's wait for batches, against a simulated device step.

    python -m benchmarks.pipeline_speed [--data ../shared/data] [--workers 4] [--device-ms 12] [--steps 300]

A GPU training loop synchronises with the device once a step (the callbacks read the
loss), so whatever the loop does before it dispatches the next step (taking the next
batch) leaves the device idle. This runs the loop without a device: the real pipeline
of `Trainer.fit` (AFQMC pairs, batch 128, `data.max_chars: 32`, the Chinese BERT
vocabulary, `data.workers` processes) taken once a step, then a sleep of `--device-ms`
(the GIL released, as while waiting for the device). Reported: the loop's time taking a
batch (median and mean) and the fraction of the run the "device" was busy, for the
pipeline taken directly and through the `Prefetcher` thread `Trainer.fit` uses.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DATA, afqmc_path, machine_line
from simbert.config import TrainConfig
from simbert.trainer import PREFETCH_BATCHES, Trainer
from simbert.workers import Prefetcher


def run(config: TrainConfig, prefetch: bool, device_ms: float, steps: int) -> dict:
    with Trainer(config, overwrite=True) as trainer:  # started: the tokenizer built, the run directory held
        batches = trainer._batches(0)
        if prefetch:
            batches = Prefetcher(batches, PREFETCH_BATCHES)
        try:
            for _ in range(20):  # workers started, their queue full
                next(batches)
            taking = []
            started = time.perf_counter()
            for _ in range(steps):
                before = time.perf_counter()
                next(batches)
                taking.append(time.perf_counter() - before)
                time.sleep(device_ms / 1000)
            elapsed = time.perf_counter() - started
        finally:
            batches.close()
    return {"prefetch": prefetch, "workers": trainer.workers, "take_ms_median": round(np.median(taking) * 1000, 2),
            "take_ms_mean": round(np.mean(taking) * 1000, 2),
            "device_busy": round(steps * device_ms / 1000 / elapsed, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device-ms", type=float, default=12.0,
                        help="the simulated step (default: docs/benchmarks.md's bf16 6-layer step on one GPU)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    started = time.perf_counter()
    for _ in range(args.steps):
        time.sleep(args.device_ms / 1000)
    print(machine_line(f"; sleep alone keeps the device "
                       f"{args.steps * args.device_ms / 1000 / (time.perf_counter() - started):.3f} busy"))
    with tempfile.TemporaryDirectory() as work:
        config = TrainConfig.from_dict({
            "model": {"model_type": "bert", "vocab": os.path.join(args.data, "vocab", "chinese_bert_vocab.txt"),
                      "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64, "max_position_embeddings": 512}},
            "data": {"train": afqmc_path(args.data), "format": "pairs", "max_chars": 32,
                     "workers": args.workers},
            "training": {"steps": 10 ** 6, "batch_size": 128, "compilation_cache": None},
            "output": {"dir": work}}, "pipeline benchmark")
        for prefetch in (False, True, False, True):
            print(json.dumps(run(config, prefetch, args.device_ms, args.steps)), flush=True)


if __name__ == "__main__":
    main()
