"""What the sections of `benchmarks.gpu` share: the sizes (BERT-base, or tiny with
`--small`), the results file, the host time of a first call by phase, and the cache
states each fresh-process measurement runs in.

The sections' fresh processes are children of the driver, `python -m benchmarks.gpu
--child NAME ...` (`DRIVER`), which dispatches NAME to the section module's `CHILDREN`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil

DRIVER = "benchmarks.gpu"
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
SMALL = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512}
SOURCE = TARGET = 32
ONE_AT_A_TIME = "warm cache, programs built one at a time"


@dataclasses.dataclass
class Sizes:
    model: dict
    batch: int
    sentences: int
    samples: int
    steps: int
    fit_steps: int


def sizes(small: bool) -> Sizes:
    if small:
        return Sizes(SMALL, batch=16, sentences=400, samples=10, steps=3, fit_steps=40)
    return Sizes(BASE, batch=128, sentences=8000, samples=100, steps=20, fit_steps=300)


def record(work: str, **result) -> dict:
    """Print a result line and append it to WORK/results.jsonl."""
    print("RESULT " + json.dumps(result, ensure_ascii=False), flush=True)
    with open(os.path.join(work, "results.jsonl"), "a", encoding="utf-8") as writer:
        writer.write(json.dumps(result, ensure_ascii=False) + "\n")
    return result


class CompilePhases(logging.Handler):
    """Sums the seconds JAX reports (at DEBUG, from `jax._src.dispatch`) for tracing,
    lowering to MLIR and XLA compilation (or loading from the persistent cache), and
    counts the cache hits: the host time of a first call, apart from running."""

    PHASES = {"tracing": "trace_s", "jaxpr to MLIR": "lower_s", "XLA compilation": "compile_s"}

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seconds = {key: 0.0 for key in self.PHASES.values()}
        self.cache_hits = 0

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Persistent compilation cache hit"):
            self.cache_hits += 1
        timed = re.match(r"Finished (tracing|jaxpr to MLIR|XLA compilation)\b.* in ([0-9.]+) sec", message)
        if timed:
            self.seconds[self.PHASES[timed.group(1)]] += float(timed.group(2))

    def __enter__(self):
        for name in ("jax._src.dispatch", "jax._src.compiler"):
            logging.getLogger(name).setLevel(logging.DEBUG)
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in ("jax._src.dispatch", "jax._src.compiler"):
            logging.getLogger(name).removeHandler(self)

    def report(self, prefix: str) -> dict:
        return {**{f"{prefix}_{key}": round(value, 3) for key, value in self.seconds.items()},
                f"{prefix}_cache_hits": self.cache_hits}


def cache_states(cache: str, precision: str, one_at_a_time: bool = False):
    """The label of each fresh-process run of ours: with an empty compilation cache, a
    warm one, and (float32 only, to spare device time) a warm one whose stored traces
    (`simbert.trace_store`) are removed first, so that the process traces again: what
    storing them saves. Before that, with `one_at_a_time`, a warm one whose programs are
    built one at a time as batches need them, not side by side ahead
    (`SourcePass.prepare_pooled`, `CompiledFunction.prepare`)."""
    from simbert.trace_store import SUBDIRECTORY

    yield "empty cache"
    yield "warm cache"
    if precision == "float32":
        if one_at_a_time:
            yield ONE_AT_A_TIME
        shutil.rmtree(os.path.join(cache, SUBDIRECTORY), ignore_errors=True)
        yield "warm XLA cache, traces removed"
