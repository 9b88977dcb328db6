"""Training data of the SimBERT objective: pair sampling, source masking and batching.

Flow: file -> `simbert.readers` (`read_groups` / `read_pairs`: records of similar texts,
streamed; pair files through the one pair reader `read_pair_rows`) -> `PairSampler`
(seeded: pick a group, shuffle it, take two, cut to `max_chars`; with the group's mined
negatives) -> `make_batch` (rows `a -> b`, `b -> a` adjacent, then any mined negatives'
rows, padded to the longest row) -> `training_batches`.
"""

from __future__ import annotations

import functools
import itertools
import random
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from simbert.batch_sampling import sampled_batches
from simbert.config import DataConfig
from simbert.errors import NoUsableRecords
from simbert.readers import listed_files
from simbert.shapes import ShapeBuckets, padded_ids
from simbert.tokenizer import SPECIAL_TOKENS, Tokenizer, is_cjk_character, is_dropped, is_punctuation, normalize
from simbert.workers import ordered_map

SENTENCE_SEPARATORS = "\n。！？!?；;，,"


def cut_text(text: str, max_chars: int, separators: str = SENTENCE_SEPARATORS) -> str:
    """Cut `text` to at most `max_chars` characters, at sentence punctuation when one falls
    inside the limit (keeping the punctuation), else hard."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    cut = max(head.rfind(sep) for sep in separators)
    return head[: cut + 1].strip() if cut > 0 else head


class PairSampler:
    """Endless seeded stream of similar text pairs, as the original SimBERT script: pick a
    group, shuffle it, take the first two, cut each to `max_chars` characters.

    Groups are streamed from `read_group_stream()` through a shuffle buffer of
    `buffer_size` groups, so files larger than memory work; small files fit whole in the
    buffer and each draw is uniform over all groups.

    With `negatives_per_pair` (k > 0) each item is `(a, b, negatives)`: up to k of the
    group's mined negatives (`Group.negatives`; k drawn at random when it has more), cut
    too. They are drawn from a generator of their own, so the pairs are those of k = 0.
    """

    record_name = "group of two or more texts"

    def __init__(self, read_group_stream: Callable[[], Iterable[list[str]]], max_chars: int,
                 seed: int = 0, buffer_size: int = 100_000, negatives_per_pair: int = 0):
        self.read_group_stream = read_group_stream
        self.max_chars = max_chars
        self.buffer_size = buffer_size
        self.rng = random.Random(seed)
        self.negatives_per_pair = negatives_per_pair
        self.negatives_rng = random.Random(f"{seed}/negatives")

    def _groups(self) -> Iterator[list[str]]:
        buffer: list[list[str]] = []
        while True:
            empty = True
            for group in self.read_group_stream():
                empty = False
                if len(buffer) < self.buffer_size:
                    buffer.append(group)
                    continue
                index = self.rng.randrange(len(buffer))
                yield buffer[index]
                buffer[index] = group
            if empty and not buffer:
                raise NoUsableRecords(f"the training data holds no usable {self.record_name}")
            for _ in range(len(buffer)):  # a full pass over the buffer, then refill
                yield buffer[self.rng.randrange(len(buffer))]

    def __iter__(self) -> Iterator[tuple[str, str] | tuple[str, str, tuple[str, ...]]]:
        for group in self._groups():
            texts = list(group)
            self.rng.shuffle(texts)
            pair = cut_text(texts[0], self.max_chars), cut_text(texts[1], self.max_chars)
            if not self.negatives_per_pair:
                yield pair
                continue
            negatives = getattr(group, "negatives", ())
            if len(negatives) > self.negatives_per_pair:
                negatives = self.negatives_rng.sample(negatives, self.negatives_per_pair)
            yield *pair, tuple(cut_text(text, self.max_chars) for text in negatives)


class SourceMasker:
    """RoFormer-Sim source masking: with `probability` the source is whole-word masked.

    The text is segmented with jieba; `rate` of the words are picked and all tokens of a
    picked word become `[MASK]` (80%), stay (10%) or become random tokens (10%).
    Calling with a text and the random generator to draw from returns the masked ids of
    `[CLS] text [SEP]`, or None when left unmasked.
    """

    def __init__(self, tokenizer: Tokenizer, probability: float = 0.5, rate: float = 0.15):
        if tokenizer.mask_id is None:
            raise ValueError("source masking needs a [MASK] token in the vocabulary")
        self.tokenizer = tokenizer
        self.probability = probability
        self.rate = rate

    def __call__(self, text: str, rng: random.Random) -> list[int] | None:
        import jieba

        if rng.random() >= self.probability:
            return None
        ids = [self.tokenizer.cls_id]
        for word in jieba.cut(text, HMM=False):
            word_ids = self.tokenizer.encode(word)[0][1:-1]
            draw, picked = rng.random(), rng.random() < self.rate
            for token_id in word_ids:
                if picked and draw < 0.8:
                    token_id = self.tokenizer.mask_id
                elif picked and draw >= 0.9:
                    token_id = rng.randrange(self.tokenizer.vocab_size)
                ids.append(token_id)
        return ids + [self.tokenizer.sep_id]


def source_text_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """One integer per row, equal for rows whose source token ids are equal."""
    seen: dict[tuple[int, ...], int] = {}
    return np.array([seen.setdefault(tuple(r), len(seen)) for r in rows], "int32")


def negatives_per_row(text_ids: np.ndarray, mask_duplicates: bool = True) -> float:
    """The mean number of negatives a pair row of the batch sees in the similarity
    softmax: every other pair row but its partner (`rows - 2`), less, with
    `mask_duplicates`, the rows whose source text equals its partner's (`SimilarityLoss`
    masks them), plus the columns of the mined rows (`text_ids` below 0, see
    `make_batch`): their distinct texts that no pair row holds."""
    text_ids = np.asarray(text_ids)
    mined = -1 - text_ids[text_ids < 0]
    text_ids = text_ids[text_ids >= 0]
    mined_columns = len(np.setdiff1d(mined, text_ids))
    rows = len(text_ids)
    if not mask_duplicates:
        return float(rows - 2 + mined_columns)
    # Row i loses the other rows holding its partner's text: that text's count, less the
    # partner itself and less row i if it holds the same text (O(rows), no rows x rows matrix).
    _, inverse, counts = np.unique(text_ids, return_inverse=True, return_counts=True)
    partners = np.arange(rows) ^ 1
    masked = counts[inverse[partners]] - 1 - (text_ids == text_ids[partners])
    return float(rows - 2 - masked.mean() + mined_columns)


def target_positions(token_ids: np.ndarray, segment_ids: np.ndarray,
                     buckets: ShapeBuckets | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where the seq2seq loss looks: position p predicts token p + 1, which counts when it
    is a (non-padding) target token, segment 1.

    Returns `positions (batch, T)` (row-local, padded with 0) and `targets (batch, T, 2)`
    = (token id at p + 1, weight 1; padding 0, 0), T the most target tokens of a row. The
    MLM projection is then computed at these positions only. With `buckets`, T is
    rounded up to a bucket length (padding weighs 0).
    """
    counts = (segment_ids[:, 1:] == 1).sum(axis=1)
    width = max(int(counts.max()), 1)
    if buckets is not None:
        width = buckets.length(width)
    positions = np.zeros((len(token_ids), width), "int32")
    targets = np.zeros((len(token_ids), width, 2), "int32")
    for row in range(len(token_ids)):
        found = np.flatnonzero(segment_ids[row, 1:] == 1)
        positions[row, : len(found)] = found
        targets[row, : len(found), 0] = token_ids[row, found + 1]
        targets[row, : len(found), 1] = 1
    return positions, targets


def make_batch(pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, max_tokens: int,
               mask_source: Callable[[str], list[int] | None] | None = None, buckets: ShapeBuckets | None = None,
               negatives_per_pair: int = 1):
    """Model inputs and loss targets for a batch of pairs.

    Each pair (a, b) gives rows `[CLS] a [SEP] b [SEP]` and `[CLS] b [SEP] a [SEP]` at
    2k and 2k+1, each cut to `max_tokens` tokens (see `DataConfig.max_tokens`), padded
    with 0 to the batch's longest row. Returns `(token_ids, segment_ids, positions),
    targets` with `positions` and `targets["seq2seq"]` from `target_positions`, and
    `targets["similarity"]` the source-text id of each row (equal ids = identical
    sources, for duplicate masking). `mask_source(text)`, when given, returns masked
    `[CLS] text [SEP]` ids for the source or None (see `SourceMasker`); a masked source
    replaces the row's source only when its length matches (word-by-word tokenization
    can differ at word joins). With `buckets`, the length and the target width are
    rounded up to bucket lengths (a bounded set of shapes for compiled steps).

    Mined negatives: a pair may be `(a, b, negatives)` (`PairSampler`). When a pair of
    the batch has one, the 2P pair rows are followed by P k mined rows, k =
    `negatives_per_pair`: row `2P + p k + j` is `[CLS] negative_j [SEP]` of pair p
    (segment 0, no seq2seq target), and a slot pair p has no negative for repeats row
    0's source. Their similarity targets are `-1 - text id` (ids shared with the pair
    rows'), so `SimilarityLoss` takes them as columns only; a mined row whose text an
    earlier row holds (the repeats among them) is masked there. A batch without
    negatives is exactly what it was without them: 2P rows.
    """
    rows, segments, sources = [], [], []
    for pair in pairs:
        a, b = pair[0], pair[1]
        for source, target in ((a, b), (b, a)):
            ids, segs = tokenizer.encode(source, target, maxlen=max_tokens)
            source_length = segs.index(1) if 1 in segs else len(segs)
            sources.append(ids[:source_length])
            if mask_source is not None:
                masked = mask_source(source)
                if masked is not None and len(masked) == source_length:
                    ids = masked + ids[source_length:]
            rows.append(ids)
            segments.append(segs)
    negatives = [list(pair[2])[:negatives_per_pair] if len(pair) > 2 else [] for pair in pairs]
    mined = []
    if negatives_per_pair > 0 and any(negatives):
        mined = [tokenizer.encode(texts[j], maxlen=max_tokens)[0] if j < len(texts) else sources[0]
                 for texts in negatives for j in range(negatives_per_pair)]
    rows += mined
    segments += [[0] * len(ids) for ids in mined]
    length = max(map(len, rows))
    if buckets is not None:
        length = buckets.length(length)
    token_ids = padded_ids(rows, length)
    segment_ids = padded_ids(segments, length)
    positions, seq2seq_targets = target_positions(token_ids, segment_ids, buckets)
    text_ids = source_text_ids(sources + mined)
    text_ids[len(sources):] = -1 - text_ids[len(sources):]
    targets = {"seq2seq": seq2seq_targets, "similarity": text_ids}
    return (token_ids, segment_ids, positions), targets


def has_mined_rows(similarity_targets: np.ndarray) -> bool:
    """Whether a batch of `make_batch` holds mined-negative rows (targets below 0)."""
    return bool((np.asarray(similarity_targets) < 0).any())


def build_training_batch(numbered_pairs: tuple[int, list[tuple[str, str]]], tokenizer: Tokenizer,
                         max_tokens: int, mask_seed: int | None, buckets: ShapeBuckets | None,
                         negatives_per_pair: int = 1):
    """`make_batch` of step k's pairs `(k, pairs)`; with `mask_seed`, the sources are
    masked (`SourceMasker`) from a generator seeded with `mask_seed` and k, so that the
    batch depends on k alone, whichever process builds it."""
    step, pairs = numbered_pairs
    mask_source = None
    if mask_seed is not None:
        mask_source = functools.partial(SourceMasker(tokenizer), rng=random.Random(mask_seed * 1_000_003 + step))
    return make_batch(pairs, tokenizer, max_tokens, mask_source, buckets, negatives_per_pair)


def training_batches(read_group_stream: Callable[..., Iterable[list[str]]], tokenizer: Tokenizer,
                     data: DataConfig, batch_size: int, seed: int, start_step: int = 0,
                     teacher_similarities: Callable[[list[str]], np.ndarray] | None = None,
                     buckets: ShapeBuckets | None = None, workers: int = 0):
    """Endless `(inputs, targets)` batches of `batch_size` rows (see `make_batch`, padded
    to `buckets`); the stream after `start_step` steps is the same as in an
    uninterrupted run with the same `seed`, and the same for any number of `workers`
    (processes that tokenize and pad ahead, `simbert.workers.ordered_map`; the pairs are
    sampled here, from the files as `data.file_batches` says: `read_group_stream()`
    reads every file, `read_group_stream(i)` file i, see `simbert.batch_sampling`).
    `teacher_similarities(texts)`, when given, is the teacher's cosine matrix of the
    pair rows' sources, the distillation target. With
    `data.negatives_per_pair`, a batch whose groups hold mined negatives has mined rows
    after the pair rows (`make_batch`). Close the generator to stop the workers."""
    pairs_per_batch = batch_size // 2
    sampler = functools.partial(PairSampler, max_chars=data.max_chars, buffer_size=data.shuffle_buffer,
                                negatives_per_pair=data.negatives_per_pair)
    if data.mask_source:
        SourceMasker(tokenizer)  # fails here, not in a worker, without a [MASK] token
    numbered = zip(itertools.count(start_step),
                   sampled_batches(sampler, read_group_stream, listed_files(data), data.file_batches, seed,
                                   pairs_per_batch, start_step))
    if teacher_similarities is not None:
        numbered, with_teacher = itertools.tee(numbered)
    build = functools.partial(build_training_batch, tokenizer=tokenizer, max_tokens=data.max_tokens,
                              mask_seed=seed if data.mask_source else None, buckets=buckets,
                              negatives_per_pair=data.negatives_per_pair)
    for inputs, targets in ordered_map(build, numbered, workers):
        if teacher_similarities is not None:
            _, batch_pairs = next(with_teacher)
            targets["distillation"] = teacher_similarities([text for pair in batch_pairs for text in pair[:2]])
        yield inputs, targets


def batch_dataset(make_batches: Callable[[], Iterator], first_batch):
    """The batches of `make_batches()` as a tf.data pipeline for `fit` on TensorFlow, with
    the structure and dtypes of `first_batch` and every dimension but the rank declared
    variable (Keras would otherwise guess fixed sizes from the first two batches), and
    tf.data's autotuning off: with it on, the iterator's teardown at the end of `fit`
    sometimes waited seconds for the autotuning thread, and throughput is the same
    without it (docs/benchmarks.md, "Figures behind the code")."""
    import tensorflow as tf

    signature = tf.nest.map_structure(lambda array: tf.TensorSpec((None,) * np.ndim(array), np.asarray(array).dtype),
                                      first_batch)
    dataset = tf.data.Dataset.from_generator(make_batches, output_signature=signature)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def build_char_vocab(texts: Iterable[str]) -> dict[str, int]:
    """A character vocabulary for models trained from scratch: the special tokens, every
    (lower-cased) character of `texts`, and `##c` continuations for non-CJK characters so
    that Latin words and numbers split into characters instead of becoming `[UNK]`."""
    chars: set[str] = set()
    for text in texts:
        chars.update(ch for ch in normalize(text) if not ch.isspace() and not is_dropped(ch))
    tokens = list(SPECIAL_TOKENS) + ["[MASK]"] + sorted(chars)
    tokens += ["##" + ch for ch in sorted(chars) if not is_cjk_character(ch) and not is_punctuation(ch)]
    return {token: i for i, token in enumerate(tokens)}
