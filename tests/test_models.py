"""Model properties (UniLM mask), Keras serialisation, checkpoint round trips and bad input."""

import json
import logging

import keras
import numpy as np
import pytest

from helpers import TINY_CONFIG, padded_batch, random_bert_values, value_and_gradients, write_model_dir
from simbert import Transformer, build_transformer_model
from simbert.checkpoints import load_weights, model_values, read_tf_checkpoint, write_tf_checkpoint
from simbert.directories import read_config, save_pretrained
from simbert.kernels import Platform

MODELS = ["bert", "roformer"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random checkpoints with large weights (std 0.2) so every position carries signal."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {model: write_model_dir(str(root / model), TINY_CONFIG, model, seed=5) for model in MODELS}


def loaded_model(checkpoints, model, application="unilm", **heads):
    return build_transformer_model(TINY_CONFIG, checkpoints[model], model=model, application=application, **heads)


def pair(source, target):
    token_ids = np.array([[2, *source, 3, *target, 3]], "int32")
    segment_ids = np.array([[0] * (len(source) + 2) + [1] * (len(target) + 1)], "int32")
    return token_ids, segment_ids


@pytest.mark.parametrize("model", MODELS)
def test_source_never_sees_target(checkpoints, model):
    transformer = loaded_model(checkpoints, model, with_pool="linear", with_mlm="linear")
    source = [11, 12, 13, 14]
    alone = np.array([[2, *source, 3]], "int32")
    alone, _ = transformer.predict([alone, np.zeros_like(alone)], verbose=0)
    for target in ([20], [21, 22, 23], list(range(30, 60))):
        pooled, _ = transformer.predict(list(pair(source, target)), verbose=0)
        np.testing.assert_allclose(pooled, alone, atol=1e-5)
    # The encoder application has no such property: the target changes [CLS].
    encoder = loaded_model(checkpoints, model, "encoder", with_pool="linear")
    assert np.abs(encoder.predict(list(pair(source, [21, 22, 23])), verbose=0)
                  - encoder.predict(list(pair(source, [40, 41, 42])), verbose=0)).max() > 1e-3


@pytest.mark.parametrize("model", MODELS)
def test_target_is_causal(checkpoints, model):
    transformer = loaded_model(checkpoints, model)
    token_ids, segment_ids = pair([11, 12, 13], [20, 21, 22, 23, 24])
    base = transformer.predict([token_ids, segment_ids], verbose=0)
    changed_at = 7  # a target position
    edited = token_ids.copy()
    edited[0, changed_at] = 50
    after = transformer.predict([edited, segment_ids], verbose=0)
    np.testing.assert_allclose(after[0, :changed_at], base[0, :changed_at], atol=1e-5)
    assert np.abs(after[0, changed_at:] - base[0, changed_at:]).max(axis=-1).min() > 1e-3


@pytest.mark.parametrize("model", MODELS)
def test_padding_does_not_change_outputs(checkpoints, model):
    transformer = loaded_model(checkpoints, model, with_pool="linear", with_mlm="linear")
    token_ids, segment_ids = pair([11, 12, 13], [20, 21])
    pooled, logits = transformer.predict([token_ids, segment_ids], verbose=0)
    padded = [np.pad(token_ids, ((0, 0), (0, 6))), np.pad(segment_ids, ((0, 0), (0, 6)))]
    pooled_padded, logits_padded = transformer.predict(padded, verbose=0)
    np.testing.assert_allclose(pooled_padded, pooled, atol=1e-5)
    np.testing.assert_allclose(logits_padded[:, : token_ids.shape[1]], logits, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_pruned_last_block_gives_the_same_rows(checkpoints, model):
    """The training model and the pooled encoder compute only some rows of the last block;
    those rows equal the full model's."""
    from simbert.config import TrainingConfig
    from simbert.data import target_positions
    from simbert.training_model import build_training_model

    transformer = loaded_model(checkpoints, model, with_pool="linear", with_mlm="linear")
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=3)
    pooled, logits = transformer.predict([token_ids, segment_ids], verbose=0)
    positions, _ = target_positions(token_ids, segment_ids)
    outputs = build_training_model(transformer, TrainingConfig(), Platform.current()).predict(
        [token_ids, segment_ids, positions], verbose=0)
    np.testing.assert_allclose(outputs["similarity"], pooled, atol=1e-5)
    np.testing.assert_allclose(outputs["seq2seq"], np.take_along_axis(logits, positions[:, :, None], 1), atol=1e-4)
    encoded = transformer.pooled_encoder().predict([token_ids, segment_ids], verbose=0)
    np.testing.assert_allclose(encoded, pooled, atol=1e-5)


def test_gelu_and_its_gradient_match_the_erf_formula():
    from scipy.special import erf

    from simbert.layers import gelu

    x = np.linspace(-6, 6, 241).astype("float32")
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    derivative = 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    for dtype, tolerance in (("float32", 1e-6), ("bfloat16", 3e-2)):
        outputs, (gradient,) = value_and_gradients(gelu, keras.ops.cast(x, dtype))
        assert keras.backend.standardize_dtype(outputs.dtype) == dtype
        assert keras.backend.standardize_dtype(gradient.dtype) == dtype
        for actual, expected in ((outputs, exact), (gradient, derivative)):
            actual = keras.ops.convert_to_numpy(keras.ops.cast(actual, "float32"))
            np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=tolerance)


def test_layer_norm_and_its_gradients_match_keras_autodiff():
    from simbert.layers import LayerNorm

    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 3.0, (2, 5, 7)).astype("float32")
    gamma, beta = rng.normal(size=7).astype("float32"), rng.normal(size=7).astype("float32")
    upstream = rng.normal(size=(2, 5, 7)).astype("float32")
    ours, reference = LayerNorm(epsilon=1e-12), keras.layers.LayerNormalization(epsilon=1e-12)
    results = []
    for layer in (ours, reference):
        layer.build(x.shape)
        layer.set_weights([gamma, beta])

        def apply(x, gamma, beta, layer=layer):
            return layer.stateless_call([gamma, beta], [], x)[0]

        results.append(value_and_gradients(apply, x, gamma, beta, upstream=upstream))
    (ours_y, ours_grads), (reference_y, reference_grads) = results
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours_y), keras.ops.convert_to_numpy(reference_y), atol=1e-5)
    for mine, theirs in zip(ours_grads, reference_grads):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs), atol=1e-4)
    centered = x - x.mean(-1, keepdims=True)
    expected = gamma * centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-12) + beta
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours_y), expected, atol=1e-5)
    with pytest.raises(ValueError, match="last axis"):
        LayerNorm(axis=1)


@pytest.mark.parametrize("model", MODELS)
def test_training_loss_gradient_matches_finite_differences(checkpoints, model):
    """The written-out gradients (cross-entropy, GELU, LayerNorm) and the pruned last block
    together: the directional derivative of the training loss equals a central difference."""
    from simbert.config import TrainingConfig
    from simbert.data import target_positions
    from simbert.losses import Seq2SeqLoss, SimilarityLoss
    from simbert.training_model import build_training_model

    backbone = loaded_model(checkpoints, model, with_pool="linear", with_mlm="linear")
    training_model = build_training_model(backbone, TrainingConfig(), Platform.current())
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=8, batch=4)
    positions, targets = target_positions(token_ids, segment_ids)
    text_ids = np.arange(4, dtype="int32")
    weights = [keras.ops.convert_to_numpy(v).astype("float32") for v in training_model.trainable_variables]
    fixed = [keras.ops.convert_to_numpy(v) for v in training_model.non_trainable_variables]

    def loss(*values):
        outputs, _ = training_model.stateless_call(list(values), fixed, [token_ids, segment_ids, positions])
        return Seq2SeqLoss()(targets, outputs["seq2seq"]) + SimilarityLoss()(text_ids, outputs["similarity"])

    _, gradients = value_and_gradients(loss, *weights)
    rng = np.random.default_rng(9)
    direction = [rng.normal(size=w.shape).astype("float32") for w in weights]
    analytic = sum(float(np.sum(keras.ops.convert_to_numpy(g) * d)) for g, d in zip(gradients, direction))
    step = 1e-3
    plus = float(loss(*[w + step * d for w, d in zip(weights, direction)]))
    minus = float(loss(*[w - step * d for w, d in zip(weights, direction)]))
    numeric = (plus - minus) / (2 * step)
    assert abs(analytic) > 0.1
    assert abs(analytic - numeric) < 1e-2 * abs(analytic)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dropout_keeps_one_minus_rate_and_is_unbiased(dtype):
    """Over 2M units the kept fraction is 1 - rate within 5 standard deviations (2^-16
    thresholds, in any dtype), kept units are x / p and dropped ones 0, the gradient is
    the same mask, and each call draws a new mask."""
    from simbert.layers import Dropout

    layer = Dropout(0.1, seed=3, dtype="mixed_bfloat16" if dtype == "bfloat16" else "float32")
    x = keras.ops.cast(np.random.default_rng(5).uniform(1, 2, (64, 125, 250)), dtype)
    outputs, (gradient,) = value_and_gradients(lambda x: layer(x, training=True), x)
    y, x = (np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(t, "float32"))) for t in (outputs, x))
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 5 * np.sqrt(0.9 * 0.1 / kept.size)
    keep_probability = 1 - round(0.1 * 2 ** 16) / 2 ** 16
    scale = float(keras.ops.cast(1 / keep_probability, dtype))  # the scale as the dtype holds it
    np.testing.assert_allclose(y[kept], x[kept] * scale, rtol=2 ** -7 if dtype == "bfloat16" else 1e-6)
    gradient = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(gradient, "float32")))
    np.testing.assert_array_equal(gradient, np.where(kept, scale, 0.0))
    again = keras.ops.convert_to_numpy(keras.ops.cast(layer(keras.ops.cast(x, dtype), training=True), "float32"))
    assert 0.15 < np.mean((again != 0) != kept) < 0.2  # independent masks differ on 2 p (1 - p) = 18%
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(keras.ops.cast(x, dtype))),
                                  keras.ops.convert_to_numpy(keras.ops.cast(x, dtype)))


def test_dropout_odd_width_and_zero_rate():
    from simbert.layers import Dropout

    x = np.ones((300, 7), "float32")
    y = keras.ops.convert_to_numpy(Dropout(0.5, seed=1)(x, training=True))
    assert set(np.unique(y)) == {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(Dropout(0.0)(x, training=True)), x)
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.1, noise_shape=(1, 7))


def test_tied_output_projection_is_x_times_embedding_transposed():
    """Keras' ReversibleEmbedding, the model's tied MLM projection: `h E^T`, with
    gradients `g E` for h and `g^T h` for E."""
    layer = keras.layers.ReversibleEmbedding(13, 5)
    layer.build((None,))
    x = np.random.default_rng(4).normal(size=(2, 3, 5)).astype("float32")
    upstream = np.random.default_rng(5).normal(size=(2, 3, 13)).astype("float32")
    embeddings = keras.ops.convert_to_numpy(layer.embeddings)

    def project(x, embeddings):
        return layer.stateless_call([embeddings], [], x, reverse=True)[0]

    outputs, (d_x, d_embeddings) = value_and_gradients(project, x, embeddings, upstream=upstream)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), x @ embeddings.T, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d_x), upstream @ embeddings, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d_embeddings),
                               upstream.reshape(-1, 13).T @ x.reshape(-1, 5), atol=1e-5)


def test_output_order_follows_bert4keras():
    token_ids, segment_ids = padded_batch(97, seed=1, batch=2, length=9)
    outputs = {
        (False, False): (2, 9, 18),
        ("linear", False): (2, 18),
        (False, "linear"): (2, 9, 97),
    }
    for (pool, mlm), shape in outputs.items():
        transformer = build_transformer_model(TINY_CONFIG, with_pool=pool, with_mlm=mlm)
        assert transformer.predict([token_ids, segment_ids], verbose=0).shape == shape
    pooled, probabilities = build_transformer_model(TINY_CONFIG, with_pool=True, with_mlm=True).predict(
        [token_ids, segment_ids], verbose=0)
    assert pooled.shape == (2, 18) and np.abs(pooled).max() <= 1.0  # tanh
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)  # softmax


@pytest.mark.parametrize("model", MODELS)
def test_keras_save_and_load(tmp_path, checkpoints, model):
    transformer = loaded_model(checkpoints, model, with_pool="linear", with_mlm="linear")
    inputs = padded_batch(97, seed=2)
    expected = transformer.predict(list(inputs), verbose=0)
    transformer.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(restored, Transformer) and restored.get_config() == transformer.get_config()
    for got, want in zip(restored.predict(list(inputs), verbose=0), expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
    transformer.save_weights(tmp_path / "model.weights.h5")
    fresh = Transformer.from_config(transformer.get_config())
    fresh.load_weights(tmp_path / "model.weights.h5")
    for got, want in zip(fresh.predict(list(inputs), verbose=0), expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_checkpoint_round_trip_with_keep_tokens(tmp_path, model):
    values = random_bert_values(TINY_CONFIG, model, seed=3)
    write_tf_checkpoint(values, str(tmp_path / "bert_model.ckpt"))
    keep_tokens = [0, 1, 2, 3, 50, 7, 96]
    transformer = build_transformer_model(TINY_CONFIG, str(tmp_path / "bert_model.ckpt"), model=model,
                                          with_pool="linear", with_mlm="linear", keep_tokens=keep_tokens)
    loaded = model_values(transformer)
    np.testing.assert_array_equal(loaded["bert/embeddings/word_embeddings"],
                                  values["bert/embeddings/word_embeddings"][keep_tokens])
    np.testing.assert_array_equal(loaded["cls/predictions/output_bias"],
                                  values["cls/predictions/output_bias"][keep_tokens])
    for name in values:
        if name not in ("bert/embeddings/word_embeddings", "cls/predictions/output_bias"):
            np.testing.assert_array_equal(loaded[name], values[name])
    save_pretrained(transformer, tmp_path / "saved", {f"t{i}": i for i in range(len(keep_tokens))})
    assert read_tf_checkpoint(tmp_path / "saved").keys() == values.keys()
    config = json.loads((tmp_path / "saved" / "bert_config.json").read_text())
    assert config["vocab_size"] == len(keep_tokens)


def test_missing_heads_warn_once_and_keep_initial_values(tmp_path, caplog):
    directory = write_model_dir(str(tmp_path), TINY_CONFIG, heads=False)
    with caplog.at_level(logging.WARNING, logger="simbert.checkpoints"):
        transformer = build_transformer_model(TINY_CONFIG, directory, with_pool="linear", with_mlm="linear")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "bert/pooler/dense/kernel" in warnings[0] and "cls/predictions/output_bias" in warnings[0]
    np.testing.assert_array_equal(model_values(transformer)["cls/predictions/output_bias"], 0.0)


def test_missing_backbone_variable_and_shape_mismatch(tmp_path):
    values = random_bert_values(TINY_CONFIG)
    del values["bert/encoder/layer_1/output/dense/bias"]
    write_tf_checkpoint(values, str(tmp_path / "a.ckpt"))
    with pytest.raises(ValueError, match="layer_1/output/dense/bias is missing"):
        build_transformer_model(TINY_CONFIG, str(tmp_path / "a.ckpt"))
    values = random_bert_values(TINY_CONFIG)
    values["bert/encoder/layer_0/intermediate/dense/kernel"] = np.zeros((18, 36), "float32")
    write_tf_checkpoint(values, str(tmp_path / "b.ckpt"))
    with pytest.raises(ValueError, match=r"intermediate/dense/kernel has shape \(18, 36\).*\(18, 37\)"):
        build_transformer_model(TINY_CONFIG, str(tmp_path / "b.ckpt"))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        load_weights(build_transformer_model(TINY_CONFIG), str(tmp_path / "nowhere.ckpt"))


def test_bad_configs(tmp_path):
    config = dict(TINY_CONFIG)
    del config["num_attention_heads"]
    with pytest.raises(ValueError, match="num_attention_heads.*missing"):
        read_config(config)
    with pytest.raises(ValueError, match="hidden_size.*int"):
        read_config({**TINY_CONFIG, "hidden_size": "18"})
    with pytest.raises(ValueError, match="not divisible"):
        read_config({**TINY_CONFIG, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="hidden_act"):
        read_config({**TINY_CONFIG, "hidden_act": "mish2"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: is not valid JSON"):
        read_config(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_config(str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="model_type 'gpt'.*'bert', 'roformer'"):
        build_transformer_model(TINY_CONFIG, model="gpt")
    with pytest.raises(ValueError, match="application 'lm'.*'encoder', 'unilm'"):
        build_transformer_model(TINY_CONFIG, application="lm")


def test_ids_beyond_vocab_are_rejected():
    transformer = build_transformer_model(TINY_CONFIG)
    with pytest.raises(ValueError, match=r"token_ids.*0 <= id < 97"):
        transformer.check_inputs([[2, 97, 3]], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"segment_ids.*0 <= id < 2"):
        transformer.check_inputs([[2, 5, 3]], [[0, 2, 0]])
    with pytest.raises(ValueError, match="max_position_embeddings 40"):
        transformer.check_inputs(np.ones((1, 41)), np.zeros((1, 41)))
    transformer.check_inputs([[2, 96, 3]], [[0, 1, 1]])


def test_every_kernel_choice_computes_the_same_block_and_gradients():
    """`simbert.kernels` picks implementations per device: each must be the same function.
    A block with written-out GELU/LayerNorm and softmax attention against one with Keras'
    autodiff GELU/LayerNorm and `ops.dot_product_attention` (no dropout, so it applies in
    training too), same weights: outputs and input gradients."""
    from simbert.kernels import Kernels
    from simbert.layers import TransformerBlock, build_attention_mask
    from simbert.losses import cross_entropy

    options = dict(num_heads=3, head_size=6, hidden_size=18, intermediate_size=37, dropout_rate=0.0,
                   attention_dropout_rate=0.0)
    written = TransformerBlock(**options, kernels=Kernels())
    autodiff = TransformerBlock(**options, kernels=Kernels(written_gelu=False, written_layer_norm=False,
                                                           written_cross_entropy=False, fused_attention=True))
    token_ids, segment_ids = padded_batch(97, seed=4)
    mask = build_attention_mask(token_ids, segment_ids, "unilm")
    x = np.random.default_rng(5).normal(size=token_ids.shape + (18,)).astype("float32")
    written.build(x.shape)
    autodiff.build(x.shape)
    autodiff.set_weights(written.get_weights())
    upstream = np.random.default_rng(6).normal(size=x.shape).astype("float32")
    real = token_ids != 0  # padded query rows are never read
    for training in (False, True):
        ours, (ours_gradient,) = value_and_gradients(
            lambda v, training=training: written(v, mask, training=training), x, upstream=upstream * real[..., None])
        theirs, (theirs_gradient,) = value_and_gradients(
            lambda v, training=training: autodiff(v, mask, training=training), x, upstream=upstream * real[..., None])
        np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(theirs)[real], atol=2e-5)
        np.testing.assert_allclose(np.asarray(ours_gradient), np.asarray(theirs_gradient), atol=2e-5)
    logits = np.random.default_rng(7).normal(size=(6, 11)).astype("float32") * 5
    labels = np.array([0, 3, 10, 4, 4, 7], "int32")
    ours, (ours_gradient,) = value_and_gradients(lambda z: cross_entropy(z, labels, True), logits)
    theirs, (theirs_gradient,) = value_and_gradients(lambda z: cross_entropy(z, labels, False), logits)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours_gradient), np.asarray(theirs_gradient), atol=1e-6)


def test_hierarchical_positions_keep_the_first_n_and_reload_with_the_model(tmp_path):
    """The first 40 positions are the learned ones (the outputs of rows within them are
    the plain model's); past them the model runs up to 40^2 tokens; a saved directory
    reloads with the setting. RoFormer has no table and takes 2n tokens as it is."""
    from simbert.api import SimBERT

    directory = write_model_dir(str(tmp_path / "bert"), TINY_CONFIG, "bert", seed=2)
    plain = build_transformer_model(f"{directory}/bert_config.json", directory, application="unilm",
                                    with_pool="linear", with_mlm="linear")
    stretched = build_transformer_model(f"{directory}/bert_config.json", directory, application="unilm",
                                        with_pool="linear", with_mlm="linear", hierarchical_position=True)
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=6, length=40)
    for ours, theirs in zip(stretched.predict([token_ids, segment_ids], verbose=0),
                            plain.predict([token_ids, segment_ids], verbose=0)):
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    long_ids, long_segments = padded_batch(TINY_CONFIG["vocab_size"], seed=7, length=90)
    stretched.check_inputs(long_ids, long_segments)
    with pytest.raises(ValueError, match=r"sequence length 90 exceeds the model's 40 positions"):
        plain.check_inputs(long_ids, long_segments)
    with pytest.raises(ValueError, match=r"sequence length 1601 exceeds the model's 1600 positions "
                                         r"\(max_position_embeddings 40 \(hierarchical_position: its square\)\)"):
        stretched.check_inputs(np.ones((1, 1601), "int32"), np.zeros((1, 1601), "int32"))
    expected = stretched.predict([long_ids, long_segments], verbose=0)
    save_pretrained(stretched, tmp_path / "saved", {f"t{i}": i for i in range(TINY_CONFIG["vocab_size"])})
    assert json.loads((tmp_path / "saved" / "bert_config.json").read_text())["hierarchical_position"] == 0.4
    reloaded = build_transformer_model(str(tmp_path / "saved" / "bert_config.json"), str(tmp_path / "saved"),
                                       application="unilm", with_pool="linear", with_mlm="linear")
    for ours, theirs in zip(reloaded.predict([long_ids, long_segments], verbose=0), expected):
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    # Through SimBERT: max_tokens past the table.
    model = SimBERT.from_pretrained(directory, max_tokens=100, hierarchical_position=True)
    text = " ".join(f"w{i % 90 + 5}" for i in range(95))
    assert model.shapes.max_length == 100 and model.encode([text]).shape == (1, TINY_CONFIG["hidden_size"])
    assert len(model.gibbs_sample(length=60, steps=2, burn_in=1, seed=0)[0]) == 1  # Gibbs past the table too
    roformer_dir = write_model_dir(str(tmp_path / "roformer"), TINY_CONFIG, "roformer", seed=2)
    roformer = SimBERT.from_pretrained(roformer_dir, max_tokens=80)
    vectors = roformer.encode([text, "w5 w6"])
    assert roformer.shapes.max_length == 80 and np.all(np.isfinite(vectors))
    with pytest.raises(ValueError, match="roformer has none and takes inputs of any length already"):
        SimBERT.from_pretrained(roformer_dir, hierarchical_position=True)
