"""The source pass that encode and the sampler's prefill share: its vectors are the pooled
encoder's, its keys and values are the layers', and on TensorFlow one graph serves both."""

import threading

import keras
import numpy as np
import pytest

from helpers import TINY_CONFIG
from simbert import build_transformer_model
from simbert.source_pass import SourcePass

MODELS = ["bert", "roformer"]


def backbone(model):
    keras.utils.set_random_seed(5)
    return build_transformer_model(TINY_CONFIG, model=model, application="unilm", with_pool="linear",
                                   with_mlm="linear")


def padded(rows, length, seed=0):
    """`[CLS] random ids [SEP]` of random lengths 3..length, padded with 0."""
    rng = np.random.default_rng(seed)
    token_ids = np.zeros((rows, length), "int32")
    for row in token_ids:
        size = rng.integers(3, length + 1)
        row[:size] = [2, *rng.integers(5, TINY_CONFIG["vocab_size"], size - 2), 3]
    return token_ids


@pytest.mark.parametrize("model", MODELS)
def test_pooled_equals_the_pooled_encoder_and_prefill_the_full_model(model):
    transformer = backbone(model)
    source_pass = SourcePass(transformer)
    token_ids = padded(6, 9)
    expected = transformer.pooled_encoder().predict([token_ids, np.zeros_like(token_ids)], verbose=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(source_pass.pooled(token_ids)), expected, atol=1e-5)

    source = np.array([[2, 11, 12, 13, 3]], "int32")
    _, mlm = transformer.predict([source, np.zeros_like(source)], verbose=0)
    logits, caches = source_pass.prefill(np.pad(source, ((0, 0), (0, 4))), 5)  # padded to 9
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), mlm[:, -1], atol=1e-4)
    assert len(caches) == TINY_CONFIG["num_hidden_layers"]
    keys, values = (keras.ops.convert_to_numpy(part) for part in caches[0])
    heads, size = TINY_CONFIG["num_attention_heads"], TINY_CONFIG["hidden_size"] // TINY_CONFIG["num_attention_heads"]
    assert keys.shape == (1, heads, size, 9) and values.shape == (1, heads, 9, size)


def test_pooled_through_the_fused_attention_kernel_is_the_same(monkeypatch):
    """With `Kernels.fused_attention`, JAX's `pooled` program (which returns no keys and
    values) goes through `keras.ops.dot_product_attention` in every layer; the prefill,
    and TensorFlow's one graph for both, keep the written-out path."""
    from simbert.directories import read_config
    from simbert.kernels import Kernels
    from simbert.models import Transformer
    from simbert.trace_store import TraceStore

    # Traced here, not loaded from a store an earlier run under a compilation cache left.
    monkeypatch.setattr(TraceStore, "of_compilation_cache", classmethod(lambda cls: None))
    plain = backbone("bert")
    fused = Transformer(read_config(TINY_CONFIG), application="unilm", with_pool="linear", with_mlm="linear",
                        kernels=Kernels(fused_attention=True))
    fused.set_weights(plain.get_weights())
    token_ids = padded(6, 9, seed=3)
    expected = keras.ops.convert_to_numpy(SourcePass(plain).pooled(token_ids))
    calls = []
    attention = keras.ops.dot_product_attention
    monkeypatch.setattr(keras.ops, "dot_product_attention", lambda *a, **k: calls.append(1) or attention(*a, **k))
    source_pass = SourcePass(fused)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(source_pass.pooled(token_ids)), expected, atol=1e-5)
    layers = TINY_CONFIG["num_hidden_layers"]
    assert len(calls) == (layers if keras.backend.backend() == "jax" else 0)
    source_pass.prefill(token_ids[:1], int((token_ids[0] != 0).sum()))
    assert len(calls) == (layers if keras.backend.backend() == "jax" else 0)


def test_the_first_layers_keys_are_its_projection_of_the_embeddings():
    transformer = backbone("bert")
    token_ids = padded(1, 7)
    keys, values = (keras.ops.convert_to_numpy(part) for part in SourcePass(transformer).prefill(token_ids, 7)[1][0])
    embedded = keras.ops.convert_to_numpy(transformer.embed(token_ids, np.zeros_like(token_ids)))[0]
    attention = transformer.blocks[0].attention
    heads, size = attention.num_heads, attention.head_size
    for dense, got in ((attention.key, keys[0].transpose(2, 0, 1)), (attention.value, values[0].transpose(1, 0, 2))):
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights)
        np.testing.assert_allclose(got, (embedded @ kernel + bias).reshape(7, heads, size), atol=1e-5)


def test_tensorflow_traces_one_graph_for_every_shape_and_both_uses():
    transformer = backbone("bert")
    source_pass = SourcePass(transformer)
    for rows, length in ((2, 5), (7, 9), (1, 12)):
        source_pass.pooled(padded(rows, length))
    source_pass.prefill(padded(1, 12), 6)
    expected = 1 if keras.backend.backend() == "tensorflow" else 4  # JAX: one program per shape and use
    assert source_pass.programs == expected


def test_programs_prepared_side_by_side_give_the_same_vectors(monkeypatch):
    """`prepare_pooled` builds the programs of several shapes in other threads before
    any call (JAX; on TensorFlow one graph serves every shape and it does nothing): the
    calls then trace nothing, and give the vectors of programs built as they are called.
    A program that fails to build raises in the call that needs it, and the next call
    builds it again."""
    from simbert.trace_store import TraceStore

    monkeypatch.setattr(TraceStore, "of_compilation_cache", classmethod(lambda cls: None))
    transformer = backbone("bert")
    shapes = ((4, 8), (2, 16), (8, 24), (4, 8))
    batches = [padded(rows, length, seed=seed) for seed, (rows, length) in enumerate(shapes)]
    expected = [keras.ops.convert_to_numpy(SourcePass(transformer).pooled(batch)) for batch in batches]

    traced_in = []
    outputs = SourcePass._outputs
    monkeypatch.setattr(SourcePass, "_outputs", lambda self, *inputs: traced_in.append(threading.current_thread())
                        or outputs(self, *inputs))
    source_pass = SourcePass(transformer)
    source_pass.prepare_pooled({batch.shape for batch in batches})
    got = [keras.ops.convert_to_numpy(source_pass.pooled(batch)) for batch in batches]
    for vectors, reference in zip(got, expected):
        np.testing.assert_allclose(vectors, reference, atol=1e-6)
    if keras.backend.backend() == "jax":
        assert source_pass.programs == 3 and len(traced_in) == 3
        assert threading.main_thread() not in traced_in
        failures = [ZeroDivisionError("a build that fails once")]

        def fails_once(self, *inputs):
            if failures:
                raise failures.pop()
            return outputs(self, *inputs)

        monkeypatch.setattr(SourcePass, "_outputs", fails_once)
        failing = SourcePass(transformer)
        failing.prepare_pooled([(4, 8)])
        with pytest.raises(ZeroDivisionError, match="fails once"):
            failing.pooled(batches[0])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(failing.pooled(batches[0])), expected[0], atol=1e-6)
    else:
        assert source_pass.programs == 1 and traced_in == [threading.main_thread()]
