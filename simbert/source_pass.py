"""The forward pass over `[CLS] text [SEP]` inputs (segment 0, padded with `[PAD]`), which
`SimBERT.encode` and the sampler's prefill share: encoding a text and encoding it as a
source are the same computation, read at different rows.

`pooled`: the pooler of the [CLS] row, `act(W h_[CLS] + b)`. `prefill`: the MLM logits at
the source's last token (the first target token's distribution) and every layer's keys
and values (the cache every sample reads). The last block computes one query row per
input (the [CLS] row, or the last token), its other rows feeding nothing. Logits and
keys and values are returned for the inputs asked for only (the prefill's one source;
none when encoding, whose batches would otherwise hold every layer's keys and values).

How it is compiled is decided per backend by what a first call costs there. TensorFlow:
building a graph is the cost (docs/benchmarks.md, "Figures behind the code"), so one graph
with every dimension unknown returns everything and serves both uses, traced once. JAX:
every input shape is its own XLA program anyway, so each use is compiled with only its
outputs (XLA drops the rest).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from keras import ops

from simbert.compiled import CompiledFunction, compile_function
from simbert.kernels import Platform
from simbert.models import Transformer


class SourcePass:
    """`pooled` and `prefill` of a UniLM `Transformer` with a pooler and/or an MLM head.
    `programs` counts the programs compiled (or loaded: `simbert.trace_store`). `place`
    puts `pooled`'s batch inputs on the devices (`InferenceLayout.shard`; None: as they are)."""

    def __init__(self, backbone: Transformer, place: Callable | None = None):
        self.backbone = backbone
        self._place = place or (lambda array: array)
        variables = backbone.variables
        if not Platform.current().compiles_per_shape:
            shared = compile_function(self._outputs, variables, jit_compile=False,
                                      dynamic_inputs=[(2, "int32"), (2, "int32"), (1, "int32")])
            self._functions = [shared]
            self._pooled = lambda *inputs: shared(*inputs)[0]
            self._prefill = lambda *inputs: shared(*inputs)[1:]
        else:
            model = backbone.computation
            self._pooled = compile_function(lambda *inputs: self._outputs(*inputs)[0], variables,
                                            program_key=model and f"pooled {model}")
            self._prefill = compile_function(lambda *inputs: self._outputs(*inputs)[1:], variables,
                                             program_key=model and f"prefill {model}")
            self._functions = [self._pooled, self._prefill]

    @property
    def programs(self) -> int:
        return sum(function.programs for function in self._functions)

    def _outputs(self, token_ids, query_positions, source_rows):
        """`(pooled, logits, caches)`: the pooler of the last block's output at
        `query_positions` (batch, 1); for the inputs `source_rows` only, the MLM logits of
        that output and each layer's `(keys, values)` in `MultiHeadAttention`'s cache layout."""
        backbone = self.backbone
        # JAX's `pooled` program asks for no source rows (statically 0): its attention then
        # returns no keys and values, and may take the fused kernel (`Kernels.fused_attention`).
        with_caches = source_rows.shape[0] != 0
        x = backbone.sequence_output(token_ids, ops.zeros_like(token_ids), query_positions,
                                     return_caches=with_caches)
        x, caches = x if with_caches else (x, [])
        caches = [tuple(ops.take(part, source_rows, axis=0) for part in cache) for cache in caches]
        x = x[:, 0]
        pooled = backbone.pooler(x) if backbone.pooler is not None else None
        logits = backbone.mlm_logits(ops.take(x, source_rows, axis=0)) if backbone.mlm_dense is not None else None
        return pooled, logits, caches

    def _pooled_inputs(self, token_ids: np.ndarray) -> tuple:
        positions = np.zeros((len(token_ids), 1), "int32")
        return self._place(token_ids), self._place(positions), np.zeros((0,), "int32")

    def pooled(self, token_ids: np.ndarray):
        """Pooled [CLS] vectors `(batch, hidden)` of padded `token_ids` (batch, len)."""
        return self._pooled(*self._pooled_inputs(token_ids))

    def prepare_pooled(self, shapes) -> None:
        """Start building `pooled`'s programs for these `(rows, length)` shapes in other
        threads (`CompiledFunction.prepare`; on TensorFlow one graph serves them all)."""
        if isinstance(self._pooled, CompiledFunction):
            self._pooled.prepare([self._pooled_inputs(np.zeros(shape, "int32")) for shape in shapes])

    def prefill(self, token_ids: np.ndarray, source_len: int):
        """`(logits (1, vocab), caches)` of one source padded to `token_ids` (1, len)."""
        return self._prefill(token_ids, np.full((1, 1), source_len - 1, "int32"), np.zeros((1,), "int32"))
