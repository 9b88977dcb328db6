"""`simbert export`: the SavedModel and ONNX encoders give `SimBERT.encode`'s vectors;
transformers loads the HF export and computes the same hidden states, pooler output and
MLM logits; every format reads back through `from_pretrained` exactly."""

import json
import os

import keras
import numpy as np
import pytest
import torch
import transformers

from helpers import TINY_CONFIG, padded_batch, write_model_dir
from simbert import build_transformer_model
from simbert.api import SimBERT
from simbert.checkpoints import HF_LAYER_NAMES, HF_NAMES, google_to_hf, hf_to_google, model_values, read_weights
from simbert.cli import main
from simbert.directories import save_pretrained
from simbert.export import export_hf, export_model
from simbert.tokenizer import load_vocab

TEXTS = ["w10 w11 w12", "w20", "w30 w31 w32 w33 w34 w35", "w40 w41"]


@pytest.fixture(scope="module", params=["bert", "roformer"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(kind, tmp_path_factory):
    return write_model_dir(str(tmp_path_factory.mktemp(kind) / "model"), TINY_CONFIG, model=kind)


def encoder_inputs(model):
    """Token and segment ids of TEXTS as `encode` feeds them, padded with 0."""
    rows = [model.tokenizer.encode(text)[0] for text in TEXTS]
    token_ids = np.zeros((len(rows), max(map(len, rows))), "int32")
    for i, row in enumerate(rows):
        token_ids[i, :len(row)] = row
    return token_ids, np.zeros_like(token_ids)


ON_TENSORFLOW = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                   reason="the encoder formats are written on the TensorFlow backend")


@pytest.mark.parametrize("format", ["saved_model", "onnx"])
def test_encoder_formats_off_tensorflow_name_the_command_to_run(model_dir, tmp_path, monkeypatch, format):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow simbert export"):
        export_model(model_dir, tmp_path / "out", format)
    assert not os.path.exists(tmp_path / "out")


@ON_TENSORFLOW
def test_saved_model_gives_the_encoders_vectors(model_dir, tmp_path):
    import tensorflow as tf

    assert main(["export", model_dir, str(tmp_path / "saved"), "--format", "saved_model"]) == 0
    model = SimBERT.from_pretrained(model_dir, compilation_cache=None)
    token_ids, segment_ids = encoder_inputs(model)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    vectors = loaded.serve([tf.constant(token_ids), tf.constant(segment_ids)]).numpy()
    np.testing.assert_allclose(vectors, model.encode(TEXTS, normalize=False), atol=1e-5, rtol=0)
    single = loaded.serve([tf.constant(token_ids[:1, :5]), tf.constant(segment_ids[:1, :5])]).numpy()
    np.testing.assert_allclose(single, model.encode(TEXTS[:1], normalize=False), atol=1e-5, rtol=0)
    assert os.path.isfile(tmp_path / "saved" / "vocab.txt")


@ON_TENSORFLOW
def test_onnx_gives_the_encoders_vectors(model_dir, tmp_path):
    import onnxruntime

    export_model(model_dir, tmp_path / "onnx", "onnx")
    model = SimBERT.from_pretrained(model_dir, compilation_cache=None)
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["token_ids", "segment_ids"]
    token_ids, segment_ids = encoder_inputs(model)
    for rows, length in ((4, token_ids.shape[1]), (1, 5)):  # dynamic batch and length
        vectors = session.run(None, {"token_ids": token_ids[:rows, :length],
                                     "segment_ids": segment_ids[:rows, :length]})[0]
        np.testing.assert_allclose(vectors, model.encode(TEXTS[:rows], normalize=False), atol=1e-5, rtol=0)


def test_transformers_loads_the_hf_export(kind, model_dir, tmp_path):
    out = export_model(model_dir, tmp_path / "hf", "hf")
    classes = {"bert": (transformers.BertModel, transformers.BertForMaskedLM),
               "roformer": (transformers.RoFormerModel, transformers.RoFormerForMaskedLM)}[kind]
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=3)
    inputs = dict(input_ids=torch.tensor(token_ids, dtype=torch.long),
                  token_type_ids=torch.tensor(segment_ids, dtype=torch.long),
                  attention_mask=torch.tensor(token_ids != 0, dtype=torch.long))
    base, masked = (cls.from_pretrained(out).eval() for cls in classes)
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state.numpy()
        logits = masked(**inputs).logits.numpy()
    ours = build_transformer_model(os.path.join(model_dir, "bert_config.json"), model_dir, model=kind)
    np.testing.assert_allclose(hidden, ours.predict([token_ids, segment_ids], verbose=0), atol=1e-4, rtol=0)
    with_mlm = build_transformer_model(os.path.join(model_dir, "bert_config.json"), model_dir, model=kind,
                                       with_mlm="linear")
    np.testing.assert_allclose(logits, with_mlm.predict([token_ids, segment_ids], verbose=0), atol=1e-4, rtol=0)
    if kind == "bert":
        # The SimBERT vector: the pooler's dense layer on [CLS], without transformers' tanh.
        simbert = SimBERT.from_pretrained(model_dir, compilation_cache=None)
        ids = torch.tensor(encoder_inputs(simbert)[0], dtype=torch.long)
        with torch.no_grad():
            cls = base(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[:, 0]
            np.testing.assert_allclose(base.pooler.dense(cls).numpy(), simbert.encode(TEXTS, normalize=False),
                                       atol=1e-4, rtol=0)
        pooled = build_transformer_model(os.path.join(model_dir, "bert_config.json"), model_dir, model=kind,
                                         with_pool=True).predict([token_ids, segment_ids], verbose=0)
        with torch.no_grad():
            np.testing.assert_allclose(base(**inputs).pooler_output.numpy(), pooled, atol=1e-4, rtol=0)


@pytest.mark.parametrize("format", ["hf", "bert4keras"])
def test_exports_read_back_exactly(model_dir, tmp_path, format):
    out = export_model(model_dir, tmp_path / format, format)
    original = SimBERT.from_pretrained(model_dir, compilation_cache=None)
    again = SimBERT.from_pretrained(out, compilation_cache=None)
    expected = model_values(original.backbone)
    for name, value in model_values(again.backbone).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert again.tokenizer.token_dict == original.tokenizer.token_dict
    assert again.backbone.config == original.backbone.config


def test_every_tensor_has_a_distinct_hf_name(kind, model_dir):
    names = read_weights(model_dir)
    translated = {google_to_hf(name, kind)[0] for name in names}
    assert len(translated) == len(names) and all(name.startswith((kind + ".", "cls.")) for name in translated)


def test_the_hf_name_table_reads_back_both_ways(kind, model_dir):
    """Every Google name (the tiny model's, and every row of the table) maps to a
    transformers name and back to itself, transposed the same way both directions."""
    names = set(read_weights(model_dir)) | set(HF_NAMES) | {f"bert/encoder/layer_11/{name}" for name in HF_LAYER_NAMES}
    for name in names:
        hf, transposed = google_to_hf(name, kind)
        assert hf_to_google(hf) == (name, transposed) == (name, name.endswith("/kernel")), hf


def test_an_hf_export_loads_back_to_identical_tensors(kind, tmp_path):
    """With the embedding projection (`embedding_size`), the pooler and the MLM head: every
    tensor the HF export writes loads back unchanged."""
    model = build_transformer_model({**TINY_CONFIG, "embedding_size": 12}, model=kind, with_pool=True,
                                    with_mlm="linear")
    expected = model_values(model)
    assert "bert/encoder/embedding_hidden_mapping_in/kernel" in expected and "bert/pooler/dense/kernel" in expected
    export_hf(model, {f"w{i}": i for i in range(TINY_CONFIG["vocab_size"])}, str(tmp_path / "hf"))
    loaded = read_weights(str(tmp_path / "hf"))
    assert set(loaded) == set(expected)
    for name, value in loaded.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_export_refuses_a_used_directory_and_an_unknown_format(model_dir, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep")
    assert main(["export", model_dir, str(tmp_path / "used"), "--format", "hf"]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--format should be one of"):
        export_model(model_dir, tmp_path / "new", "torchscript")


def test_a_hierarchical_model_exports_to_transformers_as_a_written_out_table(tmp_path, caplog):
    """transformers has no hierarchical positions: the HF export writes the table out to
    `max_positions` rows and says so; BertModel then computes our hidden states at 100
    tokens on a 40-position model."""
    directory = write_model_dir(str(tmp_path / "bert"), TINY_CONFIG, "bert", seed=3)
    stretched = build_transformer_model(os.path.join(directory, "bert_config.json"), directory,
                                        hierarchical_position=0.3)
    save_pretrained(stretched, tmp_path / "stretched", load_vocab(os.path.join(directory, "vocab.txt")))
    with caplog.at_level("WARNING", logger="simbert.export"):
        out = export_model(tmp_path / "stretched", tmp_path / "hf", "hf", max_positions=128)
    assert "written out as a table of 128 rows" in caplog.text
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["max_position_embeddings"] == 128 and "hierarchical_position" not in config
    token_ids, segment_ids = padded_batch(TINY_CONFIG["vocab_size"], seed=4, length=100)
    base = transformers.BertModel.from_pretrained(out).eval()
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor(token_ids, dtype=torch.long),
                      token_type_ids=torch.tensor(segment_ids, dtype=torch.long),
                      attention_mask=torch.tensor(token_ids != 0, dtype=torch.long)).last_hidden_state.numpy()
    real = token_ids != 0
    np.testing.assert_allclose(hidden[real], stretched.predict([token_ids, segment_ids], verbose=0)[real],
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="max_positions should be an integer of at least 1 and at most 1600"):
        export_model(tmp_path / "stretched", tmp_path / "hf2", "hf", max_positions=2000)
