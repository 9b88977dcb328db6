"""Encoding one long text: time and memory at 1k, 2k and 4k tokens, through the written-out
softmax attention and through `keras.ops.dot_product_attention` (the backend's fused path).

    python -m benchmarks.long_texts [--small] [--lengths 1024,2048,4096]
    KERAS_BACKEND=jax python -m benchmarks.long_texts [--small]

Model: a random BERT-base of 4 layers (H768/A12/FFN 3072: attention's memory is one
layer's at a time, as in the 12 of BERT-base, and time is a third; 512 learned positions
stretched by `hierarchical_position`; --small: L2/H256/A4, for a dry run), one text of
each length, `SimBERT.encode` (the pooled [CLS], float32). Every measurement is a fresh
process (`--child`): the first call (tracing and compiling included), the median of 2 more, and
the memory: on a GPU (JAX) `peak_bytes_in_use`, on a CPU the peak of the process's
resident set during the first call (read every 2 ms) less the set just before it (later
calls reuse what the allocator keeps, so only the first shows it; compiling adds a
little, tens of MB at these sizes). Attention holds
`heads x L^2` scores a layer: 0.8 GB at L=4096 and 12 heads in float32; a fused kernel
that keeps it linear (flash attention) is a GPU kernel, so on a CPU both paths are
quadratic. Also checked: both paths give the same vectors (max abs difference). On
TensorFlow, `encode` and the sampler's prefill share one graph that also returns each
layer's keys and values, so its attention is always the written one: one row a length.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

from benchmarks.common import cjk_characters, device_peak_bytes, machine_line, median_seconds, run_child

CONFIGS = {
    "base": {"vocab_size": 8000, "hidden_size": 768, "num_hidden_layers": 4, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512},
    "small": {"vocab_size": 4000, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 512, "max_position_embeddings": 512},
}


class ResidentPeak:
    """The peak resident set of this process inside a `with` block, less the set at its
    start, read from /proc/self/statm every 2 ms by a thread."""

    def __enter__(self) -> "ResidentPeak":
        self.start = self.peak = resident_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def grown_bytes(self) -> int:
        return self.peak - self.start


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as reader:
        return int(reader.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def long_text(size: str, length: int) -> str:
    """One text of `length` tokens with [CLS] and [SEP] (CJK characters of the model's
    vocabulary, one token each)."""
    characters = cjk_characters(CONFIGS[size]["vocab_size"])
    return "".join(characters[i % len(characters)] for i in range(length - 2))


def use_fused_attention(model, fused: bool) -> None:
    """Every block's attention of a `SimBERT` through `keras.ops.dot_product_attention`
    (`fused`) or the written softmax; set before its first call traces the model."""
    for block in model.backbone.blocks:
        block.attention.fused = fused


def child(size: str, length: int, fused: bool, directory: str) -> dict:
    """One process: load the model with the attention path asked for, encode one text of
    `length` tokens (first call, then steady), read the memory it took."""
    import keras

    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(directory, max_tokens=length, hierarchical_position=True)
    use_fused_attention(model, fused)
    text = long_text(size, length)
    started = time.perf_counter()
    with ResidentPeak() as peak:
        vectors = model.encode([text])
    first = time.perf_counter() - started
    steady = median_seconds(lambda: model.encode([text]), 2, warmup=0)
    device = device_peak_bytes()
    grown = peak.grown_bytes
    np.save(f"{directory}/vectors_{length}_{int(fused)}.npy", vectors)
    return {"length": length, "fused": fused, "first_s": first, "steady_s": steady,
            "memory_mb": (device if device is not None else grown) / 2 ** 20,
            "memory": "device peak" if device is not None else "RSS, first call",
            "backend": keras.backend.backend(), "keras": keras.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--work", default="/tmp/simbert_long_texts")
    parser.add_argument("--child", nargs=4, metavar=("SIZE", "LENGTH", "FUSED", "DIRECTORY"))
    args = parser.parse_args()
    if args.child:
        size, length, fused, directory = args.child
        print(json.dumps(child(size, int(length), fused == "1", directory)))
        return
    from benchmarks.common import write_random_model

    size = "small" if args.small else "base"
    directory = os.path.join(args.work, size)
    os.makedirs(args.work, exist_ok=True)
    if not os.path.isdir(directory):
        write_random_model(directory, CONFIGS[size])
    import keras

    paths = (0, 1) if keras.backend.backend() == "jax" else (0,)
    print(machine_line(f", model {size}"))
    heads = CONFIGS[size]["num_attention_heads"]
    print("| backend | length | attention | first call s | steady s | memory MB | a layer's scores MB | "
          "vectors equal (max abs) |")
    print("|---|---|---|---|---|---|---|---|")
    for length in (int(value) for value in args.lengths.split(",")):
        reports = [run_child("benchmarks.long_texts", size, length, fused, directory) for fused in paths]
        difference = (float(np.abs(np.load(f"{directory}/vectors_{length}_0.npy")
                                   - np.load(f"{directory}/vectors_{length}_1.npy")).max()) if len(paths) == 2
                      else float("nan"))
        for report in reports:
            path = "dot_product_attention" if report["fused"] else "written softmax"
            scores = heads * length * length * 4 / 2 ** 20  # float32 heads x L x L
            print(f"| {report['backend']} | {length} | {path} | {report['first_s']:.2f} | {report['steady_s']:.2f} | "
                  f"{report['memory_mb']:.0f} ({report['memory']}) | {scores:.0f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
