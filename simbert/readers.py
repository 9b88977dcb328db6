"""Readers of training and evaluation data files, robust to messy rows: SimBERT groups
(JSON records, with their mined negatives), labelled pair files in every layout the one
pair reader `read_pair_rows` detects (TSV, ATEC, STS, CSV with a header, JSONL), and a
recipe's `data.train` files read as groups. A record that does not read is a `DataError`
naming file and line, or is counted in a `ReadReport` with `on_error: skip`.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from simbert.config import DataConfig
from simbert.errors import DataError, missing_path
from simbert.text_files import numbered_lines

PAIR_FORMATS = ("tsv", "atec", "sts", "csv", "jsonl")
# Column names of the two texts in CSV headers and JSON records.
TEXT_COLUMNS = (("sentence1", "sentence2"), ("text1", "text2"), ("text_a", "text_b"), ("query1", "query2"),
                ("question1", "question2"), ("s1", "s2"))
# Tab-separated layouts: the fields holding text1, text2 and the label.
TAB_FIELDS = {"tsv": (0, 1, 2), "atec": (1, 2, 3), "sts": (1, 3, 4)}


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


def problem_handler(on_error: str, report: ReadReport | None) -> Callable[[str], None]:
    """What a reader does with a record it cannot read: `on_error` "raise" raises a
    DataError with the message (and how to skip such records instead), "skip" counts it
    in `report`."""
    def fail(message: str) -> None:
        if on_error != "skip":
            raise DataError(f"{message} (data.on_error: skip skips and counts such records)")
        if report is not None:
            report.skip(message)

    return fail


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


def read_json_records(path: str, fail: Callable[[str], None], max_lines_per_record: int = 8,
                      strict_utf8: bool = False) -> Iterator[tuple[int, dict]]:
    """JSON objects one a line; a string holding a raw newline makes a record span several
    physical lines, which are joined back. Yields `(first_line_number, record)`; a record
    that cannot be read goes to `fail(message)` (see `problem_handler`), a line that is not
    UTF-8 too unless `strict_utf8` (then `NotUTF8Error` is raised)."""
    buffer, start = "", 0
    for number, line in numbered_lines(path, None if strict_utf8 else fail):
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
            buffer = ""
            fail(f"{path}, line {start}: not a JSON record ({error.msg})")
            continue
        buffer = ""
        if not isinstance(record, dict):
            fail(f"{path}, line {start}: expected a JSON object, got {type(record).__name__}")
            continue
        yield start, record
    if buffer:
        fail(f"{path}, line {start}: record is not closed at the end of the file")


class Group(list):
    """A group of similar texts (a list of distinct texts, the record's `text` first) and
    `negatives`, the record's mined negatives (texts not similar to any of them; a tuple,
    often empty)."""

    __slots__ = ("negatives",)

    def __init__(self, texts: Iterable[str] = (), negatives: Iterable[str] = ()):
        super().__init__(texts)
        self.negatives = tuple(negatives)


def read_groups(path: str, on_error: str = "raise", report: ReadReport | None = None) -> Iterator[Group]:
    """SimBERT groups `{"text": str, "synonyms": [str, ...], "negatives": [str, ...]}` as
    `Group`s: lists of distinct texts, with the record's `negatives` (optional; mined by
    `simbert mine`) cleaned and deduplicated, those equal to a text of the group left out.

    Groups with fewer than two distinct non-empty texts are skipped and counted.
    """
    report = report if report is not None else ReadReport()
    fail = problem_handler(on_error, report)
    for line, record in read_json_records(path, fail):
        text, synonyms = record.get("text"), record.get("synonyms", [])
        if not isinstance(text, str) or not isinstance(synonyms, list) or not all(
                isinstance(s, str) for s in synonyms):
            fail(f"{path}, line {line}: expected fields \"text\" (string) and \"synonyms\" "
                 f"(list of strings), got keys {sorted(record)}")
            continue
        negatives = record.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            fail(f"{path}, line {line}: expected field \"negatives\" to be a list of strings, got "
                 f"{json.dumps(negatives, ensure_ascii=False)[:80]}")
            continue
        group = list(dict.fromkeys(t for t in map(clean_text, [text, *synonyms]) if t))
        if len(group) < 2:
            report.skipped_groups += 1
            continue
        yield Group(group, (n for n in dict.fromkeys(map(clean_text, negatives)) if n and n not in group))


def detect_pair_format(path: str, fail: Callable[[str], None] | None = None) -> str:
    """The layout of a pair file: jsonl (extension or a leading `{`); tsv for a `.tsv`
    file; by the tab-separated fields of the first line, 2 or 3 -> tsv
    (`text1<TAB>text2[<TAB>label]`), 4 -> atec (id first), 5 -> sts
    (`id1<TAB>text1<TAB>id2<TAB>text2<TAB>score`); else csv when a header names two text
    columns or the file is a `.csv`. A line before it that is not UTF-8 raises
    `NotUTF8Error`, or goes to `fail(message)` and the next line decides."""
    if path.endswith((".jsonl", ".json")):
        return "jsonl"
    if path.endswith(".tsv"):
        return "tsv"
    first = next((line for _, line in numbered_lines(path, fail) if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    fields = first.rstrip("\t").split("\t")  # a trailing tab adds no field
    if len(fields) in (2, 3, 4, 5):
        return {2: "tsv", 3: "tsv", 4: "atec", 5: "sts"}[len(fields)]
    if _text_columns(next(csv.reader([first]), [])) is not None or path.endswith(".csv"):
        return "csv"
    raise ValueError(f"{path}: cannot tell the layout from its first line {first[:80]!r}; expected "
                     "text1<TAB>text2[<TAB>label], id<TAB>text1<TAB>text2<TAB>label, "
                     "id1<TAB>text1<TAB>id2<TAB>text2<TAB>score, CSV, or JSONL")


def _text_columns(names: Sequence[str]) -> tuple[str, str] | None:
    names = [str(name).strip().lower() for name in names]
    return next(((a, b) for a, b in TEXT_COLUMNS if a in names and b in names), None)


def read_pair_rows(path: str, fail: Callable[[str], None], format: str | None = None,
                   strict_utf8: bool = False) -> Iterator[tuple[int, str, str, float | None]]:
    """`(line, text1, text2, label)` of each row of a pair file (UTF-8, BOM and CRLF
    tolerated; layout from `detect_pair_format` unless given); `label` is None where the
    row has none. A row that cannot be read goes to `fail(message)`; a line that is not
    UTF-8 too, unless `strict_utf8` (then `NotUTF8Error` names it: evaluation's choice, as
    a file read in part would give other metrics without saying so)."""
    if not os.path.isfile(path):
        raise missing_path("pair file", path)
    undecodable = None if strict_utf8 else fail
    # Detection skips what the rows reader will report (so a bad line is counted once).
    format = format or detect_pair_format(path, None if strict_utf8 else (lambda message: None))
    if format not in PAIR_FORMATS:
        raise ValueError(f"format should be one of {PAIR_FORMATS}, got {format!r}")
    if format == "jsonl":
        rows = ((line, _record_fields(record)) for line, record in read_json_records(path, fail,
                                                                                      strict_utf8=strict_utf8))
    elif format == "csv":
        rows = _csv_rows(path, fail, undecodable)
    else:
        rows = ((number, text.split("\t")) for number, text in numbered_lines(path, undecodable) if text.strip())
    first_field, second_field, label_field = TAB_FIELDS.get(format, (0, 1, 2))
    label_required = format in ("atec", "sts")
    for line, fields in rows:
        if len(fields) <= (label_field if label_required else second_field):
            fail(f"{path}, line {line}: {len(fields)} fields, expected "
                 f"{label_field + 1 if label_required else 'text1, text2[, label]'}")
            continue
        first, second = fields[first_field], fields[second_field]
        label = fields[label_field] if len(fields) > label_field else None
        if not isinstance(first, str) or not isinstance(second, str):
            fail(f"{path}, line {line}: expected two texts, got {first!r} and {second!r}")
            continue
        try:
            label = None if label is None else float(label)
        except (TypeError, ValueError):
            fail(f"{path}, line {line}: label {label!r} is not a number")
            continue
        yield line, first, second, label


def _record_fields(record: dict) -> list:
    """`[text1, text2, label]` of a JSON pair record (text keys as in `TEXT_COLUMNS`)."""
    first, second = _text_columns(list(record)) or ("text_a", "text_b")
    fields = [record.get(first), record.get(second)]
    return fields + [record["label"]] if "label" in record else fields


def _csv_rows(path: str, fail: Callable[[str], None],
              undecodable: Callable[[str], None] | None) -> Iterator[tuple[int, list]]:
    """Rows of a CSV pair file: with a header naming two text columns (and `label`), by
    name; without one, `text1,text2[,label]`. A line that is not UTF-8 goes to
    `undecodable` (None: raises)."""
    def decoded_lines():
        expected = 1
        for number, line in numbered_lines(path, undecodable):
            yield from ["\n"] * (number - expected)  # a left-out line stays counted
            expected = number + 1
            yield line + "\n"

    rows = csv.reader(decoded_lines())
    header = next(rows, None)
    if header is None:
        return
    names = [name.strip().lower() for name in header]
    columns = _text_columns(names)
    if columns is None:
        yield rows.line_num, header
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if columns is not None:
            values = dict(zip(names, row))
            row = [values.get(columns[0]), values.get(columns[1])] + (
                [values["label"]] if "label" in values else [])
        yield rows.line_num, row


def read_pairs(path: str, on_error: str = "raise", report: ReadReport | None = None,
               threshold: float = 1.0) -> Iterator[list[str]]:
    """Similar pairs of a pair file (any layout of `read_pair_rows`) as two-text groups;
    a row without a label counts as similar, one with a label below `threshold` (e.g. 0,
    or an STS score under 4) is left out."""
    report = report if report is not None else ReadReport()
    for _, first, second, label in read_pair_rows(path, problem_handler(on_error, report)):
        if label is not None and label < threshold:
            continue
        group = list(dict.fromkeys(t for t in (clean_text(first), clean_text(second)) if t))
        if len(group) < 2:
            report.skipped_groups += 1
            continue
        yield group


def listed_files(data: DataConfig) -> list[str]:
    """The paths of `data.train` (one path or a list), unchecked."""
    return data.train if isinstance(data.train, list) else [data.train]


def training_files(data: DataConfig) -> list[str]:
    """The files of `data.train` (one path or a list), each checked to exist and be a file."""
    files = listed_files(data)
    for path in files:
        if os.path.isdir(path):
            raise IsADirectoryError(f"data.train {path} is a directory; expected a data file")
        if not os.path.isfile(path):
            raise missing_path("data.train", path)
    return files


def pair_thresholds(data: DataConfig) -> list[float]:
    """`data.pair_threshold` for each file of `data.train` (one number for all, or a list
    of one per file)."""
    files = listed_files(data)
    thresholds = data.pair_threshold
    return [float(value) for value in thresholds] if isinstance(thresholds, list) else [thresholds] * len(files)


def selected_files(data: DataConfig, source: int | None = None) -> list[tuple[int, str]]:
    """`(number, path)` of every file of `data.train`, or of file number `source` alone;
    each checked to exist (`training_files`), so a missing file raises before any is read."""
    files = list(enumerate(training_files(data)))
    return files if source is None else [files[source]]


def read_training_groups(data: DataConfig, report: ReadReport, source: int | None = None) -> Iterator[list[str]]:
    """The groups of `data.train`'s files in its `data.format` (groups or pairs), one file
    after another, or of file number `source` alone (a missing file raises here, before
    the first is read)."""
    files = selected_files(data, source)
    if data.format == "groups":
        return itertools.chain.from_iterable(read_groups(path, data.on_error, report) for _, path in files)
    thresholds = pair_thresholds(data)
    return itertools.chain.from_iterable(read_pairs(path, data.on_error, report, thresholds[number])
                                         for number, path in files)
