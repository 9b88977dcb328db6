"""CoSENT fine-tuning on labelled pairs: the loss against numpy, the batch layout against
`encode`, the recipe checks, and tiny runs whose losses fall."""

import itertools
import json
import os

import numpy as np
import pytest

from helpers import ROOT, TINY_CONFIG, tiny_config, write_model_dir
from simbert.config import TrainConfig
from simbert.cosent import CoSENTLoss
from simbert.errors import DataError
from simbert.labelled_pairs import LabelledPair, make_labelled_batch, read_labelled_pairs


def cosent_numpy(vectors, labels, scale, sources=None):
    """The CoSENT formula, pair by pair, in float64 (pairs of different `sources` not compared)."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = (v[0::2] * v[1::2]).sum(1)
    pair_labels = labels[0::2]
    pair_sources = np.zeros(len(cosines)) if sources is None else sources[0::2]
    terms = [scale * (cosines[low] - cosines[high])
             for high, low in itertools.product(range(len(cosines)), repeat=2)
             if pair_labels[high] > pair_labels[low] and pair_sources[high] == pair_sources[low]]
    return float(np.log1p(np.exp(np.array(terms)).sum())) if terms else 0.0


@pytest.mark.parametrize("labels, scale", [
    ([1, 0, 0, 1, 1, 0], 20.0),                # binary, with ties
    ([5.0, 3.2, 0.0, 3.2, 4.8, 1.0], 20.0),    # graded, one tie
    ([2, 0, 1, 0, 2, 1], 7.5),                 # three classes, another lambda
])
def test_cosent_loss_matches_numpy(labels, scale):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2 * len(labels), 9)).astype("float32")
    row_labels = np.repeat(np.array(labels, "float32"), 2)
    expected = cosent_numpy(vectors.astype("float64"), row_labels, scale)
    assert expected > 0
    assert abs(float(CoSENTLoss(scale)(row_labels, vectors)) - expected) < 1e-4 * max(1.0, expected)


def test_cosent_loss_compares_pairs_of_one_source_only():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(12, 7)).astype("float32")
    labels = np.repeat(np.array([1, 0, 4.5, 2, 0, 5], "float32"), 2)
    sources = np.repeat(np.array([0, 0, 1, 1, 0, 1], "float32"), 2)
    expected = cosent_numpy(vectors.astype("float64"), labels, 20.0, sources)
    loss = float(CoSENTLoss()(np.stack([labels, sources], 1), vectors))
    assert abs(loss - expected) < 1e-4 * max(1.0, expected)
    # A source-1 pair labelled 5 with cosine -1 below a source-0 pair labelled 1 with cosine 1:
    # about 40 if compared, 0 as they are not.
    base = rng.normal(size=(1, 7))
    crossed = np.concatenate([base, base, base, -base]).astype("float32")
    assert float(CoSENTLoss()(np.array([[1, 0], [1, 0], [5, 1], [5, 1]], "float32"), crossed)) == 0.0
    assert float(CoSENTLoss()(np.array([1, 1, 5, 5], "float32"), crossed)) == pytest.approx(40.0, rel=1e-5)
    # One label per source: nothing to compare.
    assert float(CoSENTLoss()(np.stack([sources, sources], 1), vectors)) == 0.0


def test_cosent_loss_of_one_label_is_zero_and_orders_cosines():
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(8, 5)).astype("float32")
    assert float(CoSENTLoss()(np.ones(8, "float32"), vectors)) == 0.0
    # Pair 0 identical (cosine 1), pair 1 opposite (cosine -1): labelled in that order the
    # loss is log(1 + exp(20 * (-2))), in the other order about 40.
    base = rng.normal(size=(1, 5))
    vectors = np.concatenate([base, base, base, -base]).astype("float32")
    right = float(CoSENTLoss()(np.array([1, 1, 0, 0], "float32"), vectors))
    wrong = float(CoSENTLoss()(np.array([0, 0, 1, 1], "float32"), vectors))
    assert right == pytest.approx(np.log1p(np.exp(-40.0)), abs=1e-6)
    assert wrong == pytest.approx(40.0, rel=1e-5)


def write_labelled_pairs(path, graded=False):
    """Labelled pairs from data_sample.json's groups: two texts of one group are similar
    (label 1, or 4-5 graded), texts of different groups are not (0, or 0-2 graded)."""
    with open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8") as reader:
        groups = [[record["text"], *record["synonyms"]] for record in map(json.loads, reader)]
    rng = np.random.default_rng(0)
    rows = []
    for index, group in enumerate(groups):
        for first, second in zip(group, group[1:]):
            rows.append((first, second, rng.choice([4, 5]) if graded else 1))
            other = groups[(index + 1 + rng.integers(len(groups) - 1)) % len(groups)]
            rows.append((first, other[rng.integers(len(other))], rng.choice([0, 1, 2]) if graded else 0))
    with open(path, "w", encoding="utf-8") as writer:
        writer.writelines(f"{a}\t{b}\t{label}\n" for a, b, label in rows)
    return str(path)


def cosent_config(output_dir, train, steps, pretrained=None, **training):
    """configs/tiny.yaml with the CoSENT objective on `train`, fine-tuning `pretrained` (a
    model or training output directory) when given."""
    config = tiny_config(output_dir, steps, objective="cosent", **{"learning_rate": 3e-4, **training})
    config.data.train, config.data.format = train, "labelled_pairs"
    config.model.pretrained = pretrained
    config.output.log_every = 5
    return config


def test_a_cosent_batch_holds_each_texts_encode_vector(tmp_path):
    """Rows 2k, 2k+1 pooled by the training model are the texts' `encode` vectors, with
    and without the generation rows (under the UniLM mask [CLS] sees only its source)."""
    from simbert.api import SimBERT
    from simbert.kernels import Platform
    from simbert.training_model import build_training_model

    model = SimBERT.from_pretrained(write_model_dir(str(tmp_path / "model"), TINY_CONFIG), max_tokens=24,
                                    compilation_cache=None)
    words = [f"w{i}" for i in range(40)]  # the random model's vocabulary
    pairs = [LabelledPair(" ".join(words[i:i + 3 + i % 5]), " ".join(words[i + 7:i + 9 + i % 4]), float(i % 3))
             for i in range(4)]
    expected = model.encode([text for pair in pairs for text in (pair.first, pair.second)])
    for keep_generation in (False, True):
        training = cosent_config(tmp_path / "run", "x.tsv", 1, keep_generation=keep_generation).training
        trainer_model = build_training_model(model.backbone, training, Platform.current())
        inputs, targets = make_labelled_batch(pairs, model.tokenizer, 24, keep_generation)
        assert targets["cosent"].tolist() == [[label, 0] for label in (0, 0, 1, 1, 2, 2, 0, 0)]
        pooled = np.asarray(trainer_model.predict_on_batch(inputs)["cosent"])
        vectors = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        if keep_generation:  # seq2seq targets only on the similar pairs (label >= 1)
            weights = targets["seq2seq"][..., 1].sum(1)
            similar = targets["cosent"][:, 0] >= 1
            assert not weights[~similar].any() and (weights[similar] > 0).all()


def test_a_tiny_cosent_run_lowers_its_loss(tmp_path, trained_tiny):
    """Fine-tuning a SimBERT model (a random one's [CLS] vectors are all alike: cosines
    near 1, a flat loss)."""
    from simbert.trainer import Trainer

    train = write_labelled_pairs(tmp_path / "pairs.tsv", graded=True)
    result = Trainer(cosent_config(tmp_path / "run", train, 60, trained_tiny)).fit()
    assert "seq2seq_loss" not in result.last and "similarity_loss" not in result.last
    assert result.last["cosent_loss"] < 0.6 * result.first["cosent_loss"]
    assert result.checkpoint and os.path.isfile(os.path.join(result.checkpoint, "bert_config.json"))


def test_keep_generation_trains_both_losses(tmp_path, trained_tiny):
    """Both losses, averaged over fixed batches of the training batch size (every pair of
    the file once), fall during a short run."""
    from simbert.trainer import Trainer

    train = write_labelled_pairs(tmp_path / "pairs.tsv")
    config = cosent_config(tmp_path / "run", [train, train], 60, trained_tiny, keep_generation=True)
    pairs = list(read_labelled_pairs(train))
    size = config.training.batch_size // 2

    def mean_losses(trainer):
        losses = [trainer.training_model.test_on_batch(*make_labelled_batch(
            pairs[start:start + size], trainer.tokenizer, config.data.max_tokens, keep_generation=True),
            return_dict=True) for start in range(0, len(pairs) - size + 1, size)]
        return {key: np.mean([loss[key] for loss in losses]) for key in ("cosent_loss", "seq2seq_loss")}

    with Trainer(config) as trainer:
        before = mean_losses(trainer)
        result = trainer.fit()
        after = mean_losses(trainer)
    assert after["cosent_loss"] < 0.8 * before["cosent_loss"]
    assert after["seq2seq_loss"] < 0.95 * before["seq2seq_loss"]
    last = result.last
    assert abs(last["loss"] - last["cosent_loss"] - last["seq2seq_loss"]) < 1e-3 * last["loss"]


@pytest.mark.parametrize("change, message", [
    ({"data": {"format": "pairs"}}, "training.objective cosent reads data.format labelled_pairs"),
    ({"training": {"objective": "cosent", "keep_generation": True, "teacher": "t"}},
     "training.teacher is for training.objective simbert"),
    ({"data": {"format": "labelled_pairs"}, "training": {"objective": "simbert"}},
     "training.objective simbert reads data.format groups or pairs"),
    ({"training": {"objective": "cosent", "cosent_scale": 0}}, "training.cosent_scale should be a finite number"),
    ({"data": {"format": "pairs"}, "training": {"objective": "simbert", "cosent_scale": 10}},
     "training.cosent_scale is for training.objective cosent, not simbert"),
    ({"training": {"objective": "cosent", "scale": 20}},
     "training.scale is for training.objective simbert, not cosent"),
    ({"training": {"objective": "cross_encoder", "seq2seq_weight": 0.5}},
     "training.seq2seq_weight is for training.objective simbert or cosent, not cross_encoder"),
    ({"data": {"format": "labelled_pairs", "train": []}}, "data.train should be a file or a non-empty list"),
])
def test_recipe_checks_of_the_objective(change, message):
    recipe = {"data": {"format": "labelled_pairs", "train": "x.tsv"}, "training": {"objective": "cosent"}}
    for section, values in change.items():
        recipe.setdefault(section, {}).update(values)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        TrainConfig.from_dict(recipe, "r.yaml")


def test_a_row_without_a_label_names_its_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("一个\t两个\t1\n三个\t四个\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.tsv, line 2: no label"):
        list(read_labelled_pairs(str(path)))
    assert [pair.label for pair in read_labelled_pairs(str(path), on_error="skip")] == [1.0]


def test_keep_generation_targets_follow_each_files_threshold(tmp_path):
    """A binary file (similar at 1) and a graded one (similar at 4) in one recipe."""
    from simbert.readers import pair_thresholds
    from simbert.tokenizer import Tokenizer

    config = cosent_config(tmp_path, ["binary.tsv", "graded.tsv"], 1, keep_generation=True)
    config.data.pair_threshold = [1, 4]
    assert pair_thresholds(config.data) == [1.0, 4.0]
    tokenizer = Tokenizer({token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"])})
    pairs = [LabelledPair("a", "b", label, source) for label, source in ((1, 0), (0, 0), (3, 1), (4.5, 1))]
    _, targets = make_labelled_batch(pairs, tokenizer, 8, True, pair_thresholds(config.data))
    assert targets["seq2seq"][..., 1].sum(1).tolist() == [2, 2, 0, 0, 0, 0, 2, 2]
    recipe = {"data": {"format": "labelled_pairs", "train": ["a.tsv", "b.tsv"], "pair_threshold": [1]},
              "training": {"objective": "cosent"}}
    with pytest.raises(ValueError, match=r"data\.pair_threshold should be a number, or a list of one number per file"):
        TrainConfig.from_dict(recipe, "r.yaml")
