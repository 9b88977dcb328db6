"""Evaluation on sentence-pair sets (LCQMC, AFQMC, ATEC, BQ, PAWSX, STS-B layouts).

Flow: `read_pair_file` (layout detected, `simbert.readers`' pair reader) -> scores (cosine
of the model's vectors, or the char-Jaccard baseline) -> `pair_metrics` (Spearman,
Pearson, accuracy/F1 at the best and at a fixed threshold) -> table / JSON / histograms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from simbert.readers import detect_pair_format, read_pair_rows


@dataclass
class PairSet:
    """Pairs read from one file, and the rows that were not usable (with why)."""

    path: str
    format: str
    first: list[str] = field(default_factory=list)
    second: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, line: int, a: str, b: str, label: float | None) -> None:
        if label is None:
            self.skipped.append(f"{self.path}, line {line}: no label")
        elif not a.strip() or not b.strip():
            self.skipped.append(f"{self.path}, line {line}: empty text")
        else:
            self.first.append(a.strip())
            self.second.append(b.strip())
            self.labels.append(label)


def read_pair_file(path: str, format: str | None = None) -> PairSet:
    """The labelled pairs of a pair file (any layout of `simbert.readers.read_pair_rows`);
    rows without a label or with an empty text are skipped and listed with why; a line
    that is not UTF-8 raises `NotUTF8Error` naming it (metrics of part of a file would
    mislead)."""
    format = format or detect_pair_format(path)
    pairs = PairSet(path, format)
    for line, a, b, label in read_pair_rows(path, pairs.skipped.append, format, strict_utf8=True):
        pairs.add(line, a, b, label)
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
    at the best threshold. Correlations are undefined (None, JSON null) when the labels or
    the scores are all equal (a one-class file); `note` then says why."""
    scores, labels = np.asarray(scores, "float64"), np.asarray(labels, "float64")
    positives = binary_labels(labels, positive_min)
    best = best_threshold(scores, positives)
    accuracy, f1 = accuracy_f1(scores, positives, threshold)
    best_accuracy, best_f1 = accuracy_f1(scores, positives, best)
    note = None
    if np.ptp(labels) == 0:
        note = f"every pair has label {labels[0]:g}: correlations are undefined"
    elif np.ptp(scores) == 0:
        note = f"every pair has score {scores[0]:g}: correlations are undefined"
    defined = note is None
    return {
        "pairs": int(len(scores)),
        "spearman": float(stats.spearmanr(scores, labels).statistic) if defined else None,
        "pearson": float(stats.pearsonr(scores, labels).statistic) if defined else None,
        "threshold": threshold, "accuracy": accuracy, "f1": f1,
        "best_threshold": best, "best_accuracy": best_accuracy, "best_f1": best_f1, "note": note,
    }


def class_accuracy_f1(predicted: np.ndarray, labels: np.ndarray, classes: int) -> tuple[float, float]:
    """Accuracy of predicted classes, and F1: of class 1 for two classes, else the mean of
    every class's F1 (macro)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    scores = []
    for c in ([1] if classes == 2 else range(classes)):
        true_positive = np.sum((predicted == c) & (labels == c))
        precision = true_positive / max(np.sum(predicted == c), 1)
        recall = true_positive / max(np.sum(labels == c), 1)
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(predicted == labels)), float(np.mean(scores))


def classification_metrics(probabilities: np.ndarray, labels: Sequence[float], threshold: float | None = None) -> dict:
    """A pair classifier's metrics: `pair_metrics` of its score (the last class's
    probability; for two classes, of "similar") against the labels, with `accuracy` and
    `f1` those of its predicted class (argmax; see `class_accuracy_f1`) unless a
    `threshold` on the score is given (then, as for a cosine, of `score > threshold`).
    Positive: for two classes, as for a cosine (`binary_labels`: 0/1 labels as they are,
    graded STS labels from 4), the predicted class compared with that; for more, the
    last class, the labels the classes."""
    probabilities, labels = np.asarray(probabilities, "float64"), np.asarray(labels, "float64")
    classes = probabilities.shape[1]
    metrics = pair_metrics(probabilities[:, -1], labels, 0.5 if threshold is None else threshold,
                           positive_min=None if classes == 2 else classes - 1)
    if threshold is None:
        truth = binary_labels(labels).astype(int) if classes == 2 else labels
        metrics["threshold"] = None
        metrics["accuracy"], metrics["f1"] = class_accuracy_f1(probabilities.argmax(1), truth, classes)
    return metrics


def jaccard_similarity(a: str, b: str) -> float:
    """Character-set overlap |A & B| / |A | B| (the baseline)."""
    first, second = set(a), set(b)
    return len(first & second) / max(len(first | second), 1)


def evaluate_files(files: Sequence[str], score_pairs: Callable[[list[str], list[str]], np.ndarray],
                   threshold: float | None = 0.9, format: str | None = None,
                   measure: Callable[..., dict] = pair_metrics) -> dict[str, dict]:
    """Metrics per file, scoring pairs with `score_pairs(first_texts, second_texts)` and
    measuring with `measure(scores, labels, threshold)`: `pair_metrics` of scores, or
    `classification_metrics` of a classifier's probabilities (`scores` kept: the last
    class's)."""
    results = {}
    for path in files:
        pairs = read_pair_file(path, format)
        if len(pairs.labels) < 2:
            raise ValueError(f"{path}: fewer than two usable pairs ({len(pairs.skipped)} rows skipped: "
                             f"{pairs.skipped[:3]})")
        scores = np.asarray(score_pairs(pairs.first, pairs.second))
        metrics = measure(scores, pairs.labels, threshold)
        scores = scores[:, -1] if scores.ndim == 2 else scores
        metrics.update(format=pairs.format, skipped=len(pairs.skipped), skipped_reasons=pairs.skipped[:10])
        metrics["scores"], metrics["labels"] = scores, np.asarray(pairs.labels)
        results[path] = metrics
    return results


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table of the metrics, one row per file."""
    header = f"{'file':<32} {'pairs':>6} {'skip':>5} {'spear':>6} {'pears':>6} {'acc@t':>6} {'f1@t':>6} " \
             f"{'best_t':>6} {'acc':>6} {'f1':>6}"
    lines, notes = [header], []

    def number(value):
        return f"{'-':>6}" if value is None else f"{value:>6.3f}"

    for path, m in results.items():
        lines.append(f"{os.path.basename(path)[-32:]:<32} {m['pairs']:>6} {m['skipped']:>5} {number(m['spearman'])} "
                     f"{number(m['pearson'])} {m['accuracy']:>6.3f} {m['f1']:>6.3f} {m['best_threshold']:>6.3f} "
                     f"{m['best_accuracy']:>6.3f} {m['best_f1']:>6.3f}")
        if m.get("note"):
            notes.append(f"note: {path}: {m['note']}")
    return "\n".join(lines + notes)


def plot_histograms(metrics: dict, image_path: str, title: str) -> None:
    """Score histograms of positive and negative pairs with the best threshold marked."""
    from matplotlib.figure import Figure

    positives = binary_labels(metrics["labels"])
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
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
