"""Batches drawn from several files (`data.file_batches`): mixed, round robin and
proportional streams, their resumption, and the trainer reading one file at a time."""

import collections
import itertools
import json
import os

import pytest

from helpers import ROOT, short_config
from simbert.batch_sampling import sampled_batches
from simbert.config import DataConfig
from simbert.data import PairSampler
from simbert.errors import DataError
from simbert.labelled_pairs import labelled_training_batches, read_training_pairs
from simbert.tokenizer import Tokenizer

SIZES = (3, 12, 5)  # groups in each file


def file_groups(index):
    return [[f"f{index} g{group} a", f"f{index} g{group} b"] for group in range(SIZES[index])]


def read_records(index=None):
    return iter(file_groups(index) if index is not None else
                [group for number in range(len(SIZES)) for group in file_groups(number)])


def make_sampler(read, seed):
    return PairSampler(read, max_chars=32, seed=seed)


def batches(mode, start_step=0, per_batch=4, seed=7):
    return sampled_batches(make_sampler, read_records, ["a", "b", "c"], mode, seed, per_batch, start_step)


def file_of(batch):
    return {pair[0].split()[0] for pair in batch}


def test_mixed_is_one_sampler_over_every_file():
    stream = iter(PairSampler(read_records, max_chars=32, seed=7))
    expected = [[next(stream) for _ in range(4)] for _ in range(30)]
    assert list(itertools.islice(batches("mixed"), 30)) == expected
    assert any(len(file_of(batch)) > 1 for batch in expected)


def test_round_robin_draws_each_batch_from_one_file_in_turn():
    drawn = list(itertools.islice(batches("round_robin"), 30))
    assert [file_of(batch) for batch in drawn] == [{f"f{step % 3}"} for step in range(30)]
    # Each file's batches are its own seeded sampler's stream, whatever the other files hold.
    own = iter(PairSampler(lambda: read_records(1), max_chars=32, seed="7/file 1"))
    assert [pair for batch in drawn[1::3] for pair in batch] == [next(own) for _ in range(40)]


def test_proportional_draws_files_by_their_sizes():
    counts = collections.Counter(file_of(batch).pop() for batch in itertools.islice(batches("proportional"), 4000))
    for index, size in enumerate(SIZES):  # binomial, 4000 draws: 5 standard deviations is under 0.04
        assert abs(counts[f"f{index}"] / 4000 - size / sum(SIZES)) < 0.04
    assert all(len(file_of(batch)) == 1 for batch in itertools.islice(batches("proportional"), 50))


@pytest.mark.parametrize("mode", ["mixed", "round_robin", "proportional"])
def test_a_resumed_stream_is_the_uninterrupted_one(mode):
    whole = list(itertools.islice(batches(mode), 40))
    assert list(itertools.islice(batches(mode, start_step=17), 23)) == whole[17:]
    assert list(itertools.islice(batches(mode, seed=8), 40)) != whole


@pytest.mark.parametrize("mode", ["round_robin", "proportional"])
def test_a_file_without_records_is_named(mode):
    def read_with_empty(index=None):
        return iter([]) if index == 2 else read_records(index)

    stream = sampled_batches(make_sampler, read_with_empty, ["a.json", "b.json", "empty.json"], mode, 1, 4)
    with pytest.raises(DataError, match="empty.json.*no usable"):
        list(itertools.islice(stream, 60))


def test_a_bad_record_keeps_its_own_message(tmp_path):
    """A reader's error names its file and line; the per-file sampling adds nothing."""
    def read_failing(index=None):
        if index == 1:
            raise DataError("b.json, line 2: not a JSON record")
        return read_records(index)

    stream = sampled_batches(make_sampler, read_failing, ["a.json", "b.json", "c.json"], "round_robin", 1, 4)
    with pytest.raises(DataError) as raised:
        list(itertools.islice(stream, 3))
    assert str(raised.value) == "b.json, line 2: not a JSON record"


def write_pairs(path, prefix, rows):
    path.write_text("".join(f"{prefix}{i}甲\t{prefix}{i}乙\t{i % 2}\n" for i in range(rows)), encoding="utf-8")
    return str(path)


def test_cosent_batches_of_one_file_carry_its_number(tmp_path):
    """Through the pair reader: every row of a round-robin CoSENT batch is of one file,
    and its targets carry that file's number (CoSENT compares within it)."""
    files = [write_pairs(tmp_path / "one.tsv", "一", 9), write_pairs(tmp_path / "two.tsv", "二", 30)]
    data = DataConfig(train=files, format="labelled_pairs", file_batches="round_robin")
    characters = sorted({character for path in files for character in open(path, encoding="utf-8").read()
                         if character.strip()})
    tokenizer = Tokenizer({token: index for index, token in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters])})

    def read(source=None):
        return read_training_pairs(data, report=None, source=source)

    stream = labelled_training_batches(read, tokenizer, data, batch_size=8, seed=3)
    for step, (inputs, targets) in enumerate(itertools.islice(stream, 6)):
        assert set(targets["cosent"][:, 1]) == {step % 2}
        first_tokens = {tokenizer.id_to_token(int(ids[1])) for ids in inputs[0]}
        assert first_tokens == {"一二"[step % 2]}


def group_files(tmp_path, parts):
    """Groups files, a part of data_sample.json's lines each after an unreadable first
    line, and a vocabulary of their characters (so the trainer reads no file whole
    before training)."""
    lines = open(os.path.join(ROOT, "data_sample.json"), encoding="utf-8").read().splitlines()
    files = []
    for index, part in enumerate(parts):
        files.append(str(tmp_path / f"part{index}.json"))
        with open(files[-1], "w", encoding="utf-8") as writer:
            writer.write("\n".join(["{broken", *(lines[number] for number in part)]) + "\n")
    vocab = tmp_path / "vocab.txt"
    characters = sorted({character for line in lines for record in [json.loads(line)]
                         for text in [record["text"], *record["synonyms"]] for character in text})
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters]) + "\n", encoding="utf-8")
    return files, str(vocab)


@pytest.mark.parametrize("mode, sample_every", [("round_robin", 0), ("proportional", 3)])
def test_the_trainer_reads_one_file_at_a_time_and_counts_skips_once(tmp_path, mode, sample_every):
    """A run on two files, each with an unreadable first line: both lines are counted
    once, however many passes the run makes over each file (proportional's count of
    records, the samples' texts and the check of each file included)."""
    from simbert.trainer import Trainer

    files, vocab = group_files(tmp_path, (range(3), range(3, 8)))
    config = short_config(tmp_path / "run", 6)
    config.data.train, config.data.on_error, config.model.vocab = files, "skip", vocab
    config.data.file_batches, config.data.shuffle_buffer = mode, 2
    config.output.sample_every = sample_every
    trainer = Trainer(config)
    result = trainer.fit()
    assert result.checkpoint.endswith("checkpoint-0000006")
    assert trainer.report.skipped_records == 2


def test_a_file_without_a_usable_record_is_named_before_training(tmp_path):
    from simbert.trainer import Trainer

    files, vocab = group_files(tmp_path, (range(3), []))
    config = short_config(tmp_path / "run", 6)
    config.data.train, config.data.on_error, config.model.vocab = files, "skip", vocab
    config.data.file_batches = "round_robin"
    with pytest.raises(DataError, match=rf"data.train {files[1]} holds no usable record; data.file_batches"):
        Trainer(config)
    config.data.file_batches = "mixed"  # the other file's records are enough
    Trainer(config)
