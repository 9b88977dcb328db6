"""Labelled pairs: pair files read with every row's label, sampled, and batched for the
objectives that learn from labels (CoSENT, `simbert.cosent`; the pair classifier,
`simbert.pair_classifier`).

Flow: pair files (any layout of `simbert.readers.read_pair_rows`) -> `read_training_pairs`
(`LabelledPair`s, each numbered by its file) -> `LabelledPairSampler` (seeded, texts cut
to `max_chars`) -> `make_labelled_batch` (CoSENT: rows 2k, 2k+1 the texts of pair k) or
`make_pair_batch` (a classifier: one row `[CLS] a [SEP] b [SEP]` a pair) ->
`labelled_training_batches` / `classification_batches`.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from simbert.batch_sampling import sampled_batches
from simbert.config import DataConfig
from simbert.data import PairSampler, cut_text, make_batch
from simbert.readers import (
    ReadReport,
    clean_text,
    listed_files,
    pair_thresholds,
    problem_handler,
    read_pair_rows,
    selected_files,
)
from simbert.shapes import ShapeBuckets, padded_ids
from simbert.tokenizer import Tokenizer
from simbert.workers import ordered_map


@dataclass(frozen=True)
class LabelledPair:
    """Two texts and their label (binary or graded), from a labelled pair file; `source`
    numbers the file among the recipe's (labels are compared only within one file)."""

    first: str
    second: str
    label: float
    source: int = 0


def read_labelled_pairs(path: str, on_error: str = "raise", report: ReadReport | None = None,
                        source: int = 0, num_labels: int | None = None) -> Iterator[LabelledPair]:
    """Every row of a pair file (any layout of `read_pair_rows`) with its label, numbered
    `source`; a row without a label cannot be read (see `problem_handler`), nor, with
    `num_labels` (a classifier's classes), one whose label is not an integer from 0 to
    `num_labels - 1`; one with an empty text is counted in `report.skipped_groups`."""
    report = report if report is not None else ReadReport()
    fail = problem_handler(on_error, report)
    for line, first, second, label in read_pair_rows(path, fail):
        if label is None or not np.isfinite(label):
            fail(f"{path}, line {line}: no label; data.format labelled_pairs needs text1, text2 and a "
                 f"label on every row (got {'none' if label is None else label})")
            continue
        if num_labels is not None and not (label == int(label) and 0 <= label < num_labels):
            fail(f"{path}, line {line}: label {label:g} is not a class of training.num_labels {num_labels} "
                 f"(an integer from 0 to {num_labels - 1})")
            continue
        first, second = clean_text(first), clean_text(second)
        if not first or not second:
            report.skipped_groups += 1
            continue
        yield LabelledPair(first, second, label, source)


def read_training_pairs(data: DataConfig, report: ReadReport, num_labels: int | None = None,
                        source: int | None = None) -> Iterator[LabelledPair]:
    """The labelled pairs of `data.train`'s files, one file after another, or of file
    number `source` alone (a missing file raises here); with `num_labels`, their labels
    are classes (see `read_labelled_pairs`)."""
    return itertools.chain.from_iterable(read_labelled_pairs(path, data.on_error, report, number, num_labels)
                                         for number, path in selected_files(data, source))


def sampled_pairs(read_pair_stream: Callable[..., Iterable[LabelledPair]], data: DataConfig, seed: int,
                  per_batch: int, start_step: int) -> Iterator[list[LabelledPair]]:
    """Each step's `per_batch` labelled pairs from `start_step` on, drawn by
    `LabelledPairSampler`s from the files as `data.file_batches` says (`read_pair_stream()`
    every file's pairs, `read_pair_stream(i)` file i's; `simbert.batch_sampling`)."""
    sampler = functools.partial(LabelledPairSampler, max_chars=data.max_chars, buffer_size=data.shuffle_buffer)
    return sampled_batches(sampler, read_pair_stream, listed_files(data), data.file_batches, seed, per_batch,
                           start_step)


class LabelledPairSampler(PairSampler):
    """`PairSampler` over labelled pairs (`read_labelled_pairs`): an endless seeded stream
    of `LabelledPair`s, their texts cut to `max_chars`, the two texts in a random order."""

    record_name = "labelled pair"

    def __iter__(self) -> Iterator[LabelledPair]:
        for pair in self._groups():
            first, second = cut_text(pair.first, self.max_chars), cut_text(pair.second, self.max_chars)
            if self.rng.random() < 0.5:
                first, second = second, first
            yield LabelledPair(first, second, pair.label, pair.source)


def make_labelled_batch(pairs: Sequence[LabelledPair], tokenizer: Tokenizer, max_tokens: int,
                        keep_generation: bool = False, thresholds: Sequence[float] = (1.0,),
                        buckets: ShapeBuckets | None = None):
    """Model inputs and targets for a CoSENT batch of labelled pairs.

    Rows 2k and 2k+1 hold pair k's texts, so that each row's pooled `[CLS]` is the
    text's `encode` vector; targets `{"cosent": (rows, 2)}` float32, the pair's label and
    source file number on both of its rows (see `CoSENTLoss`).
    Without `keep_generation`: rows `[CLS] a [SEP]` and `[CLS] b [SEP]`, inputs
    `(token_ids, segment_ids)`. With it: `make_batch`'s UniLM rows `a -> b` and `b -> a`
    (under the UniLM mask `[CLS]` sees only the source, so its vector is still the
    text's alone), inputs `(token_ids, segment_ids, positions)` and the seq2seq targets
    weighted only on the similar pairs: labelled at least `thresholds[source]`.
    """
    labels = np.repeat(np.array([(pair.label, pair.source) for pair in pairs], "float32"), 2, axis=0)
    if keep_generation:
        inputs, targets = make_batch([(pair.first, pair.second) for pair in pairs], tokenizer, max_tokens,
                                     buckets=buckets)
        similar = labels[:, 0] >= np.asarray(thresholds, "float32")[labels[:, 1].astype(int)]
        targets["seq2seq"][~similar, :, 1] = 0
        return inputs, {"seq2seq": targets["seq2seq"], "cosent": labels}
    rows = [tokenizer.encode(text, maxlen=max_tokens)[0] for pair in pairs for text in (pair.first, pair.second)]
    length = max(map(len, rows))
    if buckets is not None:
        length = buckets.length(length)
    token_ids = padded_ids(rows, length)
    return (token_ids, np.zeros_like(token_ids)), {"cosent": labels}


def make_pair_batch(pairs: Sequence[LabelledPair], tokenizer: Tokenizer, max_tokens: int,
                    buckets: ShapeBuckets | None = None):
    """Inputs and targets of a pair-classifier batch (`simbert.pair_classifier`): a row
    `[CLS] a [SEP] b [SEP]` a pair, segment ids 1 for `b [SEP]`, cut to `max_tokens` (the
    longer text loses tokens first, as `PairClassifier.predict` cuts them), padded to the
    longest row's bucket; inputs `(token_ids, segment_ids)`, targets
    `{"classification": the labels}` (int32 classes)."""
    rows = [tokenizer.encode(pair.first, pair.second, maxlen=max_tokens) for pair in pairs]
    length = max(len(ids) for ids, _ in rows)
    if buckets is not None:
        length = buckets.length(length)
    token_ids, segment_ids = (padded_ids(part, length) for part in zip(*rows))
    return (token_ids, segment_ids), {"classification": np.array([pair.label for pair in pairs], "int32")}


def labelled_training_batches(read_pair_stream: Callable[..., Iterable[LabelledPair]], tokenizer: Tokenizer,
                              data: DataConfig, batch_size: int, seed: int, start_step: int = 0,
                              keep_generation: bool = False, buckets: ShapeBuckets | None = None, workers: int = 0):
    """Endless CoSENT batches of `batch_size // 2` labelled pairs (`make_labelled_batch`),
    sampled by `sampled_pairs`; like `training_batches`, the stream after
    `start_step` steps is that of an uninterrupted run with the same `seed`."""
    batches = sampled_pairs(read_pair_stream, data, seed, batch_size // 2, start_step)
    build = functools.partial(make_labelled_batch, tokenizer=tokenizer, max_tokens=data.max_tokens,
                              keep_generation=keep_generation, thresholds=pair_thresholds(data), buckets=buckets)
    yield from ordered_map(build, batches, workers)


def classification_batches(read_pair_stream: Callable[..., Iterable[LabelledPair]], tokenizer: Tokenizer,
                           data: DataConfig, batch_size: int, seed: int, start_step: int = 0,
                           buckets: ShapeBuckets | None = None, workers: int = 0):
    """Endless pair-classifier batches of `batch_size` labelled pairs, a row each
    (`make_pair_batch`), sampled by `sampled_pairs` (the two texts in a random order);
    the stream after `start_step` steps is that of an uninterrupted run."""
    batches = sampled_pairs(read_pair_stream, data, seed, batch_size, start_step)
    build = functools.partial(make_pair_batch, tokenizer=tokenizer, max_tokens=data.max_tokens, buckets=buckets)
    yield from ordered_map(build, batches, workers)
