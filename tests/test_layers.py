"""Every layer of simbert/layers.py through `run_layer_test` (tests/layer_testing.py): its
output shape and dtype under float32, mixed_float16 and mixed_bfloat16, its config round
trip, and the same float32 output on the other Keras backend; the simpler layers also
against their formula in numpy."""

import inspect

import keras
import numpy as np
import pytest

import simbert.layers
from helpers import TINY_CONFIG
from layer_testing import build_and_call, outputs_on_other_backend, run_layer_test
from simbert.layers import (
    BiasAdd,
    Dropout,
    LayerNorm,
    MultiHeadAttention,
    OneHotEmbedding,
    PositionEmbedding,
    TransformerBlock,
)

BATCH, LENGTH, HEADS, HEAD_SIZE, HIDDEN = 2, 7, 3, 6, 18
rng = np.random.default_rng(0)
HIDDEN_STATES = rng.normal(0.0, 1.0, (BATCH, LENGTH, HIDDEN)).astype("float32")
# Row 1 ends in 3 padding tokens (id 0); each row is `source | target` (segments 0 | 1).
TOKEN_IDS = np.array([[2, 11, 12, 3, 21, 22, 3], [2, 13, 3, 23, 0, 0, 0]], "int32")
SEGMENT_IDS = np.array([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0]], "int32")
NOT_PADDING = (TOKEN_IDS != 0)[:, :, None]
ENCODER_MASK = np.broadcast_to(TOKEN_IDS[:, None, :] != 0, (BATCH, LENGTH, LENGTH)).copy()
_cumulative = np.cumsum(SEGMENT_IDS, axis=1)
UNILM_MASK = ENCODER_MASK & (_cumulative[:, None, :] <= _cumulative[:, :, None])
CACHE_SHAPES = ((BATCH, HEADS, HEAD_SIZE, LENGTH), (BATCH, HEADS, LENGTH, HEAD_SIZE))
ATTENTION = {"num_heads": HEADS, "head_size": HEAD_SIZE, "hidden_size": HIDDEN}
BLOCK = {**ATTENTION, "intermediate_size": 37}

# Dropout(noise_shape=...) refuses anything but None, so its config has no `noise_shape`.
DROPOUT = dict(layer_class=Dropout, init_kwargs={"rate": 0.25, "seed": 3}, input_data=HIDDEN_STATES,
               expected_output_shape=(BATCH, LENGTH, HIDDEN), config_omits=("noise_shape",))

# name: run_layer_test's arguments (build_and_call's, for the other backend, are a subset).
CASES = {
    "dropout_inference": dict(**DROPOUT, call_kwargs={"training": False}),
    "dropout_training": dict(**DROPOUT, call_kwargs={"training": True}),
    "layer_norm": dict(layer_class=LayerNorm, init_kwargs={"epsilon": 1e-12}, input_data=3 * HIDDEN_STATES + 1,
                       expected_output_shape=(BATCH, LENGTH, HIDDEN)),
    "layer_norm_keras_gradient": dict(layer_class=LayerNorm, init_kwargs={"epsilon": 1e-12, "written_gradient": False},
                                      input_data=3 * HIDDEN_STATES + 1, expected_output_shape=(BATCH, LENGTH, HIDDEN)),
    "one_hot_embedding": dict(layer_class=OneHotEmbedding, init_kwargs={"input_dim": 2, "output_dim": HIDDEN},
                              input_data=SEGMENT_IDS, expected_output_shape=(BATCH, LENGTH, HIDDEN)),
    "position_embedding": dict(layer_class=PositionEmbedding, init_kwargs={"max_positions": 16},
                               input_data={"x": HIDDEN_STATES, "start_index": 3},
                               expected_output_shape=(BATCH, LENGTH, HIDDEN)),
    "bias_add": dict(layer_class=BiasAdd, init_kwargs={}, input_data=HIDDEN_STATES,
                     expected_output_shape=(BATCH, LENGTH, HIDDEN)),
    "attention": dict(layer_class=MultiHeadAttention, init_kwargs=ATTENTION,
                      input_data={"x": HIDDEN_STATES, "attention_mask": ENCODER_MASK},
                      expected_output_shape=(BATCH, LENGTH, HIDDEN), output_mask=NOT_PADDING),
    "attention_rotary_fused": dict(layer_class=MultiHeadAttention,
                                   init_kwargs={**ATTENTION, "rotary": True, "fused": True},
                                   input_data={"x": HIDDEN_STATES, "attention_mask": UNILM_MASK},
                                   expected_output_shape=(BATCH, LENGTH, HIDDEN), output_mask=NOT_PADDING),
    "attention_return_cache": dict(layer_class=MultiHeadAttention, init_kwargs={**ATTENTION, "rotary": True},
                                   input_data={"x": HIDDEN_STATES, "attention_mask": UNILM_MASK},
                                   call_kwargs={"return_cache": True},
                                   expected_output_shape=((BATCH, LENGTH, HIDDEN), CACHE_SHAPES),
                                   output_mask=NOT_PADDING),
    "transformer_block": dict(layer_class=TransformerBlock, init_kwargs=BLOCK,
                              input_data={"x": HIDDEN_STATES, "attention_mask": UNILM_MASK},
                              expected_output_shape=(BATCH, LENGTH, HIDDEN), output_mask=NOT_PADDING),
    "transformer_block_query_positions": dict(
        layer_class=TransformerBlock, init_kwargs=BLOCK,
        input_data={"x": HIDDEN_STATES, "attention_mask": ENCODER_MASK,
                    "query_positions": np.array([[0, 2], [1, 3]], "int32")},
        expected_output_shape=(BATCH, 2, HIDDEN)),
    "transformer_block_rotary_cache": dict(
        layer_class=TransformerBlock, init_kwargs={**BLOCK, "rotary": True},
        input_data={"x": HIDDEN_STATES, "attention_mask": UNILM_MASK}, call_kwargs={"return_cache": True},
        expected_output_shape=((BATCH, LENGTH, HIDDEN), CACHE_SHAPES), output_mask=NOT_PADDING),
}
# Keras draws random numbers differently on each backend: the training case is compared by
# its form (each unit dropped or scaled), not its values.
SAME_ON_EVERY_BACKEND = set(CASES) - {"dropout_training"}
BUILD_ARGUMENTS = ("layer_class", "init_kwargs", "input_data", "call_kwargs")


def layer_classes_of(module) -> set[type]:
    return {value for value in vars(module).values() if inspect.isclass(value)
            and issubclass(value, keras.layers.Layer) and value.__module__ == module.__name__}


def test_every_layer_class_has_a_case():
    assert {case["layer_class"] for case in CASES.values()} == layer_classes_of(simbert.layers)
    assert len(layer_classes_of(simbert.layers)) >= 7


@pytest.fixture(scope="module")
def other_backend_outputs(tmp_path_factory):
    cases = {name: {key: case[key] for key in BUILD_ARGUMENTS if key in case} for name, case in CASES.items()}
    return outputs_on_other_backend(cases, str(tmp_path_factory.mktemp("other_backend")))


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer(name, other_backend_outputs):
    compared = other_backend_outputs[name] if name in SAME_ON_EVERY_BACKEND else None
    outputs = run_layer_test(**CASES[name], other_backend_output=compared)
    assert all(np.all(np.isfinite(x)) for x in keras.tree.flatten(outputs))
    if name == "dropout_training":
        for dropped in (outputs, other_backend_outputs[name]):
            assert_dropout_form(dropped, HIDDEN_STATES, rate=0.25)


def assert_dropout_form(outputs, inputs, rate):
    """Each unit is 0 or its input over `1 - rate`; about `1 - rate` of them are kept."""
    kept = outputs != 0
    np.testing.assert_allclose(outputs[kept], inputs[kept] / (1 - rate), rtol=1e-6)
    assert 0.6 < kept.mean() < 0.9  # 1 - rate = 0.75; 252 units: 0.6 and 0.9 are over 5 standard deviations off


def numpy_weights(layer) -> dict[str, np.ndarray]:
    """The layer's weights by path below the layer (`query/kernel`, `gamma`)."""
    return {weight.path.split("/", 1)[1]: keras.ops.convert_to_numpy(weight) for weight in layer.weights}


def numpy_layer_norm(x, w):
    centered = x - x.mean(-1, keepdims=True)
    return centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-12) * w["gamma"] + w["beta"]


def numpy_attention(inputs, w):
    x, mask = inputs["x"], inputs["attention_mask"]

    def heads(name):
        projected = x @ w[f"{name}/kernel"] + w[f"{name}/bias"]
        return projected.reshape(BATCH, LENGTH, HEADS, HEAD_SIZE).transpose(0, 2, 1, 3)

    scores = heads("query") @ heads("key").transpose(0, 1, 3, 2) / np.sqrt(HEAD_SIZE)
    scores = np.where(mask[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ heads("value")).transpose(0, 2, 1, 3).reshape(BATCH, LENGTH, HIDDEN)
    return context @ w["output/kernel"] + w["output/bias"]


FORMULAS = {
    "dropout_inference": lambda inputs, w: inputs,
    "layer_norm": numpy_layer_norm,
    "layer_norm_keras_gradient": numpy_layer_norm,
    "one_hot_embedding": lambda ids, w: w["embeddings"][ids],
    "position_embedding": lambda inputs, w: inputs["x"] + w["embeddings"][3:3 + LENGTH],
    "bias_add": lambda x, w: x + w["bias"],
    "attention": numpy_attention,
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_layer_computes_its_formula(name):
    case = CASES[name]
    layer, outputs = build_and_call(**{key: case[key] for key in BUILD_ARGUMENTS if key in case})
    expected = FORMULAS[name](case["input_data"], numpy_weights(layer))
    assert expected.shape == outputs.shape
    mask = np.broadcast_to(case.get("output_mask", True), expected.shape)
    np.testing.assert_allclose(outputs[mask], expected[mask], rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_the_kernels_of_a_block_and_a_model_survive_their_config():
    """A block or backbone rebuilt from its config computes with the kernels it was built with."""
    from simbert.config import BackboneConfig
    from simbert.kernels import Kernels
    from simbert.models import Transformer

    kernels = Kernels(written_gelu=False, fused_attention=True, end_check_every=4)
    block = TransformerBlock(**BLOCK, kernels=kernels)
    assert TransformerBlock.from_config(block.get_config()).kernels == kernels
    backbone = Transformer(BackboneConfig.from_dict(TINY_CONFIG), kernels=kernels)
    assert Transformer.from_config(backbone.get_config()).kernels == kernels
