"""Training data: robust readers, SimBERT pair sampling, source masking and batching.

Flow: file -> `read_groups` / `read_pairs` (records of similar texts, streamed) ->
`PairSampler` (seeded: pick a group, shuffle it, take two, cut to maxlen) ->
`make_batch` (rows `a -> b`, `b -> a` adjacent, padded to the longest row).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from simbert.tokenizer import SPECIAL_TOKENS, Tokenizer, is_cjk_character, is_dropped, is_punctuation, normalize

SENTENCE_SEPARATORS = "\n。！？!?；;，,"


class DataError(ValueError):
    """A record that cannot be read; the message names the file and line."""


@dataclass
class ReadReport:
    """What a reader did not use, and why."""

    skipped_records: int = 0
    skipped_groups: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped_records += 1
        if len(self.reasons) < 20:
            self.reasons.append(reason)


def clean_text(text: str) -> str:
    """Whitespace controls (newline, tab, CR) become spaces, other control and
    zero-width characters are dropped, the ends stripped."""
    out = []
    for ch in text:
        if ch in "\r\n\t\x0b\x0c":
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf"):
            out.append(ch)
    return re.sub(" {2,}", " ", "".join(out)).strip()


def _physical_lines(path: str) -> Iterator[tuple[int, str]]:
    """Lines of a UTF-8 file (BOM removed, CRLF or LF), numbered from 1."""
    with open(path, encoding="utf-8-sig", newline="") as reader:
        for number, line in enumerate(reader, 1):
            yield number, line.rstrip("\r\n")


def read_json_records(path: str, on_error: str = "raise", report: ReadReport | None = None,
                      max_lines_per_record: int = 8) -> Iterator[tuple[int, dict]]:
    """JSON objects one a line; a string holding a raw newline makes a record span several
    physical lines, which are joined back. Yields `(first_line_number, record)`."""
    report = report if report is not None else ReadReport()
    buffer, start = "", 0
    for number, line in _physical_lines(path):
        if not buffer and not line.strip():
            continue
        if not buffer:
            start = number
        buffer = f"{buffer}\n{line}" if buffer else line
        try:
            record = json.loads(buffer, strict=False)
        except json.JSONDecodeError as error:
            lines_held = number - start + 1
            if lines_held < max_lines_per_record and "Unterminated string" in error.msg:
                continue
            message = f"{path}, line {start}: not a JSON record ({error.msg})"
            buffer = ""
            if on_error == "skip":
                report.skip(message)
                continue
            raise DataError(message) from None
        buffer = ""
        if not isinstance(record, dict):
            message = f"{path}, line {start}: expected a JSON object, got {type(record).__name__}"
            if on_error == "skip":
                report.skip(message)
                continue
            raise DataError(message)
        yield start, record
    if buffer:
        message = f"{path}, line {start}: record is not closed at the end of the file"
        if on_error != "skip":
            raise DataError(message)
        report.skip(message)


def read_groups(path: str, on_error: str = "raise", report: ReadReport | None = None) -> Iterator[list[str]]:
    """SimBERT groups `{"text": str, "synonyms": [str, ...]}` as lists of distinct texts.

    Groups with fewer than two distinct non-empty texts are skipped and counted.
    """
    report = report if report is not None else ReadReport()
    for line, record in read_json_records(path, on_error, report):
        text, synonyms = record.get("text"), record.get("synonyms", [])
        if not isinstance(text, str) or not isinstance(synonyms, list) or not all(
                isinstance(s, str) for s in synonyms):
            message = (f"{path}, line {line}: expected fields \"text\" (string) and \"synonyms\" "
                       f"(list of strings), got keys {sorted(record)}")
            if on_error == "skip":
                report.skip(message)
                continue
            raise DataError(message)
        group = list(dict.fromkeys(t for t in map(clean_text, [text, *synonyms]) if t))
        if len(group) < 2:
            report.skipped_groups += 1
            continue
        yield group


def read_pairs(path: str, on_error: str = "raise", report: ReadReport | None = None,
               threshold: float = 1.0) -> Iterator[list[str]]:
    """Similar pairs as two-text groups.

    JSONL `{"text_a", "text_b"[, "label"]}` or TSV/CSV `text1<TAB>text2[<TAB>label]`;
    rows with a label below `threshold` (e.g. 0, or an STS score under 4) are skipped.
    """
    report = report if report is not None else ReadReport()
    if path.endswith((".json", ".jsonl")):
        rows = ((line, [r.get("text_a"), r.get("text_b"), r.get("label", threshold)])
                for line, r in read_json_records(path, on_error, report))
    else:
        delimiter = "," if path.endswith(".csv") else "\t"
        rows = ((number, next(csv.reader(io.StringIO(text), delimiter=delimiter)) if text.strip() else [])
                for number, text in _physical_lines(path))
    for line, fields in rows:
        if not fields:
            continue
        label = fields[2] if len(fields) > 2 else threshold
        try:
            if len(fields) < 2 or not isinstance(fields[0], str) or not isinstance(fields[1], str):
                raise ValueError("expected two texts")
            label = float(label)
        except (TypeError, ValueError):
            message = f"{path}, line {line}: expected text1, text2[, numeric label], got {fields!r}"
            if on_error == "skip":
                report.skip(message)
                continue
            raise DataError(message) from None
        if label < threshold:
            continue
        group = list(dict.fromkeys(t for t in (clean_text(fields[0]), clean_text(fields[1])) if t))
        if len(group) < 2:
            report.skipped_groups += 1
            continue
        yield group


def cut_text(text: str, maxlen: int, separators: str = SENTENCE_SEPARATORS) -> str:
    """Cut `text` to at most `maxlen` characters, at sentence punctuation when one falls
    inside the limit (keeping the punctuation), else hard."""
    if len(text) <= maxlen:
        return text
    head = text[:maxlen]
    cut = max(head.rfind(sep) for sep in separators)
    return head[: cut + 1].strip() if cut > 0 else head


class PairSampler:
    """Endless seeded stream of similar text pairs, as the original SimBERT script: pick a
    group, shuffle it, take the first two, cut each to `maxlen` characters.

    Groups are streamed from `read_group_stream()` through a shuffle buffer of
    `buffer_size` groups, so files larger than memory work; small files fit whole in the
    buffer and each draw is uniform over all groups.
    """

    def __init__(self, read_group_stream: Callable[[], Iterable[list[str]]], maxlen: int,
                 seed: int = 0, buffer_size: int = 100_000):
        self.read_group_stream = read_group_stream
        self.maxlen = maxlen
        self.buffer_size = buffer_size
        self.rng = random.Random(seed)

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
                raise DataError("the training data holds no usable group of two or more texts")
            for _ in range(len(buffer)):  # a full pass over the buffer, then refill
                yield buffer[self.rng.randrange(len(buffer))]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for group in self._groups():
            group = list(group)
            self.rng.shuffle(group)
            yield cut_text(group[0], self.maxlen), cut_text(group[1], self.maxlen)


class SourceMasker:
    """RoFormer-Sim source masking: with `probability` the source is whole-word masked.

    The text is segmented with jieba; `rate` of the words are picked and all tokens of a
    picked word become `[MASK]` (80%), stay (10%) or become random tokens (10%).
    Calling returns the masked ids of `[CLS] text [SEP]`, or None when left unmasked.
    """

    def __init__(self, tokenizer: Tokenizer, seed: int = 0, probability: float = 0.5, rate: float = 0.15):
        if tokenizer.mask_id is None:
            raise ValueError("source masking needs a [MASK] token in the vocabulary")
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.probability = probability
        self.rate = rate

    def __call__(self, text: str) -> list[int] | None:
        import jieba

        if self.rng.random() >= self.probability:
            return None
        ids = [self.tokenizer.cls_id]
        for word in jieba.cut(text, HMM=False):
            word_ids = self.tokenizer.encode(word)[0][1:-1]
            draw, picked = self.rng.random(), self.rng.random() < self.rate
            for token_id in word_ids:
                if picked and draw < 0.8:
                    token_id = self.tokenizer.mask_id
                elif picked and draw >= 0.9:
                    token_id = self.rng.randrange(self.tokenizer.vocab_size)
                ids.append(token_id)
        return ids + [self.tokenizer.sep_id]


def source_text_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """One integer per row, equal for rows whose source token ids are equal."""
    seen: dict[tuple[int, ...], int] = {}
    return np.array([seen.setdefault(tuple(r), len(seen)) for r in rows], "int32")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def target_positions(token_ids: np.ndarray, segment_ids: np.ndarray,
                     pad_to_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Where the seq2seq loss looks: position p predicts token p + 1, which counts when it
    is a (non-padding) target token, segment 1.

    Returns `positions (batch, T)` (row-local, padded with 0) and `targets (batch, T, 2)`
    = (token id at p + 1, weight 1; padding 0, 0), T the most target tokens of a row. The
    MLM projection is then computed at these positions only. T is rounded up to
    `pad_to_multiple`.
    """
    counts = (segment_ids[:, 1:] == 1).sum(axis=1)
    width = round_up(max(int(counts.max()), 1), pad_to_multiple)
    positions = np.zeros((len(token_ids), width), "int32")
    targets = np.zeros((len(token_ids), width, 2), "int32")
    for row in range(len(token_ids)):
        found = np.flatnonzero(segment_ids[row, 1:] == 1)
        positions[row, : len(found)] = found
        targets[row, : len(found), 0] = token_ids[row, found + 1]
        targets[row, : len(found), 1] = 1
    return positions, targets


def make_batch(pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, maxlen: int,
               mask_source: Callable[[str], list[int] | None] | None = None, pad_to_multiple: int = 1):
    """Model inputs and loss targets for a batch of pairs.

    Each pair (a, b) gives rows `[CLS] a [SEP] b [SEP]` and `[CLS] b [SEP] a [SEP]` at
    2k and 2k+1, padded with 0 to the batch's longest row. Returns
    `(token_ids, segment_ids, positions), targets` with `positions` and
    `targets["seq2seq"]` from `target_positions`, and `targets["similarity"]` the
    source-text id of each row (equal ids = identical sources, for duplicate masking).
    `mask_source(text)`, when given, returns masked `[CLS] text [SEP]` ids for the source
    or None (see `SourceMasker`); a masked source replaces the row's source only when its
    length matches (word-by-word tokenization can differ at word joins). Lengths are
    rounded up to `pad_to_multiple` (fewer distinct shapes for compiled backends).
    """
    rows, segments, sources = [], [], []
    for a, b in pairs:
        for source, target in ((a, b), (b, a)):
            ids, segs = tokenizer.encode(source, target, maxlen=maxlen * 2)
            source_length = segs.index(1) if 1 in segs else len(segs)
            sources.append(ids[:source_length])
            if mask_source is not None:
                masked = mask_source(source)
                if masked is not None and len(masked) == source_length:
                    ids = masked + ids[source_length:]
            rows.append(ids)
            segments.append(segs)
    length = round_up(max(map(len, rows)), pad_to_multiple)
    token_ids = np.zeros((len(rows), length), "int32")
    segment_ids = np.zeros((len(rows), length), "int32")
    for i, (ids, segs) in enumerate(zip(rows, segments)):
        token_ids[i, : len(ids)] = ids
        segment_ids[i, : len(segs)] = segs
    positions, seq2seq_targets = target_positions(token_ids, segment_ids, pad_to_multiple)
    targets = {"seq2seq": seq2seq_targets, "similarity": source_text_ids(sources)}
    return (token_ids, segment_ids, positions), targets


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
