"""An index built in parts (`simbert index --shard I/N`) and merged (`--merge`): three
parts joined equal one build, exact and faiss; parts of another model, overlapping or
leaving lines out are refused naming the parts and their lines, and nothing is written."""

import json
import os

import numpy as np
import pytest

from simbert.cli import main
from simbert.index_parts import CorpusPart, merge_indexes
from simbert.retrieval import META_FILE, SimilarityIndex
from simbert.text_files import read_texts

# 40 lines, one of them blank (counted as a line, not indexed), texts of varied lengths.
LINES = [f"w{i} w{i + 1} w{(3 * i) % 90 + 5}" + f" w{(7 * i) % 80 + 9}" * (i % 5) for i in range(5, 45)]
LINES[17] = ""


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return str(path)


def write_part(model, corpus, directory, part, parts, **options):
    piece = CorpusPart.of_file(corpus, part, parts)
    count = sum(1 for _ in piece.texts(corpus))
    return model.write_index(piece.texts(corpus), count, directory, part=piece, batch_size=8, **options)


def test_parts_cut_the_lines_by_floor_and_keep_their_texts(corpus):
    parts = [CorpusPart.of_file(corpus, i, 3) for i in range(3)]
    assert [(part.start, part.stop) for part in parts] == [(0, 13), (13, 26), (26, 40)] and all(
        part.lines == 40 for part in parts)
    assert [text for part in parts for text in part.texts(corpus)] == list(read_texts(corpus))
    assert parts[1].meta == {"part": 1, "parts": 3, "lines": [13, 26], "total_lines": 40,
                             "corpus_sha256": parts[0].corpus_sha256}
    assert [(part.start, part.stop) for part in (CorpusPart(i, 3, 2) for i in range(3))] == [(0, 0), (0, 1), (1, 2)]


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_three_parts_merged_equal_one_build(two_models, corpus, tmp_path, backend):
    model = two_models[0]
    whole = model.write_index(read_texts(corpus), 39, tmp_path / "whole", batch_size=8, backend=backend)
    for i in (2, 0, 1):
        write_part(model, corpus, tmp_path / f"part-{i}", i, 3, backend=backend)
    with open(tmp_path / "part-1" / META_FILE, encoding="utf-8") as reader:
        assert json.load(reader)["part"]["lines"] == [13, 26]
    merged = merge_indexes([tmp_path / f"part-{i}" for i in (1, 2, 0)], tmp_path / "merged")  # any order
    assert merged.texts == whole.texts == list(read_texts(corpus))
    difference = np.abs(np.asarray(merged.vectors, "float32") - np.asarray(whole.vectors, "float32")).max()
    print(f"{backend}: merged vs one build, max abs difference of the vectors {difference:.3g}")
    assert difference < 1e-6
    assert merged.meta == whole.meta and merged.model_fingerprint == model.fingerprint
    queries = model.encode(["w7 w8 w26", "w30 w31 w95 w19", "w40"])
    found, expected = merged.search(queries, 5), whole.search(queries, 5)
    assert [[text for text, _ in row] for row in found] == [[text for text, _ in row] for row in expected]
    np.testing.assert_allclose([[s for _, s in row] for row in found], [[s for _, s in row] for row in expected],
                               atol=1e-6)
    if backend == "faiss":  # rebuilt over every text, stored, and read back
        assert os.path.isfile(tmp_path / "merged" / "faiss.index") and merged._faiss.ntotal == 39


def test_parts_of_another_model_overlapping_or_leaving_lines_out_are_refused(two_models, corpus, tmp_path):
    first, other = two_models
    for i in range(3):
        write_part(first, corpus, tmp_path / f"p{i}", i, 3)
    write_part(other, corpus, tmp_path / "other1", 1, 3)
    write_part(first, corpus, tmp_path / "half0", 0, 2)
    out = tmp_path / "out"

    def refusal(*parts):
        with pytest.raises(ValueError) as error:
            merge_indexes([tmp_path / part for part in parts], out)
        assert not out.exists() and "\n" not in str(error.value)
        return str(error.value)

    p, q = (str(tmp_path / name) for name in ("p0", "other1"))
    assert refusal("p0", "other1", "p2") == (
        f"parts {p} and {q} differ in model_fingerprint: {first.fingerprint!r} and {other.fingerprint!r} (models "
        f"{first.name} and {other.name}): parts of one index are built by one model")
    assert refusal("p1", "half0", "p2") == (
        f"parts {tmp_path / 'half0'} (lines [0, 20) of 40) and {tmp_path / 'p1'} (lines [13, 26) of 40) overlap")
    assert refusal("p0", "p2") == (f"lines [13, 26) of 40 are in no part: between {tmp_path / 'p0'} (lines [0, 13) "
                                   f"of 40) and {tmp_path / 'p2'} (lines [26, 40) of 40)")
    p1 = f"{tmp_path / 'p1'} (lines [13, 26) of 40)"
    assert refusal("p1", "p2") == f"lines [0, 13) of 40 are in no part: before {p1}"
    assert refusal("p0", "p1") == f"lines [26, 40) of 40 are in no part: after {p1}"
    first.write_index(iter(["w5 w6"]), 1, tmp_path / "plain")
    assert refusal("p0", "plain").startswith(f"{tmp_path / 'plain' / META_FILE}: records no corpus part")
    assert refusal("p0", "p1", "p2", "p1").startswith(f"parts {tmp_path / 'p1'} (lines [13, 26) of 40) and")
    with pytest.raises(ValueError, match="cannot be appended"):
        write_part(first, corpus, tmp_path / "p0", 0, 3, append=True)


def test_the_command_builds_parts_and_merges_them(two_models, corpus, tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    two_models[0].save(model_dir)
    for i in range(2):
        assert main(["index", model_dir, "--input", corpus, "--output", str(tmp_path / f"part-{i}"), "--shard",
                     f"{i}/2", "--no-compile-cache", "--maxlen", "16", "--batch-size", "8"]) == 0
    assert "indexed 19 texts of lines [0, 20) of 40 (part 0/2)" in capsys.readouterr().out
    assert main(["index", "--output", str(tmp_path / "merged"), "--merge", str(tmp_path / "part-1"),
                 str(tmp_path / "part-0")]) == 0
    assert capsys.readouterr().out.strip() == f"merged 2 parts; {tmp_path / 'merged'} holds 39 texts"
    merged = SimilarityIndex.load(tmp_path / "merged")
    assert merged.texts == list(read_texts(corpus)) and merged.model_fingerprint == two_models[0].fingerprint
    np.testing.assert_allclose(merged.vectors, two_models[0].encode(list(read_texts(corpus))), atol=1e-6)
    for arguments, message in [
            (["--output", "x", "--merge", str(tmp_path / "part-0"), "--input", corpus],
             "--merge joins index parts and takes no --input"),
            (["--output", "x", "--merge", str(tmp_path / "part-0"), "--dtype", "float16"],
             "--merge joins index parts and takes no --dtype"),  # the parts' own settings are kept
            (["--output", "x", "--input", corpus], "simbert index needs MODEL_DIR and --input (or --merge "
                                                   "PART_DIR... to join parts)"),
            ([model_dir, "--input", corpus, "--output", "x", "--shard", "2/2"],
             "argument --shard: --shard should be I/N with 0 <= I < N (part I of N, from 0), got '2/2'"),
            ([model_dir, "--input", corpus, "--output", "x", "--shard", "0/2", "--append"],
             "--shard writes an index part whole; it cannot --append")]:
        with pytest.raises(SystemExit) as usage:
            main(["index", *arguments])
        assert usage.value.code == 2
        assert capsys.readouterr().err == f"simbert: error: {message} (see simbert index --help)\n"
