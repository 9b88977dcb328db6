"""`simbert export --format sentence_transformers`: sentence-transformers loads the
directory as it is, tokenizes as simbert does and encodes `SimBERT.encode`'s vectors
(BERT and RoFormer, a whitening, a hierarchical position table, truncation)."""

import json
import os

import numpy as np
import pytest
import sentence_transformers
import transformers
from safetensors.numpy import load_file

from helpers import TINY_CONFIG, write_model_dir
from simbert import build_transformer_model
from simbert.api import SimBERT
from simbert.cli import main
from simbert.directories import save_pretrained
from simbert.export import ST_MAX_TOKENS, export_model, export_sentence_transformers
from simbert.tokenizer import load_vocab

CHARACTERS = "今天气怎么样明会下雨吗微信和支付宝哪个好用手机价格多少钱我想买一部新的电脑，？。！"
PIECES = ["iphone", "galaxy", "13", "21", "s", "ca", "##fe", "##s", "a", "b", "1", "2", "3"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARACTERS, *PIECES]
VOCAB += [f"[unused{i}]" for i in range(TINY_CONFIG["vocab_size"] - len(VOCAB))]
TEXTS = [
    "今天天气怎么样",
    "微信和支付宝哪个好用？",
    "iPhone 13 和 Galaxy S21 哪个好",  # Latin letters (upper case) and digits
    "我想买一部新的手机，价格多少钱？明天会下雨吗？今天天气怎么样！",  # 32 tokens
    "Café 龘 [MASK] 12",  # an accent, a character outside the vocabulary, a literal [MASK]
]


def st_model(directory):
    return sentence_transformers.SentenceTransformer(str(directory), device="cpu")


def max_difference(model, texts, expected):
    vectors = model.encode(texts, convert_to_numpy=True, batch_size=2)
    return float(np.abs(vectors - expected).max())


@pytest.fixture(scope="module", params=["bert", "roformer"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(kind, tmp_path_factory):
    return write_model_dir(str(tmp_path_factory.mktemp(kind) / "model"), TINY_CONFIG, model=kind, vocab=VOCAB)


@pytest.fixture(scope="module")
def simbert_model(model_dir):
    return SimBERT.from_pretrained(model_dir, compilation_cache=None)


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    return export_model(model_dir, tmp_path_factory.mktemp("st") / "out", "sentence_transformers")


def test_sentence_transformers_encodes_simberts_vectors(exported, simbert_model):
    model = st_model(exported)
    tokenizer = model.tokenizer
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == simbert_model.tokenizer.encode(text)[0], text
    assert model.max_seq_length == min(ST_MAX_TOKENS, simbert_model.backbone.config.max_length or ST_MAX_TOKENS)
    expected = simbert_model.encode(TEXTS)
    assert max_difference(model, TEXTS, expected) <= 1e-5  # measured: about 2e-7


def test_the_directory_holds_the_modules_sentence_transformers_writes(kind, exported):
    modules = json.loads(open(os.path.join(exported, "modules.json")).read())
    assert [(module["path"], module["type"].rsplit(".", 1)[1]) for module in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"), ("3_Normalize", "Normalize")]
    pooling = json.loads(open(os.path.join(exported, "1_Pooling", "config.json")).read())
    assert pooling["pooling_mode_cls_token"] and not any(
        value for key, value in pooling.items() if key.startswith("pooling_mode_") and key != "pooling_mode_cls_token")
    dense = json.loads(open(os.path.join(exported, "2_Dense", "config.json")).read())
    assert dense["activation_function"] == "torch.nn.modules.linear.Identity"  # SimBERT's linear pooler
    assert set(load_file(os.path.join(exported, "2_Dense", "model.safetensors"))) == {"linear.weight", "linear.bias"}
    # The Transformer module is transformers' base model: every tensor it has, no other
    # (but RoFormer's sinusoid table, which transformers computes when it is missing).
    _, info = transformers.AutoModel.from_pretrained(exported, output_loading_info=True)
    computed = {"encoder.embed_positions.weight"} if kind == "roformer" else set()
    assert set(info["missing_keys"]) == computed and not info["unexpected_keys"], info
    assert not [name for name in os.listdir(os.path.dirname(exported)) if name.startswith(".")]  # staged, renamed


def test_the_cli_exports_with_maxlen_and_truncates_alike(model_dir, tmp_path, capsys):
    out = str(tmp_path / "st")
    assert main(["export", model_dir, out, "--format", "sentence_transformers", "--maxlen", "12"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = st_model(out)
    assert model.max_seq_length == 12
    expected = SimBERT.from_pretrained(model_dir, max_tokens=12, compilation_cache=None).encode(TEXTS)
    assert max_difference(model, TEXTS, expected) <= 1e-5  # TEXTS[3] and [2] cut to 12 tokens by both


def test_a_whitening_is_exported_as_a_dense_module(model_dir, simbert_model, tmp_path):
    simbert_model.fit_whitening(TEXTS * 2 + ["今天", "明天会下雨吗", "我想买电脑", "多少钱"], dim=4)
    try:
        simbert_model.save(tmp_path / "whitened")
        expected = simbert_model.encode(TEXTS)
    finally:
        simbert_model.whitening = None
    out = export_model(tmp_path / "whitened", tmp_path / "st", "sentence_transformers")
    assert expected.shape == (len(TEXTS), 4) and os.path.isdir(os.path.join(out, "3_Dense"))
    # The whitening multiplies the backbones' float32 differences (torch vs Keras, about
    # 7e-7) by its gain (columns of norm up to 16 here, a vector of norm 0.5 normalised):
    # measured 3e-6 (BERT) and 8e-6 (RoFormer).
    assert max_difference(st_model(out), TEXTS, expected) <= 2e-5


def test_a_hierarchical_model_reads_past_its_positions(tmp_path, caplog):
    """A 40-position BERT stretched to 1600: the table is written out (`max_positions`
    rows) and a 60-token text encodes alike; max_seq_length above the table is cut to it."""
    directory = write_model_dir(str(tmp_path / "bert"), TINY_CONFIG, "bert", seed=3, vocab=VOCAB)
    stretched = build_transformer_model(os.path.join(directory, "bert_config.json"), directory,
                                        hierarchical_position=0.3, with_pool="linear", application="unilm")
    save_pretrained(stretched, tmp_path / "stretched", load_vocab(os.path.join(directory, "vocab.txt")))
    long_text = TEXTS[3] * 2  # 62 tokens
    out = export_model(tmp_path / "stretched", tmp_path / "st", "sentence_transformers", max_positions=128,
                       max_tokens=100)
    expected = SimBERT.from_pretrained(tmp_path / "stretched", max_tokens=100, compilation_cache=None).encode(
        [long_text, TEXTS[0]])
    assert max_difference(st_model(out), [long_text, TEXTS[0]], expected) <= 1e-5
    with caplog.at_level("WARNING", logger="simbert.export"):
        export_model(tmp_path / "stretched", tmp_path / "short", "sentence_transformers", max_positions=50,
                     max_tokens=100)
    assert "reads 50 tokens a text" in caplog.text and st_model(tmp_path / "short").max_seq_length == 50


def test_refusals_name_what_is_supported(tmp_path, capsys):
    relu_pooler = build_transformer_model(TINY_CONFIG, with_pool="relu")
    with pytest.raises(ValueError, match="supported: a pooler with activation linear or tanh"):
        export_sentence_transformers(relu_pooler, {f"w{i}": i for i in range(97)}, str(tmp_path / "relu"))
    with pytest.raises(ValueError, match="supported: a pooler"):
        export_sentence_transformers(build_transformer_model(TINY_CONFIG), {}, str(tmp_path / "none"))
    assert not os.path.exists(tmp_path / "relu") and not os.path.exists(tmp_path / "none")
    directory = write_model_dir(str(tmp_path / "model"), TINY_CONFIG)
    assert main(["export", directory, str(tmp_path / "hf"), "--format", "hf", "--maxlen", "12"]) == 1
    assert "--maxlen is for --format sentence_transformers, not hf" in capsys.readouterr().err
