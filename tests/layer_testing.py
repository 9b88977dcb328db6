"""`run_layer_test`, in the spirit of keras-hub's `TestCase.run_layer_test`: one layer
class checked for its output shape and dtype under each dtype policy, its `get_config` /
`from_config` round trip, and the same output on the other Keras backend.

The backend is fixed when Keras is imported, so the other backend's outputs come from one
subprocess for all the cases of a test module (`outputs_on_other_backend`); each case's
weights are drawn from its seed there as here (`build_and_call`), so no weights travel.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys

import keras
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# |output - float32 output| <= tolerance * max |float32 output| under each policy (16-bit
# compute rounds each op to 11 or 8 significant bits; the layers of tests/test_layers.py
# measured at most 1.1e-3 and 1.0e-2).
POLICY_TOLERANCE = {"float32": 0.0, "mixed_float16": 5e-3, "mixed_bfloat16": 3e-2}
# Two backends computing the same float32 function differ in the order of their sums
# (measured at most 1.6e-7). Both compute on the CPU: a GPU's float32 matmuls may round
# to TF32.
BACKEND_RTOL = 1e-5


def other_backend() -> str:
    return "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"


def on_cpu():
    """A context in which the active backend computes, and places variables, on the CPU."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_device(jax.devices("cpu")[0])
    import tensorflow as tf

    return tf.device("/CPU:0")


def to_tensors(input_data):
    """`input_data` as the layer's arguments: an array is the one positional argument, a
    dict maps argument names to arrays (converted to tensors) or plain values."""
    if isinstance(input_data, dict):
        return (), {name: keras.ops.convert_to_tensor(value) if isinstance(value, np.ndarray) else value
                    for name, value in input_data.items()}
    return (keras.ops.convert_to_tensor(input_data),), {}


def to_numpy(outputs):
    return keras.tree.map_structure(lambda x: np.asarray(keras.ops.convert_to_numpy(x)), outputs)


def assign_seeded_weights(layer, seed: int) -> None:
    """Every floating weight of `layer`, in `layer.weights` order, drawn from N(0, 0.2^2)
    with numpy's generator seeded `seed` (the same values on every backend)."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        if "float" in str(weight.dtype):
            weight.assign(rng.normal(0.0, 0.2, tuple(weight.shape)).astype(weight.dtype))


def build_and_call(layer_class, init_kwargs, input_data, call_kwargs=None, seed=0, dtype=None):
    """`layer_class(**init_kwargs, dtype=dtype)` built by a first call, its weights drawn
    from `seed`, and `(layer, outputs as numpy)` of a second call on `input_data`, all on
    the CPU."""
    with on_cpu():
        layer = layer_class(**init_kwargs, **({} if dtype is None else {"dtype": dtype}))
        args, kwargs = to_tensors(input_data)
        call_kwargs = dict(call_kwargs or {})
        layer(*args, **kwargs, **call_kwargs)
        assign_seeded_weights(layer, seed)
        return layer, to_numpy(layer(*args, **kwargs, **call_kwargs))


def flat(structure) -> list:
    return keras.tree.flatten(structure)


def assert_close(actual, expected, rtol, mask=None, what=""):
    """Each array of `actual` equals the one of `expected` to `rtol` times the largest
    magnitude of that expected array (where `mask`, broadcast to the first output, is True)."""
    actual, expected = flat(actual), flat(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}: output {i} has shape {a.shape}, expected {e.shape}"
        a, e = a.astype("float64"), e.astype("float64")
        if mask is not None and i == 0:
            selected = np.broadcast_to(mask, e.shape)
            a, e = a[selected], e[selected]
        assert np.all(np.isfinite(a)), f"{what}: output {i} has non-finite values"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: output {i}")


def constructor_arguments(layer_class) -> set[str]:
    """The named arguments of the `__init__` `layer_class` defines itself (none when it
    inherits Keras' constructor, whose `get_config` is Keras' own)."""
    if "__init__" not in vars(layer_class):
        return set()
    parameters = list(inspect.signature(layer_class.__init__).parameters.values())[1:]
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def run_layer_test(layer_class, init_kwargs, input_data, expected_output_shape, *, call_kwargs=None,
                   expected_output_dtype=None, dtype_policies=DTYPE_POLICIES, config_omits=(), output_mask=None,
                   other_backend_output=None, seed=0):
    """Check `layer_class` and return its float32 outputs (numpy, the layer's structure).

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        init_kwargs: its constructor arguments, without `dtype`.
        input_data: an array (the one positional argument) or a dict of named arguments
            (arrays become tensors; other values pass as they are).
        expected_output_shape: the output's shape, or a nested structure of shapes
            matching the output's (a layer returning `(output, (keys, values))`).
        call_kwargs: further call arguments (`training`, flags).
        expected_output_dtype: every output's dtype under a policy: a dtype, or a callable
            `policy -> dtype`; default the policy's compute dtype.
        dtype_policies: the policies to build the layer under, passed as `dtype=` (the
            global policy is never set; the test checks it is unchanged).
        config_omits: constructor arguments `get_config` is known to leave out (each
            should be named in the test with the reason); any other one left out fails.
        output_mask: where the first output is defined (broadcast to its shape, e.g.
            False at padding rows); the value comparisons read only those entries.
        other_backend_output: the same case's outputs from `outputs_on_other_backend`;
            None to skip that comparison.
        seed: the seed of the weights (`assign_seeded_weights`).

    Checks, for each policy: the output structure, shapes and dtypes; that the layer and
    every sublayer carry the policy and keep float32 variables; and that the values are
    the float32 ones within `POLICY_TOLERANCE`. Then: `from_config(get_config())` and a
    Keras serialize / JSON / deserialize round trip give a layer of the same class and
    config that computes the same output from the same weights; `get_config` holds every
    constructor argument but `config_omits`; and the float32 output equals
    `other_backend_output` to `BACKEND_RTOL`.
    """
    global_policy = keras.config.dtype_policy().name
    expected_shapes = keras.tree.map_shape_structure(tuple, expected_output_shape)
    layer, reference = build_and_call(layer_class, init_kwargs, input_data, call_kwargs, seed, dtype="float32")
    for policy in dtype_policies:
        what = f"{layer_class.__name__} under {policy}"
        policy_layer, outputs = (layer, reference) if policy == "float32" else build_and_call(
            layer_class, init_kwargs, input_data, call_kwargs, seed, dtype=policy)
        shapes = keras.tree.map_structure(lambda x: tuple(x.shape), outputs)
        assert keras.tree.map_shape_structure(tuple, shapes) == expected_shapes, f"{what}: output shapes {shapes}"
        if expected_output_dtype is None:
            dtype = keras.dtype_policies.get(policy).compute_dtype
        else:
            dtype = expected_output_dtype(policy) if callable(expected_output_dtype) else expected_output_dtype
        assert [str(x.dtype) for x in flat(outputs)] == [dtype] * len(flat(outputs)), what
        for sublayer in policy_layer._flatten_layers(include_self=True):
            assert sublayer.dtype_policy.name == policy, f"{what}: {sublayer.name} has {sublayer.dtype_policy.name}"
        variable_dtype = keras.dtype_policies.get(policy).variable_dtype
        for weight in policy_layer.weights:
            assert weight.dtype == variable_dtype, f"{what}: {weight.path} is {weight.dtype}"
        assert_close(outputs, reference, POLICY_TOLERANCE[policy], output_mask, what)
        assert keras.config.dtype_policy().name == global_policy, f"{what} changed the global dtype policy"

    # The round trip, on the float32 layer.
    config = layer.get_config()
    missing = constructor_arguments(layer_class) - set(config)
    assert missing == set(config_omits), f"{layer_class.__name__}.get_config leaves out {sorted(missing)}"
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    with on_cpu():
        for clone in (layer_class.from_config(config), keras.saving.deserialize_keras_object(serialized)):
            assert type(clone) is layer_class and clone.get_config() == config
            args, kwargs = to_tensors(input_data)
            clone(*args, **kwargs, **dict(call_kwargs or {}))
            clone.set_weights(layer.get_weights())
            outputs = to_numpy(clone(*args, **kwargs, **dict(call_kwargs or {})))
            assert_close(outputs, reference, 0.0, None, f"{layer_class.__name__} from its config")

    if other_backend_output is not None:
        assert_close(other_backend_output, reference, BACKEND_RTOL, output_mask,
                     f"{layer_class.__name__} on {other_backend()}")
    return reference


OTHER_BACKEND_SCRIPT = """
import pickle, sys
import keras
assert keras.backend.backend() == sys.argv[4], keras.backend.backend()
sys.path.insert(0, sys.argv[1])
from layer_testing import build_and_call
with open(sys.argv[2], "rb") as reader:
    cases = pickle.load(reader)
outputs = {name: build_and_call(**case)[1] for name, case in cases.items()}
with open(sys.argv[3], "wb") as writer:
    pickle.dump(outputs, writer)
"""


def outputs_on_other_backend(cases: dict, directory) -> dict:
    """`{name: float32 outputs}` of `build_and_call(**case)` for each case, computed on
    the other Keras backend (JAX under TensorFlow, and the reverse) on the CPU, in one
    subprocess. `cases` maps names to `build_and_call`'s arguments (picklable)."""
    cases_path, outputs_path = os.path.join(directory, "cases.pkl"), os.path.join(directory, "outputs.pkl")
    with open(cases_path, "wb") as writer:
        pickle.dump(cases, writer)
    env = {**os.environ, "KERAS_BACKEND": other_backend(), "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", OTHER_BACKEND_SCRIPT, HERE, cases_path, outputs_path, other_backend()]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(outputs_path, "rb") as reader:
        return pickle.load(reader)
