"""End-to-end training on data_sample.json: losses fall, stop and resume, NaN guard,
checkpoints that bert4keras loads."""

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from helpers import ROOT, padded_batch, shell_environment, short_config, steps_of, tiny_config
from reference.invoke import run_bert4keras
from simbert import build_transformer_model
from simbert.config import TrainConfig
from simbert.directories import DirectoryInUse, RunDirectoryTaken, checkpoint_dir, checkpoint_dirs, remove_checkpoint
from simbert.errors import DataError
from simbert.tokenizer import load_vocab
from simbert.trainer import ResumeMismatch, Trainer
from simbert.training_model import WarmupLinearDecay, learning_rate_schedule, linear_warmup


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as reader:
        return [json.loads(line) for line in reader]


def test_tiny_run_both_losses_fall(tmp_path):
    config = tiny_config(tmp_path, 150)
    config.output.save_every, config.output.keep = 100, 2
    result = Trainer(config).fit()
    first, last = result.first, result.last
    assert first["step"] == 10 and last["step"] == 150
    assert last["seq2seq_loss"] < 0.7 * first["seq2seq_loss"]
    assert last["similarity_loss"] < 0.7 * first["similarity_loss"]
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == list(range(10, 151, 10))
    assert all(set(m) >= {"step", "seq2seq_loss", "similarity_loss", "loss", "lr"} for m in metrics)
    assert abs(metrics[-1]["loss"] - metrics[-1]["seq2seq_loss"] - metrics[-1]["similarity_loss"]) < 1e-3
    assert os.path.isfile(tmp_path / "loss.png")
    assert [step for step, _ in checkpoint_dirs(str(tmp_path))] == [100, 150]


class InterruptAt(keras.callbacks.Callback):
    """Requests a stop after the given batch, as the CLI's Ctrl-C handler does."""

    def __init__(self, trainer, batch):
        super().__init__()
        self.trainer = trainer
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.trainer.request_stop()


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    straight_dir = tmp_path_factory.mktemp("straight")
    resumed_dir = tmp_path_factory.mktemp("resumed")
    straight = Trainer(tiny_config(straight_dir, 60)).fit()
    trainer = Trainer(tiny_config(resumed_dir, 60))
    interrupted = trainer.fit(callbacks=[InterruptAt(trainer, 24)])
    interrupted_checkpoint = dict(checkpoint_dirs(str(resumed_dir)))[interrupted.step]
    snapshot = str(tmp_path_factory.mktemp("snapshot") / "checkpoint")
    os.rename(interrupted_checkpoint, snapshot)
    os.symlink(snapshot, interrupted_checkpoint)
    resumed = Trainer(tiny_config(resumed_dir, 60), resume=True).fit()
    return straight, interrupted, resumed, straight_dir, resumed_dir, snapshot


def test_stop_request_saves_and_resume_continues(interrupted_and_resumed):
    straight, interrupted, resumed, straight_dir, resumed_dir, _ = interrupted_and_resumed
    assert interrupted.stopped == "requested" and interrupted.step == 26
    assert resumed.start_step == 26 and resumed.step == 60
    steps = [m["step"] for m in read_metrics(resumed_dir)]
    assert steps == [10, 20, 26, 30, 40, 50, 60]
    # The resumed run continues the same curve as an uninterrupted run with the same seed.
    straight_curve = {m["step"]: m["loss"] for m in read_metrics(straight_dir)}
    resumed_curve = {m["step"]: m["loss"] for m in read_metrics(resumed_dir)}
    for step in (40, 50, 60):
        assert abs(resumed_curve[step] - straight_curve[step]) < 1e-3 * straight_curve[step]


def test_mid_run_checkpoint_loads_in_bert4keras(interrupted_and_resumed, tmp_path):
    snapshot = interrupted_and_resumed[-1]
    ours = build_transformer_model(os.path.join(snapshot, "bert_config.json"), snapshot,
                                   application="unilm", with_pool="linear", with_mlm="linear")
    with open(os.path.join(snapshot, "vocab.txt"), encoding="utf-8") as reader:
        vocab_size = len(reader.read().splitlines())
    token_ids, segment_ids = padded_batch(vocab_size, seed=9)
    np.savez(tmp_path / "inputs.npz", token_ids=token_ids, segment_ids=segment_ids)
    run_bert4keras([{"kind": "model", "config": os.path.join(snapshot, "bert_config.json"),
                     "checkpoint": os.path.join(snapshot, "bert_model.ckpt"), "model": "bert",
                     "application": "unilm", "with_pool": "linear", "with_mlm": "linear",
                     "inputs": str(tmp_path / "inputs.npz"), "output": str(tmp_path / "out.npz")}], str(tmp_path))
    expected = np.load(tmp_path / "out.npz")
    pooled, logits = ours.predict([token_ids, segment_ids], verbose=0)
    np.testing.assert_allclose(pooled, expected["arr_0"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, expected["arr_1"], atol=1e-4, rtol=0)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    Trainer(tiny_config(tmp_path, 20)).fit()
    before = {name: os.path.getmtime(tmp_path / "checkpoint-0000020" / name)
              for name in os.listdir(tmp_path / "checkpoint-0000020")}
    result = Trainer(tiny_config(tmp_path, 40, scale=float("nan")), resume=True).fit()
    assert result.nan_step == 21
    assert [step for step, _ in checkpoint_dirs(str(tmp_path))] == [20]
    after = {name: os.path.getmtime(tmp_path / "checkpoint-0000020" / name) for name in before}
    assert after == before


def test_mixed_precision_and_distillation_from_a_teacher(tmp_path):
    teacher_run = tmp_path / "teacher"
    Trainer(tiny_config(teacher_run, 10)).fit()
    teacher = checkpoint_dirs(str(teacher_run))[-1][1]
    student = tiny_config(tmp_path / "student", 20, precision="mixed_bfloat16", teacher=teacher)
    trainer = Trainer(student)
    result = trainer.fit()
    assert trainer.backbone.compute_dtype == "bfloat16" and keras.config.dtype_policy().name == "float32"
    metrics = read_metrics(tmp_path / "student")
    assert all(np.isfinite(m["distillation_loss"]) and m["distillation_loss"] > 0 for m in metrics)
    assert result.last["distillation_loss"] < result.first["distillation_loss"]
    # Total = seq2seq + similarity + 100 * distillation.
    last = metrics[-1]
    total = last["seq2seq_loss"] + last["similarity_loss"] + 100 * last["distillation_loss"]
    assert abs(last["loss"] - total) < 1e-2 * last["loss"]


def test_samples_are_printed_during_training(tmp_path, capsys):
    config = tiny_config(tmp_path, 20)
    config.output.sample_every = 10
    config.output.sample_texts = ["花呗怎么还款"]
    Trainer(config).fit()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in printed] == ["step 10", "step 20"]
    assert all(line.split(" | ")[1].startswith("花呗怎么还款 -> ") for line in printed)


@pytest.mark.parametrize("warmup_steps", [1, 4, 10])
def test_linear_warmup_is_the_hand_written_formula(warmup_steps):
    """Keras' CosineDecay as configured by `linear_warmup` equals `lr min(1, (t + 1) / w)`."""
    schedule = linear_warmup(0.002, warmup_steps)
    for step in range(3 * warmup_steps + 2):
        expected = 0.002 * min(1.0, (step + 1) / warmup_steps)
        assert abs(float(schedule(step)) - expected) < 1e-9, step


@pytest.mark.parametrize("warmup_steps, total_steps", [(0, 10), (1, 10), (4, 20), (10, 10)])
def test_linear_decay_is_the_hand_written_formula(warmup_steps, total_steps):
    """`lr_decay: linear`: the warm-up above, then `lr (T - t) / (T - w)`, 0 from step T on."""
    schedule = WarmupLinearDecay(0.002, warmup_steps, total_steps)
    for step in range(total_steps + 3):
        warmup = (step + 1) / warmup_steps if warmup_steps else 1.0
        decay = (total_steps - step) / max(total_steps - warmup_steps, 1)
        expected = 0.002 * max(0.0, min(warmup, decay))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12), step
    assert float(schedule(total_steps)) == 0.0


def test_learning_rate_schedule_follows_the_recipe(tmp_path):
    """The recipe picks the schedule: constant after warm-up unless `lr_decay: linear`,
    which ends at `training.steps`; an unknown `lr_decay` is refused when read."""
    config = tiny_config(tmp_path, 40)
    config.training.warmup_steps = 10
    assert float(learning_rate_schedule(config.training)(39)) == pytest.approx(config.training.learning_rate, rel=1e-6)
    config.training.lr_decay = "linear"
    assert float(learning_rate_schedule(config.training)(39)) == pytest.approx(config.training.learning_rate / 30,
                                                                              rel=1e-6)
    with pytest.raises(ValueError, match="training.lr_decay should be one of"):
        TrainConfig.from_dict({"training": {"lr_decay": "cosine"}}, "recipe.yaml")


def test_fit_runs_outside_the_main_thread(tmp_path):
    """The library installs no signal handlers, so `fit` works in a worker thread (a
    notebook or a server); `request_stop` from another thread stops it with a checkpoint."""
    trainer = Trainer(tiny_config(tmp_path, 1000))
    results, errors = [], []

    def run():
        try:
            results.append(trainer.fit())
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    while not os.path.isfile(tmp_path / "metrics.jsonl") and worker.is_alive():
        time.sleep(0.2)
    trainer.request_stop()
    worker.join(120)
    assert not errors and not worker.is_alive()
    assert results[0].stopped == "requested" and 10 <= results[0].step < 1000
    assert [step for step, _ in checkpoint_dirs(str(tmp_path))] == [results[0].step]


def test_ctrl_c_on_the_train_command_saves_and_stops(tmp_path):
    """`simbert train` turns SIGINT into a stop request: a checkpoint, exit code 130."""
    command = [sys.executable, "-m", "simbert.cli", "train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
               "--output-dir", str(tmp_path), "--steps", "5000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=shell_environment())
    deadline = time.time() + 180
    while not os.path.isfile(tmp_path / "metrics.jsonl") and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stopped"] == "requested" and 10 <= result["step"] < 5000
    assert [step for step, _ in checkpoint_dirs(str(tmp_path))] == [result["step"]]
    # One line says what was saved and how to go on; TensorFlow's finalisation warnings are gone.
    assert [line for line in stderr.splitlines() if line.startswith("simbert:")] == [
        f"simbert: stopped at step {result['step']} of 5000; saved {checkpoint_dir(tmp_path, result['step'])}; "
        f"continue with: simbert train --config {command[5]} --output-dir {tmp_path} --steps 5000 --resume"]
    assert "GeneratorDataset" not in stderr and "W0000" not in stderr


def test_sigterm_stops_training_and_its_batch_workers(tmp_path):
    """`simbert train` with 2 batch workers: SIGTERM saves a checkpoint, exits 143, and no
    worker process outlives the command."""
    import yaml

    with open(os.path.join(ROOT, "configs", "tiny.yaml"), encoding="utf-8") as reader:
        recipe = yaml.safe_load(reader)
    recipe["data"].update(train=os.path.join(ROOT, "data_sample.json"), workers=2)
    config_path = tmp_path / "workers.yaml"
    config_path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    command = [sys.executable, "-m", "simbert.cli", "train", "--config", str(config_path),
               "--output-dir", str(tmp_path / "run"), "--steps", "5000", "--no-compile-cache"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not os.path.isfile(tmp_path / "run" / "metrics.jsonl") and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    workers = [pid for pid in os.listdir("/proc") if pid.isdigit() and parent_of(pid) == process.pid
               and b"spawn_main" in command_line(pid)]
    assert len(workers) == 2
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["stopped"] == "requested"
    assert [pid for pid in workers if os.path.exists(f"/proc/{pid}")] == []


def command_line(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as reader:
            return reader.read()
    except OSError:
        return b""


def parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as reader:
            return int(reader.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None



def test_resume_keeps_the_checkpoints_vocabulary_when_the_data_changed(tmp_path, caplog):
    data = tmp_path / "data.json"
    original = open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8").read()
    data.write_text(original, encoding="utf-8")
    config = short_config(tmp_path / "run", 6)
    config.data.train = str(data)
    Trainer(config).fit()
    vocab = load_vocab(tmp_path / "run" / "checkpoint-0000006" / "vocab.txt")
    replaced = next(ch for ch in original if ch in vocab and "\u4e00" <= ch <= "\u9fff")
    data.write_text(original.replace(replaced, "鑫"), encoding="utf-8")  # one character swapped for a new one
    config.training.steps = 12
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config, resume=True)
    assert trainer.tokenizer.token_dict == vocab  # never rebuilt from the changed data
    assert "1 character(s) not in" in caplog.text and "鑫" in caplog.text
    result = trainer.fit()
    assert result.start_step == 6 and result.step == 12 and math.isfinite(result.last["loss"])
    # The run continues at the loss it had, not at a scrambled vocabulary's.
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as reader:
        losses = {m["step"]: m["seq2seq_loss"] for m in map(json.loads, reader)}
    assert losses[8] < 1.5 * losses[6]


@pytest.mark.parametrize("section, field, value", [("training", "batch_size", 16), ("data", "max_chars", 20),
                                                    ("training", "seed", 7), ("data", "negatives_per_pair", 0)])
def test_resume_refuses_a_changed_stream_unless_told(tmp_path, caplog, section, field, value):
    config = short_config(tmp_path, 2)
    Trainer(config).fit()
    before = getattr(getattr(config, section), field)
    setattr(getattr(config, section), field, value)
    config.training.steps = 4
    with pytest.raises(ResumeMismatch, match=rf"{section}.{field} is {before!r} in the checkpoint but {value!r} now"):
        Trainer(config, resume=True)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config, resume=True, resume_anyway=True)
    assert f"resuming {tmp_path}" in caplog.text and f"{section}.{field}" in caplog.text
    assert trainer.fit().step == 4


def test_resume_refuses_another_model(tmp_path):
    config = short_config(tmp_path, 2)
    Trainer(config).fit()
    config.model.config = {**config.model.config, "num_hidden_layers": 3}
    with pytest.raises(ResumeMismatch, match="model.config is"):
        Trainer(config, resume=True)


def test_resume_falls_back_past_a_torn_checkpoint(tmp_path, caplog):
    config = short_config(tmp_path, 4, save_every=2)
    Trainer(config).fit()
    state = tmp_path / "checkpoint-0000004" / "training_state.npz"
    with open(state, "r+b") as file:
        file.truncate(os.path.getsize(state) // 2)
    config.training.steps = 6
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config, resume=True)
    assert "cannot resume from" in caplog.text and "checkpoint-0000004" in caplog.text
    assert "training_state.npz: cannot be read as a training-state .npz" in caplog.text
    result = trainer.fit()
    assert result.start_step == 2 and result.step == 6


def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    config = short_config(tmp_path, 8, save_every=4)
    Trainer(config).fit()
    remove_checkpoint(str(tmp_path / "checkpoint-0000008"))  # killed after logging steps 6 and 8
    result = Trainer(config, resume=True).fit()
    assert result.start_step == 4
    with open(tmp_path / "metrics.jsonl", encoding="utf-8") as reader:
        assert [json.loads(line)["step"] for line in reader] == [2, 4, 6, 8]


@pytest.mark.parametrize("content", ["", "\n  \n", '{"text": "a", "synonyms": []}\n'])
def test_an_empty_data_set_fails_before_the_model_is_built(tmp_path, content):
    data = tmp_path / "empty.json"
    data.write_text(content, encoding="utf-8")
    config = short_config(tmp_path / "run", 2)
    config.data.train = str(data)
    with pytest.raises(DataError, match=rf"data.train {data} holds no group of two or more distinct texts"):
        Trainer(config)
    assert not os.path.exists(tmp_path / "run" / "training.lock")  # refused before taking the directory


@pytest.mark.parametrize("field", ["model.pretrained", "model.vocab", "training.teacher"])
def test_a_missing_path_of_the_recipe_is_named_with_its_field(tmp_path, field):
    config = short_config(tmp_path / "run", 2)
    section, name = field.split(".")
    setattr(getattr(config, section), name, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=rf"^{field} {tmp_path / 'absent'} does not exist$"):
        Trainer(config)


def test_rows_longer_than_the_positions_fail_before_training(tmp_path):
    config = short_config(tmp_path, 2)
    config.model.config = {**config.model.config, "max_position_embeddings": 20}
    with pytest.raises(ValueError, match=r"data.max_chars 32 makes rows of up to 64 tokens, but "
                                         r"model.config.max_position_embeddings gives 20 positions"):
        Trainer(config)


def test_the_nan_message_says_whether_a_checkpoint_exists(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        result = Trainer(short_config(tmp_path, 4, scale=float("nan"))).fit()
    assert result.nan_step == 1 and "no checkpoint was written" in caplog.text
    assert steps_of(tmp_path) == []


def directory_snapshot(directory) -> dict:
    """Every file under `directory`: its content and modification time."""
    snapshot = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as reader:
                snapshot[os.path.relpath(path, directory)] = (reader.read(), os.path.getmtime(path))
    return snapshot


def test_a_trainer_built_and_dropped_without_fit_changes_nothing(tmp_path):
    """Building a Trainer only checks: a new output directory is not created, a run's
    directory (checkpoints, metrics, lock file) is left as it was, even with overwrite or
    resume, and the process's random seeds are not touched."""
    Trainer(short_config(tmp_path / "fresh", 2))
    assert not (tmp_path / "fresh").exists()
    config = short_config(tmp_path / "run", 2)
    Trainer(config).fit()
    before = directory_snapshot(tmp_path / "run")
    assert "training.lock" in before and "checkpoint-0000002/trainer_state.json" in before
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    for options in ({"overwrite": True}, {"resume": True}, {}):
        try:
            Trainer(config, **options)
        except RunDirectoryTaken:
            assert options == {}
    assert (random.random(), np.random.rand()) == expected
    assert directory_snapshot(tmp_path / "run") == before


def test_a_with_block_holds_the_run_until_it_ends(tmp_path):
    config = short_config(tmp_path, 2)
    with Trainer(config) as trainer:
        assert trainer.lock.held and trainer.backbone is not None
        with pytest.raises(DirectoryInUse, match=rf"in use by another training run \(PID {os.getpid()}"):
            Trainer(config)
        assert trainer.fit().step == 2
        assert trainer.lock.held
    assert not trainer.lock.held
    assert Trainer(short_config(tmp_path, 4), resume=True).fit().step == 4


def test_hierarchical_position_lets_training_rows_pass_the_position_table(tmp_path):
    """tiny.yaml's BERT with 24 learned positions and rows of up to 64 tokens: refused
    without `model.hierarchical_position`, trained with it; the checkpoint keeps it."""
    config = short_config(tmp_path / "plain", 2)
    config.model.config = {**config.model.config, "max_position_embeddings": 24}
    with pytest.raises(ValueError, match=r"data.max_chars 32 makes rows of up to 64 tokens, but "
                                         r"model.config.max_position_embeddings gives 24 positions"):
        Trainer(config)
    config.output.dir = str(tmp_path / "stretched")
    config.model.hierarchical_position = True
    result = Trainer(config).fit()
    assert result.step == 2 and np.isfinite(result.last["loss"])
    saved = json.loads((tmp_path / "stretched" / "checkpoint-0000002" / "bert_config.json").read_text())
    assert saved["hierarchical_position"] == 0.4 and saved["max_position_embeddings"] == 24
