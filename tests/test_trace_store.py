"""Traced programs stored under the compilation cache (JAX): a second process loads them
instead of tracing and computes the same values; a damaged file is traced again; the key
changes with what the program computes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, TINY_CONFIG, write_model_dir
from simbert.directories import convert_checkpoint
from simbert.trace_store import SUBDIRECTORY, SUFFIX, TraceStore

SCRIPT = r"""
import json, sys
from simbert.api import SimBERT

model = SimBERT.from_pretrained(MODEL, max_tokens=16, compilation_cache=CACHE)
texts = ["w5 w6", "w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20", "w21 w22 w23"]
vectors = model.encode(texts, batch_size=2)
samples = model.decoder.sample(model._source_ids("w30 w31 w32"), n=3, topk=4, seed=7)
functions = [*model.source_pass._functions, model.decoder._step, *model.decoder._samplers.values()]
print(json.dumps({"vectors": vectors.tolist(), "samples": samples, "programs": model.compiled_programs,
                  "traces": sum(function.traces for function in functions),
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def run_jax(model_dir, cache):
    script = f"MODEL = {model_dir!r}\nCACHE = {cache!r}\n" + SCRIPT
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_traces_and_a_damaged_one_is_traced_again(tmp_path):
    model_dir = write_model_dir(str(tmp_path / "model"), TINY_CONFIG)
    convert_checkpoint(model_dir, "safetensors")  # read without TensorFlow
    for name in os.listdir(model_dir):
        if name.startswith("bert_model.ckpt"):
            os.remove(os.path.join(model_dir, name))
    cache = str(tmp_path / "cache")
    first = run_jax(model_dir, cache)
    # Two encode shapes (2 rows of length 16, padded from 4 and 16 tokens), the prefill,
    # one sampling loop.
    assert first["programs"] == first["traces"] == 4
    assert first["tensorflow"] is False  # the programs' keys are built without it (seconds to import)
    stored = sorted(os.listdir(os.path.join(cache, SUBDIRECTORY)))
    assert len(stored) == 4 and all(name.endswith(SUFFIX) for name in stored)

    second = run_jax(model_dir, cache)
    assert second["traces"] == 0 and second["programs"] == 4
    assert second["vectors"] == first["vectors"] and second["samples"] == first["samples"]

    # One file with a flipped byte, one cut short: both are traced again and replaced.
    for name, damage in zip(stored, ("flip", "cut")):
        path = os.path.join(cache, SUBDIRECTORY, name)
        content = bytearray(open(path, "rb").read())
        if damage == "flip":
            content[-10] ^= 0xFF
        with open(path, "wb") as writer:
            writer.write(content if damage == "flip" else content[: len(content) // 2])
    third = run_jax(model_dir, cache)
    assert third["traces"] == 2 and third["programs"] == 4
    assert third["vectors"] == first["vectors"] and third["samples"] == first["samples"]
    assert run_jax(model_dir, cache)["traces"] == 0
    assert sorted(os.listdir(os.path.join(cache, SUBDIRECTORY))) == stored  # no temporary files left


@pytest.fixture
def exported():
    """`2 x + 1` over float32 (3,), exported by jax.export (jax is a dev dependency)."""
    import jax

    return jax.export.export(jax.jit(lambda x: 2 * x + 1))(np.zeros(3, "float32"))


def test_a_stored_program_round_trips_and_a_bad_file_is_not_loaded(tmp_path, exported):
    store = TraceStore(str(tmp_path / "traces"))
    name = store.name("twice plus one", ([np.zeros(3, "float32")],))
    assert store.load(name) is None
    store.save(name, exported)
    loaded = store.load(name)
    np.testing.assert_array_equal(np.asarray(loaded.call(np.arange(3, dtype="float32"))), [1, 3, 5])

    path = os.path.join(store.directory, name)
    content = open(path, "rb").read()
    for damaged in (content[:-1], content[:20], b"", content[:-1] + bytes([content[-1] ^ 1])):
        with open(path, "wb") as writer:
            writer.write(damaged)
        assert store.load(name) is None


def test_a_store_that_cannot_be_written_is_skipped(tmp_path, exported, caplog):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    store = TraceStore(str(blocker / "traces"))
    store.save("program" + SUFFIX, exported)  # no exception: the program still runs
    assert store.load("program" + SUFFIX) is None
    assert "could not store a traced program" in caplog.text


def test_the_name_changes_with_the_key_and_the_shapes_and_dtypes_of_the_arguments(tmp_path):
    store = TraceStore(str(tmp_path))
    weights, inputs = [np.zeros((4, 3), "float32")], np.zeros((2, 8), "int32")
    name = store.name("pooled", (weights, (inputs,)))
    assert store.name("pooled", (weights, (np.ones((2, 8), "int32"),))) == name  # values do not count
    for other in (store.name("prefill", (weights, (inputs,))),
                  store.name("pooled", (weights, (np.zeros((2, 16), "int32"),))),
                  store.name("pooled", (weights, (np.zeros((2, 8), "float32"),))),
                  store.name("pooled", ([np.zeros((4, 3), "float16")], (inputs,))),
                  store.name("pooled", (weights, [inputs]))):
        assert other != name


def test_the_models_computation_key_covers_its_config_dtype_and_kernels():
    from simbert.directories import read_config
    from simbert.kernels import Kernels
    from simbert.models import Transformer

    def computation(model_class=Transformer, overrides=None, **options):
        return model_class(read_config(TINY_CONFIG, **(overrides or {})), application="unilm", with_pool="linear",
                           with_mlm="linear", **options).computation

    key = computation()
    assert computation(name="another") == key
    for other in (computation(dtype="mixed_bfloat16"), computation(kernels=Kernels(written_gelu=False)),
                  computation(overrides={"model_type": "roformer"}), computation(overrides={"num_hidden_layers": 1})):
        assert other != key

    class Custom(Transformer):
        pass

    assert computation(Custom) is None  # its own code is not in the key: never stored


def test_a_program_that_cannot_be_exported_runs_without_storing(tmp_path, monkeypatch):
    """On JAX a function `jax.export` refuses (a host callback here) runs as a plain jit,
    and nothing is stored; on TensorFlow nothing is ever stored."""
    import keras

    from simbert.compiled import compile_function

    store = TraceStore(str(tmp_path / "traces"))
    monkeypatch.setattr(TraceStore, "of_compilation_cache", classmethod(lambda cls: store))
    offset = keras.Variable(np.ones(3, "float32"))

    def function(x):
        if keras.backend.backend() == "jax":
            import jax

            x = jax.pure_callback(lambda values: 2 * values, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        else:
            x = 2 * x
        return x + offset

    compiled = compile_function(function, [offset], program_key="twice plus one")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(compiled(np.arange(3, dtype="float32"))), [1, 3, 5])
    assert compiled.programs == 1 and not os.path.exists(store.directory)


def test_many_compiled_functions_each_traced_once_raise_no_retracing_warning():
    """A server compiles a sampler for each of its sizes: each function is traced once,
    which TensorFlow took for one function retraced (warnings at every `serve`)."""
    import logging

    from simbert.compiled import compile_function

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.addHandler(handler)
    try:
        functions = [compile_function(lambda x, scale=i: x * scale, []) for i in range(8)]
        for i, function in enumerate(functions):
            np.testing.assert_array_equal(np.asarray(function(np.ones((2, i + 1), "float32"))),
                                          np.full((2, i + 1), i, "float32"))
    finally:
        tensorflow_logger.removeHandler(handler)
    assert [record.getMessage() for record in records if "retracing" in record.getMessage()] == []
    assert [function.programs for function in functions] == [1] * 8
