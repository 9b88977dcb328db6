"""The cross-encoder pair classifier (training.objective cross_encoder): its head and loss
against numpy under the encoder mask, a tiny run whose loss falls, checkpoints that load,
save and resume, `simbert eval` on it, reranking, bounded compiled programs, label checks."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from scipy import stats

from helpers import ROOT, TINY_CONFIG, tiny_config, write_model_dir
from simbert.config import TrainConfig
from simbert.directories import load_pretrained
from simbert.errors import DataError
from simbert.evaluation import classification_metrics
from simbert.labelled_pairs import LabelledPair, make_pair_batch, read_labelled_pairs
from simbert.shapes import ShapeBuckets

WORDS = [f"w{i}" for i in range(5, 90)]  # tokens of write_model_dir's vocabulary


def words(start, count):
    return " ".join(WORDS[start:start + count])


def softmax(logits):
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def classifier_recipe(**training):
    return TrainConfig.from_dict({"data": {"format": "labelled_pairs", "train": "x.tsv"},
                                  "training": {"objective": "cross_encoder", **training}}, "r.yaml")


def random_classifier(directory, num_labels=2, max_tokens=40):
    """A `PairClassifier` of a random TINY_CONFIG model with a random head."""
    from simbert.pair_classifier import PairClassifier, build_head

    tokenizer, backbone = load_pretrained(write_model_dir(str(directory), TINY_CONFIG), application="encoder",
                                          with_mlm=False)
    keras.utils.set_random_seed(1)
    return PairClassifier(backbone, build_head(backbone, num_labels), tokenizer, max_tokens=max_tokens)


def test_head_and_loss_match_numpy_under_the_encoder_mask(tmp_path):
    """logits = pooled @ W + b of `[CLS] a [SEP] b [SEP]` (segment 1 for b), pooled under the
    bidirectional mask ([CLS] sees b, which the UniLM mask hides); loss = mean CE; predict
    = softmax of the same logits."""
    from simbert.kernels import Platform
    from simbert.pair_classifier import PairClassifier, build_head
    from simbert.training_model import build_training_model

    model_dir = write_model_dir(str(tmp_path / "model"), TINY_CONFIG)
    tokenizer, backbone = load_pretrained(model_dir, application="encoder")
    model = build_training_model(backbone, classifier_recipe(num_labels=3).training, Platform.current())
    pairs = [LabelledPair(words(i, 2 + i % 4), words(i + 20, 1 + i % 3), float(i % 3)) for i in range(5)]
    pairs.append(LabelledPair(pairs[0].first, words(40, 3), 2.0))  # pair 0's first text, another second
    inputs, targets = make_pair_batch(pairs, tokenizer, 24)
    assert inputs[1][0].tolist()[:5] == [0, 0, 0, 0, 1]  # [CLS] w5 w6 [SEP] | w25 [SEP]
    assert targets["classification"].tolist() == [0, 1, 2, 0, 1, 2] and targets["classification"].dtype == np.int32

    logits = np.asarray(model.predict_on_batch(inputs)["classification"])
    pooled = np.asarray(backbone.pooled_encoder().predict_on_batch(list(inputs)), "float64")
    head = model.get_layer("classifier")
    kernel, bias = (keras.ops.convert_to_numpy(w).astype("float64") for w in (head.dense.kernel, head.dense.bias))
    expected = pooled @ kernel + bias
    assert logits.dtype == np.float32 and logits.shape == (6, 3)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert np.abs(pooled[0] - pooled[5]).max() > 1e-3  # [CLS] sees the second text
    _, unilm = load_pretrained(model_dir)  # the same weights under SimBERT's mask: it would not
    unilm_pooled = np.asarray(unilm.pooled_encoder().predict_on_batch(list(inputs)))
    np.testing.assert_allclose(unilm_pooled[0], unilm_pooled[5], atol=1e-6)

    labels = targets["classification"]
    log_probabilities = np.log(softmax(expected))
    cross_entropy = -log_probabilities[np.arange(6), labels].mean()
    loss = model.test_on_batch(inputs, targets, return_dict=True)["loss"]
    assert abs(loss - cross_entropy) < 1e-5

    classifier = PairClassifier(backbone, head, tokenizer, max_tokens=24)
    probabilities = classifier.predict([(pair.first, pair.second) for pair in pairs], batch_size=4)
    np.testing.assert_allclose(probabilities, softmax(expected), atol=1e-6)
    np.testing.assert_allclose(classifier.score([(pairs[1].first, pairs[1].second)]), softmax(expected)[1:2, -1],
                               atol=1e-6)
    # Mixed precision: the dropout in bfloat16, the logits in float32.
    mixed = build_head(backbone, 2, dtype="mixed_bfloat16")
    assert keras.ops.convert_to_numpy(mixed(keras.ops.ones((2, TINY_CONFIG["hidden_size"]), "bfloat16"))).dtype \
        == np.float32


def write_pairs(path, count):
    """`count` labelled pairs from data_sample.json's groups: two texts of a group (1), a
    text and one of the next group (0)."""
    with open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8") as reader:
        groups = [[record["text"], *record["synonyms"]] for record in map(json.loads, reader)]
    rows = []
    for index, group in enumerate(groups):
        for first, second in zip(group, group[1:]):
            other = groups[(index + 1) % len(groups)]
            rows += [(first, second, 1), (first, other[len(rows) % len(other)], 0)]
    with open(path, "w", encoding="utf-8") as writer:
        writer.writelines(f"{a}\t{b}\t{label}\n" for a, b, label in rows[:count])
    return str(path)


def run_config(output_dir, train, steps, pretrained=None):
    config = tiny_config(output_dir, steps, objective="cross_encoder", compilation_cache=None, learning_rate=1e-3)
    config.data.train, config.data.format = train, "labelled_pairs"
    config.model.pretrained = pretrained
    config.output.save_every, config.output.log_every = 30, 10
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_tiny):
    """A 60-step run on 96 pairs from a SimBERT model (the pooler kept; a random model's
    [CLS] vectors are all alike and learn slowly), its mean loss on the file before and
    after; then the same run resumed from its step-30 checkpoint, copied apart."""
    from simbert.trainer import Trainer

    root = tmp_path_factory.mktemp("pair_classifier")
    train = write_pairs(root / "pairs.tsv", 96)
    pairs = list(read_labelled_pairs(train))
    straight = Trainer(run_config(root / "straight", train, 60, trained_tiny))
    fixed = ShapeBuckets(64, max_length=64)  # every batch one shape: one trace

    def mean_loss(trainer):
        batches = [make_pair_batch(pairs[start::3], trainer.tokenizer, 64, fixed) for start in range(3)]
        return np.mean([trainer.training_model.test_on_batch(*batch, return_dict=True)["loss"]
                        for batch in batches])

    with straight:
        before = mean_loss(straight)
        result = straight.fit()
        after = mean_loss(straight)
        inputs = make_pair_batch(pairs[:40], straight.tokenizer, 64)[0]
        logits = np.asarray(straight.training_model.predict_on_batch(inputs)["classification"], "float64")
    resumed_dir = root / "resumed"
    os.makedirs(resumed_dir)
    shutil.copytree(root / "straight" / "checkpoint-0000030", resumed_dir / "checkpoint-0000030")
    resumed = Trainer(run_config(resumed_dir, train, 60, trained_tiny), resume=True).fit()
    return {"train": train, "pairs": pairs, "before": before, "after": after, "result": result, "logits": logits,
            "straight": str(root / "straight"), "resumed": str(resumed_dir), "resumed_result": resumed}


def test_a_tiny_run_lowers_its_loss_and_writes_the_head(runs):
    result = runs["result"]
    assert runs["after"] < 0.75 * runs["before"], (runs["before"], runs["after"])
    assert "classification_loss" in result.last and "similarity_loss" not in result.last
    files = set(os.listdir(result.checkpoint))
    assert {"classifier.safetensors", "bert_config.json", "vocab.txt", "bert_model.safetensors",
            "training_state.npz", "trainer_state.json"} <= files


def test_checkpoints_load_save_and_resume(runs, tmp_path):
    """The checkpoint's predictions are the training model's; `save` round-trips them; a run
    resumed from step 30 ends where the uninterrupted one does."""
    from simbert.pair_classifier import PairClassifier

    texts = [(pair.first, pair.second) for pair in runs["pairs"][:40]]
    classifier = PairClassifier.from_pretrained(runs["straight"])  # the training output: its newest checkpoint
    assert classifier.backbone.application == "encoder" and classifier.num_labels == 2
    probabilities = classifier.predict(texts, batch_size=64)
    # The training model's probabilities of the same rows at the end of the run.
    np.testing.assert_allclose(probabilities, softmax(runs["logits"]), atol=1e-6)

    classifier.save(tmp_path / "saved")
    again = PairClassifier.from_pretrained(tmp_path / "saved")
    np.testing.assert_allclose(again.predict(texts), probabilities, atol=1e-6)

    resumed = runs["resumed_result"]
    assert resumed.start_step == 30 and resumed.step == 60
    np.testing.assert_allclose(PairClassifier.from_pretrained(runs["resumed"]).predict(texts), probabilities,
                               atol=1e-4)


def test_resuming_another_objectives_run_names_the_objective(tmp_path):
    """A pair classifier resumed from a SimBERT run's checkpoint (no head file) is refused
    for its changed objective, not as a directory with no checkpoint that reads."""
    from simbert.trainer import ResumeMismatch, Trainer

    config = tiny_config(tmp_path / "run", 1, compilation_cache=None)
    config.output.save_every = 0
    Trainer(config).fit()
    classifier = run_config(tmp_path / "run", write_pairs(tmp_path / "pairs.tsv", 24), 2)
    with pytest.raises(ResumeMismatch, match="training.objective is 'simbert' in the checkpoint but "
                                             "'cross_encoder' now"):
        Trainer(classifier, resume=True)


def test_eval_reports_the_classifiers_accuracy_f1_and_spearman(runs, tmp_path, capsys):
    from simbert.cli import main
    from simbert.pair_classifier import PairClassifier

    pairs = runs["pairs"][:60]
    path = tmp_path / "dev.tsv"
    path.write_text("".join(f"{p.first}\t{p.second}\t{int(p.label)}\n" for p in pairs), encoding="utf-8")
    report = tmp_path / "report.json"
    assert main(["eval", runs["straight"], str(path), "--output", str(report), "--no-compile-cache"]) == 0
    printed = capsys.readouterr().out
    probabilities = PairClassifier.from_pretrained(runs["straight"]).predict([(p.first, p.second) for p in pairs])
    labels = np.array([p.label for p in pairs])
    predicted = probabilities.argmax(1)
    true_positive = np.sum((predicted == 1) & (labels == 1))
    precision, recall = true_positive / max(np.sum(predicted == 1), 1), true_positive / np.sum(labels == 1)
    expected = {"accuracy": np.mean(predicted == labels), "f1": 2 * precision * recall / (precision + recall),
                "spearman": stats.spearmanr(probabilities[:, 1], labels).statistic}
    metrics = json.loads(report.read_text())["classifier"][str(path)]
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert metrics["threshold"] is None and metrics["pairs"] == 60
    assert "[classifier]" in printed
    row = next(line for line in printed.splitlines() if line.startswith("dev.tsv")).split()
    assert row[3] == f"{expected['spearman']:.3f}" and row[5] == f"{expected['accuracy']:.3f}"
    assert row[6] == f"{expected['f1']:.3f}"


def test_classification_metrics_of_three_classes():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = [0, 2, 1, 1, 1]
    metrics = classification_metrics(probabilities, labels)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    # Per class (precision, recall): 0 (1/2, 1), 1 (1, 1/3), 2 (1/2, 1): F1 2/3, 1/2, 2/3.
    assert metrics["f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(probabilities[:, 2], labels).statistic)


def test_classification_metrics_of_two_classes_on_graded_labels():
    """A binary classifier on an STS file (labels 0-5): "similar" from 4, as for a cosine."""
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.1, 0.9]])
    labels = [0.0, 4.6, 2.5, 1.2, 4.0]  # positives: 4.6 and 4.0; the classifier also says 2.5
    metrics = classification_metrics(probabilities, labels)
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    thresholded = classification_metrics(probabilities, labels, threshold=0.7)
    assert thresholded["accuracy"] == pytest.approx(1.0) and thresholded["f1"] == pytest.approx(1.0)
    binary = classification_metrics(probabilities, [0, 1, 1, 0, 1])
    assert binary["accuracy"] == pytest.approx(1.0) and binary["f1"] == pytest.approx(1.0)


class KnownScores:
    """A stand-in classifier whose score of (query, text) is given by the text."""

    def __init__(self, scores):
        self.scores = scores
        self.calls = []

    def score(self, pairs, batch_size=64):
        self.calls.append(list(pairs))
        return np.array([self.scores[text] for _, text in pairs])


def test_most_similar_reranks_its_top_candidates(tmp_path):
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(write_model_dir(str(tmp_path / "model"), TINY_CONFIG), max_tokens=16,
                                    compilation_cache=None)
    corpus = [words(i, 1 + i % 3) for i in range(0, 30, 3)]
    model.build_index(corpus)
    query = words(0, 2)
    plain = model.most_similar(query, topn=10)
    cosines = dict(plain)
    top4 = [text for text, _ in plain[:4]]
    known = KnownScores({text: rank / 10 for rank, text in enumerate(reversed(corpus))})
    reranked = model.most_similar(query, topn=3, rerank=known, rerank_top=4)
    assert known.calls == [[(query, text) for text in top4]]  # only the 4 best by cosine are scored
    expected = sorted(top4, key=lambda text: -known.scores[text])[:3]
    assert [text for text, _, _ in reranked] == expected
    assert all(score == known.scores[text] and abs(cosine - cosines[text]) < 1e-6
               for text, score, cosine in reranked)
    # rerank_top below topn: topn candidates are scored; the batch form scores every query at once.
    known.calls.clear()
    both = model.most_similar_batch([query, corpus[5]], topn=2, rerank=known, rerank_top=1)
    assert len(known.calls) == 1 and len(known.calls[0]) == 4 and [len(found) for found in both] == [2, 2]
    with pytest.raises(ValueError, match="rerank_top should be an integer of at least 1"):
        model.most_similar(query, rerank=known, rerank_top=0)


def test_search_reranks_with_a_classifier_directory(runs, tmp_path, capsys):
    """`simbert search --rerank`: the run's checkpoint serves as the SimBERT model (its
    pooler) and as the classifier."""
    from simbert.api import SimBERT
    from simbert.cli import main
    from simbert.pair_classifier import PairClassifier

    corpus = list(dict.fromkeys(pair.second for pair in runs["pairs"][:30]))
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    model_dir, query = runs["straight"], runs["pairs"][0].first
    assert main(["index", model_dir, "--input", str(tmp_path / "corpus.txt"), "--output", str(tmp_path / "index"),
                 "--no-compile-cache"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "index"), model_dir, query, "--topn", "3", "--rerank", model_dir,
                 "--rerank-top", "6", "--no-compile-cache"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines() if line.count("\t") == 2]
    assert len(lines) == 3
    scores = [float(score) for score, _, _ in lines]
    assert scores == sorted(scores, reverse=True)
    classifier = PairClassifier.from_pretrained(model_dir)
    model = SimBERT.from_pretrained(model_dir)
    model.load_index(str(tmp_path / "index"))
    top6 = dict(model.most_similar(query, topn=6))
    for score, cosine, text in lines:
        assert text in top6 and abs(float(cosine) - top6[text]) < 1e-4
        assert abs(float(score) - classifier.score([(query, text)])[0]) < 1e-4
    expected = sorted(top6, key=lambda text: -classifier.score([(query, text)])[0])[:3]
    assert [text for _, _, text in lines] == expected


def test_predict_compiles_a_bounded_number_of_programs(tmp_path):
    """Pairs of many lengths: one graph on TensorFlow; on JAX a program per padded shape
    (rows a power of two up to the batch, lengths a multiple of 16 up to max_tokens), none
    more for a second call of the same shapes; a pair scores alike in any batch."""
    classifier = random_classifier(tmp_path / "model", max_tokens=40)
    pairs = [(words(i, 1 + i % 9), words(i + 30, 1 + (i * 7) % 13)) for i in range(37)]
    probabilities = classifier.predict(pairs, batch_size=8)
    programs = classifier.compiled_programs
    if keras.backend.backend() == "tensorflow":
        assert programs == 1
    else:
        bound = len({(rows, length) for rows in (1, 2, 4, 8) for length in (16, 32, 40)})
        assert 1 < programs <= min(bound, classifier.shapes.count(8))
    assert classifier.predict(pairs[::-1], batch_size=8).shape == (37, 2)
    assert classifier.compiled_programs == programs
    np.testing.assert_allclose(classifier.predict([pairs[5]]), probabilities[5:6], atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-6)
    classifier.save(tmp_path / "saved")
    from simbert.pair_classifier import PairClassifier, is_pair_classifier

    assert is_pair_classifier(tmp_path / "saved") and not is_pair_classifier(tmp_path / "model")
    np.testing.assert_allclose(PairClassifier.from_pretrained(tmp_path / "saved", max_tokens=40).predict(pairs),
                               probabilities, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="has no classifier.safetensors: not a pair classifier"):
        PairClassifier.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"pairs\[1\] should be two texts"):
        classifier.predict([pairs[0], "w5"])
    with pytest.raises(ValueError, match="wrap a single pair in a list"):
        classifier.predict(pairs[0])


def test_a_label_outside_the_classes_names_its_file_and_line(tmp_path):
    from simbert.trainer import Trainer

    path = tmp_path / "pairs.tsv"
    path.write_text("一个\t两个\t1\n三个\t四个\t0\n五个\t六个\t2\n七个\t八个\t0.5\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.tsv, line 3: label 2 is not a class of training\.num_labels 2"):
        list(read_labelled_pairs(str(path), num_labels=2))
    assert [pair.label for pair in read_labelled_pairs(str(path), on_error="skip", num_labels=3)] == [1, 0, 2]
    assert len(list(read_labelled_pairs(str(path)))) == 4  # CoSENT reads any label
    path.write_text("一个\t两个\t-1\n", encoding="utf-8")
    config = run_config(tmp_path / "run", str(path), 1)
    with pytest.raises(DataError, match=r"pairs\.tsv, line 1: label -1 is not a class"):
        Trainer(config)


@pytest.mark.parametrize("change, message", [
    ({"num_labels": 1}, "training.num_labels should be at least 2"),
    ({"objective": "cosent", "num_labels": 3}, "training.num_labels is for training.objective cross_encoder"),
    ({"keep_generation": True}, "training.keep_generation is for training.objective cosent"),
])
def test_recipe_checks_of_the_classifier(change, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        classifier_recipe(**change)
    assert classifier_recipe(batch_size=33).training.batch_size == 33  # a row a pair: any count
    with pytest.raises(ValueError, match=r"training\.batch_size should be at least 1 \(pairs a step"):
        classifier_recipe(batch_size=0)
    with pytest.raises(ValueError, match=r"output\.sample_every prints paraphrases"):
        TrainConfig.from_dict({"data": {"format": "labelled_pairs", "train": "x.tsv"}, "output": {"sample_every": 5},
                               "training": {"objective": "cross_encoder"}}, "r.yaml")
