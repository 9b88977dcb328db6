"""Hard-negative mining: for each record of the training data, texts of a corpus that the
model finds close to its first text but that are not its texts, written back as the
record's `negatives` (groups JSONL), which training adds to the similarity softmax
(`simbert.data.make_batch`, `data.negatives_per_pair`).

Flow: `read_records` (groups JSONL or any pair file) -> `corpus_index` (an exact index of
a one-text-a-line corpus, or an index directory of `simbert index`) -> `mine_negatives`
(`SimBERT.encode` the first texts, `SimilarityIndex.search`, keep candidates ranked after
the top `skip_top`, scored below `max_score` and not a text of the record) -> records
`{"text", "synonyms", "negatives"}`.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from simbert.api import SimBERT
from simbert.arguments import check_integer
from simbert.readers import Group, clean_text, read_groups, read_pairs
from simbert.retrieval import SimilarityIndex
from simbert.text_files import numbered_lines, read_texts

INPUT_FORMATS = ("groups", "pairs")
# Candidates searched beyond the ones needed, for those left out (the record's own texts,
# scores at max_score and above); a record still short searches again 4 times wider.
SEARCH_SLACK = 8
WIDER = 4


@dataclass
class MiningReport:
    """What `mine_negatives` did: records written, negatives mined, and records that got
    fewer than `per_example` (the corpus ran out of candidates that pass)."""

    records: int = 0
    negatives: int = 0
    short: int = 0


def detect_input_format(path: str) -> str:
    """"groups" when the first record of `path` is a JSON object with a "text" field (a
    SimBERT groups file), else "pairs" (any layout `simbert.readers.read_pair_rows` reads)."""
    for _, line in numbered_lines(path, what="input file"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return "pairs"
        return "groups" if isinstance(record, dict) and "text" in record else "pairs"
    return "groups"


def read_records(path: str, format: str | None = None, pair_threshold: float = 1.0) -> Iterator[Group]:
    """The records of a training file as `Group`s: a groups file's groups (with any
    negatives they hold), or a pair file's similar pairs (`read_pairs`: labelled at least
    `pair_threshold`, e.g. 4 for STS scores); `format` "groups" or "pairs", detected when
    None (`detect_input_format`). A record that does not read raises `DataError` naming
    the file and line."""
    format = format or detect_input_format(path)
    if format not in INPUT_FORMATS:
        raise ValueError(f"format should be one of {INPUT_FORMATS}, got {format!r}")
    if format == "groups":
        return read_groups(path)
    return (Group(pair) for pair in read_pairs(path, threshold=pair_threshold))


def corpus_index(model: SimBERT, corpus: str, batch_size: int = 64, progress: bool = False) -> SimilarityIndex:
    """The index to mine from: `corpus` a one-text-a-line file, encoded into an exact
    in-memory index (`SimBERT.make_index`), or an index directory (`simbert index`,
    `SimBERT.write_index`), which must hold this model's vectors."""
    if os.path.isdir(corpus):
        index = SimilarityIndex.load(corpus, expected_dimension=model.dimension)
        index.check_model(model.fingerprint, model.name, strict=True)  # other vectors: meaningless scores
        return index
    texts = list(read_texts(corpus))
    if not texts:
        raise ValueError(f"corpus {corpus} holds no text (one text a line)")
    return model.make_index(texts, batch_size=batch_size, progress=progress)


def pick_negatives(results: Sequence[tuple[str, float]], excluded: Iterable[str], per_example: int, skip_top: int,
                   max_score: float) -> list[str]:
    """Up to `per_example` texts of `results` (best first), cleaned: ranked after the top
    `skip_top`, scored below `max_score`, and none equal (after `clean_text`) to a text of
    `excluded` or to one picked before."""
    seen, picked = set(excluded), []
    for text, score in results[skip_top:]:
        text = clean_text(text)
        if score >= max_score or not text or text in seen:
            continue
        seen.add(text)
        picked.append(text)
        if len(picked) == per_example:
            break
    return picked


def mine_negatives(model: SimBERT, records: Iterable[Sequence[str]], index: SimilarityIndex, per_example: int = 1,
                   skip_top: int = 3, max_score: float = 0.95, batch_size: int = 64, chunk_size: int = 512,
                   report: MiningReport | None = None, progress: bool = False,
                   total: int | None = None) -> Iterator[dict]:
    """Mine hard negatives for each record from `index`.

    Each record's first text is encoded (`SimBERT.encode`) and searched in `index`
    (`SimilarityIndex.search`, exact or faiss). Of the results, the top `skip_top` are
    passed over (they are likely paraphrases the data does not list: false negatives),
    so are those scored `max_score` or more, and those equal, after
    `simbert.readers.clean_text`, to a text of the record (or to its negatives already);
    the first `per_example` left are its new negatives. A record short of them is
    searched again, wider, until the index runs out.

    Args:
        model: the model that embeds the queries (the index's model).
        records: groups of similar texts, the first the query (`read_records`); a
            `Group`'s `negatives` are kept, the mined ones added after them.
        index: the corpus to mine (`corpus_index`).
        per_example: negatives to mine a record.
        skip_top: results passed over at the top of each ranking.
        max_score: the false-negative guard: candidates scored this or more are left out.
        batch_size: texts encoded a batch.
        chunk_size: records encoded and searched together.
        report: counts records, negatives, and records that got fewer than `per_example`.
        progress: show a progress bar (of `total` records, when given).
        total: the number of records, for the progress bar.

    Returns:
        An iterator of groups records `{"text": str, "synonyms": [str, ...],
        "negatives": [str, ...]}`, one a record, in order.

    Example:
        >>> model = SimBERT.from_pretrained("runs/tiny")
        >>> index = corpus_index(model, "corpus.txt")
        >>> for record in mine_negatives(model, read_records("data.json"), index, skip_top=3):
        ...     print(json.dumps(record, ensure_ascii=False))
    """
    check_integer("per_example", per_example)
    check_integer("skip_top", skip_top, minimum=0)
    check_integer("chunk_size", chunk_size)
    report = report if report is not None else MiningReport()
    records = iter(records)
    with tqdm(total=total, desc="mining", unit="record", disable=not progress) as bar:
        for chunk in iter(lambda: list(itertools.islice(records, chunk_size)), []):
            held = [list(getattr(record, "negatives", ())) for record in chunk]
            excluded = [set(record) | set(negatives) for record, negatives in zip(chunk, held)]
            vectors = model.encode([record[0] for record in chunk], batch_size=batch_size)
            mined = [[] for _ in chunk]
            waiting = list(range(len(chunk)))
            topn = skip_top + per_example + max(map(len, excluded)) + SEARCH_SLACK
            while waiting:
                results = index.search(vectors[waiting], topn)
                short = []
                for row, found in zip(waiting, results):
                    mined[row] = pick_negatives(found, excluded[row], per_example, skip_top, max_score)
                    if len(mined[row]) < per_example and len(found) == topn and topn < len(index):
                        short.append(row)  # more candidates lie below: search again, wider
                waiting, topn = short, topn * WIDER
            for record, negatives, new in zip(chunk, held, mined):
                report.records += 1
                report.negatives += len(new)
                report.short += len(new) < per_example
                yield {"text": record[0], "synonyms": list(record[1:]), "negatives": negatives + new}
            bar.update(len(chunk))
