"""Hard negatives: mining them (skip the top, the max-score guard, the record's own texts,
per-example, a wider search), `simbert mine` end to end on a tiny model, groups that keep
them, batches with mined rows after the pair rows, the similarity loss with mined columns
against numpy, a tiny training run, and what is refused."""

import json
import os

import numpy as np
import pytest
from scipy.special import log_softmax

from helpers import ROOT, TINY_CONFIG, tiny_config, value_and_gradients, write_model_dir
from simbert.cli import main
from simbert.data import PairSampler, build_char_vocab, has_mined_rows, make_batch, negatives_per_row, training_batches
from simbert.distribution import BatchLayout
from simbert.errors import DataError
from simbert.losses import DistillationLoss, SimilarityLoss
from simbert.mining import MiningReport, mine_negatives, read_records
from simbert.readers import Group, ReadReport, read_groups
from simbert.retrieval import SimilarityIndex
from simbert.tokenizer import Tokenizer
from simbert.trainer import Trainer


# ------------------------------------------------------------------ mining
def unit(angle_cosine):
    """A 2-d unit vector whose cosine with (1, 0) is `angle_cosine`."""
    return [angle_cosine, np.sqrt(1 - angle_cosine ** 2)]


class KnownVectors:
    """A stand-in for `SimBERT.encode`: each query text's vector from a table."""

    def __init__(self, vectors):
        self.vectors = vectors
        self.calls = 0

    def encode(self, texts, batch_size=64):
        self.calls += 1
        return np.array([self.vectors[text] for text in texts], "float32")


# The corpus ranked for the query "q" (vector (1, 0)), best first, with its cosines.
RANKED = [("q", 1.0), ("near", 0.99), ("close", 0.97), ("c3", 0.9), ("b\t", 0.8), ("c5", 0.7), ("c6", 0.6),
          ("c7", 0.5)]


def ranked_index(ranked=RANKED):
    index = SimilarityIndex(2)
    index.add([text for text, _ in ranked], np.array([unit(score) for _, score in ranked]))
    return index


def mined(records, index=None, **options):
    model = KnownVectors({"q": [1.0, 0.0], "x": [0.0, 1.0]})
    return [record["negatives"] for record in mine_negatives(model, records, index or ranked_index(), **options)]


def test_mining_skips_the_top_guards_the_score_and_leaves_out_the_records_texts():
    group = [Group(["q", "b"])]
    # "q" is the record's text, "near" and "close" score 0.95 or more, "b\t" is "b" once cleaned.
    assert mined(group, skip_top=0, max_score=0.95, per_example=2) == [["c3", "c5"]]
    assert mined(group, skip_top=0, max_score=0.95, per_example=1) == [["c3"]]
    assert mined(group, skip_top=4, max_score=1.01, per_example=2) == [["c5", "c6"]]  # rank 5 is "b"
    assert mined(group, skip_top=1, max_score=1.01, per_example=2) == [["near", "close"]]
    assert mined(group, skip_top=0, max_score=0.75, per_example=3) == [["c5", "c6", "c7"]]


def test_mining_keeps_a_records_negatives_and_reports_the_short():
    report = MiningReport()
    records = [Group(["q", "b"], negatives=["c3"]), Group(["x", "y"])]
    out = list(mine_negatives(KnownVectors({"q": [1.0, 0.0], "x": [0.0, 1.0]}), records, ranked_index(),
                              per_example=2, skip_top=0, max_score=0.95, report=report))
    assert out[0] == {"text": "q", "synonyms": ["b"], "negatives": ["c3", "c5", "c6"]}  # c3 kept, not repeated
    # "x" is orthogonal to the ranking's start: every text but "q" passes (c7 scores 0.87 against it).
    assert out[1]["text"] == "x" and out[1]["negatives"] == ["c7", "c6"]
    assert (report.records, report.negatives, report.short) == (2, 4, 0)
    report = MiningReport()
    list(mine_negatives(KnownVectors({"q": [1.0, 0.0]}), [Group(["q", "b"])], ranked_index(), per_example=10,
                        skip_top=0, max_score=0.95, report=report))
    assert (report.negatives, report.short) == (4, 1)  # c3, c5, c6, c7: the corpus ran out


def test_a_record_short_of_negatives_searches_again_wider():
    """15 near-copies score above the guard: the first search (2 + 2 + 8 = 12 results)
    finds nothing that passes, the second (48) does."""
    ranked = [(f"copy{i}", 0.99) for i in range(15)] + [("far", 0.5), ("farther", 0.4)]
    index = ranked_index(ranked)
    searches = []
    search = index.search
    index.search = lambda vectors, topn: searches.append(topn) or search(vectors, topn)
    assert mined([Group(["q", "b"])], index, skip_top=0, max_score=0.95, per_example=2) == [["far", "farther"]]
    assert searches == [12, 48]


def test_read_records_takes_groups_and_pair_files(tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text('{"text": "a", "synonyms": ["b", "c"], "negatives": ["d"]}\n', encoding="utf-8")
    [group] = read_records(str(groups))
    assert group == ["a", "b", "c"] and group.negatives == ("d",)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a\tb\t1\nc\td\t0\ne\tf\n", encoding="utf-8")
    assert [list(g) for g in read_records(str(pairs))] == [["a", "b"], ["e", "f"]]  # the similar pairs
    graded = tmp_path / "sts.txt"
    graded.write_text("a\tb\t4.2\nc\td\t1\ne\tf\t3.9\n", encoding="utf-8")
    assert [list(g) for g in read_records(str(graded), pair_threshold=4)] == [["a", "b"]]


# -------------------------------------------------------------- the command
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_model_dir(str(tmp_path_factory.mktemp("mine") / "model"), TINY_CONFIG)


def test_mine_command_end_to_end(tiny_model, tmp_path, capsys):
    from simbert.api import SimBERT

    records = [{"text": " ".join(WORDS[i:i + 3]), "synonyms": [" ".join(WORDS[i + 1:i + 4])]} for i in range(0, 12, 3)]
    data = tmp_path / "train.json"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    corpus_texts = [" ".join(WORDS[i:i + 2]) for i in range(0, 38, 2)] + [records[0]["synonyms"][0]]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_texts) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "mined.jsonl"
    arguments = ["--corpus", corpus, "--output", out, "--per-example", "2", "--skip-top", "1", "--max-score",
                 "0.99", "--no-compile-cache", "--maxlen", "16"]
    assert main(["mine", tiny_model, "--input", str(data), *map(str, arguments)]) == 0
    assert "wrote 4 records with 8 mined negatives" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(line["text"], line["synonyms"]) for line in lines] == [(r["text"], r["synonyms"]) for r in records]
    # The same selection by hand: rank the corpus by cosine, pass over the first, keep < 0.99, not the record's.
    model = SimBERT.from_pretrained(tiny_model, max_tokens=16, compilation_cache=None)
    vectors = model.encode(corpus_texts)
    for record, line in zip(records, lines):
        scores = vectors @ model.encode([record["text"]])[0]
        ranked = [corpus_texts[i] for i in np.argsort(-scores, kind="stable")[1:] if scores[i] < 0.99]
        own = {record["text"], *record["synonyms"]}
        assert line["negatives"] == [text for text in ranked if text not in own][:2]
    # An index directory of the corpus gives the same; a pair file is read as its similar pairs (graded: >= 4).
    assert main(["index", tiny_model, "--input", str(corpus), "--output", str(tmp_path / "index"),
                 "--no-compile-cache", "--maxlen", "16"]) == 0
    again = tmp_path / "again.jsonl"
    arguments[arguments.index("--corpus") + 1], arguments[arguments.index("--output") + 1] = tmp_path / "index", again
    assert main(["mine", tiny_model, "--input", str(data), *map(str, arguments)]) == 0
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"{records[0]['text']}\t{records[0]['synonyms'][0]}\t4.5\nw1\tw2\t3\n", encoding="utf-8")
    assert main(["mine", tiny_model, "--input", str(pairs), "--pair-threshold", "4", *map(str, arguments)]) == 0
    assert [json.loads(line) for line in again.read_text(encoding="utf-8").splitlines()] == lines[:1]


@pytest.mark.parametrize("change, message", [
    (["--skip-top", "-1"], "--skip-top should be an integer of at least 0"),
    (["--max-score", "0"], "--max-score should be a number in (0, 1]"),
    (["--corpus", "missing.txt"], "corpus missing.txt does not exist"),
])
def test_mine_refuses_bad_arguments_in_one_line(tiny_model, tmp_path, capsys, change, message):
    data = tmp_path / "train.json"
    data.write_text('{"text": "w1", "synonyms": ["w2"]}\n', encoding="utf-8")
    arguments = ["mine", tiny_model, "--input", str(data), "--corpus", str(data), "--output", str(tmp_path / "o")]
    if change[0] in arguments:
        arguments[arguments.index(change[0]) + 1] = change[1]
    else:
        arguments += change
    with pytest.raises(SystemExit) as stop:
        main(arguments)
    errors = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(errors) == 1 and message in errors[0]


def test_mine_names_a_bad_record_before_loading_the_model(tiny_model, tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_text('{"text": "w1", "synonyms": ["w2"]}\n{"text": "w3", "synonyms": ["w4"], "negatives": "w5"}\n',
                    encoding="utf-8")
    assert main(["mine", tiny_model, "--input", str(data), "--corpus", str(data), "--output",
                 str(tmp_path / "o")]) == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"simbert: error: {data}, line 2: expected field \"negatives\" to be a list of strings")
    assert not os.path.exists(tmp_path / "o")


def test_mine_pair_threshold_reads_pair_files_only(tiny_model, tmp_path, capsys):
    groups = tmp_path / "train.json"
    groups.write_text('{"text": "w1", "synonyms": ["w2"]}\n', encoding="utf-8")
    pairs = tmp_path / "sts.tsv"
    pairs.write_text("w1\tw2\t3.5\nw3\tw4\t1\n", encoding="utf-8")
    refusals = [(groups, f"--pair-threshold reads a pair file's labels; {groups} is a groups file"),
                (pairs, f"{pairs} holds no record of two or more distinct texts (pairs labelled at least 4)")]
    for data, message in refusals:
        assert main(["mine", tiny_model, "--input", str(data), "--corpus", str(groups), "--output",
                     str(tmp_path / "o"), "--pair-threshold", "4"]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"simbert: error: {message}"]


# --------------------------------------------------------- reading, batches
def test_groups_keep_their_negatives_and_a_bad_value_names_file_and_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"text": "a", "synonyms": ["b"], "negatives": ["c", " c ", "a", "", "d"]}\n'
                    '{"text": "e", "synonyms": ["f"]}\n'
                    '{"text": "g", "synonyms": ["h"], "negatives": ["i", 3]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}, line 3: expected field \"negatives\" to be a list of strings"):
        list(read_groups(str(path)))
    report = ReadReport()
    groups = list(read_groups(str(path), on_error="skip", report=report))
    assert groups == [["a", "b"], ["e", "f"]] and report.skipped_records == 1
    assert [g.negatives for g in groups] == [("c", "d"), ()]  # cleaned, deduplicated, the group's own left out


def test_the_sampler_adds_negatives_without_changing_the_pairs():
    groups = [Group(["a", "b", "c"], ["x", "y", "z"]), Group(["d", "e"]), Group(["f", "g"], ["w"])]
    plain = [p for _, p in zip(range(60), PairSampler(lambda: iter(groups), 8, seed=1))]
    with_two = [p for _, p in zip(range(60), PairSampler(lambda: iter(groups), 8, seed=1, negatives_per_pair=2))]
    assert [p[:2] for p in with_two] == plain
    by_first = {t: g for g in groups for t in g}
    for a, _, negatives in with_two:
        group = by_first[a]
        assert len(negatives) == min(2, len(group.negatives)) and set(negatives) <= set(group.negatives)
    assert len({p[2] for p in with_two if p[0] in "abc"}) > 1  # two of three drawn, not always the same


def test_a_batch_holds_mined_rows_after_the_pair_rows():
    tokenizer = Tokenizer(build_char_vocab(["今天天气怎么样", "明天下雨吗", "你好", "再见"]))
    pairs = [("今天天气", "明天下雨吗"), ("你好", "你好吗")]
    plain = make_batch(pairs, tokenizer, max_tokens=64)
    # Pairs without negatives: the batch as before, 2P rows.
    for same, before in zip(make_batch([(*p, ()) for p in pairs], tokenizer, max_tokens=64, negatives_per_pair=2),
                            plain):
        for name in (same if isinstance(same, dict) else range(len(same))):
            np.testing.assert_array_equal(same[name], before[name])
    assert not has_mined_rows(plain[1]["similarity"])
    # Pair 0 has one negative (k = 2): rows 4..7 are [CLS] 再见 [SEP], then three empty slots.
    (token_ids, segment_ids, positions), targets = make_batch([(*pairs[0], ("再见",)), (*pairs[1], ())], tokenizer,
                                                              max_tokens=64, negatives_per_pair=2)
    assert token_ids.shape == (8, plain[0][0].shape[1])
    np.testing.assert_array_equal(token_ids[:4], plain[0][0])
    np.testing.assert_array_equal(targets["seq2seq"][:4], plain[1]["seq2seq"])
    assert token_ids[4, :4].tolist() == tokenizer.encode("再见")[0] and not token_ids[4, 4:].any()
    source = tokenizer.encode("今天天气")[0]  # an empty slot repeats row 0's source
    assert all(token_ids[row, :len(source)].tolist() == source for row in (5, 6, 7))
    assert not segment_ids[4:].any() and not targets["seq2seq"][4:, :, 1].any()  # no seq2seq target
    assert targets["similarity"].tolist() == [0, 1, 2, 3, -5, -1, -1, -1]
    assert has_mined_rows(targets["similarity"])
    # 2 pair columns a row, plus the one distinct mined text (the repeats of row 0's source are no column).
    assert negatives_per_row(targets["similarity"]) == 3.0
    assert negatives_per_row(plain[1]["similarity"]) == 2.0
    # A negative equal to a text of the batch adds no column.
    _, same_text = make_batch([(*pairs[0], ("你好",)), (*pairs[1], ())], tokenizer, max_tokens=64)
    assert same_text["similarity"].tolist() == [0, 1, 2, 3, -3, -1] and negatives_per_row(same_text["similarity"]) == 2


def test_the_teacher_sees_the_pair_rows_only():
    groups = [Group(["今天天气", "明天下雨"], ["你好"]), Group(["再见", "你好吗"], ["今天"])]
    tokenizer = Tokenizer(build_char_vocab(t for g in groups for t in (*g, *g.negatives)))
    seen = []

    def teacher(texts):
        seen.append(texts)
        return np.eye(len(texts), dtype="float32")

    from simbert.config import DataConfig

    inputs, targets = next(training_batches(lambda: iter(groups), tokenizer, DataConfig(max_chars=8), batch_size=4,
                                            seed=0, teacher_similarities=teacher))
    assert inputs[0].shape[0] == 6 and targets["distillation"].shape == (4, 4)
    assert len(seen[0]) == 4 and set(seen[0]) <= {t for g in groups for t in g}


# -------------------------------------------------------------------- loss
def similarity_numpy(vectors, codes, scale, mask_duplicates):
    """The similarity loss with mined columns, written out row by row in float64: pair rows
    (codes >= 0) are the queries; a mined row (text id -1 - code) whose text an earlier row
    holds is masked; duplicates of the partner as in the plain loss."""
    codes = np.asarray(codes)
    ids = np.where(codes >= 0, codes, -1 - codes)
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    logits = scale * v @ v.T
    n = len(v)
    losses = []
    for i in np.flatnonzero(codes >= 0):
        partner = i ^ 1
        row = logits[i].copy()
        for j in range(n):
            duplicate = mask_duplicates and j != partner and ids[j] == ids[partner]
            repeat = codes[j] < 0 and ids[j] in ids[:j]
            if j == i or duplicate or repeat:
                row[j] = -np.inf
        losses.append(-log_softmax(row)[partner])
    return float(np.mean(losses))


# 4 pair rows (rows 2 and 0 share a text), then mined rows: a new text, the partner of rows 0 and 2's text
# (masked as a repeat), a repeat of an earlier mined row, another new text.
CODES = [0, 1, 0, 3, -5, -2, -5, -7]


@pytest.mark.parametrize("mask_duplicates", [True, False])
@pytest.mark.parametrize("written", [True, False])
def test_the_similarity_loss_with_mined_columns_matches_numpy(mask_duplicates, written):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(8, 5)).astype("float32")
    loss = SimilarityLoss(20.0, mask_duplicates, written)
    expected = similarity_numpy(vectors.astype("float64"), CODES, 20.0, mask_duplicates)
    assert abs(float(loss(np.array(CODES), vectors)) - expected) < 1e-4
    # Without mined rows: the plain loss over the pair rows alone.
    plain = similarity_numpy(vectors[:4].astype("float64"), CODES[:4], 20.0, mask_duplicates)
    assert abs(float(loss(np.array(CODES[:4]), vectors[:4])) - plain) < 1e-4
    # Masked mined rows (repeats) get no gradient; the written gradient is autodiff's.
    _, (gradient,) = value_and_gradients(lambda v: loss(np.array(CODES), v), vectors)
    gradient = np.asarray(gradient)
    assert not gradient[[5, 6]].any() and np.abs(gradient[[4, 7]]).sum() > 0
    _, (autodiff,) = value_and_gradients(lambda v: SimilarityLoss(20.0, mask_duplicates, False)(np.array(CODES), v),
                                         vectors)
    np.testing.assert_allclose(gradient, np.asarray(autodiff), atol=1e-5)


def test_distillation_leaves_the_mined_rows_out():
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(6, 5)).astype("float32")
    teacher = rng.uniform(-1, 1, size=(4, 4)).astype("float32")
    pair_rows_only = float(DistillationLoss()(teacher, vectors[:4]))
    assert float(DistillationLoss()(teacher, vectors)) == pytest.approx(pair_rows_only)


# ---------------------------------------------------------------- training
def data_with_negatives(path):
    """data_sample.json's groups, each with the first text of the next two groups as negatives."""
    with open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8") as reader:
        records = [json.loads(line) for line in reader if line.strip()]
    for i, record in enumerate(records):
        record["negatives"] = [records[(i + 1) % len(records)]["text"], records[(i + 2) % len(records)]["text"]]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def negatives_config(tmp_path, steps, **training):
    config = tiny_config(tmp_path / "run", steps, **training)
    config.data.train = data_with_negatives(tmp_path / "mined.json")
    config.model.config = {**config.model.config, "hidden_size": 32, "intermediate_size": 64}
    config.training.batch_size = 16
    return config


def test_a_tiny_run_with_mined_negatives(tmp_path):
    config = negatives_config(tmp_path, 150)
    config.output.log_every = 10
    result = Trainer(config).fit()
    first, last = result.first, result.last
    assert np.isfinite(last["similarity_loss"]) and last["similarity_loss"] < 0.8 * first["similarity_loss"]
    # 14 pair columns a row, plus up to 8 mined texts (fewer when a negative is a text of the batch).
    assert 14 < first["negatives"] <= 22 and 14 < last["negatives"] <= 22


def test_mined_negatives_refuse_the_cached_step_and_several_devices(tmp_path):
    with pytest.raises(ValueError, match="training.similarity_chunk 4 .the cached step. does not take them"):
        Trainer(negatives_config(tmp_path, 10, similarity_chunk=4))
    trainer = Trainer(negatives_config(tmp_path, 10))
    trainer.layout = BatchLayout(16, ("cpu:0", "cpu:1"), 1, 0, None)
    with pytest.raises(ValueError, match="split over 2 devices .* set training.distribution: none, or "
                                         "data.negatives_per_pair: 0"):
        trainer._check_mined_negatives()
    config = negatives_config(tmp_path, 10, similarity_chunk=4)
    config.data.negatives_per_pair = 0  # negatives ignored: the cached step is fine
    Trainer(config)


def test_negatives_past_the_first_group_are_refused_before_training(tmp_path):
    """A vocabulary built from the data reads every group first: negatives of a later group
    are refused then, not at the first batch that holds them."""
    config = negatives_config(tmp_path, 10, similarity_chunk=4)
    path = config.data.train
    with open(path, encoding="utf-8") as reader:
        records = [json.loads(line) for line in reader]
    for record in records[:-1]:
        record["negatives"] = []
    with open(path, "w", encoding="utf-8") as writer:
        writer.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with pytest.raises(ValueError, match="training.similarity_chunk 4 .the cached step. does not take them"):
        Trainer(config)
