"""CoSENT, the loss that ranks the cosines of labelled pairs by their labels
(`training.objective: cosent`)."""

from __future__ import annotations

import keras
from keras import ops

from simbert.layers import NEGATIVE_INFINITY
from simbert.losses import unit_rows


@keras.saving.register_keras_serializable(package="simbert")
class CoSENTLoss(keras.losses.Loss):
    """CoSENT on labelled pairs: rows 2k and 2k+1 hold pair k's texts
    (`simbert.labelled_pairs.make_labelled_batch`).

    y_true: `(batch,)` the pair's label on both of its rows, or `(batch, 2)` the label
    and a source number (pairs of different sources, e.g. files with different label
    scales, are not compared); y_pred: pooled vectors `(batch, hidden)`. With
    `s_k = cos(u_k, v_k)` of pair k's l2-normalised vectors:

        loss = log(1 + sum over (k, l) with label_k > label_l, source_k = source_l
                       of exp(scale (s_l - s_k)))

    in float32: every pair ranked above another should have the higher cosine. Ties add
    nothing; a batch whose pairs share one label has loss 0.

    Args:
        scale: lambda, 20 as the reference.

    References:
        Su, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT" (2022);
        sentence-transformers' `CoSENTLoss`.

    Example:
        >>> loss = CoSENTLoss()(np.repeat([[1.0, 0], [0.0, 0]], 2, axis=0), pooled)  # pooled: (4, hidden)
    """

    def __init__(self, scale: float = 20.0, name="cosent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = scale

    def call(self, y_true, y_pred):
        vectors = unit_rows(y_pred)
        cosines = ops.sum(vectors[0::2] * vectors[1::2], axis=-1)
        y_true = ops.cast(y_true, "float32")[0::2]
        labels = y_true if len(y_true.shape) == 1 else y_true[:, 0]
        ranked_above = ops.greater(labels[:, None], labels[None, :])  # (k, l): label_k > label_l
        if len(y_true.shape) == 2:
            ranked_above = ops.logical_and(ranked_above, ops.equal(y_true[:, None, 1], y_true[None, :, 1]))
        exponents = ops.where(ranked_above, self.scale * (cosines[None, :] - cosines[:, None]), NEGATIVE_INFINITY)
        return ops.logsumexp(ops.concatenate([ops.zeros((1,), "float32"), ops.reshape(exponents, (-1,))]))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
