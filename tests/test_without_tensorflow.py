"""A JAX machine without TensorFlow (the GPU install) trains, saves, resumes and generates,
keeping its compiled programs in the cache directory: run in a subprocess whose
`import tensorflow` fails (a `sys.meta_path` hook)."""

import json
import os
import subprocess
import sys

from helpers import ROOT

SCRIPT = r"""
import importlib.abc, json, os, sys

class BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, BlockTensorFlow())

from simbert.api import SimBERT
from simbert.config import TrainConfig
from simbert.trainer import Trainer

config = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "tiny.yaml"))
config.data.train = os.path.join(ROOT, "data_sample.json")
config.output.dir = OUTPUT
config.output.save_every = 6
config.output.log_every = 6
config.training.compilation_cache = CACHE
config.training.steps = 6
first = Trainer(config).fit()
config.training.steps = 12
resumed = Trainer(config, resume=True).fit()
checkpoint = sorted(os.listdir(OUTPUT))
model = SimBERT.from_pretrained(OUTPUT, max_tokens=32, compilation_cache=None)
samples = model.gen_synonyms("明天北京会下雨吗", n=8, k=3)
print(json.dumps({"first": first.step, "resumed_from": resumed.start_step, "resumed": resumed.step,
                  "files": sorted(os.listdir(os.path.join(OUTPUT, "checkpoint-0000012"))),
                  "samples": len(samples), "tensorflow": "tensorflow" in sys.modules,
                  "cached_programs": len(os.listdir(CACHE))}))
"""


def test_train_save_resume_and_generate_without_tensorflow(tmp_path):
    script = f"ROOT = {ROOT!r}\nOUTPUT = {str(tmp_path / 'run')!r}\nCACHE = {str(tmp_path / 'cache')!r}\n" + SCRIPT
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] is False
    assert (report["first"], report["resumed_from"], report["resumed"]) == (6, 6, 12)
    assert report["files"] == ["bert_config.json", "bert_model.safetensors", "trainer_state.json",
                               "training_state.npz", "vocab.txt"]
    assert 1 <= report["samples"] <= 3
    assert report["cached_programs"] >= 2  # the training step and more, for the next process
