"""`SimBERT.encode` over every device (`distribution=`): on 4 simulated JAX CPU devices
(tests/multi_device.py in a subprocess) the vectors, the compiled programs and
`gen_synonyms` with a seed against one device; on TensorFlow one device, and
`data_parallel` refused with one line before the weights are read."""

import os
import subprocess
import sys

import numpy as np
import pytest

from simbert import SimBERT
from simbert.cli import main
from simbert.distribution import DistributionError, inference_layout
from simbert.kernels import Platform

HERE = os.path.dirname(os.path.abspath(__file__))


def run_encode(devices: int, out, mode: str) -> dict:
    """`multi_device.py encode OUT MODE` on `devices` simulated JAX CPU devices; its arrays."""
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, os.path.join(HERE, "multi_device.py"), "encode", str(out), mode],
                            env=environment, capture_output=True, text=True, timeout=600, cwd=HERE)
    assert result.returncode == 0, result.stderr[-4000:]
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}


def test_four_devices_encode_and_generate_as_one(tmp_path):
    # Four devices first: the one-device run then shares a compilation cache holding
    # programs traced for four, and must not load them.
    four = run_encode(4, tmp_path / "four.npz", "data_parallel")
    one = run_encode(1, tmp_path / "one.npz", "none")
    assert (int(four["devices"]), int(one["devices"])) == (4, 1)
    assert (int(four["sharded"]), int(one["sharded"])) == (4, 1)  # the pooled output lies on every device
    difference = max(np.abs(four[name] - one[name]).max() for name in ("vectors", "again"))
    print(f"encode on 4 devices vs 1: max abs difference {difference:.3g}")
    assert difference < 1e-5 and four["vectors"].shape == (37, 18)
    assert 0 < int(four["programs"]) <= int(one["programs"])
    assert len(one["synonyms"]) > 0 and four["synonyms"].tolist() == one["synonyms"].tolist()
    np.testing.assert_allclose(four["scores"], one["scores"], atol=1e-5)


def test_on_tensorflow_encode_runs_on_one_device_and_data_parallel_is_refused(saved_model, tmp_path, capsys):
    platform = Platform.current()
    assert not platform.distributes
    layout = inference_layout("auto", platform=platform)
    assert layout.distribution is None and layout.rows(5) == 5 and layout.shard("batch") == "batch"
    with pytest.raises(DistributionError) as error:
        SimBERT.from_pretrained(tmp_path / "no model here", distribution="data_parallel")
    assert str(error.value) == ("distribution='data_parallel' needs KERAS_BACKEND=jax; on tensorflow simbert "
                                "encodes on one device")
    with pytest.raises(DistributionError, match="distribution should be one of"):
        inference_layout("everywhere", platform=platform)
    texts = tmp_path / "texts.txt"
    texts.write_text("w5 w6\nw7\n", encoding="utf-8")
    assert main(["encode", saved_model, "--input", str(texts), "--output", str(tmp_path / "v.npy"),
                 "--distribution", "data_parallel", "--no-compile-cache"]) == 1
    assert capsys.readouterr().err == f"simbert: error: {error.value}\n" and not (tmp_path / "v.npy").exists()
