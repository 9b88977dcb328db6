"""The SimBERT facade: loading, encode, gen_synonyms, most_similar, save; bad input and
sampling arguments."""

import json
import os
import shutil

import numpy as np
import pytest

import simbert
from helpers import TINY_CONFIG, write_model_dir
from simbert import SimBERT, Tokenizer, gen_synonyms, most_similar
from simbert.checkpoints import read_safetensors, read_tf_checkpoint
from simbert.cli import main
from simbert.kernels import Platform

TEXT = "明天北京会下雨吗"
CORPUS = ["今天气温多少度", "花呗怎么还款", "信用卡怎么提高额度", "手机充不进电怎么办", TEXT,
          "北京到上海的高铁要多久", "孩子发烧了怎么办", "怎么学习编程"]


@pytest.fixture(scope="module")
def model(trained_tiny):
    return SimBERT.from_pretrained(trained_tiny, max_tokens=32)


def test_from_pretrained_reads_trainer_output_and_its_checkpoints(trained_tiny, model):
    latest = sorted(d for d in os.listdir(trained_tiny) if d.startswith("checkpoint-"))[-1]
    direct = SimBERT.from_pretrained(os.path.join(trained_tiny, latest), max_tokens=32)
    np.testing.assert_array_equal(direct.encode(CORPUS), model.encode(CORPUS))
    assert model.backbone.config.model_type == "bert"


def test_from_pretrained_computes_in_the_precision_asked(trained_tiny, model):
    half = SimBERT.from_pretrained(trained_tiny, max_tokens=32, precision="mixed_bfloat16")
    assert half.backbone.compute_dtype == "bfloat16"
    assert half.backbone.blocks[0].attention.query.kernel.dtype == "float32"
    vectors, reference = half.encode(CORPUS), model.encode(CORPUS)
    assert vectors.dtype == np.float32
    cosines = np.sum(vectors * reference, axis=1)
    assert cosines.min() > 0.99 and np.abs(vectors - reference).max() > 1e-4  # bfloat16's rounding, no more
    assert model.backbone.compute_dtype == "float32"
    with pytest.raises(ValueError,
                       match="precision should be one of float32, mixed_float16, mixed_bfloat16, got 'bf16'"):
        SimBERT.from_pretrained(trained_tiny, precision="bf16")


def test_encode_keeps_order_and_normalises(model):
    vectors = model.encode(CORPUS, batch_size=3)
    assert vectors.shape == (len(CORPUS), model.backbone.config.hidden_size) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([model.encode([t]) for t in CORPUS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    raw = model.encode(CORPUS, normalize=False)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 1e-3
    # The vector is the pooled [CLS] of `[CLS] text [SEP]` alone.
    token_ids, segment_ids = model.tokenizer.encode(CORPUS[0])
    pooled, _ = model.backbone.predict([np.array([token_ids]), np.array([segment_ids])], verbose=0)
    np.testing.assert_allclose(raw[0], pooled[0], atol=1e-5)


def test_gen_synonyms_returns_unique_ranked_paraphrases_never_the_input(model):
    results = model.gen_synonyms(TEXT, n=60, k=10, seed=0, with_scores=True)
    texts = [t for t, _ in results]
    scores = [s for _, s in results]
    assert 0 < len(texts) <= 10 and len(set(texts)) == len(texts) and TEXT not in texts
    assert scores == sorted(scores, reverse=True)
    vectors = model.encode([TEXT] + texts)
    np.testing.assert_allclose(vectors[1:] @ vectors[0], scores, atol=1e-5)
    assert gen_synonyms(model, TEXT, n=60, k=10, seed=0) == texts
    assert len(model.gen_synonyms(TEXT, n=4, k=50, seed=1)) <= 4  # k > n returns what exists


def test_most_similar_finds_the_query_first(model):
    model.build_index(CORPUS)
    results = model.most_similar(TEXT, topn=3)
    assert results[0][0] == TEXT and abs(results[0][1] - 1.0) < 1e-5
    assert len(results) == 3 and results[1][1] <= results[0][1]
    batch = model.most_similar_batch([TEXT, CORPUS[1]], topn=2)
    assert batch[0][0][0] == TEXT and batch[1][0][0] == CORPUS[1]
    assert most_similar(model, CORPUS[2], CORPUS, topn=1)[0][0] == CORPUS[2]
    with pytest.raises(ValueError, match="got list .*for several texts use most_similar_batch"):
        model.most_similar([TEXT, CORPUS[1]])
    with pytest.raises(ValueError, match="most_similar_batch expects a list of texts; for one text use most_similar"):
        model.most_similar_batch(TEXT)


def test_most_similar_helper_leaves_the_model_index_alone(model):
    """With a corpus, the helper searches a temporary index; `model.index` stays."""
    index = model.build_index(CORPUS[:4])
    assert most_similar(model, TEXT, ["花呗怎么还款", TEXT], topn=1)[0][0] == TEXT
    assert model.index is index and len(model.index) == 4
    assert model.most_similar(TEXT, topn=1)[0][0] in CORPUS[:4]
    assert most_similar(model, CORPUS[1], topn=1)[0][0] == CORPUS[1]  # no corpus: the model's index


def test_save_writes_the_released_layout_and_safetensors(model, tmp_path):
    model.save(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == [
        "bert_config.json", "bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.index", "bert_model.safetensors",
        "checkpoint", "vocab.txt"]
    saved_config = json.loads((tmp_path / "saved" / "bert_config.json").read_text())
    assert saved_config["vocab_size"] == model.tokenizer.vocab_size
    tf_values = read_tf_checkpoint(tmp_path / "saved")
    safetensors_values = read_safetensors(tmp_path / "saved" / "bert_model.safetensors")
    assert "cls/predictions/output_bias" in tf_values and tf_values.keys() == safetensors_values.keys()
    for name, value in tf_values.items():
        np.testing.assert_array_equal(safetensors_values[name], value)
    again = SimBERT.from_pretrained(tmp_path / "saved", max_tokens=32)
    np.testing.assert_allclose(again.encode(CORPUS), model.encode(CORPUS), atol=1e-6)


def test_convert_between_safetensors_and_the_bert4keras_checkpoint(model, tmp_path, capsys):
    model.save(tmp_path / "both")
    expected = model.encode(CORPUS)
    only_safetensors, only_tf = tmp_path / "safetensors", tmp_path / "tf"
    shutil.copytree(tmp_path / "both", only_safetensors,
                    ignore=shutil.ignore_patterns("bert_model.ckpt*", "checkpoint"))
    shutil.copytree(tmp_path / "both", only_tf, ignore=shutil.ignore_patterns("*.safetensors"))
    for directory in (only_safetensors, only_tf):  # either format alone loads
        np.testing.assert_allclose(SimBERT.from_pretrained(directory, max_tokens=32).encode(CORPUS), expected,
                                   atol=1e-6)
    assert main(["convert", str(only_safetensors), "--to", "bert4keras"]) == 0
    assert main(["convert", str(only_tf), "--to", "safetensors"]) == 0
    reference = read_tf_checkpoint(tmp_path / "both")
    for converted in (read_tf_checkpoint(only_safetensors),
                      read_safetensors(only_tf / "bert_model.safetensors")):
        assert converted.keys() == reference.keys()
        for name, value in reference.items():
            np.testing.assert_array_equal(converted[name], value)
    os.remove(only_tf / "bert_model.safetensors")
    assert main(["convert", str(only_tf), "--to", "bert4keras"]) == 1
    assert capsys.readouterr().err == f"simbert: error: convert: {only_tf} has no bert_model.safetensors\n"


def test_bad_input(model, tmp_path):
    for bad, message in (("", "has no token"), ("   ", "has no token"), (None, "should be a string")):
        with pytest.raises(ValueError, match=rf"text .*{message}"):
            model.gen_synonyms(bad)
        with pytest.raises(ValueError, match=rf"texts\[1\] .*{message}"):
            model.encode(["ok", bad])
    with pytest.raises(ValueError, match="list of texts"):
        model.encode("a single string")
    long_text = "明天北京会下雨吗" * 20  # longer than maxlen: truncated, still works
    assert model.encode([long_text]).shape == (1, model.backbone.config.hidden_size)
    assert len(model.generate(long_text, n=2, topk=5, seed=0)) == 2
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SimBERT.from_pretrained(tmp_path / "nowhere")
    bigger_vocab = Tokenizer({**model.tokenizer.token_dict, "extra": model.tokenizer.vocab_size})
    with pytest.raises(ValueError, match=r"vocabulary has \d+ tokens but the model's embedding has \d+ rows"):
        SimBERT(model.backbone, bigger_vocab)


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
    with pytest.raises(ValueError, match="seed should be an integer of at least 0, got -1"):
        two_models[0].generate("w10", n=2, seed=-1)


def test_most_similar_refuses_topn_0_as_the_command_does(two_models):
    """issue 31: `most_similar(topn=0)` returned [] where `simbert search --topn 0` refuses."""
    model = two_models[0]
    index = model.make_index(["w10 w11", "w12"])
    with pytest.raises(ValueError, match="topn should be an integer of at least 1, got 0"):
        model.most_similar("w10", topn=0, index=index)
    assert [text for text, _ in model.most_similar("w10 w11", topn=1, index=index)] == ["w10 w11"]


def jax_compilation_cache_setting():
    """JAX's persistent-cache directory setting, or None where JAX is not imported."""
    import sys

    return sys.modules["jax"].config.jax_compilation_cache_dir if "jax" in sys.modules else None


def test_loading_and_encoding_leave_the_process_settings_alone(tmp_path, monkeypatch):
    """`from_pretrained` + `encode` change neither the environment (TF_XLA_FLAGS) nor JAX's
    compilation-cache setting, and write nothing under the cache directory: keeping
    compiled programs is one explicit call, `simbert.use_compilation_cache`."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_model_dir(tmp_path / "model", TINY_CONFIG)
    environment, jax_cache = dict(os.environ), jax_compilation_cache_setting()
    model = SimBERT.from_pretrained(tmp_path / "model", max_tokens=16)
    assert model.encode(["w1 w2", "w3"]).shape == (2, TINY_CONFIG["hidden_size"])
    assert dict(os.environ) == environment
    assert jax_compilation_cache_setting() == jax_cache
    assert not (tmp_path / "cache").exists()


def test_the_compilation_cache_is_one_explicit_call(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    directory = str(tmp_path / "xla")
    if Platform.current().backend == "jax":
        import jax

        before = jax.config.jax_compilation_cache_dir
        try:
            assert simbert.use_compilation_cache(directory) == directory
            assert jax.config.jax_compilation_cache_dir == directory
        finally:
            jax.config.update("jax_compilation_cache_dir", before)
    else:
        assert simbert.use_compilation_cache(directory) == directory
        assert os.environ["TF_XLA_FLAGS"] == (f"--xla_cpu_enable_fast_math=false "
                                              f"--tf_xla_persistent_cache_directory={directory}")
    assert os.path.isdir(directory)
    assert simbert.use_compilation_cache(None) is None


def test_gibbs_sample_edits_a_text_or_fills_masks(model):
    """`SimBERT.gibbs_sample` over `simbert.gibbs`: chains of `steps - burn_in` texts,
    seeded, `positions` keeping the rest of the text, one of text / length."""
    chains = model.gibbs_sample("花呗怎么还款", n=2, steps=10, burn_in=6, seed=0)
    assert [len(chain) for chain in chains] == [4, 4]
    assert chains == model.gibbs_sample("花呗怎么还款", n=2, steps=10, burn_in=6, seed=0)
    assert all(len(model.tokenizer.tokenize(text)) == len(model.tokenizer.tokenize("花呗怎么还款"))
               for chain in chains for text in chain)
    kept = model.gibbs_sample("花呗怎么还款", steps=5, burn_in=0, positions=[5], seed=1)[0]
    assert all(text.replace(" ", "").startswith("花呗怎么还") for text in kept)
    filled = model.gibbs_sample(length=6, n=3, steps=8, burn_in=7, seed=2)
    assert [len(chain) for chain in filled] == [1, 1, 1] and all("[MASK]" not in chain[0] for chain in filled)
    assert filled == model.gibbs_sample(length=6, n=3, steps=8, burn_in=7, seed=2)
    before = model.compiled_programs
    model.gibbs_sample(length=6, n=3, steps=8, burn_in=7, seed=3)
    assert model.compiled_programs == before  # the same bucket: nothing new compiled
    with pytest.raises(ValueError, match="one of the two"):
        model.gibbs_sample()
    with pytest.raises(ValueError, match="length should be an integer of at least 1 and at most 30"):
        model.gibbs_sample(length=31)
