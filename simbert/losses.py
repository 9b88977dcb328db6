"""SimBERT losses as Keras losses, computed in float32 whatever the compute dtype.

Batch layout (see `simbert.data.make_batch`): rows 2k and 2k+1 hold `a -> b` and
`b -> a` of one similar pair, so the partner of row i is row `i xor 1`.
"""

from __future__ import annotations

import keras
from keras import ops

from simbert.layers import NEGATIVE_INFINITY

NORM_EPSILON = 1e-12


def unit_rows(vectors):
    """`v / max(|v|, 1e-12)` per row, in float32."""
    return ops.normalize(ops.cast(vectors, "float32"), axis=-1, epsilon=NORM_EPSILON)


@ops.custom_gradient
def cross_entropy_with_logits(logits, labels):
    """Per-row `CE = logsumexp(z) - z_y` of float32 logits `z` (..., classes) and integer
    labels (...). The gradient `g (softmax(z) - onehot(y))` for upstream `g` is the
    forward pass's `exp(z - max z)` times `g / sum exp` in one sweep over the logits, then
    `g` subtracted at each row's label by a scatter."""
    peak = ops.max(logits, axis=-1, keepdims=True)
    exp = ops.exp(logits - peak)
    total = ops.sum(exp, axis=-1, keepdims=True)
    picked = ops.take_along_axis(logits, ops.expand_dims(labels, -1), axis=-1)
    loss = ops.squeeze(ops.log(total) + peak - picked, -1)

    def grad(*args, upstream=None):
        upstream = ops.expand_dims(args[0] if upstream is None else upstream, -1)
        rows = ops.reshape(exp * (upstream / total), (-1, ops.shape(logits)[-1]))
        row_labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
        at_labels = ops.take_along_axis(rows, row_labels, axis=1) - ops.reshape(upstream, (-1, 1))
        indices = ops.concatenate([ops.arange(ops.shape(rows)[0], dtype="int32")[:, None], row_labels], axis=1)
        rows = ops.scatter_update(rows, indices, at_labels[:, 0])
        return ops.reshape(rows, ops.shape(logits)), None

    return loss, grad


def cross_entropy(logits, labels, written_gradient: bool = True):
    """`cross_entropy_with_logits`, or with `written_gradient` False the same formula
    left to autodiff."""
    if written_gradient:
        return cross_entropy_with_logits(logits, labels)
    picked = ops.take_along_axis(logits, ops.expand_dims(labels, -1), axis=-1)
    return ops.logsumexp(logits, axis=-1) - ops.squeeze(picked, -1)


def partner_indices(batch_size):
    """`i xor 1` for i in [0, batch): 1, 0, 3, 2, ..."""
    index = ops.arange(batch_size)
    return index + 1 - 2 * (index % 2)


@keras.saving.register_keras_serializable(package="simbert")
class Seq2SeqLoss(keras.losses.Loss):
    """Token cross-entropy of the target segment, averaged over target positions.

    y_true: `(batch, T, 2)` = target ids and weights stacked; y_pred: logits
    `(batch, T, vocab)`. With T = len - 1, ids `token_ids[:, 1:]`, weights
    `segment_ids[:, 1:]` and logits `mlm[:, :-1]` this is the original loss; the trainer
    passes only the target positions (see `simbert.data.target_positions`), same value.

        loss = sum_t w_t * CE(y_t, softmax(z_t)) / sum_t w_t
    """

    def __init__(self, written_gradient: bool = True, name="seq2seq", **kwargs):
        super().__init__(name=name, **kwargs)
        self.written_gradient = written_gradient

    def call(self, y_true, y_pred):
        targets = ops.cast(y_true[..., 0], "int32")
        weights = ops.cast(y_true[..., 1], "float32")
        token_losses = cross_entropy(ops.cast(y_pred, "float32"), targets, self.written_gradient)
        return ops.sum(token_losses * weights) / ops.maximum(ops.sum(weights), 1.0)

    def get_config(self):
        return {**super().get_config(), "written_gradient": self.written_gradient}


@keras.saving.register_keras_serializable(package="simbert")
class SimilarityLoss(keras.losses.Loss):
    """In-batch contrastive loss on the pooled `[CLS]` vectors.

    y_true: `(batch,)` an id of each row's source text (equal ids = identical texts);
    y_pred: pooled vectors `(batch, hidden)`.

        v_i = u_i / |u_i|,  S = scale * v v^T,  S_ii = -inf
        loss = mean_i CE(label = i xor 1, softmax(S_i))

    With `mask_duplicates`, columns j != partner(i) whose text equals the partner's text
    are also set to -inf: they are the same sentence, not negatives.

    Mined negatives (`simbert.data.make_batch`): rows whose y_true is below 0 come after
    the pair rows and hold a mined negative of text id `-1 - y_true`. They are columns
    only: the mean runs over the pair rows (y_true >= 0), each of whose softmax spans its
    partner, the other pair rows and every mined row; a mined row whose text an earlier
    row holds (a pair row's source, the partner's among them, or an earlier mined row)
    is masked in every row. Without such rows this is the loss above.
    """

    def __init__(self, scale: float = 30.0, mask_duplicates: bool = True, written_gradient: bool = True,
                 name="similarity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.written_gradient = written_gradient
        self.scale = scale
        self.mask_duplicates = mask_duplicates

    def call(self, y_true, y_pred):
        vectors = unit_rows(y_pred)
        batch = ops.shape(vectors)[0]
        partners = partner_indices(batch)
        columns = ops.arange(batch)
        codes = ops.cast(y_true, "int32")
        queries = ops.greater_equal(codes, 0)  # the pair rows; mined rows (below 0) are columns only
        text_ids = ops.where(queries, codes, -1 - codes)
        masked = ops.equal(columns[None, :], columns[:, None])
        if self.mask_duplicates:
            same_as_partner = ops.equal(ops.take(text_ids, partners)[:, None], text_ids[None, :])
            masked = ops.logical_or(masked, ops.logical_and(same_as_partner, columns[None, :] != partners[:, None]))
        # (k, j): row k before row j holds j's text. A mined row repeating an earlier text is no column.
        repeats = ops.logical_and(ops.equal(text_ids[:, None], text_ids[None, :]), columns[:, None] < columns[None, :])
        repeated = ops.logical_and(ops.logical_not(queries), ops.any(repeats, axis=0))
        masked = ops.logical_or(masked, repeated[None, :])
        logits = ops.where(masked, NEGATIVE_INFINITY, self.scale * ops.matmul(vectors, ops.transpose(vectors)))
        row_losses = cross_entropy(logits, ops.cast(partners, "int32"), self.written_gradient)
        weights = ops.cast(queries, "float32")
        return ops.sum(row_losses * weights) / ops.maximum(ops.sum(weights), 1.0)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mask_duplicates": self.mask_duplicates,
                "written_gradient": self.written_gradient}


@keras.saving.register_keras_serializable(package="simbert")
class DistillationLoss(keras.losses.Loss):
    """RoFormer-Sim stage 2: match a teacher's cosine similarity matrix.

    y_true: the teacher's `(batch, batch)` cosine matrix; y_pred: the student's pooled
    vectors. `loss = mean((v v^T - S_teacher)^2)` with l2-normalised `v`; weight it 100.
    Rows of y_pred past the teacher's (mined negatives after the pair rows) are left out.
    """

    def __init__(self, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        vectors = unit_rows(y_pred)[: ops.shape(y_true)[0]]
        similarities = ops.matmul(vectors, ops.transpose(vectors))
        return ops.mean(ops.square(similarities - ops.cast(y_true, "float32")))
