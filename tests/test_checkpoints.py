"""Checkpoint files that cannot be read (a truncated TensorFlow data file, a junk index, a
corrupt config, a truncated safetensors file) are named, by the readers and by loading."""

import os

import pytest

from simbert.api import SimBERT
from simbert.checkpoints import read_tf_checkpoint, read_weights
from simbert.directories import read_config
from simbert.errors import FileFormatError


def test_a_truncated_checkpoint_data_file_is_named(saved_model):
    data = next(os.path.join(saved_model, n) for n in os.listdir(saved_model) if ".data-" in n)
    with open(data, "r+b") as file:
        file.truncate(os.path.getsize(data) // 2)
    with pytest.raises(FileFormatError, match=r"bert_model.ckpt.\{index,data-\*\}: cannot be read as a TensorFlow"):
        read_tf_checkpoint(saved_model)
    with pytest.raises(FileFormatError, match="bert_model.ckpt"):
        SimBERT.from_pretrained(saved_model, compilation_cache=None)


def test_a_junk_index_and_a_corrupt_config_are_named(saved_model):
    with open(os.path.join(saved_model, "bert_model.ckpt.index"), "wb") as file:
        file.write(b"junk" * 10)
    with pytest.raises(FileFormatError, match="bert_model.ckpt"):
        read_weights(saved_model)
    with open(os.path.join(saved_model, "bert_config.json"), "w") as file:
        file.write('{"hidden_size": 18,')
    with pytest.raises(FileFormatError, match=r"bert_config.json: is not valid JSON"):
        read_config(os.path.join(saved_model, "bert_config.json"))


def test_a_truncated_safetensors_file_is_named(tmp_path, two_models):
    two_models[0].save(tmp_path / "saved")
    path = tmp_path / "saved" / "bert_model.safetensors"
    with open(path, "r+b") as file:
        file.truncate(100)
    with pytest.raises(FileFormatError, match=r"bert_model.safetensors: cannot be read as a safetensors file"):
        SimBERT.from_pretrained(tmp_path / "saved", compilation_cache=None)
