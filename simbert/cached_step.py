"""The cached contrastive step (GradCache, Gao et al. 2021): the similarity loss spans the
whole batch of B rows while a forward pass keeps activations for M rows at a time
(`training.similarity_chunk`).

With the batch cut into chunks c of M rows, pooled [CLS] vectors `v = [v_1; ...; v_C]`
and the embedding loss `E(v) = w_sim similarity(v) [+ w_dist distillation(v)]`:

    pass 1   v_c = pool(f(x_c; θ))                  each chunk, no activations kept
    G        = ∂E/∂v                                (B, hidden): one small backward
    pass 2   s_c = <v_c(θ), G_c> + w_s2s Σ_{t∈c} w_t CE_t / Σ_{t∈batch} w_t
             ∇θ L = Σ_c ∇θ s_c                       one chunk's activations at a time

so the update is the plain step's for `L = w_s2s seq2seq + E` (the chain rule through
v; the seq2seq loss stays the mean over every target token of the batch), one optimizer
update. Dropout draws the same masks for a chunk in both passes: each dropout seed
generator reads `state_0 + c Δ` in chunk c (Δ: how far one forward pass advances it) and
is left at `state_0 + C Δ`.

Data parallel (JAX, `simbert.distribution`): the program is written for the global batch,
sharded by rows over D devices. Chunk c takes rows [cM, (c+1)M) of every device's shard,
`(B, ...) -> (D, B/D, ...)[:, cM:(c+1)M] -> (D M, ...)`, so M counts rows per device,
each device works on its own shard and the similarity softmax stays global (all B rows).

`cached_step` picks the backend's implementation from the `Platform` (as
`simbert.compiled` does): `JaxCachedStep` (stateless, `jax.value_and_grad` over
`stateless_call`, `jax.lax` loops) or `TensorFlowCachedStep` (`tf.GradientTape`,
`tf.while_loop` running one chunk at a time).
"""

from __future__ import annotations

import keras
from keras import ops

from simbert.kernels import Platform

SEED_STATE = "seed_generator_state"  # the name Keras gives a SeedGenerator's state variable


class ChunkError(ValueError):
    """`training.similarity_chunk` does not divide the rows each device holds."""


def check_similarity_chunk(chunk: int | None, batch_size: int, devices: int = 1) -> None:
    """Raise a `ChunkError` unless `chunk` (rows per device per chunk) divides the
    `batch_size / devices` rows each device holds (None: no chunking, always fine).

    Example:
        >>> check_similarity_chunk(8, batch_size=64, devices=4)   # 16 rows a device: 2 chunks
    """
    if chunk is None:
        return
    if chunk < 1 or batch_size % devices or (batch_size // devices) % chunk:
        raise ChunkError(f"training.similarity_chunk {chunk} should divide the {batch_size / devices:g} rows each "
                         f"device holds (training.batch_size {batch_size} over {devices} device(s))")


def uses_cached_step(chunk: int | None, batch_size: int, devices: int = 1) -> bool:
    """Whether `training.similarity_chunk` asks for chunks smaller than a device's rows."""
    return chunk is not None and chunk < batch_size // devices


class CachedContrastiveStep:
    """The backend-neutral maths of the cached step (`keras.ops`); a subclass per backend
    runs the loops and the gradients, and is the `train_step` of `model`.

    Args:
        model: the training model: inputs `(token_ids, segment_ids, target_positions)`,
            outputs `seq2seq` (logits at the target positions) and `similarity` (pooled).
        losses: `Seq2SeqLoss`, `SimilarityLoss` and, with a teacher, `DistillationLoss`
            instances by output name ("seq2seq", "similarity", "distillation").
        weights: each loss's weight, by the same names.
        chunk: M, rows per device in a chunk.
        devices: D, the devices the batch is sharded over (1 without data parallel).
        embedder: `model`'s `similarity` output alone, on the same layers (None: `model`);
            pass 1 runs it where unused outputs are not pruned (TensorFlow's graph: the
            MLM head would run for nothing); its dropout layers and shapes are `model`'s.

    `trackers`: the `keras.metrics.Mean` of each unweighted loss (`seq2seq_loss`, ...),
    for the model to own; with Keras' own `loss` tracker they give the plain step's logs,
    running means since the start of `fit`.
    """

    def __init__(self, model: keras.Model, losses: dict, weights: dict, chunk: int, devices: int = 1,
                 embedder: keras.Model | None = None):
        self.model = model
        self.embedder = embedder or model
        self.losses = dict(losses)
        self.weights = dict(weights)
        self.chunk, self.devices = chunk, devices
        self.trackers = [keras.metrics.Mean(name=f"{name}_loss") for name in self.losses]
        other = [v.path for v in model.non_trainable_variables if v.name != SEED_STATE]
        if other:
            raise ValueError(f"the cached contrastive step (training.similarity_chunk) keeps no state but dropout "
                             f"seeds; the model has non-trainable variables {other[:3]}")

    # ------------------------------------------------------------------ chunks
    def chunk_count(self, batch):
        """C = B / (D M)."""
        return batch // (self.devices * self.chunk)

    def rows(self, array, c):
        """Chunk c of a `(B, ...)` array: `(D, B/D, ...)[:, cM:(c+1)M]` as `(D M, ...)`."""
        shape = ops.shape(array)
        rest = tuple(shape[1:])
        per_device = ops.reshape(array, (self.devices, -1, *rest))
        part = ops.slice(per_device, (0, c * self.chunk) + (0,) * len(rest), (self.devices, self.chunk, *rest))
        return ops.reshape(part, (self.devices * self.chunk, *rest))

    def batch_rows(self, stacked):
        """The inverse of `rows` for all chunks: `(C, D M, ...)` back to `(B, ...)` in batch order."""
        shape = ops.shape(stacked)
        rest = tuple(shape[2:])
        split = ops.reshape(stacked, (shape[0], self.devices, self.chunk, *rest))
        order = (1, 0, 2, *range(3, 3 + len(rest)))
        return ops.reshape(ops.transpose(split, order), (-1, *rest))

    def chunk_inputs(self, x, c):
        return [self.rows(array, c) for array in x]

    @staticmethod
    def seeds_at(start, delta, c):
        """The dropout seed states of chunk c: `start + c delta`."""
        return [value + ops.cast(c, value.dtype) * step for value, step in zip(start, delta)]

    # ------------------------------------------------------------------ losses
    def embedding_loss(self, pooled, y):
        """`E(v)` on the whole batch's pooled vectors and the unweighted parts by name."""
        parts = {"similarity": self.losses["similarity"](y["similarity"], pooled)}
        if "distillation" in self.losses:
            parts["distillation"] = self.losses["distillation"](y["distillation"], pooled)
        return sum(self.weights[name] * value for name, value in parts.items()), parts

    def target_weight(self, targets):
        """`max(Σ_t w_t, 1)` over the batch's target tokens (targets `(B, T, 2)`)."""
        return ops.maximum(ops.sum(ops.cast(targets[..., 1], "float32")), 1.0)

    def token_loss_sum(self, targets, logits):
        """`Σ_t w_t CE_t` of a chunk: its `Seq2SeqLoss` mean times its target weight."""
        return self.losses["seq2seq"](targets, logits) * self.target_weight(targets)

    def surrogate(self, outputs, gradient, targets, total_weight):
        """`s_c = <v_c, G_c> + w_s2s Σ_{t∈c} w_t CE_t / W` and the chunk's token-loss sum."""
        tokens = self.token_loss_sum(targets, outputs["seq2seq"])
        pooled = ops.cast(outputs["similarity"], "float32")
        return ops.sum(pooled * gradient) + self.weights["seq2seq"] * tokens / total_weight, tokens

    def total_loss(self, embedding, token_sum, total_weight, parts):
        """The plain step's `loss`, and every part (seq2seq included) by name."""
        parts = {"seq2seq": token_sum / total_weight, **parts}
        return embedding + self.weights["seq2seq"] * parts["seq2seq"], parts

    def record(self, loss, parts, rows):
        """Update the `loss` and `<name>_loss` trackers (weighted by the batch's rows, as
        Keras does) and return the model's logs."""
        trackers = {metric.name: metric for metric in self.model.metrics}
        trackers["loss"].update_state(loss, sample_weight=rows)
        for name, value in parts.items():
            trackers[f"{name}_loss"].update_state(value, sample_weight=rows)
        return self.model.get_metrics_result()

    def train_step(self, *args):
        raise NotImplementedError


class JaxCachedStep(CachedContrastiveStep):
    """Keras' JAX `train_step(state, data) -> (logs, state)`, stateless: pass 1 a
    `jax.lax.scan`, pass 2 a `jax.lax.fori_loop` of `jax.value_and_grad` over
    `model.stateless_call`, each iteration holding one chunk's activations."""

    def loss_and_gradients(self, trainable, non_trainable, optimizer_values, x, y):
        """`(loss, parts), grads, non_trainable`: the plain step's loss and its parts, the
        gradients of the (optimizer-scaled) loss with respect to `trainable`, and the dropout
        seed states after the step, all as values."""
        import jax

        model, optimizer = self.model, self.model.optimizer
        chunks = self.chunk_count(x[0].shape[0])

        def embed(delta, c):
            seeds = self.seeds_at(non_trainable, delta, c)
            outputs, after = model.stateless_call(trainable, seeds, self.chunk_inputs(x, c), training=True)
            delta = [new - old for new, old in zip(after, seeds)]
            return delta, ops.cast(outputs["similarity"], "float32")

        zeros = [ops.zeros_like(value) for value in non_trainable]
        delta, stacked = jax.lax.scan(embed, zeros, ops.arange(chunks))
        (embedding, parts), gradient = jax.value_and_grad(
            lambda pooled: self.embedding_loss(pooled, y), has_aux=True)(self.batch_rows(stacked))
        total_weight = self.target_weight(y["seq2seq"])

        def scaled_surrogate(values, c):
            seeds = self.seeds_at(non_trainable, delta, c)
            outputs, _ = model.stateless_call(values, seeds, self.chunk_inputs(x, c), training=True)
            value, tokens = self.surrogate(outputs, self.rows(gradient, c), self.rows(y["seq2seq"], c), total_weight)
            with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, optimizer_values))):
                return optimizer.scale_loss(value), tokens

        def accumulate(c, carry):
            grads, token_sum = carry
            (_, tokens), chunk_grads = jax.value_and_grad(scaled_surrogate, has_aux=True)(trainable, c)
            return [g + h for g, h in zip(grads, chunk_grads)], token_sum + tokens

        grads, token_sum = jax.lax.fori_loop(0, chunks, accumulate,
                                             ([ops.zeros_like(v) for v in trainable], ops.zeros((), "float32")))
        return (self.total_loss(embedding, token_sum, total_weight, parts), grads,
                self.seeds_at(non_trainable, delta, chunks))

    def train_step(self, state, data):
        model = self.model
        trainable, non_trainable, optimizer_values, metric_values = state
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        (loss, parts), grads, non_trainable = self.loss_and_gradients(trainable, non_trainable, optimizer_values,
                                                                      x, y)
        trainable, optimizer_values = model.optimizer.stateless_apply(optimizer_values, grads, trainable)
        with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables, metric_values))) as scope:
            logs = self.record(loss, parts, x[0].shape[0])
        metric_values = [value if (new := scope.get_current_value(variable)) is None else new
                         for variable, value in zip(model.metrics_variables, metric_values)]
        return logs, (trainable, non_trainable, optimizer_values, metric_values)


class TensorFlowCachedStep(CachedContrastiveStep):
    """Keras' TensorFlow `train_step(data) -> logs`: each pass a `tf.while_loop` that runs
    one chunk at a time (`parallel_iterations=1`), pass 2 a `tf.GradientTape` per chunk;
    the dropout seeds are mapped per chunk through a `keras.StatelessScope`."""

    def _forward(self, network, x, seeds, c):
        """`network` (the model or the embedder) on chunk c, the dropout seeds mapped to
        `seeds` (the model's variables, which the embedder shares): outputs, new seeds."""
        variables = self.model.non_trainable_variables
        with keras.StatelessScope(state_mapping=list(zip(variables, seeds))) as scope:
            outputs = network(self.chunk_inputs(x, c), training=True)
        return outputs, [scope.get_current_value(v) for v in variables]

    def loss_and_gradients(self, x, y):
        """`(loss, parts), grads`: the plain step's loss and its parts and the gradients of
        the (optimizer-scaled) loss with respect to the trainable variables; the dropout
        seeds advance as the step's."""
        import tensorflow as tf

        model = self.model
        chunks = self.chunk_count(tf.shape(x[0])[0])
        variables, trainable = model.non_trainable_variables, model.trainable_variables
        start = [tf.identity(v.value) for v in variables]

        def embed(c, delta, vectors):
            seeds = self.seeds_at(start, delta, c)
            outputs, after = self._forward(self.embedder, x, seeds, c)
            delta = [tf.zeros_like(seed) if new is None else new - seed for new, seed in zip(after, seeds)]
            return c + 1, delta, vectors.write(c, tf.cast(outputs["similarity"], "float32"))

        _, delta, vectors = tf.while_loop(
            lambda c, *_: c < chunks, embed,
            (tf.constant(0), [tf.zeros_like(s) for s in start], tf.TensorArray("float32", size=chunks)),
            parallel_iterations=1)
        pooled = self.batch_rows(vectors.stack())
        with tf.GradientTape() as tape:
            tape.watch(pooled)
            embedding, parts = self.embedding_loss(pooled, y)
        gradient = tape.gradient(embedding, pooled)
        total_weight = self.target_weight(y["seq2seq"])

        def accumulate(c, grads, token_sum):
            with tf.GradientTape() as chunk_tape:
                outputs, _ = self._forward(model, x, self.seeds_at(start, delta, c), c)
                value, tokens = self.surrogate(outputs, self.rows(gradient, c), self.rows(y["seq2seq"], c),
                                               total_weight)
                value = model.optimizer.scale_loss(value)
            chunk_grads = chunk_tape.gradient(value, trainable)
            grads = [g if h is None else g + tf.convert_to_tensor(h) for g, h in zip(grads, chunk_grads)]
            return c + 1, grads, token_sum + tokens

        _, grads, token_sum = tf.while_loop(
            lambda c, *_: c < chunks, accumulate,
            (tf.constant(0), [tf.zeros(v.shape, v.dtype) for v in trainable], tf.zeros((), "float32")),
            parallel_iterations=1)
        for variable, value in zip(variables, self.seeds_at(start, delta, chunks)):
            variable.assign(value)
        return self.total_loss(embedding, token_sum, total_weight, parts), grads

    def train_step(self, data):
        import tensorflow as tf

        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        (loss, parts), grads = self.loss_and_gradients(x, y)
        self.model.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return self.record(loss, parts, tf.shape(x[0])[0])


def cached_step(model: keras.Model, losses: dict, weights: dict, chunk: int, devices: int = 1,
                platform: Platform | None = None, embedder: keras.Model | None = None) -> CachedContrastiveStep:
    """The cached step of `model` for the backend of `platform` (default: the active one).

    Args:
        model: the training model (see `CachedContrastiveStep`).
        losses: the loss instances by output name.
        weights: their weights.
        chunk: `training.similarity_chunk`, rows per device in a chunk.
        devices: the devices the batch is sharded over.
        platform: the backend's policy.
        embedder: `model`'s `similarity` output alone, for pass 1 (see `CachedContrastiveStep`).

    Returns:
        A `JaxCachedStep` or a `TensorFlowCachedStep`; its `train_step` is the model's.

    Example:
        >>> step = cached_step(model, losses, {"seq2seq": 1.0, "similarity": 1.0}, chunk=8)
    """
    platform = platform or Platform.current()
    kind = JaxCachedStep if platform.backend == "jax" else TensorFlowCachedStep
    return kind(model, losses, weights, chunk, devices, embedder)
