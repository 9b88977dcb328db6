"""Metrics against scipy/numpy, format detection on every layout, whitening, eval CLI."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats

from simbert import SimBERT
from simbert.evaluation import (
    accuracy_f1,
    best_threshold,
    evaluate_files,
    jaccard_similarity,
    pair_metrics,
    read_pair_file,
)
from simbert.readers import detect_pair_format
from simbert.retrieval import fit_whitening


def test_metrics_match_scipy_and_a_direct_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200).astype(float)
    scores = labels * 0.3 + rng.normal(0.5, 0.2, 200)
    metrics = pair_metrics(scores, labels, threshold=0.7)
    assert abs(metrics["spearman"] - stats.spearmanr(scores, labels)[0]) < 1e-12
    assert abs(metrics["pearson"] - np.corrcoef(scores, labels)[0, 1]) < 1e-12
    predicted = scores > 0.7
    tp = np.sum(predicted & (labels == 1))
    precision, recall = tp / predicted.sum(), tp / (labels == 1).sum()
    assert abs(metrics["accuracy"] - np.mean(predicted == (labels == 1))) < 1e-12
    assert abs(metrics["f1"] - 2 * precision * recall / (precision + recall)) < 1e-12
    # The best threshold beats every other cut (brute force over all midpoints).
    cuts = np.concatenate([[scores.min() - 1], (np.sort(scores)[1:] + np.sort(scores)[:-1]) / 2])
    best_brute = max(accuracy_f1(scores, labels == 1, t)[0] for t in cuts)
    assert metrics["best_accuracy"] == pytest.approx(best_brute)
    assert best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == pytest.approx(0.5)


def test_graded_labels_count_four_and_up_as_similar():
    metrics = pair_metrics([0.1, 0.5, 0.95, 0.99], [0, 3, 4, 5], threshold=0.9)
    assert metrics["accuracy"] == 1.0 and metrics["f1"] == 1.0


def test_jaccard_baseline():
    assert jaccard_similarity("abc", "abd") == pytest.approx(2 / 4)
    assert jaccard_similarity("花呗", "花呗") == 1.0


def write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_format_detection_and_reading_on_each_layout(tmp_path):
    tsv = write(tmp_path / "lcqmc.txt", "今天天气\t今天天气怎么样\t1\n花呗\t借呗\t0\n坏行\t缺标签\n")
    atec = write(tmp_path / "atec.csv", "\ufeff1\t怎么还款\t如何还款\t1\r\n2\t借呗\t花呗\t0\r\n3\t空标签\t空\t\r\n")
    sts = write(tmp_path / "sts.txt", "1\t一个人在弹吉他\t2\t有人弹吉他\t5\r\n3\t猫\t4\t狗\t0\r\n")
    csv_file = write(tmp_path / "tianchi.csv",
                     "category,query1,query2,label\r\n咳嗽,\"咳嗽,怎么办\",咳嗽如何治疗,1\r\n"
                     "发热,发烧吗,头疼吗,\r\n发热,体温高,发烧,0\r\n")
    jsonl = write(tmp_path / "pawsx.jsonl", '{"sentence1": "甲", "sentence2": "乙", "label": "1"}\n'
                                             '{"sentence1": "丙", "sentence2": "丁", "label": 0}\nnot json\n')
    expected = {tsv: ("tsv", 2, 1), atec: ("atec", 2, 1), sts: ("sts", 2, 0), csv_file: ("csv", 2, 1),
                jsonl: ("jsonl", 2, 1)}
    for path, (format, count, skipped) in expected.items():
        assert detect_pair_format(path) == format
        pairs = read_pair_file(path)
        assert (pairs.format, len(pairs.labels), len(pairs.skipped)) == (format, count, skipped), path
    assert read_pair_file(csv_file).first[0] == "咳嗽,怎么办"
    assert read_pair_file(atec).first == ["怎么还款", "借呗"]
    assert read_pair_file(sts).labels == [5.0, 0.0]
    assert "line 3" in read_pair_file(atec).skipped[0]
    unknown = write(tmp_path / "odd.txt", "only-one-field\n")
    with pytest.raises(ValueError, match="odd.txt: cannot tell the layout"):
        detect_pair_format(unknown)


def test_whitening_gives_identity_covariance_and_keeps_dim():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8)) + 3.0
    whitening = fit_whitening(vectors)
    whitened = whitening(vectors, normalize=False)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(8), atol=1e-4)
    reduced = fit_whitening(vectors, dim=3)
    assert reduced(vectors).shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(reduced(vectors), axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="dim should be in 1..8"):
        fit_whitening(vectors, dim=9)


def test_model_whitening_applies_in_encode_and_index_and_is_saved(trained_tiny, tmp_path):
    model = SimBERT.from_pretrained(trained_tiny, max_tokens=32)
    corpus = [json.loads(line)["text"] for line in open("data_sample.json", encoding="utf-8")]
    model.fit_whitening(corpus, dim=16)
    vectors = model.encode(corpus[:5])
    assert vectors.shape == (5, 16) and model.dimension == 16
    model.build_index(corpus)
    assert model.most_similar(corpus[3], topn=1)[0][0] == corpus[3]
    model.save(tmp_path / "whitened")
    again = SimBERT.from_pretrained(tmp_path / "whitened", max_tokens=32)
    np.testing.assert_allclose(again.encode(corpus[:5]), vectors, atol=1e-5)
    again.whitening = None  # saved again without it: the old whitening.npz must not come back
    again.save(tmp_path / "whitened")
    assert SimBERT.from_pretrained(tmp_path / "whitened", max_tokens=32).dimension == 128


def test_eval_cli_end_to_end(trained_tiny, tmp_path):
    pairs = write(tmp_path / "dev.txt", "".join(
        f"{a}\t{b}\t{label}\n" for a, b, label in [
            ("花呗怎么还款", "花呗的钱怎么还", 1), ("花呗怎么还款", "孩子发烧了怎么办", 0),
            ("明天北京会下雨吗", "北京明天有雨吗", 1), ("明天北京会下雨吗", "怎么学习编程", 0),
            ("信用卡怎么提高额度", "如何提升信用卡的额度", 1), ("信用卡怎么提高额度", "游泳怎么换气", 0)]))
    corpus = write(tmp_path / "corpus.txt", "\n".join(
        json.loads(line)["text"] for line in open("data_sample.json", encoding="utf-8")))
    result = subprocess.run([sys.executable, "-m", "simbert.cli", "eval", trained_tiny, pairs, "--output",
                             str(tmp_path / "new" / "report.json"), "--plot", str(tmp_path / "plots"),
                             "--whiten", corpus, "--dim", "32", "--baseline", "jaccard"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "new" / "report.json").read_text())  # its directory created
    assert set(report) == {"cosine", "whitened", "jaccard"}
    for metrics in report.values():
        assert metrics[pairs]["pairs"] == 6 and -1 <= metrics[pairs]["spearman"] <= 1
    assert report["cosine"][pairs]["best_accuracy"] >= 5 / 6  # the trained model separates these
    assert (tmp_path / "plots" / "dev.cosine.png").is_file() and (tmp_path / "plots" / "dev.jaccard.png").is_file()
    assert "[whitened]" in result.stdout and "spear" in result.stdout


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


@pytest.mark.parametrize("name", ["pairs.txt", "pairs.tsv", "pairs.csv", "pairs.jsonl"])
@pytest.mark.parametrize("bad_line", [1, 3])
def test_a_line_that_is_not_utf8_is_named_not_skipped(tmp_path, name, bad_line):
    """A GBK line anywhere in a pair file stops `eval` naming it (was: line 1 skipped
    quietly and the layout told from line 2)."""
    from simbert.text_files import NotUTF8Error

    rows = [("花呗怎么还款", "花呗如何还钱", 1), ("今天天气", "借呗提额", 0), ("信用卡还款", "还信用卡", 1)]
    if name.endswith(".jsonl"):
        lines = [json.dumps({"text_a": a, "text_b": b, "label": label}, ensure_ascii=False) for a, b, label in rows]
    elif name.endswith(".csv"):
        lines = [f"{a},{b},{label}" for a, b, label in rows]
    else:
        lines = [f"{a}\t{b}\t{label}" for a, b, label in rows]
    encoded = [line.encode("gbk" if number == bad_line else "utf-8") for number, line in enumerate(lines, 1)]
    path = tmp_path / name
    path.write_bytes(b"\n".join(encoded) + b"\n")
    with pytest.raises(NotUTF8Error, match=rf"^{path}, line {bad_line}: not UTF-8 \(.*a GBK file\? convert it "
                                           rf"with iconv -f gbk -t utf-8\)$"):
        read_pair_file(str(path))
