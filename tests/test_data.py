"""Readers on messy files (not UTF-8, empty, a directory, a trailing tab), pair sampling,
batch layout and source masking."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, short_config
from simbert.data import PairSampler, SourceMasker, build_char_vocab, cut_text, make_batch
from simbert.errors import DataError
from simbert.readers import (
    ReadReport,
    clean_text,
    detect_pair_format,
    problem_handler,
    read_groups,
    read_pair_rows,
    read_pairs,
)
from simbert.shapes import ShapeBuckets
from simbert.tokenizer import Tokenizer
from simbert.trainer import Trainer

GROUPS = [
    ["今天天气怎么样", "今天天气好吗", "今天的天气如何"],
    ["花呗怎么还款", "花呗的钱怎么还"],
    ["信用卡怎么提额", "如何提升信用卡额度", "信用卡额度太低怎么办", "怎样让银行提额"],
    ["手机充不进电", "手机无法充电"],
]


def write_messy_groups(path):
    """BOM, CRLF, blank lines, strings with raw newlines (records over two lines), a
    backspace and a zero-width space inside strings."""
    lines = []
    for i, group in enumerate(GROUPS):
        record = json.dumps({"text": group[0], "synonyms": group[1:]}, ensure_ascii=False)
        if i == 1:
            record = record.replace("还款", "还\n款")  # raw newline: one record, two lines
        if i == 2:
            record = record.replace("提额", "提\b额\u200b")
        lines.append(record)
        lines.append("")
    path.write_bytes(("\ufeff" + "\r\n".join(lines)).encode("utf-8"))


def test_messy_group_file_yields_every_group_and_synonym(tmp_path):
    path = tmp_path / "groups.json"
    write_messy_groups(path)
    report = ReadReport()
    groups = list(read_groups(str(path), report=report))
    assert len(groups) == 4 and sum(len(g) - 1 for g in groups) == 7
    assert groups[0] == GROUPS[0]
    assert groups[1][0] == "花呗怎么还 款"  # the raw newline became a space (the tokenizer ignores it)
    assert groups[2][0] == "信用卡怎么提额"  # control and zero-width characters dropped
    assert report.skipped_records == 0 and report.skipped_groups == 0


def test_bad_record_names_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"text": "a", "synonyms": ["b"]}\n\n{"text": "c", synonyms}\n'
                    '{"text": "d", "synonyms": "e"}\n{"text": "f", "synonyms": ["g"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json, line 3: not a JSON record"):
        list(read_groups(str(path)))
    report = ReadReport()
    groups = list(read_groups(str(path), on_error="skip", report=report))
    assert groups == [["a", "b"], ["f", "g"]]
    assert report.skipped_records == 2 and "line 4" in report.reasons[1]


def test_unclosed_record_at_end_of_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"text": "a", "synonyms": ["b"]}\n{"text": "c", "synonyms": ["d\n', encoding="utf-8")
    with pytest.raises(DataError, match="cut.json, line 2"):
        list(read_groups(str(path)))


def test_groups_without_two_distinct_texts_are_counted(tmp_path):
    path = tmp_path / "small.json"
    path.write_text('{"text": "a", "synonyms": []}\n{"text": "b", "synonyms": ["b", " b "]}\n'
                    '{"text": "c", "synonyms": ["d"]}\n', encoding="utf-8")
    report = ReadReport()
    assert list(read_groups(str(path), report=report)) == [["c", "d"]]
    assert report.skipped_groups == 2


def test_pair_readers(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes("\ufeff甲\t乙\t1\r\n丙\t丁\t0\r\n\r\n戊\t己\r\n".encode("utf-8"))
    assert list(read_pairs(str(tsv))) == [["甲", "乙"], ["戊", "己"]]
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('"a, b",c,5\nd,e,3\n', encoding="utf-8")
    assert list(read_pairs(str(csv_path), threshold=4)) == [["a, b", "c"]]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"text_a": "x", "text_b": "y"}\n{"text_a": "z", "text_b": "w", "label": 0}\n', encoding="utf-8")
    assert list(read_pairs(str(jsonl))) == [["x", "y"]]
    broken = tmp_path / "broken.tsv"
    broken.write_text("only one field\n甲\t乙\tmaybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.tsv, line 1: .* \(data.on_error: skip skips and counts such "
                                         r"records\)$"):
        list(read_pairs(str(broken)))
    report = ReadReport()
    assert list(read_pairs(str(broken), on_error="skip", report=report)) == []
    assert report.skipped_records == 2


def test_one_pair_reader_for_training_and_evaluation(tmp_path):
    """An LCQMC-style labelled file: training takes its similar pairs, evaluation every
    labelled pair; both through `read_pair_rows`, so they agree on the rows."""
    from simbert.evaluation import read_pair_file

    path = tmp_path / "dev.txt"
    path.write_text("甲\t乙\t1\n丙\t丁\t0\n戊\t己\tx\n庚\t辛\t1\n", encoding="utf-8")
    assert list(read_pairs(str(path), on_error="skip")) == [["甲", "乙"], ["庚", "辛"]]
    pairs = read_pair_file(str(path))
    assert (pairs.first, pairs.labels) == (["甲", "丙", "庚"], [1.0, 0.0, 1.0])
    assert len(pairs.skipped) == 1 and "dev.txt, line 3: label 'x' is not a number" in pairs.skipped[0]


def test_clean_and_cut_text():
    assert clean_text(" a\tb\r\nc\x08d\u200b ") == "a b cd"
    assert cut_text("短句", 10) == "短句"
    assert cut_text("第一句话。第二句话很长很长", 8) == "第一句话。"
    assert cut_text("没有标点的一句很长的话", 5) == "没有标点的"


def test_sampler_is_seeded_and_streams_through_a_small_buffer():
    groups = [[f"g{i}a", f"g{i}b", f"g{i}c"] for i in range(50)]
    first = [p for _, p in zip(range(200), PairSampler(lambda: iter(groups), 32, seed=3, buffer_size=8))]
    again = [p for _, p in zip(range(200), PairSampler(lambda: iter(groups), 32, seed=3, buffer_size=8))]
    other = [p for _, p in zip(range(200), PairSampler(lambda: iter(groups), 32, seed=4, buffer_size=8))]
    assert first == again and first != other
    for a, b in first:
        assert a != b and a[:-1] == b[:-1]  # two different members of one group
    assert len({a[:-1] for a, _ in first}) == 50  # every group reached through the buffer
    with pytest.raises(DataError, match="no usable group"):
        next(iter(PairSampler(lambda: iter([]), 32)))


def test_batch_layout():
    tokenizer = Tokenizer(build_char_vocab(["今天天气怎么样", "明天下雨吗", "你好"]))
    pairs = [("今天天气怎么样", "明天下雨吗"), ("你好", "你好吗")]
    (token_ids, segment_ids, positions), targets = make_batch(pairs, tokenizer, max_tokens=64)
    assert token_ids.shape == (4, 2 + 7 + 5 + 1)  # padded to the longest row only
    for row, (source, target) in enumerate([pairs[0], pairs[0][::-1], pairs[1], pairs[1][::-1]]):
        ids, segments = tokenizer.encode(source, target)
        assert token_ids[row, : len(ids)].tolist() == ids and segment_ids[row, : len(ids)].tolist() == segments
        assert not token_ids[row, len(ids):].any()
    # Seq2seq targets: position p predicts token p + 1 where that token is in segment 1.
    for row in range(4):
        wanted = [p for p in range(token_ids.shape[1] - 1) if segment_ids[row, p + 1] == 1]
        weights = targets["seq2seq"][row, :, 1]
        assert positions[row, : weights.sum()].tolist() == wanted and not weights[len(wanted):].any()
        assert targets["seq2seq"][row, : len(wanted), 0].tolist() == token_ids[row, np.array(wanted) + 1].tolist()
    assert positions.shape[1] == max(len(b) for pair in pairs for b in pair) + 1  # target tokens + [SEP]
    assert targets["similarity"].tolist() == [0, 1, 2, 3]
    (rounded, rounded_segments, rounded_positions), rounded_targets = make_batch(
        pairs, tokenizer, max_tokens=64, buckets=ShapeBuckets(length_step=16, max_length=64))
    assert rounded.shape == (4, 16) and rounded_positions.shape[1] == 16
    np.testing.assert_array_equal(rounded[:, : token_ids.shape[1]], token_ids)
    assert not rounded[:, token_ids.shape[1]:].any() and not rounded_segments[:, token_ids.shape[1]:].any()
    width = positions.shape[1]
    np.testing.assert_array_equal(rounded_positions[:, :width], positions)
    np.testing.assert_array_equal(rounded_targets["seq2seq"][:, :width], targets["seq2seq"])
    assert not rounded_targets["seq2seq"][:, width:].any()  # padded targets weigh 0
    _, duplicate = make_batch([("你好", "今天"), ("明天", "你好")], tokenizer, max_tokens=64)
    assert duplicate["similarity"].tolist() == [0, 1, 2, 0]


def test_source_masking_keeps_length_and_masks_whole_words():
    texts = ["今天天气怎么样", "明天北京会下雨吗"]
    tokenizer = Tokenizer(build_char_vocab(texts))
    masker, rng = SourceMasker(tokenizer, probability=1.0, rate=0.5), random.Random(0)
    masked_any = 0
    for _ in range(50):
        ids = masker(texts[1], rng)
        plain = tokenizer.encode(texts[1])[0]
        assert len(ids) == len(plain) and ids[0] == plain[0] and ids[-1] == plain[-1]
        masked_any += ids.count(tokenizer.mask_id) > 0
    assert masked_any > 20
    assert SourceMasker(tokenizer, probability=0.0)(texts[0], rng) is None
    rng_counts = sum(SourceMasker(tokenizer)(texts[0], random.Random(s)) is None for s in range(200))
    assert 60 < rng_counts < 140  # masked with probability 0.5


def test_prepare_pairs_keeps_the_similar_pairs_and_writes_whole_or_not_at_all(tmp_path):
    binary = tmp_path / "binary.tsv"
    binary.write_text("花呗怎么还款\t花呗如何还钱\t1\n借呗额度\t花呗额度\t0\n", encoding="utf-8")
    graded = tmp_path / "graded.data"
    graded.write_text("一个男人在弹吉他\t一个人在弹吉他\t5\n一只猫\t一辆车\t1\n两个人在跑步\t两人在跑\t4\n",
                      encoding="utf-8")
    output = tmp_path / "new" / "pairs.jsonl"

    def prepare(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_pairs.py"), *map(str, args)],
                              capture_output=True, text=True, cwd=ROOT)

    done = prepare(output, binary, graded)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] == [
        {"text_a": "花呗怎么还款", "text_b": "花呗如何还钱"},
        {"text_a": "一个男人在弹吉他", "text_b": "一个人在弹吉他"},
        {"text_a": "两个人在跑步", "text_b": "两人在跑"}]
    before = output.read_bytes()
    refused = prepare(output, binary, tmp_path / "absent.tsv")
    assert refused.returncode == 2 and f"pair file {tmp_path / 'absent.tsv'} does not exist" in refused.stderr
    assert output.read_bytes() == before and os.listdir(tmp_path / "new") == ["pairs.jsonl"]


def test_non_utf8_data_names_file_and_line_and_skip_skips_it(tmp_path):
    data = tmp_path / "gbk.json"
    good = open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8").read().splitlines()
    bad = json.dumps({"text": "花呗怎么还款", "synonyms": ["花呗如何还"]}, ensure_ascii=False).encode("gbk")
    data.write_bytes(("\n".join(good[:3]) + "\n").encode() + bad + b"\n" + ("\n".join(good[3:]) + "\n").encode())
    config = short_config(tmp_path / "run", 2)
    config.data.train = str(data)
    with pytest.raises(DataError, match=rf"{data}, line 4: not UTF-8"):
        Trainer(config)
    config.data.on_error = "skip"
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.report.skipped_records == 1


def test_records_are_counted_once_however_many_passes(tmp_path):
    data = tmp_path / "data.json"
    lines = open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8").read().splitlines()
    data.write_text("\n".join(lines[:4] + ["{broken"]) + "\n", encoding="utf-8")  # 4 groups: passes every 2 steps
    config = short_config(tmp_path / "run", 12)
    config.data.train, config.data.on_error, config.data.shuffle_buffer = str(data), "skip", 2
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.report.skipped_records == 1


def test_a_directory_as_data_is_named(tmp_path):
    config = short_config(tmp_path / "run", 2)
    config.data.train = str(tmp_path)
    with pytest.raises(IsADirectoryError, match=rf"data.train {tmp_path} is a directory"):
        Trainer(config)


def test_a_trailing_tab_is_still_a_tsv(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("花呗怎么还款\t花呗如何还\t1\t\n借呗额度\t信用卡\t0\t\n", encoding="utf-8")
    assert detect_pair_format(str(path)) == "tsv"
    rows = list(read_pair_rows(str(path), problem_handler("raise", None)))
    assert [(first, second, label) for _, first, second, label in rows] == [
        ("花呗怎么还款", "花呗如何还", 1.0), ("借呗额度", "信用卡", 0.0)]


def test_a_pair_file_line_that_is_not_utf8_is_counted_once(tmp_path):
    """Training's `on_error: skip` on a pair file: the layout is told past a GBK first
    line, and that line is counted once (detection and the rows reader both met it)."""
    from simbert.readers import ReadReport, read_pairs

    path = tmp_path / "pairs.txt"
    path.write_bytes("花呗\t借呗\t1\n".encode("gbk") + "花呗怎么还\t花呗如何还款\t1\n今天\t明天\t0\n".encode("utf-8"))
    report = ReadReport()
    groups = list(read_pairs(str(path), on_error="skip", report=report))
    assert groups == [["花呗怎么还", "花呗如何还款"]] and report.skipped_records == 1
