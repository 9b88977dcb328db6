"""YAML recipes: the shipped ones validate, bad keys, types and numbers are named."""

import os

import pytest

from helpers import ROOT
from simbert.config import TrainConfig


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_shipped_configs_validate(name):
    config = TrainConfig.from_yaml(os.path.join(ROOT, "configs", name))
    assert config.training.batch_size % 2 == 0
    if name.startswith("gpu_"):
        assert config.training.precision == "mixed_bfloat16" and config.training.jit_compile == "auto"


def test_jit_compile_workers_and_length_step_are_checked():
    with pytest.raises(ValueError, match=r"training\.jit_compile should be one of"):
        TrainConfig.from_dict({"training": {"jit_compile": "always"}})
    with pytest.raises(ValueError, match=r"data\.workers should be at least 0, got -1"):
        TrainConfig.from_dict({"data": {"workers": -1}})
    with pytest.raises(ValueError, match=r"data\.length_step should be at least 1, got 0"):
        TrainConfig.from_dict({"data": {"length_step": 0}})


def test_original_recipes():
    simbert = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "simbert_base.yaml"))
    assert (simbert.data.max_chars, simbert.training.batch_size, simbert.training.learning_rate,
            simbert.training.weight_decay, simbert.training.scale) == (32, 128, 2e-6, 0.01, 30)
    roformer = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "roformer_sim_base.yaml"))
    assert (roformer.model.model_type, roformer.data.max_chars, roformer.training.batch_size,
            roformer.training.learning_rate, roformer.model.dropout_rate, roformer.training.scale,
            roformer.data.mask_source) == ("roformer", 64, 96, 1e-5, 0.2, 20, True)


def test_bad_keys_and_types_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key training\.learning_rat\b"):
        TrainConfig.from_dict({"training": {"learning_rat": 0.1}})
    with pytest.raises(ValueError, match=r"unknown key optimiser"):
        TrainConfig.from_dict({"optimiser": {}})
    with pytest.raises(ValueError, match=r"training\.steps should be int, got 'many'"):
        TrainConfig.from_dict({"training": {"steps": "many"}})
    with pytest.raises(ValueError, match=r"training\.steps should be int, got 1.5"):
        TrainConfig.from_dict({"training": {"steps": 1.5}})
    with pytest.raises(ValueError, match=r"model\.model_type should be one of"):
        TrainConfig.from_dict({"model": {"model_type": "gpt"}})
    with pytest.raises(ValueError, match="batch_size should be a positive even number"):
        TrainConfig.from_dict({"training": {"batch_size": 7}})
    with pytest.raises(ValueError, match=r"data should be a mapping"):
        TrainConfig.from_dict({"data": ["x"]})
    path = tmp_path / "broken.yaml"
    path.write_text("training: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        TrainConfig.from_yaml(path)
    assert TrainConfig.from_dict({"training": {"learning_rate": 1}}).training.learning_rate == 1.0


def test_a_missing_recipe_or_data_file_names_where_a_relative_path_was_looked_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^recipe absent.yaml does not exist \(looked up from the current "
                                                rf"directory {tmp_path}\)$"):
        TrainConfig.from_yaml("absent.yaml")
    with pytest.raises(FileNotFoundError, match=rf"^recipe {tmp_path / 'absent.yaml'} does not exist$"):
        TrainConfig.from_yaml(tmp_path / "absent.yaml")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train: pairs.txt\n", encoding="utf-8")
    from simbert.readers import ReadReport, read_training_groups

    with pytest.raises(FileNotFoundError, match=rf"^data.train pairs.txt does not exist \(looked up from the "
                                                rf"current directory {tmp_path}\)$"):
        read_training_groups(TrainConfig.from_yaml(recipe).data, ReadReport())


@pytest.mark.parametrize("override, message", [
    ({"data": {"max_chars": 0}}, "data.max_chars should be at least 1, got 0"),
    ({"data": {"shuffle_buffer": 0}}, "data.shuffle_buffer should be at least 1, got 0"),
    ({"training": {"steps": -5}}, "training.steps should be at least 1, got -5"),
    ({"training": {"learning_rate": 0.0}}, "training.learning_rate should be a finite number above 0"),
    ({"model": {"dropout_rate": 2.0}}, r"model.dropout_rate should be at least 0 and below 1 \(a probability\), "
                                       r"got 2.0"),
    ({"training": {"weight_decay": -0.1}}, "training.weight_decay should be a finite number of at least 0"),
    ({"model": {"hierarchical_position": 7}}, "model.hierarchical_position should be true, false or an alpha"),
    ({"model": {"hierarchical_position": True, "model_type": "roformer"}},
     "model.hierarchical_position is for BERT's learned position table"),
    ({"training": {"seq2seq_weight": float("nan")}}, "training.seq2seq_weight should be a finite number of at "
                                                     "least 0"),
])
def test_recipe_numbers_are_checked_when_read(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(override, "recipe.yaml")


def test_a_yaml_1e_3_is_a_float(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("training:\n  learning_rate: 1e-3\n", encoding="utf-8")
    assert TrainConfig.from_yaml(recipe).training.learning_rate == 0.001


def test_a_bad_recipe_is_refused_before_keras_loads(tmp_path):
    """The CLI reads the recipe first: a bad value answers at once, without TensorFlow's
    start-up time and log lines."""
    import subprocess
    import sys

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  dropout_rate: 2.0\n", encoding="utf-8")
    probe = ("import sys; from simbert.cli import main; code = main(['train', '--config', sys.argv[1]]); "
             "print(code, 'keras' in sys.modules, 'tensorflow' in sys.modules, 'jax' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, str(recipe)], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["1", "False", "False", "False"], result.stderr
    assert result.stderr.strip() == (f"simbert: error: {recipe}: model.dropout_rate should be at least 0 and below 1 "
                                     f"(a probability), got 2.0")
