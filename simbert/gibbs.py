"""Gibbs sampling with the MLM head: n chains that rewrite a sentence one token at a time.

The algorithm (bert4keras' examples/basic_gibbs_sampling_via_mlm.py, its chains run
side by side in one compiled loop). A chain starts from `x = [CLS] t_1 ... t_L [SEP]`
(a text's tokens, or L `[MASK]`s) and, at every step s = 0, 1, ..., steps - 1:

    i    = E[j[s]]                      a position drawn uniformly from the editable ones E
    x[i] = [MASK]
    p    = softmax(MLM logits of x at i / temperature) over the allowed tokens,
           kept to the `topk` largest and renormalised when topk is set
    x[i] = the first token whose cumulative p exceeds u[s] * sum(p)   (inverse CDF)

and its sample after step s is x; the samples after `burn_in` steps are returned. The
position 0 and the last one (`[CLS]`, `[SEP]`) are never editable, so neither changes, and
the length never does. The allowed tokens are every token but the excluded ones
(`GibbsSampler.from_tokenizer`: every bracketed token, `[PAD] [UNK] [CLS] [SEP] [MASK]`
and `[unusedN]`; bert4keras' example samples from the whole vocabulary): `[PAD]` would
turn the position into padding, and the others decode to nothing.

The model reads x with every segment id 0, so a UniLM model's mask (`c = cumsum(segment
ids)`, i sees j iff c[j] <= c[i]) is the plain bidirectional one, as an encoder's.

The noise is drawn on the host from the seed, by two generators spawned from
`np.random.default_rng(seed)`: `j = first.integers(0, len(E), (steps, n))` and `u =
second.random((steps, n), float32)`; column c is chain c's, and a longer run's first
steps are a shorter run's. A step-by-step numpy loop with the same noise gives the same
samples (tests/test_gibbs.py), and so do TensorFlow and JAX.

Compiled programs: chains run `max_rows` at a time, rows padded to a power of two and
the sequence to a multiple of 16 with `[PAD]` (`simbert.shapes.ShapeBuckets`), steps
`STEP_CHUNK` per call of a `while_loop` whose trip count is an input, and the
temperature, `[MASK]` id and the excluded tokens are inputs too: one program per (rows,
length) bucket and `topk`, whatever the text, n, steps or temperature. The loop returns
only the token written at each step; the host rebuilds the samples from it and the
positions it drew.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
from keras import ops

from simbert.arguments import check_integer, check_sampling
from simbert.compiled import compile_function
from simbert.layers import NEGATIVE_INFINITY
from simbert.models import Transformer
from simbert.shapes import ShapeBuckets
from simbert.tokenizer import Tokenizer, is_special

STEP_CHUNK = 256  # steps run by one call of the compiled loop


def pick_masked_tokens(logits, uniform, topk: int | None = None):
    """One token per row of `logits` (rows, vocab) by inverse CDF on `uniform` (rows,) in
    [0, 1): the first token whose cumulative probability exceeds `uniform * total`, of
    `softmax(logits)` kept to the `topk` largest (ties to the lower id). A token of
    probability 0 (an excluded one) is never picked, even where rounding puts the
    threshold at the total."""
    logits = ops.cast(logits, "float32")
    indices = None
    if topk is not None:
        logits, indices = ops.top_k(logits, topk)
    probabilities = ops.softmax(logits, axis=-1)
    cumulative = ops.cumsum(probabilities, axis=-1)
    threshold = uniform[:, None] * cumulative[:, -1:]
    choice = ops.sum(ops.cast(cumulative <= threshold, "int32"), axis=-1)
    width = ops.shape(probabilities)[-1]
    last = width - 1 - ops.argmax(ops.cast(ops.flip(probabilities > 0, axis=-1), "int32"), axis=-1)
    choice = ops.minimum(choice, ops.cast(last, "int32"))
    if indices is None:
        return choice
    return ops.squeeze(ops.take_along_axis(indices, choice[:, None], axis=-1), -1)


class GibbsSampler:
    """Gibbs sampling of sentences from a `Transformer`'s MLM head (see the module docstring
    for the algorithm, its noise and its compiled programs).

    Args:
        backbone: a `Transformer` built with an MLM head ("encoder" or "unilm"; run with
            segment ids 0, both attend both ways).
        mask_id: the `[MASK]` id.
        excluded_ids: tokens never written (at least `[PAD]`, id 0, which is padding).
        shapes: the padded shapes (default: lengths to multiples of 16 up to the model's
            `max_position_embeddings`, rows to powers of two).
        max_rows: chains run side by side in one call, at most (more run in turns).

    Example:
        >>> sampler = GibbsSampler.from_tokenizer(backbone, tokenizer)
        >>> start = [tokenizer.cls_id] + [tokenizer.mask_id] * 8 + [tokenizer.sep_id]
        >>> samples = sampler.sample(start, n=4, steps=100, burn_in=20, seed=0)  # (4, 80, 10) ids
    """

    def __init__(self, backbone: Transformer, mask_id: int, excluded_ids: Sequence[int] = (0,),
                 shapes: ShapeBuckets | None = None, max_rows: int = 128):
        if backbone.mlm_dense is None:
            raise ValueError("Gibbs sampling needs a model built with with_mlm")
        vocab_size = backbone.config.vocab_size
        check_integer("mask_id", mask_id, 0, vocab_size - 1)
        excluded = sorted({0, *(check_integer("excluded_ids", int(i), 0, vocab_size - 1) for i in excluded_ids)})
        if len(excluded) == vocab_size:
            raise ValueError(f"excluded_ids exclude all {vocab_size} tokens of the vocabulary; none is left to sample")
        self.backbone = backbone
        self.mask_id = mask_id
        self.excluded_ids = excluded
        self.allowed = vocab_size - len(excluded)
        self.bias = np.zeros((vocab_size,), "float32")
        self.bias[excluded] = NEGATIVE_INFINITY
        self.shapes = shapes or ShapeBuckets(max_length=backbone.config.max_length
                                             or backbone.config.max_position_embeddings)
        self.max_rows = check_integer("max_rows", max_rows)
        self.variables = backbone.variables
        model = backbone.computation
        self._key = model and f"gibbs steps {STEP_CHUNK} {model}"
        self._loops = {}  # topk -> CompiledFunction
        self._loops_lock = threading.Lock()

    @classmethod
    def from_tokenizer(cls, backbone: Transformer, tokenizer: Tokenizer, **options) -> "GibbsSampler":
        """The sampler of a vocabulary: `[MASK]` its mask, every bracketed token
        (`[PAD] [UNK] [CLS] [SEP] [MASK] [unusedN]`) excluded."""
        if tokenizer.mask_id is None:
            raise ValueError("the vocabulary has no [MASK] token, which Gibbs sampling writes at the position it "
                             "resamples")
        excluded = [i for token, i in tokenizer.token_dict.items() if is_special(token)]
        return cls(backbone, tokenizer.mask_id, [tokenizer.pad_id, *excluded], **options)

    @property
    def compiled_programs(self) -> int:
        """Programs compiled so far: one per (rows, length) bucket and topk."""
        return sum(loop.programs for loop in self._loops.values())

    # ------------------------------------------------------------- the loop
    def _head(self, bias):
        """`[E^T; b + bias]` (width + 1, vocab), float32: the MLM output layer (the tied
        embedding E and output bias b of `Transformer.mlm_logits`) with the excluded
        tokens' `bias` as one matrix, so that `[h, 1] @ head` is the logits in one dot.
        (XLA on a CPU fuses `h @ E^T + b` into one loop that took 10 ms a step where the
        dot alone takes 1; docs/benchmarks.md.)"""
        backbone = self.backbone
        embeddings = ops.cast(backbone.token_embedding.embeddings, "float32")
        return ops.concatenate([ops.transpose(embeddings),
                                (ops.cast(backbone.mlm_bias.bias, "float32") + bias)[None, :]], axis=0)

    def _steps(self, token_ids, positions, uniform, count, temperature, bias, mask_id, topk):
        """Run steps 0 .. count - 1 of the chains `token_ids` (rows, length): step s
        resamples position `positions[s]` (rows,) with noise `uniform[s]`. Returns the
        chains after them and the token written at each step, (STEP_CHUNK, rows)."""
        rows, length = ops.shape(token_ids)
        columns = ops.arange(length, dtype="int32")[None, :]
        segment_ids = ops.zeros_like(token_ids)  # one segment: the UniLM mask is bidirectional
        head = self._head(bias)
        one = ops.ones((rows, 1), "float32")

        def step(s, state):
            token_ids, written = state
            position = positions[s]
            here = ops.equal(columns, position[:, None])
            masked = ops.where(here, mask_id, token_ids)
            x = self.backbone.sequence_output(masked, segment_ids, output_positions=position[:, None])
            x = ops.cast(self.backbone.mlm_norm(self.backbone.mlm_dense(x[:, 0])), "float32")
            logits = ops.matmul(ops.concatenate([x, one], axis=1) / temperature, head)  # mlm_logits / temperature
            tokens = pick_masked_tokens(logits, uniform[s], topk)
            tokens = ops.cast(tokens, "int32")
            written = ops.slice_update(written, (s, 0), tokens[None, :])
            return ops.where(here, tokens[:, None], token_ids), written

        written = ops.zeros((STEP_CHUNK, rows), "int32")
        return ops.fori_loop(0, count, step, (token_ids, written))

    def _loop(self, topk: int | None):
        with self._loops_lock:  # threads asking for the same new loop share one
            if topk not in self._loops:
                def run(token_ids, positions, uniform, count, temperature, bias, mask_id):
                    return self._steps(token_ids, positions, uniform, count, temperature, bias, mask_id, topk)

                self._loops[topk] = compile_function(run, self.variables,
                                                     program_key=self._key and f"topk {topk} {self._key}")
            return self._loops[topk]

    # --------------------------------------------------------------- public
    def editable_positions(self, length: int, positions: Sequence[int] | None = None) -> np.ndarray:
        """The indices into a chain of `length` ids (`[CLS]` at 0) that may be resampled,
        sorted: those of the tokens `positions` (counted from 0 after `[CLS]`, each in 0 ..
        length - 3), default every token between `[CLS]` and `[SEP]`."""
        if positions is None:
            return np.arange(1, length - 1, dtype="int32")
        if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
            raise ValueError(f"positions should be a sequence of integers, got {positions!r}")
        positions = [int(p) if isinstance(p, np.integer) else p for p in positions]
        for position in positions:
            check_integer("positions", position, 0, length - 3)
        if not positions:
            raise ValueError("positions is empty: no token would change")
        if len(set(positions)) != len(positions):
            raise ValueError(f"positions holds a position twice: {positions}")
        return np.array(sorted(positions), "int32") + 1

    def noise(self, editable: np.ndarray, n: int, steps: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
        """`(positions (steps, n) int32, uniform (steps, n) float32)`: the position each
        chain resamples at each step and its uniform noise, from `seed` (module docstring)."""
        positions, uniform = np.random.default_rng(seed).spawn(2)
        choices = positions.integers(0, len(editable), (steps, n))
        uniform = uniform.random((steps, n), dtype="float32")
        return editable[choices].astype("int32"), uniform

    def sample(self, token_ids: Sequence[int], n: int = 1, steps: int = 200, burn_in: int = 50,
               topk: int | None = None, temperature: float = 1.0, positions: Sequence[int] | None = None,
               seed: int | None = None) -> np.ndarray:
        """n Gibbs chains from `token_ids`; the samples after `burn_in` steps.

        Args:
            token_ids: the start, `[CLS] ... [SEP]` (no `[PAD]`); its first and last tokens
                never change.
            n: chains, run side by side.
            steps: steps per chain (one position resampled each).
            burn_in: steps whose samples are dropped, 0 .. steps - 1.
            topk: sample from the `topk` most likely allowed tokens (None: all of them).
            temperature: divide the logits by it (above 0).
            positions: the tokens that may change, counted from 0 after `[CLS]` (so
                `token_ids[p + 1]`, p in 0 .. len - 3); default all between the first and
                the last.
            seed: seed of the noise (`noise`); the same seed gives the same samples.

        Returns:
            int32 `(n, steps - burn_in, len(token_ids))`: chain c's sequence after step
            `burn_in + k` at `[c, k]`.

        Example:
            >>> sampler.sample([2, 4, 4, 4, 3], n=2, steps=10, burn_in=5, seed=0).shape
            (2, 5, 5)
        """
        start = self._check_start(token_ids)
        check_integer("n", n)
        check_integer("steps", steps)
        check_integer("burn_in", burn_in, 0, steps - 1)
        check_sampling(topk, None, temperature, self.allowed)
        if seed is not None:
            check_integer("seed", seed, minimum=0)  # numpy's generators take no negative seed
        editable = self.editable_positions(len(start), positions)
        chosen, uniform = self.noise(editable, n, steps, seed)
        written = np.zeros((steps, n), "int32")
        loop = self._loop(topk)
        length = self.shapes.length(len(start))
        for first in range(0, n, self.max_rows):
            chains = min(n - first, self.max_rows)
            rows = self.shapes.rows(chains, self.max_rows)
            state = np.zeros((rows, length), "int32")
            state[:, :len(start)] = start
            state = ops.convert_to_tensor(state)
            for begin in range(0, steps, STEP_CHUNK):
                count = min(STEP_CHUNK, steps - begin)
                part = np.full((STEP_CHUNK, rows), editable[0], "int32")
                part[:count, :chains] = chosen[begin:begin + count, first:first + chains]
                noise = np.zeros((STEP_CHUNK, rows), "float32")
                noise[:count, :chains] = uniform[begin:begin + count, first:first + chains]
                state, tokens = loop(state, ops.convert_to_tensor(part), ops.convert_to_tensor(noise),
                                     ops.convert_to_tensor(np.int32(count)),
                                     ops.convert_to_tensor(np.float32(temperature)),
                                     ops.convert_to_tensor(self.bias), ops.convert_to_tensor(np.int32(self.mask_id)))
                written[begin:begin + count, first:first + chains] = ops.convert_to_numpy(tokens)[:count, :chains]
        return self.replay(start, chosen, written, burn_in)

    @staticmethod
    def replay(start: np.ndarray, positions: np.ndarray, written: np.ndarray, burn_in: int) -> np.ndarray:
        """The samples of chains from `start` that wrote `written[s, c]` at `positions[s, c]`
        at each step s: `(n, steps - burn_in, len(start))`, those after `burn_in` steps."""
        steps, n = positions.shape
        chains = np.tile(np.asarray(start, "int32"), (n, 1))
        samples = np.empty((n, steps - burn_in, len(start)), "int32")
        rows = np.arange(n)
        for s in range(steps):
            chains[rows, positions[s]] = written[s]
            if s >= burn_in:
                samples[:, s - burn_in] = chains
        return samples

    def _check_start(self, token_ids) -> np.ndarray:
        start = np.asarray(token_ids)
        if start.ndim != 1 or not np.issubdtype(start.dtype, np.integer):
            raise ValueError(f"token_ids should be one sequence of integer ids, got {token_ids!r}")
        vocab_size = self.backbone.config.vocab_size
        if len(start) < 3:
            raise ValueError(f"token_ids should hold [CLS], at least one token and [SEP], got {len(start)} ids")
        if len(start) > self.shapes.max_length:
            raise ValueError(f"token_ids has {len(start)} ids, more than the longest sequence, "
                             f"{self.shapes.max_length}")
        if start.min() < 0 or start.max() >= vocab_size:
            raise ValueError(f"token_ids hold {start.min()} .. {start.max()}; expected 0 <= id < {vocab_size}")
        if (start == 0).any():
            raise ValueError(f"token_ids hold [PAD] (id 0) at {np.flatnonzero(start == 0).tolist()}; it would be "
                             f"read as padding")
        return start.astype("int32")
