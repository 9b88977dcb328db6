"""BERT and RoFormer backbones with bert4keras' outputs: `build_transformer_model`."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import keras
import numpy as np

from simbert.layers import (
    LAYER_NORM_EPSILON,
    BiasAdd,
    Dropout,
    LayerNorm,
    PositionEmbedding,
    TokenEmbedding,
    TransformerBlock,
    build_attention_mask,
    get_activation,
    initializer,
)

MODELS = ("bert", "roformer")
APPLICATIONS = ("encoder", "unilm")

# bert_config.json field -> (type, default); None means required.
CONFIG_FIELDS = {
    "vocab_size": (int, None),
    "hidden_size": (int, None),
    "num_hidden_layers": (int, None),
    "num_attention_heads": (int, None),
    "intermediate_size": (int, None),
    "hidden_act": (str, "gelu"),
    "max_position_embeddings": (int, 512),
    "type_vocab_size": (int, 2),
    "embedding_size": (int, None),
    "hidden_dropout_prob": (float, 0.1),
    "attention_probs_dropout_prob": (float, 0.1),
    "initializer_range": (float, 0.02),
}
OPTIONAL_NONE = ("embedding_size",)


def read_config(config: str | os.PathLike | dict) -> dict[str, Any]:
    """Load and validate a bert_config.json (path or dict); fill defaults."""
    source = "config"
    if not isinstance(config, dict):
        source = str(config)
        if not os.path.isfile(config):
            raise FileNotFoundError(f"config file {source} does not exist")
        with open(config, encoding="utf-8") as reader:
            try:
                config = json.load(reader)
            except json.JSONDecodeError as error:
                raise ValueError(f"{source} is not valid JSON: {error}") from None
    result = {}
    for field, (kind, default) in CONFIG_FIELDS.items():
        value = config.get(field, default)
        if value is None:
            if field in OPTIONAL_NONE:
                result[field] = None
                continue
            raise ValueError(f"{source}: required field {field!r} is missing")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{source}: field {field!r} should be {kind.__name__}, got {value!r}")
        if kind is int and value <= 0:
            raise ValueError(f"{source}: field {field!r} should be a positive integer, got {value}")
        result[field] = value
    if result["hidden_size"] % result["num_attention_heads"]:
        raise ValueError(
            f"{source}: hidden_size {result['hidden_size']} is not divisible by "
            f"num_attention_heads {result['num_attention_heads']}"
        )
    get_activation(result["hidden_act"])
    return result


@keras.saving.register_keras_serializable(package="simbert")
class Transformer(keras.Model):
    """A post-LN BERT or RoFormer taking `(token_ids, segment_ids)`.

    Outputs follow bert4keras: `[pooled, mlm]` with both heads, else the one head, else
    the sequence output `(batch, len, hidden)`. The pooler is `act(W h_[CLS] + b)`; the
    MLM head is `LN(act(W h + b)) E^T + b_out` with `E` the token embedding (tied).

    Args:
        vocab_size, hidden_size, num_layers, num_heads, intermediate_size: the sizes.
        hidden_act: activation of the feed-forward and MLM transform ("gelu" = erf form).
        max_position_embeddings: position limit (BERT's learned table; RoFormer is
            rotary and has no table, the limit is kept for input checks).
        type_vocab_size: number of segments.
        embedding_size: embedding width if it differs from `hidden_size` (a Dense maps it).
        dropout_rate, attention_dropout_rate: dropout after sublayers / on attention.
        model: "bert" (learned absolute positions) or "roformer" (rotary q/k).
        application: "encoder" (padding mask) or "unilm" (UniLM seq2seq mask + padding).
        with_pool: False, True (tanh), or an activation name ("linear" for SimBERT).
        with_mlm: False, True (softmax probabilities), or an activation ("linear": logits).

    Example:
        >>> model = Transformer(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
        ...                     intermediate_size=64, application="unilm",
        ...                     with_pool="linear", with_mlm="linear")
        >>> pooled, logits = model.predict([np.array([[2, 5, 3, 6, 3]]),
        ...                                 np.array([[0, 0, 0, 1, 1]])], verbose=0)
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 intermediate_size: int, hidden_act: str = "gelu", max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, embedding_size: int | None = None,
                 dropout_rate: float = 0.1, attention_dropout_rate: float = 0.1,
                 initializer_range: float = 0.02, model: str = "bert", application: str = "encoder",
                 with_pool: bool | str = False, with_mlm: bool | str = False, **kwargs):
        if model not in MODELS:
            raise ValueError(f"model {model!r} is not supported; expected one of {MODELS}")
        if application not in APPLICATIONS:
            raise ValueError(f"application {application!r} is not supported; expected one of {APPLICATIONS}")
        embedding_size = embedding_size or hidden_size
        init = initializer(initializer_range)
        # Layers.
        self.token_embedding = TokenEmbedding(
            vocab_size, embedding_size, embeddings_initializer=init, name="token_embedding")
        self.segment_embedding = keras.layers.Embedding(
            type_vocab_size, embedding_size, embeddings_initializer=init, name="segment_embedding")
        self.position_embedding = None
        if model == "bert":
            self.position_embedding = PositionEmbedding(
                max_position_embeddings, initializer_range, name="position_embedding")
        self.embedding_norm = LayerNorm(epsilon=LAYER_NORM_EPSILON, name="embedding_norm")
        self.embedding_dropout = Dropout(dropout_rate, name="embedding_dropout")
        self.embedding_mapping = None
        if embedding_size != hidden_size:
            self.embedding_mapping = keras.layers.Dense(hidden_size, kernel_initializer=init, name="embedding_mapping")
        self.blocks = [
            TransformerBlock(num_heads, hidden_size // num_heads, hidden_size, intermediate_size, hidden_act,
                             rotary=(model == "roformer"), dropout_rate=dropout_rate,
                             attention_dropout_rate=attention_dropout_rate,
                             initializer_range=initializer_range, name=f"transformer_{i}")
            for i in range(num_layers)
        ]
        self.pooler = None
        if with_pool:
            self.pooler = keras.layers.Dense(hidden_size, activation="tanh" if with_pool is True else with_pool,
                                             kernel_initializer=init, name="pooler")
        self.mlm_dense = self.mlm_norm = self.mlm_bias = None
        if with_mlm:
            self.mlm_dense = keras.layers.Dense(embedding_size, activation=get_activation(hidden_act),
                                                kernel_initializer=init, name="mlm_dense")
            self.mlm_norm = LayerNorm(epsilon=LAYER_NORM_EPSILON, name="mlm_norm")
            self.mlm_bias = BiasAdd(name="mlm_bias", dtype="float32")  # logits in float32
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
        super().__init__(inputs=[token_ids, segment_ids], outputs=outputs, **kwargs)

        # Config.
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.embedding_size = embedding_size
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.initializer_range = initializer_range
        self.model_type = model
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

    def sequence_output(self, token_ids, segment_ids, output_positions=None, training=False):
        """Hidden states `(batch, len, hidden)` under this model's attention mask; with
        `output_positions` (batch, n) only those rows, `(batch, n, hidden)`: the last
        block then computes just them (its other rows would feed nothing)."""
        x = self.embed(token_ids, segment_ids, training=training)
        mask = build_attention_mask(token_ids, segment_ids, self.application)
        for block in self.blocks[:-1]:
            x = block(x, mask, training=training)
        return self.blocks[-1](x, mask, query_positions=output_positions, training=training)

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

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def check_inputs(self, token_ids, segment_ids) -> None:
        """Raise a ValueError naming the tensor when numpy inputs are out of range."""
        token_ids, segment_ids = np.asarray(token_ids), np.asarray(segment_ids)
        if token_ids.shape != segment_ids.shape or token_ids.ndim != 2:
            raise ValueError(f"token_ids {token_ids.shape} and segment_ids {segment_ids.shape} "
                             "should both be (batch, length)")
        limits = (("token_ids", token_ids, self.vocab_size), ("segment_ids", segment_ids, self.type_vocab_size))
        for name, values, limit in limits:
            if values.size and (values.min() < 0 or values.max() >= limit):
                raise ValueError(f"{name} hold {values.max()} / {values.min()}; expected 0 <= id < {limit}")
        if token_ids.shape[1] > self.max_position_embeddings:
            raise ValueError(f"sequence length {token_ids.shape[1]} exceeds max_position_embeddings "
                             f"{self.max_position_embeddings}")

    def get_config(self):
        return {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act, "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size, "embedding_size": self.embedding_size,
            "dropout_rate": self.dropout_rate, "attention_dropout_rate": self.attention_dropout_rate,
            "initializer_range": self.initializer_range, "model": self.model_type,
            "application": self.application, "with_pool": self.with_pool, "with_mlm": self.with_mlm,
            "name": self.name, "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def bert_config(self) -> dict[str, Any]:
        """The bert_config.json describing this model."""
        config = {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size, "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size, "hidden_dropout_prob": self.dropout_rate,
            "attention_probs_dropout_prob": self.attention_dropout_rate,
            "initializer_range": self.initializer_range, "model_type": self.model_type,
        }
        if self.embedding_size != self.hidden_size:
            config["embedding_size"] = self.embedding_size
        return config


def build_transformer_model(
    config: str | os.PathLike | dict,
    checkpoint_path: str | os.PathLike | None = None,
    model: str = "bert",
    application: str = "encoder",
    with_pool: bool | str = False,
    with_mlm: bool | str = False,
    keep_tokens: Sequence[int] | None = None,
    dropout_rate: float | None = None,
) -> Transformer:
    """Build a BERT/RoFormer from a bert_config.json (path or dict), bert4keras-style.

    `checkpoint_path` may be a TF checkpoint prefix (`.../bert_model.ckpt`) or an HF
    directory; `keep_tokens` keeps those vocabulary rows (see `load_vocab(simplified=True)`);
    `dropout_rate` overrides the config's hidden dropout.
    """
    settings = read_config(config)
    vocab_size = len(keep_tokens) if keep_tokens is not None else settings["vocab_size"]
    transformer = Transformer(
        vocab_size=vocab_size,
        hidden_size=settings["hidden_size"],
        num_layers=settings["num_hidden_layers"],
        num_heads=settings["num_attention_heads"],
        intermediate_size=settings["intermediate_size"],
        hidden_act=settings["hidden_act"],
        max_position_embeddings=settings["max_position_embeddings"],
        type_vocab_size=settings["type_vocab_size"],
        embedding_size=settings["embedding_size"],
        dropout_rate=settings["hidden_dropout_prob"] if dropout_rate is None else dropout_rate,
        attention_dropout_rate=settings["attention_probs_dropout_prob"],
        initializer_range=settings["initializer_range"],
        model=model,
        application=application,
        with_pool=with_pool,
        with_mlm=with_mlm,
    )
    if checkpoint_path is not None:
        from simbert.checkpoints import load_weights

        load_weights(transformer, checkpoint_path, keep_tokens=keep_tokens)
    return transformer
