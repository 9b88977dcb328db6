"""A cross-encoder pair classifier: `[CLS] a [SEP] b [SEP]` (segment 1 for `b [SEP]`)
through a BERT / RoFormer with the plain bidirectional encoder mask (every token sees both
texts, unlike SimBERT's UniLM mask), then a head on the pooled [CLS] vector: dropout, and
a Dense to `num_labels` logits in float32; softmax over the classes.

Flow: recipe `training.objective: cross_encoder` -> `simbert.training_model` (backbone +
`ClassifierHead`, softmax cross-entropy) -> a checkpoint: the backbone in the released
layout plus `classifier.safetensors` (the head) -> `PairClassifier.from_pretrained` ->
`predict` / `score`, compiled on `SimBERT.encode`'s padded shapes -> `simbert eval`, and
`rerank_candidates` of `SimBERT.most_similar`'s candidates.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

import keras
import numpy as np
from keras import ops

from simbert.arguments import check_integer, check_precision
from simbert.checkpoints import read_safetensors, write_google_safetensors
from simbert.compiled import compile_function, use_compilation_cache
from simbert.directories import read_model_files, resolve_model_directory, save_pretrained, with_latest_checkpoint
from simbert.errors import FileFormatError
from simbert.kernels import Platform, check_backend
from simbert.layers import Dropout, initializer
from simbert.models import Transformer
from simbert.shapes import ShapeBuckets
from simbert.tokenizer import Tokenizer

CLASSIFIER_FILE = "classifier.safetensors"  # the head, beside a model directory's backbone
KERNEL, BIAS = "classifier/kernel", "classifier/bias"  # its tensors: (hidden, num_labels), (num_labels,)


@keras.saving.register_keras_serializable(package="simbert")
class ClassifierHead(keras.layers.Layer):
    """`logits = dropout(pooled) @ kernel + bias`, `num_labels` of them, computed in
    float32 whatever the layer's dtype policy (the dropout runs in it).

    Args:
        num_labels: classes (at least 2).
        dropout_rate: the dropout before the Dense (the backbone's hidden dropout).
        initializer_range: std of the kernel's truncated normal initialisation (0.02).

    Example:
        >>> head = ClassifierHead(2, 0.1, name="classifier")
        >>> logits = head(pooled)           # (batch, 2), float32
    """

    def __init__(self, num_labels: int, dropout_rate: float = 0.1, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        check_integer("num_labels", num_labels, 2)
        self.num_labels, self.dropout_rate, self.initializer_range = num_labels, dropout_rate, initializer_range
        self.dropout = Dropout(dropout_rate, dtype=self.dtype_policy, name="dropout")
        self.dense = keras.layers.Dense(num_labels, kernel_initializer=initializer(initializer_range),
                                        dtype="float32", name="dense")

    def build(self, input_shape):
        self.dropout.build(input_shape)
        self.dense.build(input_shape)

    def call(self, pooled, training=False):
        return self.dense(ops.cast(self.dropout(pooled, training=training), "float32"))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_labels)

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels, "dropout_rate": self.dropout_rate,
                "initializer_range": self.initializer_range}


def build_head(backbone: Transformer, num_labels: int, dtype=None) -> ClassifierHead:
    """A built `ClassifierHead` for `backbone`'s pooled vectors: its hidden dropout, its
    initialiser range, its dtype policy unless `dtype` is given; named "classifier" (the
    training state keys its variables by that path)."""
    config = backbone.config
    head = ClassifierHead(num_labels, config.hidden_dropout_prob, config.initializer_range,
                          dtype=dtype if dtype is not None else backbone.dtype_policy, name="classifier")
    head.build((None, config.hidden_size))
    return head


def head_values(head: ClassifierHead) -> dict[str, np.ndarray]:
    """The head's tensors under `KERNEL` and `BIAS`, float32."""
    return {KERNEL: np.asarray(keras.ops.convert_to_numpy(head.dense.kernel), "float32"),
            BIAS: np.asarray(keras.ops.convert_to_numpy(head.dense.bias), "float32")}


def write_head(head: ClassifierHead, directory: str | os.PathLike) -> str:
    """`directory/classifier.safetensors`, written atomically; returns its path."""
    path = os.path.join(str(directory), CLASSIFIER_FILE)
    write_google_safetensors(head_values(head), path)
    return path


def read_head(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """The head tensors of a model directory, checked: `FileNotFoundError` without the
    file (not a pair classifier), `FileFormatError` naming it when it does not read or
    its tensors are not a kernel `(hidden, n)` and a bias `(n,)` with n >= 2."""
    path = os.path.join(str(directory), CLASSIFIER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no {CLASSIFIER_FILE}: not a pair classifier (train one with "
                                f"training.objective cross_encoder)")
    values = read_safetensors(path)
    kernel, bias = values.get(KERNEL), values.get(BIAS)
    if (kernel is None or bias is None or kernel.ndim != 2 or bias.shape != kernel.shape[1:]
            or kernel.shape[1] < 2):
        shapes = {name: tuple(value.shape) for name, value in values.items()}
        raise FileFormatError(path, f"holds {shapes}; expected {KERNEL} (hidden, num_labels) and {BIAS} "
                                    f"(num_labels,), num_labels >= 2")
    return {KERNEL: kernel, BIAS: bias}


def assign_head(head: ClassifierHead, values: dict[str, np.ndarray], source: str) -> None:
    """Give `head` the tensors of `read_head`; another shape raises naming `source`."""
    for name, variable in ((KERNEL, head.dense.kernel), (BIAS, head.dense.bias)):
        if tuple(values[name].shape) != tuple(variable.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(values[name].shape)} but the head needs "
                             f"{tuple(variable.shape)} (training.num_labels {head.num_labels})")
        variable.assign(values[name])


def is_pair_classifier(path: str | os.PathLike) -> bool:
    """Whether `path` (a model directory, or a training output: its newest checkpoint)
    holds a pair classifier's head."""
    return os.path.isfile(os.path.join(resolve_model_directory(path), CLASSIFIER_FILE))


class PairClassifier:
    """A cross-encoder: the probabilities of `num_labels` classes for pairs of texts.

    Usually made by `PairClassifier.from_pretrained`. Pairs are encoded as
    `[CLS] a [SEP] b [SEP]`, cut to `max_tokens` (the longer text loses tokens first),
    sorted by length into batches and padded to the same buckets as `SimBERT.encode`
    (`simbert.shapes`): one program a padded shape on JAX, one graph on TensorFlow
    (`compiled_programs`). Loading or calling it changes no process-wide setting.

    Args:
        backbone: a `Transformer` built with `application="encoder"` and a pooler.
        head: its `ClassifierHead`.
        tokenizer: the `Tokenizer` of the backbone's vocabulary.
        max_tokens: tokens a pair's row keeps (at least 3).
        name: the model's name.

    Example:
        >>> classifier = PairClassifier.from_pretrained("runs/afqmc")
        >>> classifier.predict([("花呗怎么还款", "花呗如何还钱")])      # (1, num_labels) probabilities
        >>> classifier.score([("花呗怎么还款", "借呗怎么提额")])        # the last class's probability
    """

    def __init__(self, backbone: Transformer, head: ClassifierHead, tokenizer: Tokenizer, max_tokens: int = 64,
                 name: str = ""):
        if backbone.application != "encoder" or backbone.pooler is None:
            raise ValueError("PairClassifier needs a Transformer built with application='encoder' (both texts "
                             "see each other) and with_pool")
        check_integer("max_tokens", max_tokens, 3)
        if tokenizer.vocab_size > backbone.config.vocab_size:
            raise ValueError(f"the vocabulary has {tokenizer.vocab_size} tokens but the model's embedding has "
                             f"{backbone.config.vocab_size} rows")
        self.backbone, self.head, self.tokenizer = backbone, head, tokenizer
        self.max_tokens, self.name = max_tokens, name
        per_shape = Platform.current().compiles_per_shape
        # SimBERT.encode's buckets: lengths to multiples of 16 and rows to powers of two on
        # JAX (a program a shape), no padding on TensorFlow (one graph for any shape).
        self.shapes = ShapeBuckets(length_step=16 if per_shape else 1, pad_rows=per_shape,
                                   max_length=min(max_tokens, backbone.config.max_length or max_tokens))
        variables = [*backbone.variables, *head.variables]
        if per_shape:
            model = backbone.computation
            self._function = compile_function(self._probabilities, variables,
                                              program_key=model and f"pair classifier {head.num_labels} {model}")
        else:
            self._function = compile_function(self._probabilities, variables, jit_compile=False,
                                              dynamic_inputs=[(2, "int32"), (2, "int32")])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, model_type: str | None = None, max_tokens: int = 64,
                        compilation_cache: str | None = None, precision: str | None = None) -> "PairClassifier":
        """Load a pair classifier: a model directory holding `classifier.safetensors`
        beside its backbone (a checkpoint of `training.objective: cross_encoder`, or
        `save`'s), or a training output (its newest checkpoint that reads, as
        `SimBERT.from_pretrained`).

        Args:
            path: the directory.
            model_type: "bert" or "roformer" (default: what the files say, else "bert").
            max_tokens: tokens a pair's row keeps (at least 3).
            compilation_cache: None leaves the process's compilation settings alone; a
                directory (or "default") first calls `simbert.use_compilation_cache`.
            precision: the dtype policy it computes in (default Keras' global one); the
                logits and probabilities stay float32.

        Returns:
            The `PairClassifier`.

        Example:
            >>> classifier = PairClassifier.from_pretrained("runs/afqmc", max_tokens=128)
        """
        check_backend()
        if precision is not None:
            check_precision("precision", precision)
        use_compilation_cache(compilation_cache)

        def read(directory: str) -> "PairClassifier":
            values = read_head(directory)  # first: a directory without a head is refused before the backbone
            files = read_model_files(directory, model_type)
            backbone = files.build(application="encoder", with_pool="linear", with_mlm=False, dtype=precision)
            head = build_head(backbone, values[BIAS].shape[0])
            assign_head(head, values, os.path.join(directory, CLASSIFIER_FILE))
            return cls(backbone, head, files.tokenizer, max_tokens, name=os.path.basename(os.path.normpath(str(path))))

        return with_latest_checkpoint(path, read)

    def save(self, path: str | os.PathLike) -> None:
        """Write a model directory: the backbone (`simbert.directories.save_pretrained`),
        then `classifier.safetensors` (atomically, last: the directory reads as a pair
        classifier only once it is complete).

        Example:
            >>> classifier.save("models/afqmc")
        """
        save_pretrained(self.backbone, path, self.tokenizer.token_dict)
        write_head(self.head, path)

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    @property
    def compiled_programs(self) -> int:
        """Programs compiled so far by `predict` (one a padded shape on JAX; one graph on
        TensorFlow)."""
        return self._function.programs

    def _probabilities(self, token_ids, segment_ids):
        """Softmax of the head's logits of the pooled [CLS] row (the last block computes only it)."""
        cls = ops.zeros_like(token_ids[:, :1])
        pooled = self.backbone.pool(self.backbone.sequence_output(token_ids, segment_ids, output_positions=cls))
        return ops.softmax(self.head(pooled), axis=-1)

    def _rows(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """`(token_ids, segment_ids)` of each pair; a pair that is not two texts with a token raises naming it."""
        if isinstance(pairs, str) or (isinstance(pairs, tuple) and len(pairs) == 2
                                      and all(isinstance(text, str) for text in pairs)):
            raise ValueError("expected a list of (text, text) pairs; wrap a single pair in a list")
        rows = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise ValueError(f"pairs[{i}] should be two texts, got {pair!r}")
            tokens = [self.tokenizer.tokenize(text) for text in pair]
            for text, own in zip(pair, tokens):
                if len(own) <= 2:
                    raise ValueError(f"pairs[{i}]: {text!r} has no token once cleaned (empty, or only spaces, "
                                     f"control or zero-width characters)")
            rows.append(self.tokenizer.encode(*tokens, maxlen=self.shapes.max_length))
        return rows

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """The class probabilities of each pair, in order.

        Args:
            pairs: `(text_a, text_b)` pairs (a text with no token once cleaned raises).
            batch_size: pairs per batch.

        Returns:
            float32 `(len(pairs), num_labels)`, rows summing to 1.

        Example:
            >>> classifier.predict([("花呗怎么还款", "花呗如何还钱"), ("花呗怎么还款", "借呗怎么提额")])
        """
        check_integer("batch_size", batch_size)
        rows = self._rows(pairs)
        probabilities = np.zeros((len(rows), self.num_labels), "float32")
        order = np.argsort([len(ids) for ids, _ in rows], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        # Every shape this call needs is known now: their programs are built side by side (JAX).
        self._function.prepare([tuple(np.zeros(shape, "int32") for _ in range(2)) for shape in
                                {self.shapes.shape([len(rows[i][0]) for i in batch], batch_size)
                                 for batch in batches}])
        for batch in batches:
            token_ids = self.shapes.pad([rows[i][0] for i in batch], batch_size)
            segment_ids = self.shapes.pad([rows[i][1] for i in batch], batch_size)
            self.backbone.check_inputs(token_ids, segment_ids)
            output = keras.ops.convert_to_numpy(self._function(token_ids, segment_ids))
            probabilities[batch] = output[: len(batch)]
        return probabilities

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """The probability of the last class of each pair (for two classes, of "similar").

        Example:
            >>> classifier.score([("花呗怎么还款", "花呗如何还钱")])
        """
        return self.predict(pairs, batch_size)[:, -1]


class PairScorer(Protocol):
    """What `rerank_candidates` needs: a pair classifier's `score`."""

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray: ...


def rerank_candidates(classifier: PairScorer, queries: Sequence[str], results: Sequence[Sequence[tuple[str, float]]],
           topn: int | None = None, batch_size: int = 64) -> list[list[tuple[str, float, float]]]:
    """Re-score each query's candidates with a pair classifier and order them by its score.

    Args:
        classifier: a `PairClassifier` (anything with its `score`).
        queries: the queries.
        results: for each query, its `(text, cosine)` candidates (`SimilarityIndex.search`).
        topn: candidates kept a query after reordering (default all).
        batch_size: pairs scored per batch (all queries' candidates are scored together).

    Returns:
        For each query, `(text, score, cosine)` triples, highest classifier score first
        (ties keep the cosine order).

    Example:
        >>> rerank_candidates(classifier, ["花呗怎么还款"], index.search(model.encode(["花呗怎么还款"]), 50), topn=10)
    """
    pairs = [(query, text) for query, found in zip(queries, results) for text, _ in found]
    scores = np.asarray(classifier.score(pairs, batch_size=batch_size), "float64") if pairs else np.zeros(0)
    reranked, start = [], 0
    for found in results:
        own = scores[start:start + len(found)]
        start += len(found)
        order = np.argsort(-own, kind="stable")[:topn]
        reranked.append([(found[i][0], float(own[i]), float(found[i][1])) for i in order])
    return reranked
