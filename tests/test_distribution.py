"""Data-parallel training (simbert.distribution): the layout's checks here, and on
simulated JAX CPU devices in subprocesses (tests/multi_device.py) the step, a run with
dropout and its resume on 4 devices against 1, and a run of two processes (2 devices
each, CPU collectives over gloo) against one process with 4 devices, then resumed by both
and ended by killing one."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import ROOT, tiny_config
from simbert.data import negatives_per_row
from simbert.distribution import BatchLayout, DistributionError, ProcessGroup, batch_layout, device_range
from simbert.kernels import Platform
from simbert.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multi_device.py")


def jax_environment(devices: int) -> dict:
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "PYTHONUNBUFFERED": "1"}


def run_worker(devices: int, *arguments, timeout=600):
    result = subprocess.run([sys.executable, WORKER, *map(str, arguments)], env=jax_environment(devices),
                            capture_output=True, text=True, timeout=timeout, cwd=HERE)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(directory) -> list[dict]:
    with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as reader:
        return [json.loads(line) for line in reader]


def weights(checkpoint) -> dict:
    return load_file(os.path.join(checkpoint, "bert_model.safetensors"))


# ------------------------------------------------------------------ the policy's checks
def test_on_tensorflow_data_parallel_stops_with_one_line(tmp_path):
    tensorflow = Platform.current()
    assert tensorflow.backend == "tensorflow" and not tensorflow.distributes
    with pytest.raises(DistributionError, match="needs KERAS_BACKEND=jax") as error:
        Trainer(tiny_config(tmp_path / "run", 2, distribution="data_parallel"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
    layout = batch_layout("auto", None, 32, tensorflow)  # auto: one device
    assert layout.distribution is None and layout.local_part("batch") == "batch" and layout.writes


def test_a_batch_that_does_not_divide_over_the_devices_names_both(monkeypatch):
    import keras

    import simbert.distribution

    monkeypatch.setattr(keras.distribution, "list_devices", lambda: [f"gpu:{i}" for i in range(4)])
    monkeypatch.setattr(simbert.distribution, "process_count_and_id", lambda: (1, 0))
    jax = Platform("jax", *([True] * 8))
    with pytest.raises(DistributionError) as error:
        batch_layout("auto", None, 30, jax)
    assert str(error.value) == ("training.batch_size 30 does not divide over 4 devices; use a multiple of 4 "
                                "(e.g. 28)")
    with pytest.raises(DistributionError, match=r"training.devices names \['gpu:7'\]"):
        batch_layout("auto", ["gpu:7"], 32, jax)
    assert batch_layout("none", None, 30, jax).devices == ("gpu:0",)


def test_each_process_feeds_its_own_rows():
    layout = BatchLayout(16, tuple(f"cpu:{i}" for i in range(4)), 2, 1, None)
    batch = ((np.arange(16)[:, None] * np.ones((1, 3)),), {"similarity": np.arange(16), "distillation": np.eye(16)})
    inputs, targets = layout.local_part(batch)
    assert inputs[0][:, 0].tolist() == list(range(8, 16)) and targets["similarity"].tolist() == list(range(8, 16))
    assert targets["distillation"].shape == (8, 16) and not layout.writes
    assert "2 processes" in layout.describe() and device_range(("cpu:0", "cpu:1", "cpu:2")) == "cpu:0..2"


def test_the_process_group_comes_from_the_flags_or_the_keras_variables():
    assert ProcessGroup.from_arguments(None, None, None, environment={}) is None
    keras_variables = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:2345",
                       "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert ProcessGroup.from_arguments(None, None, None, keras_variables) == ProcessGroup("10.0.0.1:1234", 2, 1)
    assert ProcessGroup.from_arguments("h:1", 4, 3, keras_variables) == ProcessGroup("h:1", 4, 3)
    with pytest.raises(DistributionError, match="missing --num-processes, --process-id"):
        ProcessGroup.from_arguments("h:1", None, None, {})
    with pytest.raises(DistributionError, match=r"--process-id 2 should be in \[0, 2\)"):
        ProcessGroup.from_arguments("h:1", 2, 2, {})


def test_negatives_per_row_count_what_the_similarity_loss_leaves():
    text_ids = np.array([0, 1, 2, 3, 1, 4, 5, 6])  # row 4's source is row 1's: masked for row 0
    masked = np.zeros((8, 8), bool)
    for row in range(8):
        partner = row ^ 1
        for column in range(8):
            masked[row, column] = column == row or (column != partner and text_ids[column] == text_ids[partner])
    expected = (~masked).sum(axis=1).mean() - 1  # every column left but the partner
    assert negatives_per_row(text_ids) == pytest.approx(expected)
    assert expected < 6 and negatives_per_row(text_ids, mask_duplicates=False) == 6


# ------------------------------------------------------------- on simulated devices
@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    """The single-process runs of `multi_device.py devices`, made once: stdout and the work directory."""
    work = tmp_path_factory.mktemp("devices")
    result = run_worker(4, "devices", work)
    return result.stdout, work


def test_one_step_on_four_devices_equals_one_device(device_runs):
    stdout, work = device_runs
    one, four = np.load(work / "gradients-none.npz"), np.load(work / "gradients-auto.npz")
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4  # auto takes every device
    assert abs(float(one["loss"]) - float(four["loss"])) <= 1e-5
    names = [name for name in one.files if name.startswith("grad/")]
    assert len(names) > 20 and sorted(names) == sorted(n for n in four.files if n.startswith("grad/"))
    assert max(np.abs(one[name] - four[name]).max() for name in names) <= 1e-5
    assert max(np.abs(one[name]).max() for name in names) > 1e-3  # gradients that mean something


def test_a_run_with_dropout_logs_the_same_losses_on_four_devices_and_resumes(device_runs):
    stdout, work = device_runs
    assert "layout data_parallel data parallel over 4 devices (cpu:0..3) in 1 process" in stdout
    one, four = metrics(work / "one"), metrics(work / "all")
    assert [r["step"] for r in one] == [r["step"] for r in four] == list(range(1, 31))  # 20, then resumed
    for a, b in zip(one, four):
        for key in ("loss", "seq2seq_loss", "similarity_loss"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]), (a, b)
        assert a["negatives"] == b["negatives"] and 0 < a["negatives"] <= 14
    assert one[-1]["loss"] < one[0]["loss"]
    final_one, final_four = weights(work / "one" / "checkpoint-0000030"), weights(work / "all" / "checkpoint-0000030")
    assert max(np.abs(final_one[name] - final_four[name]).max() for name in final_one) <= 1e-4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_processes(recipe, count, *flags):
    coordinator = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, "-m", "simbert.cli", "train", "--config", recipe, "--coordinator",
                              coordinator, "--num-processes", str(count), "--process-id", str(index), *flags],
                             env=jax_environment(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for index in range(count)]


def test_two_processes_train_as_one_with_four_devices_and_a_lost_one_ends_the_run(device_runs, tmp_path):
    from multi_device import write_recipe  # the recipe of `device_runs`, written here: no backend needed

    _, work = device_runs
    recipe, output = tmp_path / "recipe.yaml", tmp_path / "run"
    write_recipe(recipe, output, 20)
    processes = start_processes(recipe, 2)
    outputs = [process.communicate(timeout=400) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-4000:]
        assert "data parallel over 4 devices" in stderr and "in 2 processes" in stderr
    # Only process 0 wrote; the weights equal one process's with 4 devices.
    assert sorted(os.listdir(output)) == ["checkpoint-0000010", "checkpoint-0000020", "loss.png", "metrics.jsonl",
                                          "training.lock"]
    together, alone = weights(output / "checkpoint-0000020"), weights(work / "all" / "checkpoint-0000020")
    assert max(np.abs(together[name] - alone[name]).max() for name in together) <= 1e-5

    # Both resume from process 0's checkpoint; process 1 is then killed mid-run.
    processes = start_processes(recipe, 2, "--resume", "--steps", "100000")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(metrics(output)) < 22 and processes[0].poll() is None:
        time.sleep(0.5)
    assert len(metrics(output)) >= 22, processes[0].communicate(timeout=60)[1][-4000:]
    processes[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    stdout, stderr = processes[0].communicate(timeout=120)
    processes[1].communicate()
    assert processes[0].returncode != 0 and time.monotonic() - killed_at < 120
    # The next collective fails at once (our line); on a loaded machine the heartbeat
    # (--heartbeat-timeout, 60 s) may find the dead process first: JAX then says so and aborts.
    lines = stderr.replace("\r", "\n").splitlines()
    ours = [line for line in lines if line.startswith("simbert: error: process 0 of 2:") and "--resume" in line]
    heartbeat = [line for line in lines if "another task died" in line or "heartbeat timeout" in line]
    assert (processes[0].returncode == 1 and len(ours) == 1) or (processes[0].returncode < 0 and heartbeat), \
        stderr[-3000:]
