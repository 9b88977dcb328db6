"""Losses against direct numpy computations."""

import numpy as np

from helpers import value_and_gradients
from simbert.losses import DistillationLoss, Seq2SeqLoss, SimilarityLoss, cross_entropy_with_logits


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_seq2seq_loss_matches_numpy():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, 11, (4, 7))
    segment_ids = np.array([[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0],
                            [0, 0, 0, 1, 1, 0, 0]])
    logits = rng.normal(0, 2, (4, 6, 11)).astype("float32")
    y_true = np.stack([token_ids[:, 1:], segment_ids[:, 1:]], -1)
    targets, weights = token_ids[:, 1:], segment_ids[:, 1:]
    log_probs = np.take_along_axis(log_softmax(logits.astype("float64")), targets[..., None], -1)[..., 0]
    expected = -(log_probs * weights).sum() / weights.sum()
    assert abs(float(Seq2SeqLoss()(y_true, logits)) - expected) < 1e-5
    # The same value from the target positions only (as the trainer computes it).
    from simbert.data import target_positions

    positions, targets = target_positions(token_ids, segment_ids)
    picked = np.take_along_axis(logits, positions[:, :, None], axis=1)
    assert abs(float(Seq2SeqLoss()(targets, picked)) - expected) < 1e-5


def similarity_numpy(vectors, text_ids, scale, mask_duplicates):
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    logits = scale * v @ v.T
    n = len(v)
    partners = np.arange(n) ^ 1
    for i in range(n):
        logits[i, i] = -np.inf
        for j in range(n):
            if mask_duplicates and j != partners[i] and text_ids[j] == text_ids[partners[i]]:
                logits[i, j] = -np.inf
    return -np.mean(log_softmax(logits)[np.arange(n), partners])


def test_similarity_loss_matches_numpy_with_partner_labels():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(8, 5)).astype("float32")
    text_ids = np.arange(8)
    for scale in (30.0, 20.0):
        expected = similarity_numpy(vectors.astype("float64"), text_ids, scale, True)
        assert abs(float(SimilarityLoss(scale)(text_ids, vectors)) - expected) < 1e-4
    # Partners are i xor 1: making rows 2k and 2k+1 identical gives a near-zero loss.
    paired = np.repeat(rng.normal(size=(4, 5)), 2, axis=0).astype("float32")
    assert float(SimilarityLoss()(text_ids, paired)) < 1e-3
    # Pairing rows (0, 2), (1, 3), ... instead gives a large loss.
    shifted = paired[[0, 2, 1, 3, 4, 6, 5, 7]]
    assert float(SimilarityLoss()(text_ids, shifted)) > 5.0


def test_duplicate_texts_are_masked_out_of_negatives():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(8, 5)).astype("float32")
    vectors[5] = vectors[1]  # row 5 is the same sentence as row 1 (row 0's partner)
    text_ids = np.array([0, 1, 2, 3, 4, 1, 6, 7])
    masked = float(SimilarityLoss(mask_duplicates=True)(text_ids, vectors))
    unmasked = float(SimilarityLoss(mask_duplicates=False)(text_ids, vectors))
    np.testing.assert_allclose(masked, similarity_numpy(vectors.astype("float64"), text_ids, 30.0, True), atol=1e-4)
    np.testing.assert_allclose(unmasked, similarity_numpy(vectors.astype("float64"), text_ids, 30.0, False), atol=1e-4)
    assert unmasked > masked + 0.05


def test_distillation_loss_matches_numpy():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(6, 4)).astype("float32")
    teacher = rng.uniform(-1, 1, (6, 6)).astype("float32")
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.mean((v @ v.T - teacher) ** 2)
    assert abs(float(DistillationLoss()(teacher, vectors)) - expected) < 1e-6


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (2, 5, 11)).astype("float32")
    labels = rng.integers(0, 11, (2, 5)).astype("int32")
    labels[0, :3] = [0, 10, 10]  # first and last class, a label repeated across rows
    upstream = rng.uniform(0, 2, (2, 5)).astype("float32")
    loss, (gradient,) = value_and_gradients(lambda z: cross_entropy_with_logits(z, labels), logits,
                                            upstream=upstream)
    log_probs = log_softmax(logits.astype("float64"))
    expected_loss = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    expected_gradient = (np.exp(log_probs) - np.eye(11)[labels]) * upstream[..., None]
    np.testing.assert_allclose(np.asarray(loss), expected_loss, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gradient), expected_gradient, atol=1e-6)
