"""BERT and RoFormer backbones with bert4keras' outputs: `Transformer`, built from a
`BackboneConfig`. No file I/O here (see `simbert.directories`)."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np

from simbert.config import BackboneConfig
from simbert.kernels import Kernels, check_backend, default_kernels
from simbert.layers import (
    LAYER_NORM_EPSILON,
    BiasAdd,
    Dropout,
    LayerNorm,
    OneHotEmbedding,
    PositionEmbedding,
    TransformerBlock,
    build_attention_mask,
    get_activation,
    initializer,
)

APPLICATIONS = ("encoder", "unilm")


@keras.saving.register_keras_serializable(package="simbert")
class Transformer(keras.Model):
    """A post-LN BERT or RoFormer taking `(token_ids, segment_ids)`.

    Outputs follow bert4keras: `[pooled, mlm]` with both heads, else the one head, else
    the sequence output `(batch, len, hidden)`. The pooler is `act(W h_[CLS] + b)`; the
    MLM head is `LN(act(W h + b)) E^T + b_out` with `E` the token embedding (tied).

    Args:
        config: the sizes and `model_type` ("bert": learned absolute positions,
            "roformer": rotary q/k).
        application: "encoder" (padding mask) or "unilm" (UniLM seq2seq mask + padding).
        with_pool: False, True (tanh), or an activation name ("linear" for SimBERT).
        with_mlm: False, True (softmax probabilities), or an activation ("linear": logits).
        dtype: the dtype policy of every layer (e.g. "mixed_bfloat16"); the MLM output
            bias and so the logits stay float32.
        kernels: which implementation of GELU, LayerNorm and attention the layers use;
            default: what measured fastest on this backend and device
            (`simbert.kernels.default_kernels`).

    Example:
        >>> config = BackboneConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
        ...                         num_attention_heads=4, intermediate_size=64)
        >>> model = Transformer(config, application="unilm", with_pool="linear", with_mlm="linear")
        >>> pooled, logits = model.predict([np.array([[2, 5, 3, 6, 3]]),
        ...                                 np.array([[0, 0, 0, 1, 1]])], verbose=0)
    """

    def __init__(self, config: BackboneConfig, application: str = "encoder", with_pool: bool | str = False,
                 with_mlm: bool | str = False, dtype=None, kernels: Kernels | None = None,
                 name: str = "transformer", **kwargs):
        check_backend()
        if application not in APPLICATIONS:
            raise ValueError(f"application {application!r} is not supported; expected one of {APPLICATIONS}")
        kernels = kernels or default_kernels()
        init = initializer(config.initializer_range)
        width = config.embedding_width
        # Layers.
        # Also the tied MLM output projection: `token_embedding(h, reverse=True) = h E^T`.
        self.token_embedding = keras.layers.ReversibleEmbedding(config.vocab_size, width, embeddings_initializer=init,
                                                                dtype=dtype, name="token_embedding")
        self.segment_embedding = OneHotEmbedding(config.type_vocab_size, width, embeddings_initializer=init,
                                                 dtype=dtype, name="segment_embedding")
        self.position_embedding = None
        if config.model_type == "bert":
            self.position_embedding = PositionEmbedding(config.max_position_embeddings, config.initializer_range,
                                                        hierarchical=config.hierarchical_position, dtype=dtype,
                                                        name="position_embedding")
        self.embedding_norm = LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name="embedding_norm",
                                        written_gradient=kernels.written_layer_norm)
        self.embedding_dropout = Dropout(config.hidden_dropout_prob, dtype=dtype, name="embedding_dropout")
        self.embedding_mapping = None
        if width != config.hidden_size:
            self.embedding_mapping = keras.layers.Dense(config.hidden_size, kernel_initializer=init, dtype=dtype,
                                                        name="embedding_mapping")
        self.blocks = [
            TransformerBlock(config.num_attention_heads, config.head_size, config.hidden_size,
                             config.intermediate_size, config.hidden_act, rotary=(config.model_type == "roformer"),
                             dropout_rate=config.hidden_dropout_prob,
                             attention_dropout_rate=config.attention_probs_dropout_prob,
                             initializer_range=config.initializer_range, kernels=kernels, dtype=dtype,
                             name=f"transformer_{i}")
            for i in range(config.num_hidden_layers)
        ]
        self.pooler = None
        if with_pool:
            self.pooler = keras.layers.Dense(config.hidden_size, activation="tanh" if with_pool is True else with_pool,
                                             kernel_initializer=init, dtype=dtype, name="pooler")
        self.mlm_dense = self.mlm_norm = self.mlm_bias = None
        if with_mlm:
            activation = get_activation(config.hidden_act, kernels.written_gelu)
            self.mlm_dense = keras.layers.Dense(width, activation=activation,
                                                kernel_initializer=init, dtype=dtype, name="mlm_dense")
            self.mlm_norm = LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name="mlm_norm",
                                      written_gradient=kernels.written_layer_norm)
            self.mlm_bias = BiasAdd(dtype="float32", name="mlm_bias")  # logits in float32
        self.mlm_activation = keras.activations.get("softmax" if with_mlm is True else (with_mlm or "linear"))

        # Functional graph.
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
        self.application = application
        x = self.sequence_output(token_ids, segment_ids)
        outputs = []
        if with_pool:
            outputs.append(self.pool(x))
        if with_mlm:
            outputs.append(self.mlm_activation(self.mlm_logits(x)))
        outputs = outputs[0] if len(outputs) == 1 else (outputs or x)
        super().__init__(inputs=[token_ids, segment_ids], outputs=outputs, name=name, **kwargs)

        # Config. (A functional model takes no dtype argument; the layers above carry it.)
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)
        self.config = config
        self.kernels = kernels
        self.with_pool = with_pool
        self.with_mlm = with_mlm

    # Pieces of the graph, reused by the trainer and the cached sampler.
    def embed(self, token_ids, segment_ids, start_index=0, training=False):
        """Token + segment (+ position) embeddings, LayerNorm, dropout, optional mapping."""
        x = self.token_embedding(token_ids) + self.segment_embedding(segment_ids)
        if self.position_embedding is not None:
            x = self.position_embedding(x, start_index=start_index)
        x = self.embedding_dropout(self.embedding_norm(x), training=training)
        if self.embedding_mapping is not None:
            x = self.embedding_mapping(x)
        return x

    def sequence_output(self, token_ids, segment_ids, output_positions=None, training=False,
                        return_caches=False):
        """Hidden states `(batch, len, hidden)` under this model's attention mask; with
        `output_positions` (batch, n) only those rows, `(batch, n, hidden)`: the last
        block then computes just them (its other rows would feed nothing). With
        `return_caches`, `(hidden states, caches)`: each layer's keys and values in
        `MultiHeadAttention`'s cache layout."""
        x = self.embed(token_ids, segment_ids, training=training)
        mask = build_attention_mask(token_ids, segment_ids, self.application)
        caches = []
        for i, block in enumerate(self.blocks):
            positions = output_positions if i == len(self.blocks) - 1 else None
            x = block(x, mask, return_cache=return_caches, query_positions=positions, training=training)
            if return_caches:
                x, cache = x
                caches.append(cache)
        return (x, caches) if return_caches else x

    def pooled_encoder(self) -> keras.Model:
        """`(token_ids, segment_ids) -> pooled [CLS]`, its last block computing only the
        [CLS] row (the other rows of the last layer do not reach the pooler)."""
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
        cls = keras.ops.zeros_like(token_ids[:, :1])
        pooled = self.pool(self.sequence_output(token_ids, segment_ids, output_positions=cls))
        return keras.Model([token_ids, segment_ids], pooled, name=f"{self.name}_pooled_encoder")

    def pool(self, sequence_output):
        return self.pooler(sequence_output[:, 0])

    def mlm_logits(self, sequence_output):
        x = self.mlm_norm(self.mlm_dense(sequence_output))
        return self.mlm_bias(self.token_embedding(x, reverse=True))

    def check_inputs(self, token_ids, segment_ids) -> None:
        """Raise a ValueError naming the tensor when numpy inputs are out of range."""
        token_ids, segment_ids = np.asarray(token_ids), np.asarray(segment_ids)
        if token_ids.shape != segment_ids.shape or token_ids.ndim != 2:
            raise ValueError(f"token_ids {token_ids.shape} and segment_ids {segment_ids.shape} "
                             "should both be (batch, length)")
        limits = (("token_ids", token_ids, self.config.vocab_size),
                  ("segment_ids", segment_ids, self.config.type_vocab_size))
        for name, values, limit in limits:
            if values.size and (values.min() < 0 or values.max() >= limit):
                raise ValueError(f"{name} hold {values.max()} / {values.min()}; expected 0 <= id < {limit}")
        limit = self.config.max_length
        if limit is not None and token_ids.shape[1] > limit:
            stretched = " (hierarchical_position: its square)" if self.config.hierarchical_position else ""
            raise ValueError(f"sequence length {token_ids.shape[1]} exceeds the model's {limit} positions "
                             f"(max_position_embeddings {self.config.max_position_embeddings}{stretched})")

    @property
    def computation(self) -> str | None:
        """What decides the programs compiled from this model besides the shapes of its
        inputs and weights, as JSON: its config, application, heads, dtype policy and
        kernels (a `program_key` part for `simbert.compiled.compile_function`). None for a
        subclass, whose own code such a key would not cover."""
        if type(self) is not Transformer:
            return None
        # (Not `get_config`: serializing the dtype policy imports TensorFlow, seconds.)
        return json.dumps({"config": self.config.to_dict(), "application": self.application,
                           "with_pool": self.with_pool, "with_mlm": self.with_mlm, "dtype": self.dtype_policy.name,
                           "kernels": dataclasses.asdict(self.kernels)}, sort_keys=True)

    def get_config(self):
        return {"config": self.config.to_dict(), "application": self.application, "with_pool": self.with_pool,
                "with_mlm": self.with_mlm, "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "kernels": dataclasses.asdict(self.kernels), "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = BackboneConfig.from_dict(config.pop("config"))
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        if isinstance(config.get("kernels"), dict):
            config["kernels"] = Kernels(**config["kernels"])
        return cls(backbone, **config)
