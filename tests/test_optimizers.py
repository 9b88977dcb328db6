"""simbert's AdamW (fused kernels on TensorFlow) against Keras' AdamW."""

import keras
import numpy as np
import pytest

from simbert.optimizers import PRIVATE_KERAS_ATTRIBUTES, AdamW


def run_steps(optimizer, steps=6, seed=0):
    """Weights after `steps` updates of two variables (one excluded from decay) with
    fixed random gradients; also the optimizer's variables."""
    rng = np.random.default_rng(seed)
    kernel = keras.Variable(rng.normal(size=(7, 5)).astype("float32"), name="kernel")
    bias = keras.Variable(rng.normal(size=(5,)).astype("float32"), name="bias")
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    for _ in range(steps):
        grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in (kernel, bias)]
        optimizer.apply_gradients(zip(grads, [kernel, bias]))
    return [keras.ops.convert_to_numpy(v) for v in (kernel, bias)], optimizer.variables


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_matches_keras_adamw(weight_decay):
    settings = dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.01, 2, 0.5),
                    weight_decay=weight_decay, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
    ours, our_state = run_steps(AdamW(**settings))
    theirs, their_state = run_steps(keras.optimizers.AdamW(**settings))
    start, _ = run_steps(AdamW(**settings), steps=0)
    for mine, reference, initial in zip(ours, theirs, start):
        assert np.abs(reference - initial).max() > 1e-3  # the steps moved the weights
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-7)
    # Same slots in the same order, so checkpoints of either load in the other.
    assert [v.path.split("/")[-1] for v in our_state] == [v.path.split("/")[-1] for v in their_state]
    for mine, reference in zip(our_state, their_state):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(reference),
                                   rtol=1e-6, atol=1e-7)


def test_decay_skips_excluded_variables():
    """With zero gradients Adam's step is zero, so only the decay moves the weights:
    `w (1 - lr wd)^steps` for the kernel, the bias unchanged."""
    rng = np.random.default_rng(1)
    kernel = keras.Variable(rng.normal(size=(4, 3)).astype("float32"), name="kernel")
    bias = keras.Variable(rng.normal(size=(3,)).astype("float32"), name="bias")
    start = [keras.ops.convert_to_numpy(v) for v in (kernel, bias)]
    optimizer = AdamW(learning_rate=0.1, weight_decay=0.2)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    for _ in range(3):
        optimizer.apply_gradients([(keras.ops.zeros(kernel.shape), kernel), (keras.ops.zeros(bias.shape), bias)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), start[0] * (1 - 0.1 * 0.2) ** 3, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bias), start[1])


def test_inside_compiled_training():
    """A compiled Keras model trains with it and matches Keras' AdamW after 4 steps."""
    x = np.random.default_rng(2).normal(size=(16, 6)).astype("float32")
    y = np.random.default_rng(3).normal(size=(16, 2)).astype("float32")
    weights = []
    for optimizer in (AdamW(learning_rate=0.01, weight_decay=0.1), keras.optimizers.AdamW(0.01, weight_decay=0.1)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
        model.compile(optimizer=optimizer, loss="mse")
        for _ in range(4):
            model.train_on_batch(x, y)
        weights.append(model.get_weights())
    for mine, reference in zip(*weights):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_compiled_model_saves_and_loads_with_its_optimizer(tmp_path):
    """A `.keras` file of a model compiled with it restores our class, its settings and
    its slots."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=AdamW(learning_rate=0.003, weight_decay=0.02, beta_2=0.98), loss="mse")
    model.train_on_batch(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"))
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert type(restored.optimizer) is AdamW
    assert restored.optimizer.weight_decay == 0.02 and restored.optimizer.beta_2 == 0.98
    assert len(restored.optimizer.variables) == len(model.optimizer.variables) > 2
    for mine, saved in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(saved))


def test_the_private_keras_attributes_it_uses_exist():
    """Fails, naming the attribute and the Keras version, when Keras' AdamW no longer has
    what ours overrides or reads (then update `simbert.optimizers` and the pin in setup.py)."""
    optimizer = keras.optimizers.AdamW(learning_rate=0.1)
    variable = keras.Variable(np.ones((2, 3), "float32"), name="kernel")
    optimizer.build([variable])
    for name in PRIVATE_KERAS_ATTRIBUTES:
        assert hasattr(optimizer, name), (f"keras {keras.__version__}: keras.optimizers.AdamW has no {name}, "
                                          "which simbert.optimizers.AdamW relies on")
    index = optimizer._get_variable_index(variable)
    assert optimizer._momentums[index].shape == optimizer._velocities[index].shape == variable.shape, (
        f"keras {keras.__version__}: AdamW's _momentums / _velocities are no longer per-variable slots")
    assert optimizer._use_weight_decay(variable), f"keras {keras.__version__}: _use_weight_decay changed meaning"
