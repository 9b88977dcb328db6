"""The simbert command end to end on a tiny trained model."""

import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import pytest

CORPUS = ["明天北京会下雨吗", "花呗怎么还款", "信用卡怎么提高额度", "手机充不进电怎么办"]


def simbert(*args):
    result = subprocess.run([sys.executable, "-m", "simbert.cli", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_generate_encode_index_search(trained_tiny, tmp_path):
    lines = simbert("generate", trained_tiny, "花呗怎么还款", "-n", 30, "-k", 5, "--seed", 1).strip().splitlines()
    assert 0 < len(lines) <= 5
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all("花呗怎么还款" != l.split("\t")[1] for l in lines)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\ufeff" + "\n".join(CORPUS) + "\n\n", encoding="utf-8")
    simbert("encode", trained_tiny, "--input", corpus, "--output", tmp_path / "vectors.npy")
    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.shape[0] == len(CORPUS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    half = tmp_path / "new" / "half"  # written exactly there (no .npy added), its directory created
    simbert("encode", trained_tiny, "--input", corpus, "--output", half, "--precision", "mixed_bfloat16")
    assert sorted(os.listdir(tmp_path / "new")) == ["half"]
    cosines = np.sum(np.load(half) * vectors, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(np.load(half), vectors)  # in bfloat16

    simbert("index", trained_tiny, "--input", corpus, "--output", tmp_path / "index")
    best = simbert("search", tmp_path / "index", trained_tiny, "花呗怎么还款", "--topn", 2).splitlines()
    assert len(best) == 2 and best[0].split("\t")[1] == "花呗怎么还款" and abs(float(best[0].split("\t")[0]) - 1) < 1e-4


@pytest.mark.parametrize("command", ["train", "generate", "encode", "index", "search"])
def test_help(command):
    assert "usage: simbert " + command in simbert(command, "--help")


def test_version_is_the_installed_one():
    """`simbert --version` names the package's one version, the one pip installed."""
    import simbert as package

    assert simbert("--version").strip() == f"simbert {package.__version__}"
    assert package.__version__ == importlib.metadata.version("simbert")



BACKEND_ERROR = ("the Keras backend is 'torch', and simbert runs on TensorFlow or JAX: set KERAS_BACKEND=tensorflow "
                 "(the default install) or KERAS_BACKEND=jax (on a GPU, with pip install -e \".[gpu]\"); "
                 "KERAS_BACKEND, else ~/.keras/keras.json, chooses the backend")


def test_another_keras_backend_is_named_with_how_to_choose_one(trained_tiny, tmp_path, monkeypatch):
    """KERAS_BACKEND=torch (Keras 3 has it; simbert compiles for TensorFlow and JAX):
    `train` stops with one line saying which backends to set, before it writes anything;
    loading a model says the same."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model: {{pretrained: {trained_tiny}}}\ndata: {{train: {tmp_path / 'none.json'}}}\n"
                      f"output: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "simbert.cli", "train", "--config", str(recipe)],
                            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "torch"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("simbert: error:")]
    assert result.returncode == 1 and errors == [f"simbert: error: {BACKEND_ERROR}"], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()

    import keras

    from simbert import SimBERT

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError) as error:
        SimBERT.from_pretrained(trained_tiny)
    assert str(error.value) == BACKEND_ERROR
