"""The cached contrastive step (`training.similarity_chunk`, simbert/cached_step.py) computes
the plain step: the same loss and gradients (dropout off), the same logs, the same dropout
masks in both of its passes; data parallel on 4 simulated JAX devices too.
Runs on TensorFlow here and on JAX through test_jax_backend.py (but the devices test,
which starts its own JAX process)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from helpers import ROOT, TINY_CONFIG, padded_batch, tiny_config, value_and_gradients
from simbert.cached_step import ChunkError, check_similarity_chunk
from simbert.config import TrainingConfig
from simbert.data import target_positions
from simbert.directories import build_backbone
from simbert.kernels import Platform
from simbert.trainer import Trainer
from simbert.training_model import CachedTrainingModel, TrainingModel, build_training_model

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 8
TOLERANCE = 1e-5
DISTILLATION_WEIGHT = 10.0  # 100 in the recipes; 10 keeps its rounding well inside TOLERANCE


def backbone(dropout=0.0, seed=0):
    """A 1-layer, 32-wide UniLM BERT with weights of std 0.2 (the pooled vectors then
    differ enough for the similarity loss to be well conditioned)."""
    config = {**TINY_CONFIG, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 48,
              "num_hidden_layers": 1, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    model = build_backbone(config, model_type="bert", application="unilm", with_pool="linear", with_mlm="linear")
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        if not variable.path.endswith(("gamma", "beta")):
            variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))
    return model


def batch(teacher=False):
    """`BATCH` rows as `make_batch` gives them; rows 0 and 4 share their source text."""
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=1, batch=BATCH, length=14)
    positions, targets = target_positions(token_ids, segment_ids)
    y = {"seq2seq": targets, "similarity": np.array([0, 1, 2, 3, 0, 5, 6, 7], "int32")}
    if teacher:
        vectors = np.random.default_rng(2).normal(size=(BATCH, 8))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        y["distillation"] = (vectors @ vectors.T).astype("float32")
    return [token_ids, segment_ids, positions], y


def models(chunk, teacher=False, dropout=0.0, learning_rate=1e-3):
    """The plain and the cached training model of one backbone (shared weights)."""
    # `teacher` only needs to be set: the tests give the distillation targets themselves.
    training = TrainingConfig(batch_size=BATCH, similarity_chunk=chunk, teacher="given" if teacher else None,
                              learning_rate=learning_rate, distillation_weight=DISTILLATION_WEIGHT)
    keras.utils.set_random_seed(0)  # the dropout layers' seeds
    shared, platform = backbone(dropout), Platform.current()
    plain = build_training_model(shared, TrainingConfig(**{**vars(training), "similarity_chunk": None}), platform)
    return plain, build_training_model(shared, training, platform)


def compiled(function):
    """`function` compiled as the step is (`jax.jit`, `tf.function`): eager JAX is slow."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function)


def compiled_gradients(function, values):
    """`value_and_gradients(function, *values)`, compiled."""
    return compiled(lambda *args: value_and_gradients(function, *args))(*values)


def numpy(values):
    return [keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(value)) for value in values]


def plain_loss_and_gradients(model, x, y):
    """The plain model's loss (Keras' `compute_loss`) and its gradients, by autodiff."""
    model.compute_loss(x, y, model(x))  # builds the compiled losses
    seeds = [v.value for v in model.non_trainable_variables]

    def loss(*values):
        outputs, _ = model.stateless_call(list(values), seeds, x, training=True)
        with keras.StatelessScope():  # the loss trackers' updates are dropped
            return model.compute_loss(x, y, outputs)

    value, grads = compiled_gradients(loss, [v.value for v in model.trainable_variables])
    return float(value), numpy(grads)


def cached_loss_and_gradients(model, x, y):
    """The cached step's loss, parts and gradients, compiled as in `fit`, and the seed
    states after it."""
    step = model.cached_step
    if keras.backend.backend() == "jax":
        import jax

        model.optimizer.build(model.trainable_variables)
        (loss, parts), grads, seeds = jax.jit(step.loss_and_gradients)(
            [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables], x, y)
    else:
        import tensorflow as tf

        (loss, parts), grads = tf.function(step.loss_and_gradients)(x, y)
        seeds = [v.value for v in model.non_trainable_variables]
    return float(loss), {k: float(v) for k, v in parts.items()}, numpy(grads), numpy(seeds)


@pytest.mark.parametrize("chunk, teacher", [(2, False), (BATCH // 2, False), (2, True)])
def test_cached_gradients_equal_the_plain_step(chunk, teacher):
    plain, cached = models(chunk, teacher)
    assert isinstance(cached, CachedTrainingModel) and type(plain) is TrainingModel
    x, y = batch(teacher)
    loss, grads = plain_loss_and_gradients(plain, x, y)
    cached_loss, parts, cached_grads, _ = cached_loss_and_gradients(cached, x, y)
    assert sorted(parts) == sorted(["seq2seq", "similarity"] + ["distillation"] * teacher)
    assert abs(cached_loss - loss) <= TOLERANCE * max(1.0, abs(loss))
    weights = {"seq2seq": 1.0, "similarity": 1.0, "distillation": DISTILLATION_WEIGHT}
    assert cached_loss == pytest.approx(sum(weights[name] * value for name, value in parts.items()), rel=1e-6)
    assert len(cached_grads) == len(grads) == len(plain.trainable_variables)
    differences = [np.max(np.abs(a - b)) for a, b in zip(grads, cached_grads)]
    print("max abs gradient difference", chunk, teacher, max(differences))
    assert max(differences) <= TOLERANCE, max(differences)
    # Real gradients (all but the attention keys' bias, to which softmax is blind).
    assert np.mean([np.max(np.abs(g)) > 1e-3 for g in grads]) > 0.9


def test_dropout_masks_agree_between_the_passes():
    """With dropout, the cached gradients are those of the loss of the chunks' forward
    passes, chunk c's dropout seeded `state_0 + c delta` (pass 2 redraws pass 1's masks);
    the seeds are left `chunks` forward passes on."""
    _, cached = models(BATCH // 2, dropout=0.3)
    x, y = batch()
    step, chunks = cached.cached_step, 2
    start = [ops.convert_to_tensor(value) for value in numpy(cached.non_trainable_variables)]  # copies
    assert start  # the dropout layers' seed generators
    values = [v.value for v in cached.trainable_variables]
    _, after = compiled(lambda *v: cached.stateless_call(list(v), start, step.chunk_inputs(x, 0), training=True))(
        *values)
    delta = [b - a for a, b in zip(start, after)]
    assert all(np.any(d != 0) for d in numpy(delta))  # each forward pass draws masks

    def chunkwise(*values):
        pooled, tokens = [], 0.0
        for c in range(chunks):
            outputs, _ = cached.stateless_call(list(values), step.seeds_at(start, delta, c), step.chunk_inputs(x, c),
                                               training=True)
            pooled.append(ops.cast(outputs["similarity"], "float32"))
            tokens = tokens + step.token_loss_sum(step.rows(y["seq2seq"], c), outputs["seq2seq"])
        embedding, _ = step.embedding_loss(step.batch_rows(ops.stack(pooled)), y)
        return embedding + tokens / step.target_weight(y["seq2seq"])

    reference, reference_grads = compiled_gradients(chunkwise, values)
    loss, _, grads, seeds = cached_loss_and_gradients(cached, x, y)
    assert abs(loss - float(reference)) <= TOLERANCE * abs(loss)
    differences = [np.max(np.abs(a - b)) for a, b in zip(numpy(reference_grads), grads)]
    print("max abs gradient difference, dropout", max(differences))
    assert max(differences) <= TOLERANCE, max(differences)
    expected = numpy(step.seeds_at(start, delta, chunks))
    assert all(np.array_equal(a, b) for a, b in zip(seeds, expected))


def test_a_training_step_logs_and_updates_as_the_plain_one():
    plain, cached = models(2, learning_rate=1e-4)
    x, y = batch()
    start = numpy(plain.trainable_variables)
    plain_logs = plain.train_on_batch(x, y, return_dict=True)
    plain_weights = numpy(plain.trainable_variables)
    for variable, value in zip(cached.trainable_variables, start):
        variable.assign(value)
    cached_logs = cached.train_on_batch(x, y, return_dict=True)
    assert cached.step_traces >= 1
    assert sorted(cached_logs) == sorted(plain_logs) == ["loss", "seq2seq_loss", "similarity_loss"]
    for key, value in plain_logs.items():
        assert abs(cached_logs[key] - value) <= TOLERANCE * max(1.0, abs(value)), key
    assert cached_logs["loss"] == pytest.approx(cached_logs["seq2seq_loss"] + cached_logs["similarity_loss"])
    differences = [np.max(np.abs(a - b)) for a, b in zip(plain_weights, numpy(cached.trainable_variables))]
    assert max(differences) <= TOLERANCE
    moved = [np.max(np.abs(a - b)) for a, b in zip(start, plain_weights)]
    assert np.mean([m > 1e-5 for m in moved]) > 0.9  # the step did update the weights


def test_chunks_must_divide_each_devices_rows(tmp_path):
    check_similarity_chunk(None, 30, 4)
    check_similarity_chunk(4, 32, 4)
    with pytest.raises(ChunkError, match=r"training.similarity_chunk 3 should divide the 8 rows each device "
                                         r"holds \(training.batch_size 32 over 4 device\(s\)\)"):
        check_similarity_chunk(3, 32, 4)
    with pytest.raises(ChunkError, match="training.similarity_chunk 3 .*training.batch_size 16 over 1 device"):
        Trainer(tiny_config(tmp_path, 2, batch_size=16, similarity_chunk=3))
    assert not os.listdir(tmp_path)
    # A chunk of a device's rows or more is the plain step.
    plain = build_training_model(backbone(), TrainingConfig(batch_size=8, similarity_chunk=8), Platform.current())
    assert type(plain) is TrainingModel


def test_on_four_devices_the_cached_step_is_the_one_device_plain_step(tmp_path):
    """Data parallel over 4 simulated JAX devices (4 rows each), chunks of 1 row a device:
    the loss and gradients of the plain step on one device; a 2-step cached run (chunks
    of 2 rows a device) logs the plain keys."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, os.path.join(HERE, "cached_devices.py"), str(tmp_path)], env=env,
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    plain = np.load(tmp_path / "plain.npz")
    assert int(plain["devices"]) == 1
    cached = np.load(tmp_path / "cached-1.npz")
    assert int(cached["devices"]) == 4 and int(cached["chunks"]) == 4
    assert abs(float(cached["loss"]) - float(plain["loss"])) <= TOLERANCE * float(plain["loss"])
    names = [name for name in plain.files if name.startswith("grad/")]
    assert len(names) > 10 and sorted(names) == sorted(name for name in cached.files if name.startswith("grad/"))
    difference = max(np.max(np.abs(plain[name] - cached[name])) for name in names)
    print("max abs gradient difference, 4 devices", difference)
    assert difference <= TOLERANCE
    with open(tmp_path / "run.json", encoding="utf-8") as reader:
        run = json.load(reader)
    assert run["model"] == "CachedTrainingModel" and run["step"] == 2
    assert {"loss", "seq2seq_loss", "similarity_loss"} <= set(run["last"]) and np.isfinite(run["last"]["loss"])
