"""Session fixtures: a tiny model trained once and shared by the API, CLI and evaluation tests."""

import os

import pytest

from helpers import ROOT


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
