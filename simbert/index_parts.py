"""An index built in parts, for a corpus beyond one machine: part I of N holds the texts
of lines `[floor(I * L / N), floor((I + 1) * L / N))` of the corpus's L lines (`CorpusPart`,
recorded in the part's index.json with the corpus's line count and SHA-256 beside the
model's fingerprint), and `merge_indexes` joins parts that tile the corpus into the index
one build would have made: the texts in corpus order, their vectors as the parts stored
them, a faiss index built anew over all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from simbert.errors import FileFormatError, missing_path, unreadable
from simbert.retrieval import META_FILE, IndexWriter, SimilarityIndex
from simbert.text_files import numbered_lines

PART_KEY = "part"  # index.json's record of the corpus lines a part holds
SAME_IN_EVERY_PART = ("model_fingerprint", "dimension", "dtype", "backend", "faiss_index")


@dataclass(frozen=True)
class CorpusPart:
    """Part `part` of `parts` of a one-text-a-line corpus of `lines` lines (blank ones
    counted, though not indexed): lines `[start, stop)`, counted from 0. `corpus_sha256`
    tells parts of one corpus from parts of another with as many lines.

    Example:
        >>> part = CorpusPart.of_file("corpus.txt", 1, 3)   # a corpus of 10 lines
        >>> part.start, part.stop
        (3, 6)
    """

    part: int
    parts: int
    lines: int
    corpus_sha256: str = ""

    def __post_init__(self):
        if not 0 <= self.part < self.parts:
            raise ValueError(f"a corpus part should be I/N with 0 <= I < N, got {self.part}/{self.parts}")

    @property
    def start(self) -> int:
        return self.part * self.lines // self.parts

    @property
    def stop(self) -> int:
        return (self.part + 1) * self.lines // self.parts

    def describe(self) -> str:
        """"lines [start, stop) of L"."""
        return f"lines [{self.start}, {self.stop}) of {self.lines}"

    @classmethod
    def of_file(cls, path: str | os.PathLike, part: int, parts: int) -> "CorpusPart":
        """Part `part` of `parts` of the file `path` (its lines counted and hashed)."""
        if not os.path.exists(path):
            raise missing_path("corpus", path)
        digest, lines = hashlib.sha256(), 0
        with open(path, "rb") as reader:
            for line in reader:
                digest.update(line)
                lines += 1
        return cls(part, parts, lines, digest.hexdigest())

    def texts(self, path: str | os.PathLike) -> Iterator[str]:
        """The texts of this part's lines of `path`: stripped, blank lines left out (as
        `simbert.text_files.read_texts` reads a whole corpus)."""
        for number, line in numbered_lines(path):
            if number > self.stop:
                return
            if number > self.start and line.strip():
                yield line.strip()

    @property
    def meta(self) -> dict:
        """What index.json records under `PART_KEY`."""
        return {"part": self.part, "parts": self.parts, "lines": [self.start, self.stop], "total_lines": self.lines,
                "corpus_sha256": self.corpus_sha256}

    @classmethod
    def from_meta(cls, meta, source: str) -> "CorpusPart":
        """The part `meta` records; a `FileFormatError` naming `source` when it does not
        read or its range is not the one its part number gives."""
        try:
            part = cls(int(meta["part"]), int(meta["parts"]), int(meta["total_lines"]), str(meta["corpus_sha256"]))
            recorded = [int(line) for line in meta["lines"]]
        except Exception as error:  # a missing key, a non-number
            raise unreadable(source, f"an index part ({PART_KEY}: part, parts, lines, total_lines)", error) from error
        if recorded != [part.start, part.stop]:
            raise FileFormatError(source, f"records lines {recorded} for part {part.part}/{part.parts} of "
                                          f"{part.lines} lines, which is {part.describe()}")
        return part


def read_part(directory: str) -> tuple[SimilarityIndex, CorpusPart]:
    """The index in `directory` (loaded and checked) and the corpus part it holds."""
    index = SimilarityIndex.load(directory)
    meta_path = os.path.join(directory, META_FILE)
    with open(meta_path, encoding="utf-8") as reader:
        meta = json.load(reader)
    if PART_KEY not in meta:
        raise FileFormatError(meta_path, "records no corpus part (lines); build each part with "
                                         "`simbert index ... --shard I/N`")
    return index, CorpusPart.from_meta(meta[PART_KEY], meta_path)


def check_tiling(parts: Sequence[tuple[str, CorpusPart]]) -> list[tuple[str, CorpusPart]]:
    """`parts` (directory, part) in corpus order, if their line ranges cover the one
    corpus once each; else a ValueError naming the parts and ranges that overlap, the
    lines no part holds, or the parts cut from different corpora."""
    first_directory, first = parts[0]
    for directory, part in parts[1:]:
        if (part.lines, part.corpus_sha256) != (first.lines, first.corpus_sha256):
            raise ValueError(f"parts {first_directory} and {directory} were cut from different corpora: "
                             f"{first.lines} lines (sha256 {first.corpus_sha256[:16]}) and {part.lines} lines "
                             f"(sha256 {part.corpus_sha256[:16]})")
    ordered = sorted(parts, key=lambda entry: (entry[1].start, entry[1].stop))
    covered, previous = 0, None
    for directory, part in ordered:
        if part.stop == part.start:  # a part of no line (more parts than lines)
            continue
        if part.start < covered:
            raise ValueError(f"parts {previous[0]} ({previous[1].describe()}) and {directory} ({part.describe()}) "
                             f"overlap")
        if part.start > covered:
            after = f" between {previous[0]} ({previous[1].describe()}) and" if previous else " before"
            raise ValueError(f"lines [{covered}, {part.start}) of {part.lines} are in no part:{after} {directory} "
                             f"({part.describe()})")
        covered, previous = part.stop, (directory, part)
    if covered < first.lines:
        after = f": after {previous[0]} ({previous[1].describe()})" if previous else ""
        raise ValueError(f"lines [{covered}, {first.lines}) of {first.lines} are in no part{after}")
    return ordered


def merge_indexes(parts: Sequence[str | os.PathLike], output: str | os.PathLike,
                  chunk_size: int = 65536) -> SimilarityIndex:
    """Join index parts (`simbert index --shard I/N`, `SimBERT.write_index(part=...)`)
    into one index in `output`, written whole or not at all (`IndexWriter`): the texts
    in corpus order with the vectors the parts stored, a faiss index rebuilt over them
    when the parts are faiss indexes. Parts of different models (fingerprints) or
    settings, ranges that overlap or leave lines out, are refused naming the parts.

    Args:
        parts: the part directories, in any order.
        output: the index directory to write (not one of the parts).
        chunk_size: texts copied at a time.

    Returns:
        The merged index, loaded memory-mapped.

    Example:
        >>> merge_indexes(["part-0", "part-1", "part-2"], "faq_index")
    """
    directories = [os.path.normpath(str(part)) for part in parts]
    if not directories:
        raise ValueError("merge_indexes needs at least one part")
    output = os.path.normpath(str(output))
    if os.path.abspath(output) in map(os.path.abspath, directories):
        raise ValueError(f"the output {output} is one of the parts; write the merged index to another directory")
    read = {directory: read_part(directory) for directory in directories}
    first_directory, (first, _) = directories[0], read[directories[0]]
    for directory in directories[1:]:
        index = read[directory][0]
        for field in SAME_IN_EVERY_PART:
            if getattr(index, field) != getattr(first, field) and (field != "faiss_index" or first.backend == "faiss"):
                models = (f" (models {first.model_name or '?'} and {index.model_name or '?'}): parts of one index "
                          f"are built by one model" if field == "model_fingerprint" else "")
                raise ValueError(f"parts {first_directory} and {directory} differ in {field}: "
                                 f"{getattr(first, field)!r} and {getattr(index, field)!r}{models}")
    ordered = check_tiling([(directory, read[directory][1]) for directory in directories])
    indexes = [read[directory][0] for directory, _ in ordered]
    with IndexWriter(output, first.meta, sum(len(index) for index in indexes)) as writer:
        for index in indexes:
            for start in range(0, len(index), chunk_size):
                writer.add(index.texts[start:start + chunk_size], index.vectors[start:start + chunk_size],
                           normalized=True)
    return SimilarityIndex.load(output)
