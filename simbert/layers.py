"""Transformer layers written with `keras.ops` only (TensorFlow and JAX both run them).

Attention takes a boolean mask `(batch, query_len, key_len)`: True where a query may
see a key. The UniLM and padding masks are built by `build_attention_mask`.
"""

from __future__ import annotations

import dataclasses
import math
import random

import keras
from keras import ops

from simbert.kernels import Kernels

LAYER_NORM_EPSILON = 1e-12
# Added where a logit or score must vanish under softmax (exp underflows to exactly 0 in
# float32); finite, so that masked rows stay free of NaN.
NEGATIVE_INFINITY = -1e30

SQRT_HALF = 0.7071067811865476
INVERSE_SQRT_TWO_PI = 0.3989422804014327


@ops.custom_gradient
def gelu(x):
    """Exact GELU `x Phi(x)`, `Phi(x) = (1 + erf(x / sqrt 2)) / 2`, computed in float32
    whatever the dtype of `x`; the gradient `Phi(x) + x phi(x)`, `phi(x) = exp(-x^2/2) /
    sqrt(2 pi)`, is written out so the backward pass is one short expression."""
    x32 = ops.cast(x, "float32")
    cdf = 0.5 * (1.0 + ops.erf(x32 * SQRT_HALF))

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        density = ops.exp(-0.5 * x32 * x32) * INVERSE_SQRT_TWO_PI
        return upstream * ops.cast(cdf + x32 * density, upstream.dtype)

    return ops.cast(x32 * cdf, x.dtype), grad


# bert_config.json `hidden_act` names -> activations. "gelu" is the erf form.
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": lambda x: keras.activations.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: keras.activations.gelu(x, approximate=True),
    "relu": keras.activations.relu,
    "swish": keras.activations.silu,
    "silu": keras.activations.silu,
    "tanh": keras.activations.tanh,
    "linear": keras.activations.linear,
}


def get_activation(name: str, written_gelu: bool = True):
    """The activation `name`; "gelu" is `gelu` above, or with `written_gelu` False
    Keras' exact GELU (autodiff gradient, the compute dtype's math)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    if name == "gelu" and not written_gelu:
        return lambda x: keras.activations.gelu(x, approximate=False)
    return ACTIVATIONS[name]


@keras.saving.register_keras_serializable(package="simbert")
class Dropout(keras.layers.Layer):
    """Inverted dropout whose keep mask comes from 16-bit uniform integers drawn two per
    32-bit random word (Keras' Dropout draws one random number per unit, in the compute
    dtype):

        keep = u >= round(rate 2^16),  u ~ U{0, ..., 2^16 - 1}
        y = x keep / p,   p = P(keep) = 1 - round(rate 2^16) / 2^16

    so `p` is `1 - rate` to within 2^-17 in any dtype (bfloat16 noise would quantise it to
    1/128) and `E[y] = x`. The random generator is created when the layer is built, so its
    state variable has a path under the enclosing layers (a resumed run finds it by path).
    `noise_shape` is not supported.
    """

    def __init__(self, rate: float, noise_shape=None, seed: int | None = None, **kwargs):
        if noise_shape is not None:
            raise ValueError(f"Dropout: noise_shape is not supported, got {noise_shape}")
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate should be in [0, 1), got {rate}")
        self.rate = rate
        self.seed = seed
        self.threshold = round(rate * 2 ** 16)
        # Drawn now, when dropping anything, as Keras' Dropout draws it (from the seed that
        # `keras.utils.set_random_seed` set).
        self.generator_seed = seed if seed is not None or not self.threshold else random.randint(1, int(1e9))
        self.seed_generator = None

    def build(self, input_shape=None):
        if self.threshold:
            self.seed_generator = keras.random.SeedGenerator(self.generator_seed, name="seed_generator")

    def call(self, inputs, training=False):
        if not training or self.threshold == 0:
            return inputs
        shape = tuple(ops.shape(inputs))
        width = shape[-1]
        # (..., ceil(width / 2), 1) words viewed as (..., ceil(width / 2), 2) halves; the
        # trailing 1 keeps the last axis static for `view` when the widths are not.
        words = keras.random.randint(shape[:-1] + ((width + 1) // 2, 1), -2 ** 31, 2 ** 31 - 1, dtype="int32",
                                     seed=self.seed_generator)
        halves = ops.reshape(ops.view(words, "uint16"), shape[:-1] + (-1,))
        keep = halves[..., :width] >= self.threshold
        scale = 2 ** 16 / (2 ** 16 - self.threshold)
        return inputs * ops.where(keep, ops.cast(scale, inputs.dtype), ops.cast(0, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def initializer(stddev: float = 0.02):
    return keras.initializers.TruncatedNormal(stddev=stddev)


def build_attention_mask(token_ids, segment_ids, application: str):
    """Boolean `(batch, len, len)` mask; position i may attend to j when True.

    encoder: j is not padding (token id 0).
    unilm:   also `c[j] <= c[i]` with `c = cumsum(segment_ids)`, so the source is
             bidirectional, the target causal, and the source never sees the target.
    """
    if application == "unilm":
        cumulative = ops.cumsum(ops.cast(segment_ids, "int32"), axis=1)
    else:
        cumulative = ops.zeros_like(segment_ids, dtype="int32")
    visible = cumulative[:, None, :] <= cumulative[:, :, None]
    return ops.logical_and(visible, ops.not_equal(token_ids, 0)[:, None, :])


def rotary(x, positions):
    """Rotary position encoding of `x` (batch, len, heads, head_size) at `positions`,
    `(len,)` shared by the batch or `(batch, len)`.

    Pairs `(x[2i], x[2i+1])` are rotated by the angle `position * 10000^(-2i/head_size)`.
    """
    head_size = ops.shape(x)[-1]
    inverse_frequency = ops.power(10000.0, -ops.arange(0, head_size, 2, dtype="float32") / head_size)
    angles = ops.cast(positions, "float32")[..., None] * inverse_frequency
    sin = ops.expand_dims(ops.repeat(ops.sin(angles), 2, axis=-1), -2)  # (..., len, 1, head_size)
    cos = ops.expand_dims(ops.repeat(ops.cos(angles), 2, axis=-1), -2)
    rotated = ops.reshape(ops.stack([-x[..., 1::2], x[..., ::2]], axis=-1), ops.shape(x))
    return x * ops.cast(cos, x.dtype) + rotated * ops.cast(sin, x.dtype)


def dense_rows(dense, x, shape):
    """`dense` applied to the rows of `x` (..., features) as one 2-D matmul, which
    TensorFlow fuses with the bias add (a 3-D input would go through a tensordot), the
    result shaped `shape`. Callers read the sizes in `shape` once per layer: on
    TensorFlow each read of an unknown size is several graph ops, and tracing them was
    most of a layer's ops and much of a first call's time."""
    return ops.reshape(dense(ops.reshape(x, (-1, x.shape[-1]))), shape)


def gather_rows(x, positions):
    """`x[b, positions[b, i]]` for `x` (batch, len, features) and `positions` (batch, n).

    Floating `x` is gathered as `onehot(positions) @ x`, exact, whose gradient is one more
    small matmul (a scatter-add is much slower on CPU); boolean `x` by indexing.
    """
    if x.dtype == "bool":
        return ops.take_along_axis(x, positions[:, :, None], axis=1)
    return ops.matmul(ops.one_hot(positions, ops.shape(x)[1], dtype=x.dtype), x)


@keras.saving.register_keras_serializable(package="simbert")
class LayerNorm(keras.layers.LayerNormalization):
    """Keras' LayerNormalization over the last axis, computed in float32, with its
    gradient written out (a few row reductions instead of the generic chain):

        y = g * x_hat + b,   x_hat = (x - mean(x)) / sqrt(var(x) + eps)
        dx = (dy g - mean(dy g) - x_hat mean(dy g x_hat)) / sqrt(var(x) + eps)

    With `written_gradient` False it is Keras' layer as it is (autodiff).
    """

    def __init__(self, written_gradient: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.written_gradient = written_gradient
        if self.axis not in (-1, [-1]) or not (self.center and self.scale) or self.rms_scaling:
            raise ValueError("LayerNorm normalises over the last axis with both gamma and beta; "
                             f"got axis={self.axis}, center={self.center}, scale={self.scale}, "
                             f"rms_scaling={self.rms_scaling}")

    def call(self, inputs):
        if not self.written_gradient:
            return super().call(inputs)
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")

        @ops.custom_gradient
        def normalize(x, gamma, beta):
            x32 = ops.cast(x, "float32")
            centered = x32 - ops.mean(x32, axis=-1, keepdims=True)
            inverse_std = ops.rsqrt(ops.mean(ops.square(centered), axis=-1, keepdims=True) + self.epsilon)
            normalized = centered * inverse_std

            def grad(*args, upstream=None):
                upstream = ops.cast(args[0] if upstream is None else upstream, "float32")
                width = ops.shape(upstream)[-1]
                rows = ops.reshape(upstream, (-1, width))
                d_gamma = ops.sum(rows * ops.reshape(normalized, (-1, width)), axis=0)
                d_normalized = upstream * gamma
                d_x = inverse_std * (d_normalized - ops.mean(d_normalized, axis=-1, keepdims=True)
                                     - normalized * ops.mean(d_normalized * normalized, axis=-1, keepdims=True))
                return ops.cast(d_x, x.dtype), d_gamma, ops.sum(rows, axis=0)

            return ops.cast(normalized * gamma + beta, self.compute_dtype), grad

        return normalize(inputs, gamma, beta)

    def get_config(self):
        return {**super().get_config(), "written_gradient": self.written_gradient}


@keras.saving.register_keras_serializable(package="simbert")
class OneHotEmbedding(keras.layers.Embedding):
    """Keras' Embedding for tables of a few rows (the segment types), looked up as
    `onehot(ids) @ E` in float32: the same rows, but the gradient is a small matmul
    instead of a scatter-add of every token into a few rows (serialised atomic adds on a
    GPU, most of a BERT-base step's time; docs/benchmarks.md, "Figures behind the code")."""

    def call(self, inputs):
        one_hot = ops.one_hot(ops.cast(inputs, "int32"), self.input_dim, dtype="float32")
        return ops.cast(ops.matmul(one_hot, ops.cast(self.embeddings, "float32")), self.compute_dtype)


@keras.saving.register_keras_serializable(package="simbert")
class PositionEmbedding(keras.layers.Layer):
    """Adds learned absolute position vectors: `x + P[start : start + len]`.

    With `hierarchical` = alpha (bert4keras' `hierarchical_position`), the n learned
    vectors `p` reach n^2 positions: with `u = (p - alpha p_0) / (1 - alpha)`, position
    `i n + j` is `alpha u_i + (1 - alpha) u_j`, which is `p_j` for the first n (taken
    from `p` itself there, so those equal the plain table's exactly).
    """

    def __init__(self, max_positions: int, initializer_range: float = 0.02, hierarchical: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.max_positions = max_positions
        self.initializer_range = initializer_range
        self.hierarchical = hierarchical

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.max_positions, input_shape[-1]),
            initializer=initializer(self.initializer_range),
            name="embeddings",
        )

    def call(self, x, start_index=0):
        positions = start_index + ops.arange(ops.shape(x)[1])
        return x + ops.cast(self.vectors(positions), x.dtype)[None]

    def vectors(self, positions):
        """The position vectors at `positions` (int tensor), `(len(positions), width)`."""
        if self.hierarchical is None:
            return ops.take(self.embeddings, positions, axis=0)
        alpha = self.hierarchical
        table = ops.cast(self.embeddings, "float32")
        units = (table - alpha * table[:1]) / (1 - alpha)
        stretched = (alpha * ops.take(units, positions // self.max_positions, axis=0)
                     + (1 - alpha) * ops.take(units, positions % self.max_positions, axis=0))
        # The first n are p itself (so written exactly: equal to the plain model's there).
        learned = ops.take(table, ops.minimum(positions, self.max_positions - 1), axis=0)
        return ops.where((positions < self.max_positions)[:, None], learned, stretched)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_positions": self.max_positions,
                "initializer_range": self.initializer_range, "hierarchical": self.hierarchical}


@keras.saving.register_keras_serializable(package="simbert")
class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product self-attention, `softmax(q k^T / sqrt(d) masked) v`, with an
    optional rotary encoding of q and k and an optional key/value cache.

    With `cache = (keys, values)`, keys stored transposed as (batch, heads, head_size,
    max_len) and values as (batch, heads, max_len, head_size) so that neither product
    copies the cache, the new keys/values of `x` are written at `cache_index` and the
    queries attend over every slot (the mask says which are valid); the call then returns
    `(output, cache)`; with `return_cache` and no `cache`, the keys and values of `x` are
    returned in that layout (a cache of exactly its length). With `shared_cache`, keys
    and values of the same layout but batch 1, every row also attends to those slots,
    placed before the cache's: a prefix common to all rows (a decoded source) is then
    stored and read once, not once per row.
    `start_position` is the position of the first row of `x` (default `cache_index`).

    With `fused`, calls without a cache and without attention dropout go through
    `keras.ops.dot_product_attention` (the backend's fused kernel where it has one).
    """

    def __init__(self, num_heads: int, head_size: int, hidden_size: int, rotary: bool = False,
                 dropout_rate: float = 0.0, initializer_range: float = 0.02, fused: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.fused = fused
        self.num_heads = num_heads
        self.head_size = head_size
        self.hidden_size = hidden_size
        self.rotary = rotary
        self.dropout_rate = dropout_rate
        self.initializer_range = initializer_range
        inner = num_heads * head_size
        dense = dict(kernel_initializer=initializer(initializer_range), dtype=self.dtype_policy)
        self.query = keras.layers.Dense(inner, name="query", **dense)
        self.key = keras.layers.Dense(inner, name="key", **dense)
        self.value = keras.layers.Dense(inner, name="value", **dense)
        self.output_dense = keras.layers.Dense(hidden_size, name="output", **dense)
        self.dropout = Dropout(dropout_rate, name="dropout", dtype=self.dtype_policy)

    def build(self, input_shape):
        for dense in (self.query, self.key, self.value):
            dense.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.num_heads * self.head_size,))
        self.dropout.build()  # its generator exists even when only the fused path runs

    def call(self, x, attention_mask, cache=None, cache_index=0, shared_cache=None, start_position=None,
             return_cache=False, queries=None, query_positions=None, training=False):
        """`attention_mask` is (batch, queries, keys), the shared slots first. By default
        every row of `x` asks a query; with `queries` (batch, n, hidden), the rows of `x`
        at `query_positions` (batch, n), only those do (the output is (batch, n, hidden)).
        All rows give keys."""
        batch, length = ops.shape(x)[:2]
        key_positions = (cache_index if start_position is None else start_position) + ops.arange(length)
        if queries is None:
            queries, query_positions, query_length = x, key_positions, length
        else:
            query_length = ops.shape(queries)[1]
        # The sizes are the layer inputs' (a converter that folds reshapes, as tf2onnx
        # does, would misread them from the projected rows).
        heads = (self.num_heads, self.head_size)
        q = dense_rows(self.query, queries, (batch, query_length, *heads))
        k, v = dense_rows(self.key, x, (batch, length, *heads)), dense_rows(self.value, x, (batch, length, *heads))
        if self.rotary:
            q, k = rotary(q, query_positions), rotary(k, key_positions)
        if self.fused and cache is None and not return_cache and not (training and self.dropout.threshold):
            context = ops.dot_product_attention(q, k, v, mask=attention_mask[:, None, :, :],
                                                scale=1 / math.sqrt(self.head_size))
            return dense_rows(self.output_dense, ops.reshape(context, (-1, self.num_heads * self.head_size)),
                              (batch, query_length, self.hidden_size))
        q = ops.transpose(q, (0, 2, 1, 3))  # (batch, heads, len, head_size)
        keys = ops.transpose(k, (0, 2, 3, 1))  # (batch, heads, head_size, len)
        values = ops.transpose(v, (0, 2, 1, 3))
        if cache is not None:
            keys = ops.slice_update(cache[0], (0, 0, 0, cache_index), ops.cast(keys, cache[0].dtype))
            values = ops.slice_update(cache[1], (0, 0, cache_index, 0), ops.cast(values, cache[1].dtype))
        if cache is not None or return_cache:
            cache = (keys, values)
        scores = ops.matmul(q, keys)
        if shared_cache is not None:
            scores = ops.concatenate([ops.einsum("bhqd,hds->bhqs", q, shared_cache[0][0]), scores], axis=-1)
        scores = ops.cast(scores / math.sqrt(self.head_size), "float32")
        scores = ops.where(attention_mask[:, None, :, :], scores, NEGATIVE_INFINITY)
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        probs = self.dropout(probs, training=training)
        if shared_cache is None:
            context = ops.matmul(probs, values)
        else:
            shared = ops.shape(shared_cache[1])[2]
            context = (ops.einsum("bhqs,hsd->bhqd", probs[..., :shared], shared_cache[1][0])
                       + ops.matmul(probs[..., shared:], values))
        context = ops.transpose(context, (0, 2, 1, 3))
        output = dense_rows(self.output_dense, ops.reshape(context, (-1, self.num_heads * self.head_size)),
                            (batch, query_length, self.hidden_size))
        return output if cache is None else (output, cache)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_size": self.head_size,
                "hidden_size": self.hidden_size, "rotary": self.rotary,
                "dropout_rate": self.dropout_rate, "initializer_range": self.initializer_range, "fused": self.fused}


@keras.saving.register_keras_serializable(package="simbert")
class TransformerBlock(keras.layers.Layer):
    """Post-LN block: `h = LN(x + Drop(Att(x)))`, `y = LN(h + Drop(W2 act(W1 h)))`."""

    def __init__(self, num_heads: int, head_size: int, hidden_size: int, intermediate_size: int,
                 hidden_act: str = "gelu", rotary: bool = False, dropout_rate: float = 0.1,
                 attention_dropout_rate: float = 0.1, initializer_range: float = 0.02,
                 kernels: Kernels | dict | None = None, **kwargs):
        super().__init__(**kwargs)
        kernels = Kernels(**kernels) if isinstance(kernels, dict) else kernels or Kernels()
        self.kernels = kernels
        self.num_heads = num_heads
        self.head_size = head_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.rotary = rotary
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.initializer_range = initializer_range
        dense = dict(kernel_initializer=initializer(initializer_range), dtype=self.dtype_policy)
        norm = dict(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype_policy, written_gradient=kernels.written_layer_norm)
        self.attention = MultiHeadAttention(num_heads, head_size, hidden_size, rotary,
                                            attention_dropout_rate, initializer_range, kernels.fused_attention,
                                            name="attention", dtype=self.dtype_policy)
        self.attention_norm = LayerNorm(name="attention_norm", **norm)
        self.intermediate = keras.layers.Dense(intermediate_size,
                                               activation=get_activation(hidden_act, kernels.written_gelu),
                                               name="intermediate", **dense)
        self.output_dense = keras.layers.Dense(hidden_size, name="output", **dense)
        self.output_norm = LayerNorm(name="output_norm", **norm)
        self.dropout = Dropout(dropout_rate, name="dropout", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.attention_norm.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_size,))
        self.output_norm.build(input_shape)

    def call(self, x, attention_mask, cache=None, cache_index=0, shared_cache=None, start_position=None,
             return_cache=False, query_positions=None, training=False):
        """With `query_positions` (batch, n) only those rows are computed: output (batch, n, hidden).
        The cache arguments are `MultiHeadAttention`'s."""
        queries = None
        if query_positions is not None:
            queries = gather_rows(x, query_positions)
            attention_mask = gather_rows(attention_mask, query_positions)
        attended = self.attention(x, attention_mask, cache=cache, cache_index=cache_index, shared_cache=shared_cache,
                                  start_position=start_position, return_cache=return_cache, queries=queries,
                                  query_positions=query_positions, training=training)
        if cache is not None or return_cache:
            attended, cache = attended
        x = self.attention_norm((x if queries is None else queries) + self.dropout(attended, training=training))
        batch, length = ops.shape(x)[:2]
        intermediate = dense_rows(self.intermediate, x, (-1, self.intermediate_size))
        feed_forward = dense_rows(self.output_dense, intermediate, (batch, length, self.hidden_size))
        x = self.output_norm(x + self.dropout(feed_forward, training=training))
        return x if cache is None else (x, cache)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_size": self.head_size,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "hidden_act": self.hidden_act, "rotary": self.rotary,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "initializer_range": self.initializer_range, "kernels": dataclasses.asdict(self.kernels)}


@keras.saving.register_keras_serializable(package="simbert")
class BiasAdd(keras.layers.Layer):
    """`x + b` with one learned bias per output unit (the MLM output bias)."""

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x):
        return x + ops.cast(self.bias, x.dtype)
