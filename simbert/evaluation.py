"""Evaluation on sentence-pair sets (LCQMC, AFQMC, ATEC, BQ, PAWSX, STS-B layouts) and
BERT-whitening.

Flow: `read_pair_file` (format detected) -> scores (cosine of the model's vectors, or the
char-Jaccard baseline) -> `pair_metrics` (Spearman, Pearson, accuracy/F1 at the best and
at a fixed threshold) -> table / JSON / histogram plots.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import stats

FORMATS = ("tsv", "atec", "sts", "csv", "jsonl")
TEXT_COLUMNS = (("sentence1", "sentence2"), ("text1", "text2"), ("text_a", "text_b"), ("query1", "query2"),
                ("question1", "question2"), ("s1", "s2"))


@dataclass
class PairSet:
    """Pairs read from one file, and the rows that were not usable (with why)."""

    path: str
    format: str
    first: list[str] = field(default_factory=list)
    second: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, line: int, a, b, label) -> None:
        try:
            value = float(label)
        except (TypeError, ValueError):
            self.skipped.append(f"line {line}: label {label!r} is not a number")
            return
        if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
            self.skipped.append(f"line {line}: empty text")
            return
        self.first.append(a.strip())
        self.second.append(b.strip())
        self.labels.append(value)


def detect_format(path: str) -> str:
    """jsonl by extension or a leading `{`; csv with a header naming two text columns; else
    by field count of the first line: 3 -> tsv, 4 -> atec (id first), 5 -> sts."""
    with open(path, encoding="utf-8-sig") as reader:
        first = next((line for line in reader if line.strip()), "")
    if path.endswith((".jsonl", ".json")) or first.lstrip().startswith("{"):
        return "jsonl"
    tabs = first.rstrip("\r\n").split("\t")
    if len(tabs) == 3:
        return "tsv"
    if len(tabs) == 4:
        return "atec"
    if len(tabs) == 5:
        return "sts"
    header = [h.strip().lower() for h in next(csv.reader([first]))]
    if any(a in header and b in header for a, b in TEXT_COLUMNS):
        return "csv"
    raise ValueError(f"{path}: cannot tell the layout from its first line {first[:80]!r}; expected "
                     "text1<TAB>text2<TAB>label, id<TAB>text1<TAB>text2<TAB>label, "
                     "id1<TAB>text1<TAB>id2<TAB>text2<TAB>score, a CSV with a header, or JSONL")


def read_pair_file(path: str, format: str | None = None) -> PairSet:
    """Read a labelled pair file (UTF-8, BOM and CRLF tolerated)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pair file {path} does not exist")
    format = format or detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"format should be one of {FORMATS}, got {format!r}")
    pairs = PairSet(path, format)
    with open(path, encoding="utf-8-sig", newline="") as reader:
        text = reader.read()
    if format == "csv":
        rows = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in rows.fieldnames or []]
        columns = next(((a, b) for a, b in TEXT_COLUMNS if a in header and b in header), None)
        if columns is None or "label" not in header:
            raise ValueError(f"{path}: the CSV header {rows.fieldnames} needs two text columns "
                             f"(one of {TEXT_COLUMNS}) and a label column")
        for number, row in enumerate(rows, 2):
            row = {k.strip().lower(): v for k, v in row.items() if k}
            pairs.add(number, row.get(columns[0]), row.get(columns[1]), row.get("label"))
        return pairs
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if format == "jsonl":
            try:
                record = json.loads(line, strict=False)
            except json.JSONDecodeError as error:
                pairs.skipped.append(f"line {number}: not JSON ({error.msg})")
                continue
            pairs.add(number, record.get("sentence1"), record.get("sentence2"), record.get("label"))
            continue
        fields = line.split("\t")
        wanted = {"tsv": (0, 1, 2), "atec": (1, 2, 3), "sts": (1, 3, 4)}[format]
        if len(fields) <= max(wanted):
            pairs.skipped.append(f"line {number}: {len(fields)} fields, expected {max(wanted) + 1}")
            continue
        pairs.add(number, *(fields[i] for i in wanted))
    return pairs


def binary_labels(labels: np.ndarray, positive_min: float | None = None) -> np.ndarray:
    """0/1 labels as they are; graded labels (STS 0-5) are positive from `positive_min`
    (default 4)."""
    if positive_min is None:
        if set(np.unique(labels)) <= {0.0, 1.0}:
            return labels.astype(bool)
        positive_min = 4.0
    return labels >= positive_min


def accuracy_f1(scores: np.ndarray, positives: np.ndarray, threshold: float) -> tuple[float, float]:
    """Accuracy and F1 of predicting `score > threshold` as positive."""
    predicted = scores > threshold
    true_positive = np.sum(predicted & positives)
    precision = true_positive / max(predicted.sum(), 1)
    recall = true_positive / max(positives.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(np.mean(predicted == positives)), float(f1)


def best_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The cut `score > t` with the highest accuracy (t midway between adjacent scores)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positives[order]
    # Cutting after position i: below are predicted negative, above positive.
    negatives_below = np.concatenate([[0], np.cumsum(~sorted_positive)])
    positives_above = sorted_positive.sum() - np.concatenate([[0], np.cumsum(sorted_positive)])
    correct = negatives_below + positives_above
    distinct = np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1], [True]])
    correct = np.where(distinct, correct, -1)  # only cut between different scores
    cut = int(np.argmax(correct))
    if cut == 0:
        return float(sorted_scores[0] - 1e-6)
    if cut == len(scores):
        return float(sorted_scores[-1])
    return float((sorted_scores[cut - 1] + sorted_scores[cut]) / 2)


def pair_metrics(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.9,
                 positive_min: float | None = None) -> dict:
    """Spearman and Pearson of scores against labels; accuracy and F1 at `threshold` and
    at the best threshold."""
    scores, labels = np.asarray(scores, "float64"), np.asarray(labels, "float64")
    positives = binary_labels(labels, positive_min)
    best = best_threshold(scores, positives)
    accuracy, f1 = accuracy_f1(scores, positives, threshold)
    best_accuracy, best_f1 = accuracy_f1(scores, positives, best)
    return {
        "pairs": int(len(scores)),
        "spearman": float(stats.spearmanr(scores, labels).statistic),
        "pearson": float(stats.pearsonr(scores, labels).statistic),
        "threshold": threshold, "accuracy": accuracy, "f1": f1,
        "best_threshold": best, "best_accuracy": best_accuracy, "best_f1": best_f1,
    }


def jaccard_similarity(a: str, b: str) -> float:
    """Character-set overlap |A & B| / |A | B| (the baseline)."""
    first, second = set(a), set(b)
    return len(first & second) / max(len(first | second), 1)


@dataclass
class Whitening:
    """BERT-whitening: `y = (x - mean) @ transform`, then l2-normalised.

    With `cov = (X - mean)^T (X - mean) / n = U diag(s) U^T`, `transform = U diag(s)^(-1/2)`
    (first `dim` columns), so the whitened vectors have identity covariance.
    """

    mean: np.ndarray
    transform: np.ndarray

    @property
    def dim(self) -> int:
        return self.transform.shape[1]

    def __call__(self, vectors: np.ndarray, normalize: bool = True) -> np.ndarray:
        whitened = ((np.asarray(vectors, "float64") - self.mean) @ self.transform).astype("float32")
        if normalize:
            whitened /= np.maximum(np.linalg.norm(whitened, axis=1, keepdims=True), 1e-12)
        return whitened

    def save(self, path: str) -> None:
        np.savez(path, mean=self.mean, transform=self.transform)

    @classmethod
    def load(cls, path: str) -> "Whitening":
        with np.load(path, allow_pickle=False) as saved:
            return cls(saved["mean"], saved["transform"])


def fit_whitening(vectors: np.ndarray, dim: int | None = None) -> Whitening:
    """Fit the whitening of `vectors` (rows), keeping `dim` dimensions (all if None)."""
    vectors = np.asarray(vectors, "float64")
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"fit_whitening needs at least two vectors (rows), got shape {vectors.shape}")
    if dim is not None and not 0 < dim <= vectors.shape[1]:
        raise ValueError(f"dim should be in 1..{vectors.shape[1]}, got {dim}")
    mean = vectors.mean(axis=0, keepdims=True)
    covariance = np.cov((vectors - mean).T, bias=True)
    u, s, _ = np.linalg.svd(covariance)
    transform = u / np.sqrt(np.maximum(s, 1e-12))
    return Whitening(mean, transform[:, :dim])


def evaluate_files(files: Sequence[str], score_pairs: Callable[[list[str], list[str]], np.ndarray],
                   threshold: float = 0.9, format: str | None = None) -> dict[str, dict]:
    """Metrics per file, scoring pairs with `score_pairs(first_texts, second_texts)`."""
    results = {}
    for path in files:
        pairs = read_pair_file(path, format)
        if len(pairs.labels) < 2:
            raise ValueError(f"{path}: fewer than two usable pairs ({len(pairs.skipped)} rows skipped: "
                             f"{pairs.skipped[:3]})")
        scores = np.asarray(score_pairs(pairs.first, pairs.second))
        metrics = pair_metrics(scores, pairs.labels, threshold)
        metrics.update(format=pairs.format, skipped=len(pairs.skipped), skipped_reasons=pairs.skipped[:10])
        metrics["scores"], metrics["labels"] = scores, np.asarray(pairs.labels)
        results[path] = metrics
    return results


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table of the metrics, one row per file."""
    header = f"{'file':<32} {'pairs':>6} {'skip':>5} {'spear':>6} {'pears':>6} {'acc@t':>6} {'f1@t':>6} " \
             f"{'best_t':>6} {'acc':>6} {'f1':>6}"
    lines = [header]
    for path, m in results.items():
        lines.append(f"{os.path.basename(path)[-32:]:<32} {m['pairs']:>6} {m['skipped']:>5} {m['spearman']:>6.3f} "
                     f"{m['pearson']:>6.3f} {m['accuracy']:>6.3f} {m['f1']:>6.3f} {m['best_threshold']:>6.3f} "
                     f"{m['best_accuracy']:>6.3f} {m['best_f1']:>6.3f}")
    return "\n".join(lines)


def plot_histograms(metrics: dict, image_path: str, title: str) -> None:
    """Score histograms of positive and negative pairs with the best threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positives = binary_labels(metrics["labels"])
    figure, axis = plt.subplots(figsize=(7, 4))
    bins = np.linspace(metrics["scores"].min(), metrics["scores"].max(), 50)
    axis.hist(metrics["scores"][positives], bins=bins, alpha=0.6, label="similar")
    axis.hist(metrics["scores"][~positives], bins=bins, alpha=0.6, label="not similar")
    axis.axvline(metrics["best_threshold"], color="black", linestyle="--",
                 label=f"best threshold {metrics['best_threshold']:.3f}")
    axis.set_title(title)
    axis.set_xlabel("score")
    axis.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    plt.close(figure)
