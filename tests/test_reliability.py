"""Reliability: each test reproduces one reported way a run, an index or a vector row was
lost or misaligned, or a bad input or corrupt file went unnamed, and checks the fix."""

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from helpers import ROOT, TINY_CONFIG, tiny_config, write_model_dir
from simbert.api import SimBERT
from simbert.checkpoints import read_tf_checkpoint, read_weights
from simbert.config import TrainConfig
from simbert.data import DataError, read_pair_rows, detect_pair_format, problem_handler
from simbert.directories import (
    DirectoryInUse,
    checkpoint_dirs,
    read_config,
    remove_checkpoint,
)
from simbert.errors import FileFormatError
from simbert.evaluation import evaluate_files
from simbert.retrieval import SimilarityIndex
from simbert.tokenizer import load_vocab
from simbert.trainer import ResumeMismatch, RunDirectoryTaken, Trainer


def simbert(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "simbert.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr without the backends' start-up log lines."""
    return [line for line in stderr.splitlines() if line.startswith("simbert")]


def steps_of(directory) -> list[int]:
    return [step for step, _ in checkpoint_dirs(str(directory))]


def short_config(output_dir, steps, save_every=0, **training):
    config = tiny_config(output_dir, steps, **training)
    config.output.save_every, config.output.log_every = save_every, 2
    return config


# ------------------------------------------------------------- 1. run directories
def test_a_fresh_run_never_throws_itself_away_in_an_old_runs_directory(tmp_path):
    Trainer(short_config(tmp_path, 8)).fit()
    with pytest.raises(RunDirectoryTaken, match=r"checkpoint-0000008.*--resume.*--overwrite"):
        Trainer(short_config(tmp_path, 4, seed=7))
    assert steps_of(tmp_path) == [8]  # the refused run touched nothing
    (tmp_path / ".checkpoint-0000010.tmp").mkdir()  # a save cut short by kill -9
    result = Trainer(short_config(tmp_path, 4, seed=7), overwrite=True).fit()
    assert result.step == 4 and steps_of(tmp_path) == [4]
    assert not (tmp_path / ".checkpoint-0000010.tmp").exists()
    with open(tmp_path / "metrics.jsonl", encoding="utf-8") as reader:
        assert [json.loads(line)["step"] for line in reader] == [2, 4]


def test_rotation_never_removes_the_checkpoint_just_written(tmp_path):
    config = short_config(tmp_path, 4)
    config.output.keep = 1
    trainer = Trainer(config)
    shutil.copytree(trainer.save_checkpoint(1), tmp_path / "checkpoint-0000400")  # a higher step from elsewhere
    written = trainer.save_checkpoint(2)
    assert os.path.isdir(written) and steps_of(tmp_path) == [2]
    trainer.lock.release()


def test_a_second_training_is_kept_out_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from simbert.directories import RunLock; lock = RunLock(sys.argv[1]); lock.acquire(); "
        "print('locked', flush=True); time.sleep(600)"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryInUse, match=rf"in use by another training run \(PID {holder.pid}"):
            Trainer(short_config(tmp_path, 2))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "training.lock").read_text().strip() == str(holder.pid)  # stale, left behind
    assert Trainer(short_config(tmp_path, 2)).fit().step == 2


# ------------------------------------------------------------------- 2. resume
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
                                                    ("training", "seed", 7)])
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


# ------------------------------------------------------------------- 3. index
@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two random models of the same width (vectors of different spaces)."""
    root = tmp_path_factory.mktemp("models")
    return [SimBERT.from_pretrained(write_model_dir(str(root / name), TINY_CONFIG, seed=seed), max_tokens=16,
                                    compilation_cache=None) for seed, name in enumerate(("first", "second"))]


TEXTS = ["w10 w11 w12", "w20 w21", "w30 w31 w32 w33"]


def test_an_index_write_killed_midway_leaves_the_old_index_whole(two_models, tmp_path, monkeypatch):
    model = two_models[0]
    model.make_index(TEXTS).save(tmp_path / "index")
    bigger = model.make_index(TEXTS[::-1] + ["w40 w41"])

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # as kill -9 would stop it: after the vectors, before the texts

    monkeypatch.setattr("simbert.retrieval.json.dumps", killed)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(tmp_path / "index")
    monkeypatch.undo()
    loaded = SimilarityIndex.load(tmp_path / "index")
    assert loaded.texts == TEXTS
    assert loaded.search(model.encode(["w20 w21"]), 1)[0][0][0] == "w20 w21"
    bigger.save(tmp_path / "index")  # the next write replaces it whole
    assert SimilarityIndex.load(tmp_path / "index").texts == TEXTS[::-1] + ["w40 w41"]
    assert sorted(os.listdir(tmp_path)) == ["index"] or all(name.startswith(".index.tmp") for name in
                                                             sorted(os.listdir(tmp_path)) if name != "index")


def test_an_index_refuses_to_overwrite_a_directory_that_is_not_an_index(two_models, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a simbert index"):
        two_models[0].make_index(TEXTS).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_an_index_of_another_model_is_flagged(two_models, tmp_path, caplog):
    first, second = two_models
    first.make_index(TEXTS).save(tmp_path / "index")
    index = SimilarityIndex.load(tmp_path / "index")
    assert index.check_model(first.fingerprint, "first")
    with caplog.at_level(logging.WARNING):
        assert not index.check_model(second.fingerprint, "second")
    assert "rebuild the index with this model" in caplog.text
    with pytest.raises(ValueError, match=f"fingerprint {first.fingerprint}"):
        index.check_model(second.fingerprint, "second", strict=True)


@pytest.mark.parametrize("tamper, message", [
    (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 0, np.nan, v), "row 0 has non-finite values"),
    (lambda v: v * 1000, "row 0 has norm 1000"),
])
def test_tampered_index_vectors_are_refused(two_models, tmp_path, tamper, message):
    two_models[0].make_index(TEXTS).save(tmp_path / "index")
    path = tmp_path / "index" / "vectors.npy"
    np.save(path, tamper(np.load(path)).astype("float32"))
    with pytest.raises(FileFormatError, match=rf"vectors.npy: {message}"):
        SimilarityIndex.load(tmp_path / "index")


def test_a_bad_texts_line_is_named(two_models, tmp_path):
    two_models[0].make_index(TEXTS).save(tmp_path / "index")
    path = tmp_path / "index" / "texts.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == '"w20 w21"'
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n", encoding="utf-8")  # same size
    index = SimilarityIndex.load(tmp_path / "index")  # texts stay on disk: the line is read when needed
    with pytest.raises(FileFormatError, match=r"texts.jsonl: line 2 is not a JSON string"):
        index.search(two_models[0].encode(["w20 w21"]), 1)
    path.write_text("\n".join([lines[0], "{not json at all", lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(FileFormatError, match=r"texts.jsonl: has \d+ bytes but index.json records \d+"):
        SimilarityIndex.load(tmp_path / "index")
    # Without the writer's size and offsets (an index written by hand), the file is read through.
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    del meta["texts_bytes"]
    (tmp_path / "index" / "index.json").write_text(json.dumps(meta))
    os.remove(tmp_path / "index" / "text_offsets.npy")
    with pytest.raises(FileFormatError, match=r"texts.jsonl: line 2 is not a JSON string"):
        SimilarityIndex.load(tmp_path / "index")


# --------------------------------------------------------------- 4. encode rows
def test_encode_keeps_row_i_for_line_i(trained_tiny, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("花呗怎么还款\n\n信用卡怎么提高额度\n\n", encoding="utf-8")  # a blank line inside, one at the end
    refused = simbert("encode", trained_tiny, "--input", texts, "--output", tmp_path / "v.npy")
    assert refused.returncode == 1 and error_lines(refused.stderr) == [
        f"simbert: error: {texts}: 1 blank line(s) (line 2); vector row i is input line i, so remove them, or pass "
        f"--skip-blank to leave them out and write the line number of each row beside the vectors"]
    assert not (tmp_path / "v.npy").exists()
    done = simbert("encode", trained_tiny, "--input", texts, "--output", tmp_path / "v.npy", "--skip-blank")
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.load(tmp_path / "v.npy").shape[0] == 2
    assert (tmp_path / "v.lines.txt").read_text().split() == ["1", "3"]
    for size in ("-1", "0"):
        bad = simbert("encode", trained_tiny, "--input", texts, "--output", tmp_path / "w.npy", "--batch-size", size)
        assert bad.returncode == 2 and error_lines(bad.stderr) == [
            f"simbert: error: argument --batch-size: --batch-size should be an integer of at least 1, got {size} "
            f"(see simbert encode --help)"]


# ------------------------------------------------------------------ 5. sampling
@pytest.mark.parametrize("options, message", [
    ({"temperature": 0}, "temperature should be a finite number above 0, got 0"),
    ({"temperature": -1.0}, "temperature should be"),
    ({"temperature": float("nan")}, "temperature should be"),
    ({"topp": 0.0}, r"topp should be a number in \(0, 1\], got 0.0"),
    ({"topp": 1.5}, "topp should be"),
    ({"topk": -1}, "topk should be an integer of at least 1 and at most 97, got -1"),
    ({"topk": 10 ** 6}, "topk should be an integer of at least 1 and at most 97"),
    ({"n": -1}, "n should be an integer of at least 1, got -1"),
    ({"n": 0}, "n should be an integer of at least 1, got 0"),
    ({"k": -1}, "k should be an integer of at least 1, got -1"),
])
def test_sampling_arguments_are_checked(two_models, options, message):
    options = {"n": 4, **options}
    with pytest.raises(ValueError, match=message):
        two_models[0].gen_synonyms("w10 w11", **options)


def test_text_without_tokens_and_a_zero_maxlen_are_refused(two_models, tmp_path):
    with pytest.raises(ValueError, match="has no token once cleaned"):
        two_models[0].generate("\u200b\x01\u200d ", n=2)
    with pytest.raises(ValueError, match=r"texts\[1\] ' ' has no token"):
        two_models[0].encode(["w10", " "])
    with pytest.raises(ValueError, match="max_tokens should be an integer of at least 3"):
        SimBERT(two_models[0].backbone, two_models[0].tokenizer, max_tokens=0)


def test_large_n_is_sampled_in_chunks_of_one_program(two_models):
    decoder = two_models[0].decoder
    before = decoder.compiled_programs
    samples = decoder.sample([2, 10, 11, 3], n=300, topk=5, seed=0, max_rows=64, max_new_tokens=4)
    assert len(samples) == 300 and decoder.compiled_programs - before <= 2  # the prefill and one 64-row loop
    assert samples[:64] == decoder.sample([2, 10, 11, 3], n=300, topk=5, seed=0, max_new_tokens=4)[:64]


def test_cli_sampling_arguments_are_usage_errors(trained_tiny):
    for arguments, message in [(("-n", "-1"), "-n should be an integer of at least 1, got -1"),
                               (("--topk", "-1"), "--topk should be"),
                               (("--maxlen", "0"), "--maxlen should be an integer of at least 3, got 0"),
                               (("--temperature", "0"), "--temperature should be a finite number above 0"),
                               (("--topp", "2"), r"--topp should be a number in (0, 1]")]:
        result = simbert("generate", trained_tiny, "花呗怎么还款", *arguments)
        assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr[-2000:]
        assert message in result.stderr


# ---------------------------------------------------------------------- 6. data
def test_non_utf8_data_names_file_and_line_and_skip_skips_it(tmp_path):
    data = tmp_path / "gbk.json"
    good = open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8").read().splitlines()
    bad = json.dumps({"text": "花呗怎么还款", "synonyms": ["花呗如何还"]}, ensure_ascii=False).encode("gbk")
    data.write_bytes(("\n".join(good[:3]) + "\n").encode() + bad + b"\n" + ("\n".join(good[3:]) + "\n").encode())
    config = short_config(tmp_path / "run", 2)
    config.data.train = str(data)
    with pytest.raises(DataError, match=rf"{data}, line 4: not UTF-8"):
        Trainer(config)
    config.data.on_error = "skip"
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.report.skipped_records == 1


def test_records_are_counted_once_however_many_passes(tmp_path):
    data = tmp_path / "data.json"
    lines = open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8").read().splitlines()
    data.write_text("\n".join(lines[:4] + ["{broken"]) + "\n", encoding="utf-8")  # 4 groups: passes every 2 steps
    config = short_config(tmp_path / "run", 12)
    config.data.train, config.data.on_error, config.data.shuffle_buffer = str(data), "skip", 2
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.report.skipped_records == 1


@pytest.mark.parametrize("content", ["", "\n  \n", '{"text": "a", "synonyms": []}\n'])
def test_an_empty_data_set_fails_before_the_model_is_built(tmp_path, content):
    data = tmp_path / "empty.json"
    data.write_text(content, encoding="utf-8")
    config = short_config(tmp_path / "run", 2)
    config.data.train = str(data)
    with pytest.raises(DataError, match=rf"data.train {data} holds no group of two or more distinct texts"):
        Trainer(config)
    assert not os.path.exists(tmp_path / "run" / "training.lock")  # refused before taking the directory


def test_a_directory_as_data_is_named(tmp_path):
    config = short_config(tmp_path / "run", 2)
    config.data.train = str(tmp_path)
    with pytest.raises(IsADirectoryError, match=rf"data.train {tmp_path} is a directory"):
        Trainer(config)


@pytest.mark.parametrize("field", ["model.pretrained", "model.vocab", "training.teacher"])
def test_a_missing_path_of_the_recipe_is_named_with_its_field(tmp_path, field):
    config = short_config(tmp_path / "run", 2)
    section, name = field.split(".")
    setattr(getattr(config, section), name, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=rf"^{field} {tmp_path / 'absent'} does not exist$"):
        Trainer(config)


@pytest.mark.parametrize("override, message", [
    ({"data": {"max_chars": 0}}, "data.max_chars should be at least 1, got 0"),
    ({"data": {"shuffle_buffer": 0}}, "data.shuffle_buffer should be at least 1, got 0"),
    ({"training": {"steps": -5}}, "training.steps should be at least 1, got -5"),
    ({"training": {"learning_rate": 0.0}}, "training.learning_rate should be a finite number above 0"),
])
def test_recipe_numbers_are_checked_when_read(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(override, "recipe.yaml")


def test_a_yaml_1e_3_is_a_float(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("training:\n  learning_rate: 1e-3\n", encoding="utf-8")
    assert TrainConfig.from_yaml(recipe).training.learning_rate == 0.001


def test_rows_longer_than_the_positions_fail_before_training(tmp_path):
    config = short_config(tmp_path, 2)
    config.model.config = {**config.model.config, "max_position_embeddings": 20}
    with pytest.raises(ValueError, match=r"data.max_chars 32 makes rows of up to 64 tokens, but "
                                         r"model.config.max_position_embeddings gives 20 positions"):
        Trainer(config)


def test_a_trailing_tab_is_still_a_tsv(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("花呗怎么还款\t花呗如何还\t1\t\n借呗额度\t信用卡\t0\t\n", encoding="utf-8")
    assert detect_pair_format(str(path)) == "tsv"
    rows = list(read_pair_rows(str(path), problem_handler("raise", None)))
    assert [(first, second, label) for _, first, second, label in rows] == [
        ("花呗怎么还款", "花呗如何还", 1.0), ("借呗额度", "信用卡", 0.0)]


# ------------------------------------------------------------ 7. corrupt files
@pytest.fixture()
def saved_model(tmp_path):
    return write_model_dir(str(tmp_path / "model"), TINY_CONFIG)


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


# ------------------------------------------------------------------ 8. races
def test_a_reader_retries_when_rotation_removes_its_checkpoint(tmp_path, monkeypatch):
    Trainer(short_config(tmp_path, 4, save_every=2)).fit()
    import simbert.directories as directories

    original, removed = directories.read_weights, []

    def rotated_away_mid_read(path):
        if not removed:
            removed.append(path)
            remove_checkpoint(path)  # the trainer rotates it between the vocab and the weights
        return original(path)

    monkeypatch.setattr(directories, "read_weights", rotated_away_mid_read)
    model = SimBERT.from_pretrained(tmp_path, compilation_cache=None)
    assert removed == [str(tmp_path / "checkpoint-0000004")] and model.encode(["花呗"]).shape[0] == 1


def test_readers_of_a_live_training_never_fail(tmp_path):
    config = short_config(tmp_path, 400, save_every=1)
    config.output.keep = 1
    trainer = Trainer(config)
    worker = threading.Thread(target=trainer.fit)
    worker.start()
    try:
        while not checkpoint_dirs(str(tmp_path)):
            time.sleep(0.05)
        for _ in range(6):
            assert SimBERT.from_pretrained(tmp_path, compilation_cache=None).encode(["花呗"]).shape[0] == 1
    finally:
        trainer.request_stop()
        worker.join(120)


# ------------------------------------------------------- 9. messages and exit codes
def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    result = simbert("generate", tmp_path, "text")  # a directory, but no model in it
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"simbert: error: {tmp_path} has no vocab.txt: not a model directory (a released checkpoint, a training "
        "output or a Hugging Face directory)"]
    assert "Traceback" not in result.stderr
    debug = simbert("generate", tmp_path, "text", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    usage = simbert("train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--resume-anyway")
    assert usage.returncode == 2 and error_lines(usage.stderr) == [
        "simbert: error: --resume-anyway goes with --resume (see simbert --help)"]


def test_path_arguments_are_checked_before_anything_loads(tmp_path):
    """A path that does not exist, or a file where a directory is expected (and the
    reverse), is a usage error naming the argument (exit 2), found before the backend is
    started; a relative path names the directory it was looked up from."""
    text_file = tmp_path / "texts.txt"
    text_file.write_text("花呗怎么还款\n", encoding="utf-8")
    missing = tmp_path / "missing"
    cases = [
        (("generate", missing, "text"), f"argument model_dir: model directory {missing} does not exist",
         "generate"),
        (("generate", text_file, "text"), f"argument model_dir: model directory {text_file} is a file; expected a "
                                          "directory", "generate"),
        (("encode", tmp_path, "--input", missing, "--output", tmp_path / "v.npy"),
         f"argument --input: input file {missing} does not exist", "encode"),
        (("search", text_file, tmp_path, "query"),
         f"argument index_dir: index directory {text_file} is a file; expected a directory", "search"),
        (("eval", tmp_path, text_file, missing), f"argument files: pair file {missing} does not exist", "eval"),
        (("train", "--config", tmp_path), f"argument --config: recipe {tmp_path} is a directory; expected a file",
         "train"),
        (("train", "--config", "no_such_recipe.yaml"), f"argument --config: recipe no_such_recipe.yaml does not "
                                                       f"exist (looked up from the current directory {ROOT})",
         "train"),
    ]
    for args, message, command in cases:
        result = simbert(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        # stderr is that one line: no backend started (TensorFlow and JAX log as they start).
        assert result.stderr == f"simbert: error: {message} (see simbert {command} --help)\n", args


def backend_loaded(pid: int) -> bool:
    """Whether process `pid` has mapped TensorFlow's or JAX's native library."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as reader:
            maps = reader.read()
    except OSError:
        return False
    return "tensorflow" in maps or "jaxlib" in maps


def test_ctrl_c_while_starting_stops_before_training(tmp_path):
    command = [sys.executable, "-m", "simbert.cli", "train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
               "--output-dir", str(tmp_path), "--steps", "5000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # until it imports the backend (its handlers are installed before that)
    while time.time() < deadline and process.poll() is None and not backend_loaded(process.pid):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stopped"] == "requested" and result["step"] == 0


def test_the_nan_message_says_whether_a_checkpoint_exists(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        result = Trainer(short_config(tmp_path, 4, scale=float("nan"))).fit()
    assert result.nan_step == 1 and "no checkpoint was written" in caplog.text
    assert steps_of(tmp_path) == []


def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    config = short_config(tmp_path, 8, save_every=4)
    Trainer(config).fit()
    remove_checkpoint(str(tmp_path / "checkpoint-0000008"))  # killed after logging steps 6 and 8
    result = Trainer(config, resume=True).fit()
    assert result.start_step == 4
    with open(tmp_path / "metrics.jsonl", encoding="utf-8") as reader:
        assert [json.loads(line)["step"] for line in reader] == [2, 4, 6, 8]


def test_eval_of_a_one_class_file_writes_valid_json(tmp_path):
    path = tmp_path / "positives.tsv"
    path.write_text("花呗怎么还款\t花呗如何还\t1\n借呗额度\t借呗的额度\t1\n信用卡\t信用卡额度\t1\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw scipy warning
        results = evaluate_files([str(path)], lambda a, b: np.array([0.9, 0.8, 0.95]))
    metrics = results[str(path)]
    assert metrics["spearman"] is None and metrics["pearson"] is None
    assert metrics["note"] == "every pair has label 1: correlations are undefined"
    report = {k: v for k, v in metrics.items() if k not in ("scores", "labels")}
    assert json.loads(json.dumps(report, allow_nan=False))["spearman"] is None
