"""Shared fixtures: a tiny model trained once and shared by the API, CLI and evaluation
tests; two random models of one width; a random model written in the released layout.
The session's directory of bert4keras outputs (helpers.run_reference)."""

import collections
import os
import shutil
import tempfile

import pytest

from helpers import REFERENCE_CACHE, ROOT, TINY_CONFIG, write_model_dir


def pytest_configure(config):
    """One directory of bert4keras outputs for the whole session: set here, in the
    process that starts the run, before pytest-xdist starts its workers, which inherit
    the variable (and pass it on to the JAX rerun); removed when that process ends."""
    if REFERENCE_CACHE not in os.environ:
        os.environ[REFERENCE_CACHE] = config.simbert_reference_cache = tempfile.mkdtemp(prefix="simbert-bert4keras-")


# Files of few tests that take minutes (JAX subprocesses), queued first on pytest-xdist's
# workers; the others follow by their number of tests, as pytest-xdist would queue them
# (pytest.ini turns its own ordering off: --no-loadscope-reorder). It queued these last,
# having few tests, and at the end one worker ran the JAX rerun for minutes alone.
SLOW_FILES = ("test_jax_backend.py", "test_distribution.py", "test_encode_devices.py")


def pytest_collection_modifyitems(config, items):
    """On pytest-xdist's workers (a serial run keeps the files in order): SLOW_FILES
    first, then the files with more tests; a file's tests keep their order."""
    if not hasattr(config, "workerinput"):
        return
    counts = collections.Counter(item.path for item in items)
    rank = {name: index for index, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -counts[item.path], str(item.path)))


def pytest_unconfigure(config):
    directory = getattr(config, "simbert_reference_cache", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        os.environ.pop(REFERENCE_CACHE, None)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("simbert")


@pytest.fixture(scope="session")
def trained_tiny(session_dir):
    """configs/tiny.yaml trained for 100 steps on data_sample.json (about 15 s on a CPU)."""
    from simbert.config import TrainConfig
    from simbert.trainer import Trainer

    config = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "tiny.yaml"))
    config.data.train = os.path.join(ROOT, "data_sample.json")
    config.output.dir = str(session_dir / "trained_tiny")
    config.training.steps = 100
    Trainer(config).fit()
    return config.output.dir


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two random models of the same width (vectors of different spaces)."""
    from simbert.api import SimBERT

    root = tmp_path_factory.mktemp("models")
    return [SimBERT.from_pretrained(write_model_dir(str(root / name), TINY_CONFIG, seed=seed), max_tokens=16,
                                    compilation_cache=None) for seed, name in enumerate(("first", "second"))]


@pytest.fixture()
def saved_model(tmp_path):
    """A random TINY_CONFIG model in the released layout (bert_config.json, vocab.txt, bert_model.ckpt)."""
    return write_model_dir(str(tmp_path / "model"), TINY_CONFIG)
