"""KV-cached UniLM decoding: random sampling (top-k / top-p / temperature) and beam search.

The source `[CLS] text [SEP]` is encoded once (`simbert.source_pass`); its keys and
values per layer are one shared cache that every sample reads (stored once, not tiled
per sample). Each sample has its own cache of `max_target_len` slots. Step t feeds only
the newest token of each sample (segment 1, position `source_len + t`), writes its keys
and values at slot t and attends to the source's real positions and its own slots
`<= t`, which is exactly the UniLM mask of the full sequence. The sampling loop is one
`while_loop` compiled by XLA (`simbert.compiled.compile_function`:
tf.function(jit_compile=True) on TensorFlow, jax.jit on JAX).

`[PAD]` (id 0) is never emitted: a full recompute would treat it as padding, so it has
no place in a target (training never targets it either).
"""

from __future__ import annotations

import threading

import keras
import numpy as np
from keras import ops
from tqdm import tqdm

from simbert.arguments import check_integer, check_sampling
from simbert.compiled import compile_function
from simbert.layers import NEGATIVE_INFINITY
from simbert.models import Transformer
from simbert.source_pass import SourcePass

TOP_K_BLOCK = 128  # columns per block of `blocked_top_k`


class SamplingCancelled(RuntimeError):
    """`CachedDecoder.sample` stopped early: its `cancel` event was set."""


def blocked_top_k(values, k: int, block: int = TOP_K_BLOCK):
    """`keras.ops.top_k(values, k)` of `values` (rows, n), the same values and indices
    (ties to the lower index), in two small passes instead of one over all n columns:
    the k largest values lie in the k blocks of `block` columns with the largest maxima;
    the top k of those blocks' columns, taken in column order, are the answer."""
    n = values.shape[-1]
    blocks = -(-n // block)
    grouped = ops.reshape(ops.pad(values, ((0, 0), (0, blocks * block - n)), constant_values=float("-inf")),
                          (-1, blocks, block))
    best = ops.sort(ops.top_k(ops.max(grouped, axis=-1), k)[1], axis=-1)  # (rows, k) block numbers
    candidates = ops.take_along_axis(grouped, ops.repeat(best[:, :, None], block, axis=2), axis=1)
    top, position = ops.top_k(ops.reshape(candidates, (-1, k * block)), k)
    return top, ops.take_along_axis(best, position // block, axis=1) * block + position % block


def pick_tokens(logits, uniform, topk=None, topp=None, temperature=1.0, blocked: bool = False):
    """Sample one token per row by inverse-CDF on `uniform` (batch,) in [0, 1).

    probabilities = softmax(logits / temperature), restricted to the `topk` largest and
    then to the smallest prefix (by descending probability) whose mass reaches `topp`,
    renormalised (bert4keras' `random_sample`). `topk=1` is greedy. `blocked`: the top k
    of a vocabulary wider than k blocks by `blocked_top_k` (`Kernels.blocked_top_k`).
    """
    if topk == 1:
        return ops.argmax(logits, axis=-1)
    logits = ops.cast(logits, "float32") / temperature
    indices = None
    if topk and blocked and logits.shape[-1] > topk * TOP_K_BLOCK:
        logits, indices = blocked_top_k(logits, topk)
    elif topk or topp:
        logits, indices = ops.top_k(logits, topk or ops.shape(logits)[-1])
    probabilities = ops.softmax(logits, axis=-1)
    if topp:
        before = ops.cumsum(probabilities, axis=-1) - probabilities
        probabilities = ops.where(before < topp, probabilities, 0.0)
    cumulative = ops.cumsum(probabilities, axis=-1)
    threshold = uniform[:, None] * cumulative[:, -1:]
    choice = ops.sum(ops.cast(cumulative <= threshold, "int32"), axis=-1)
    choice = ops.minimum(choice, ops.shape(probabilities)[-1] - 1)
    if indices is None:
        return choice
    return ops.squeeze(ops.take_along_axis(indices, choice[:, None], axis=-1), -1)


class CachedDecoder:
    """Decodes targets for a UniLM `Transformer` built with an MLM head.

    Args:
        backbone: `application="unilm"`, `with_mlm` set.
        end_id: the `[SEP]` id that ends a sample.
        max_source_len: sources are padded to this length (one compiled shape).
        max_target_len: the longest target (decoding steps).
        source_pass: the backbone's `SourcePass` to prefill with (one is made if not
            given; `SimBERT` shares the one that encodes).
    """

    def __init__(self, backbone: Transformer, end_id: int, max_source_len: int, max_target_len: int,
                 source_pass: SourcePass | None = None):
        if backbone.mlm_dense is None:
            raise ValueError("generation needs a model built with with_mlm")
        limit = backbone.config.max_length
        if limit is not None and max_source_len + max_target_len > limit:
            raise ValueError(f"max_source_len {max_source_len} + max_target_len {max_target_len} exceeds the "
                             f"model's {limit} positions (max_position_embeddings "
                             f"{backbone.config.max_position_embeddings}; hierarchical_position squares it)")
        self.backbone = backbone
        self.end_id = end_id
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        self.variables = backbone.variables
        self.source_pass = source_pass or SourcePass(backbone)
        model = backbone.computation
        self._key = model and f"{model} end {end_id} lengths {max_source_len} {max_target_len}"
        self._step = compile_function(self._decode_step, self.variables, program_key=self._key and f"step {self._key}")
        self._samplers = {}
        self._samplers_lock = threading.Lock()

    @property
    def compiled_programs(self) -> int:
        """Programs compiled so far: the source pass, the step, one sampling loop per
        (n, steps, topk, topp, temperature)."""
        return self.source_pass.programs + sum(f.programs for f in (self._step, *self._samplers.values()))

    # ------------------------------------------------------------- graph parts
    def empty_caches(self, batch: int):
        """Per layer `(keys (batch, h, d, max_target_len), values (batch, h, max_target_len,
        d))`, the layout of `MultiHeadAttention`'s cache."""
        config = self.backbone.config
        heads, size, dtype = config.num_attention_heads, config.head_size, self.backbone.compute_dtype
        return [(ops.zeros((batch, heads, size, self.max_target_len), dtype),
                 ops.zeros((batch, heads, self.max_target_len, size), dtype)) for _ in self.backbone.blocks]

    @staticmethod
    def _map_caches(function, caches):
        return [tuple(function(part) for part in cache) for cache in caches]

    @staticmethod
    def _without_padding(logits):
        return ops.where(ops.arange(ops.shape(logits)[-1])[None, :] == 0, NEGATIVE_INFINITY,
                         ops.cast(logits, "float32"))

    def _decode_step(self, tokens, source_caches, caches, source_len, t):
        """Feed `tokens` (batch,) as target token t (position `source_len + t`); return
        next-token logits and the updated caches."""
        tokens = tokens[:, None]
        position = source_len + t
        x = self.backbone.embed(tokens, ops.ones_like(tokens), start_index=position)
        mask = ops.concatenate([ops.arange(self.max_source_len) < source_len,
                                ops.arange(self.max_target_len) <= t])[None, None, :]
        new_caches = []
        for block, source_cache, cache in zip(self.backbone.blocks, source_caches, caches):
            x, cache = block(x, mask, cache=cache, cache_index=t, shared_cache=source_cache,
                             start_position=position)
            new_caches.append(cache)
        return self.backbone.mlm_logits(x[:, 0]), new_caches

    def _sample_loop(self, logits, source_caches, source_len, noise, topk, topp, temperature, steps):
        samples = ops.shape(noise)[1]
        logits = ops.repeat(logits, samples, axis=0)
        outputs = ops.zeros((samples, steps), "int32")
        finished = ops.zeros((samples,), "bool")

        blocked = self.backbone.kernels.blocked_top_k

        def pick(t, logits, outputs, finished):
            tokens = pick_tokens(self._without_padding(logits), noise[t], topk, topp, temperature, blocked)
            tokens = ops.where(finished, 0, ops.cast(tokens, "int32"))
            outputs = ops.slice_update(outputs, (0, t), tokens[:, None])
            return tokens, outputs, ops.logical_or(finished, ops.equal(tokens, self.end_id))

        def body(t, logits, caches, outputs, finished):
            tokens, outputs, finished = pick(t, logits, outputs, finished)
            logits, caches = self._decode_step(tokens, source_caches, caches, source_len, t)
            return t + 1, logits, caches, outputs, finished

        def steps_unchecked(count, state):
            return ops.fori_loop(0, count, lambda _, state: body(*state), state)

        # Every token but the last is fed back (steps - 1 steps); the last is picked
        # without a step after it (whose logits nobody reads). The loop stops early once
        # every sample has ended, checked every `end_check_every` steps (each check makes
        # a GPU wait for the loop's condition); rows already finished pick 0, so steps run
        # past the end change nothing, and the last `(steps - 1) % every` always run.
        every = self.backbone.kernels.end_check_every
        checked, unchecked = divmod(steps - 1, every)
        state = (ops.convert_to_tensor(0), logits, self.empty_caches(samples), outputs, finished)
        if checked:
            def keep_going(t, logits, caches, outputs, finished):
                return ops.logical_and(t < checked * every, ops.logical_not(ops.all(finished)))

            state = ops.while_loop(keep_going, body if every == 1 else lambda *state: steps_unchecked(every, state),
                                   state)
        if unchecked:
            state = steps_unchecked(unchecked, state)
        t, logits, _, outputs, finished = state
        return pick(t, logits, outputs, finished)[1]

    # ------------------------------------------------------------------ public
    def prefill(self, source_ids: list[int]):
        """Encode one source; returns `(logits (1, vocab), source_caches, source_len)`."""
        if len(source_ids) > self.max_source_len:
            raise ValueError(f"source has {len(source_ids)} tokens, more than max_source_len {self.max_source_len}")
        padded = keras.utils.pad_sequences([source_ids], maxlen=self.max_source_len, dtype="int32", padding="post")
        logits, source_caches = self.source_pass.prefill(padded, len(source_ids))
        return logits, source_caches, np.int32(len(source_ids))

    def step(self, tokens, source_caches, caches, source_len, t):
        """Feed target token t of each row (`tokens`, one per row of `caches`, from
        `empty_caches(rows)` at t = 0); returns `(logits, caches)`. Exposed for tests and
        custom decoders."""
        return self._step(ops.convert_to_tensor(np.asarray(tokens, "int32")), source_caches, caches,
                          ops.convert_to_tensor(np.int32(source_len)), ops.convert_to_tensor(np.int32(t)))

    def sample(self, source_ids: list[int], n: int = 1, topk: int | None = None, topp: float | None = None,
               temperature: float = 1.0, max_new_tokens: int | None = None,
               seed: int | None = None, max_rows: int = 128, progress: bool = False,
               rows: int | None = None, cancel: threading.Event | None = None) -> list[list[int]]:
        """n sampled targets (token ids, `[SEP]` excluded) for one source, each at most
        `max_new_tokens` (default and cap: `max_target_len`) long. Setting `cancel` (from
        another thread) stops the sampling before its next chunk with `SamplingCancelled`.

        Samples are drawn `rows` at a time (default: n, at most `max_rows`; n larger than
        that in chunks of exactly `rows`, the last one padded, so one compiled program
        serves any n), which bounds memory by the chunk: each row holds its key/value
        cache, `layers x 2 x hidden x max_target_len` values, and a
        row of logits. The noise of sample i is the same however the samples are chunked.
        """
        check_integer("n", n)
        check_integer("max_rows", max_rows)
        check_sampling(topk, topp, temperature, self.backbone.config.vocab_size)
        if max_new_tokens is not None:
            check_integer("max_new_tokens", max_new_tokens)
        steps = min(max_new_tokens or self.max_target_len, self.max_target_len)
        rows = check_integer("rows", rows) if rows is not None else min(n, max_rows)
        if seed is not None:
            check_integer("seed", seed, minimum=0)  # numpy's generators take no negative seed
        key = (rows, steps, topk, topp, float(temperature))
        with self._samplers_lock:  # threads asking for the same new sampler share one
            if key not in self._samplers:
                def run(logits, source_caches, source_len, noise):
                    return self._sample_loop(logits, source_caches, source_len, noise, topk, topp, temperature, steps)

                program_key = self._key and f"sample {key} {self._key}"
                self._samplers[key] = compile_function(run, self.variables, program_key=program_key)
            sampler = self._samplers[key]
        logits, source_caches, source_len = self.prefill(source_ids)
        noise = np.random.default_rng(seed).random((steps, n), dtype="float32")
        chunks = range(0, n, rows)
        samples = []
        for start in tqdm(chunks, desc="sampling", unit="chunk", disable=not progress or len(chunks) < 2):
            if cancel is not None and cancel.is_set():
                raise SamplingCancelled(f"sampling cancelled after {start} of {n} samples")
            chunk = noise[:, start:start + rows]
            chunk = np.pad(chunk, ((0, 0), (0, rows - chunk.shape[1])))
            outputs = ops.convert_to_numpy(sampler(logits, source_caches, ops.convert_to_tensor(source_len),
                                                   ops.convert_to_tensor(chunk)))
            samples.extend(self._until_end(row) for row in outputs[: n - start])
        return samples

    def beam_search(self, source_ids: list[int], beam_size: int = 4, max_new_tokens: int | None = None) -> list[int]:
        """The highest-scoring target by beam search (sum of log-probabilities), as
        bert4keras: stop when the best beam ends; ended beams leave and the beam narrows."""
        steps = min(max_new_tokens or self.max_target_len, self.max_target_len)
        logits, source_caches, source_len = self.prefill(source_ids)
        caches = self.empty_caches(beam_size)
        log_probs = self._log_softmax(logits)
        outputs, scores, width = np.zeros((1, 0), "int32"), np.zeros((1,), "float64"), beam_size
        for t in range(steps):
            candidates = scores[:, None] + log_probs[: len(scores)]
            flat = np.argsort(-candidates, axis=None, kind="stable")[:width]
            rows, tokens = np.divmod(flat, candidates.shape[1])
            outputs = np.concatenate([outputs[rows], tokens[:, None]], axis=1)
            scores = candidates[rows, tokens]
            ended = tokens == self.end_id
            if ended[np.argmax(scores)]:
                return outputs[np.argmax(scores), :-1].tolist()
            outputs, scores, rows, tokens = outputs[~ended], scores[~ended], rows[~ended], tokens[~ended]
            width = len(scores)
            if t == steps - 1:
                break
            padding = np.zeros(beam_size - width, "int64")
            order = ops.convert_to_tensor(np.concatenate([rows, padding]))
            caches = self._map_caches(lambda part, order=order: ops.take(part, order, axis=0), caches)
            logits, caches = self.step(np.concatenate([tokens, padding]), source_caches, caches, source_len, t)
            log_probs = self._log_softmax(logits)
        return self._until_end(outputs[int(np.argmax(scores))])

    @staticmethod
    def _log_softmax(logits) -> np.ndarray:
        logits = ops.convert_to_numpy(ops.cast(logits, "float32")).astype("float64")
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        log_probs[:, 0] = -np.inf  # never [PAD]
        return log_probs

    def _until_end(self, row) -> list[int]:
        row = [int(t) for t in row]
        return row[: row.index(self.end_id)] if self.end_id in row else row
