"""WordPiece tokenizer with the ids, truncation and decoding of bert4keras 0.11.5.

Text flows: normalise (lower-case, strip accents) -> optional pre-tokenizer (jieba words
kept whole when the vocabulary has them) -> split on spaces, punctuation and CJK
characters -> greedy longest-match WordPiece -> ids.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Callable, Iterable, Sequence

from simbert.errors import FileFormatError, missing_path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
REQUIRED_TOKENS = ("[UNK]", "[CLS]", "[SEP]")
WORD_MEMO_SIZE = 1 << 17  # distinct words a tokenizer remembers the pieces of

# Punctuation after which `decode` removes the following space.
_CJK_PUNCTUATION = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d\uff0f\uff1a"
    "\uff1b\uff1c\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b\uff5c\uff5d"
    "\uff5e\uff5f\uff60\uff62\uff63\uff64\u3000\u3001\u3003\u3008\u3009\u300a\u300b\u300c"
    "\u300d\u300e\u300f\u3010\u3011\u3014\u3015\u3016\u3017\u3018\u3019\u301a\u301b\u301c"
    "\u301d\u301e\u301f\u3030\u303e\u303f\u2013\u2014\u2018\u2019\u201b\u201c\u201d\u201e"
    "\u201f\u2026\u2027\ufe4f\ufe51\ufe54\u00b7\uff01\uff1f\uff61\u3002"
)
_NO_SPACE_AFTER = re.compile(
    "(%s) " % "|".join(re.escape(p) for p in _CJK_PUNCTUATION + "+-/={(<[")
)
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


_CJK_CHARACTER = re.compile("[%s]" % "".join(f"{chr(low)}-{chr(high)}" for low, high in _CJK_RANGES))


def is_cjk_character(ch: str) -> bool:
    """`ch` (one character) lies in one of the CJK ideograph blocks above."""
    return _CJK_CHARACTER.match(ch) is not None


def is_punctuation(ch: str) -> bool:
    """ASCII symbols and every Unicode P* category (full- and half-width)."""
    code = ord(ch)
    return (
        33 <= code <= 47
        or 58 <= code <= 64
        or 91 <= code <= 96
        or 123 <= code <= 126
        or unicodedata.category(ch).startswith("P")
    )


def is_space(ch: str) -> bool:
    return ch in " \n\r\t" or unicodedata.category(ch) == "Zs"


def is_dropped(ch: str) -> bool:
    """NUL, the replacement character, control (Cc) and format (Cf, zero-width) characters."""
    return ord(ch) in (0, 0xFFFD) or unicodedata.category(ch) in ("Cc", "Cf")


def is_special(token: str) -> bool:
    return bool(token) and token[0] == "[" and token[-1] == "]"


def stem(token: str) -> str:
    """The token without its WordPiece continuation prefix `##`."""
    return token[2:] if token.startswith("##") else token


def normalize(text: str) -> str:
    """Lower-case, decompose (NFD) and drop combining marks (accents)."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def is_redundant(token: str) -> bool:
    """A multi-character token holding CJK or punctuation can never be produced."""
    return len(token) > 1 and any(
        is_cjk_character(ch) or is_punctuation(ch) for ch in stem(token)
    )


def check_special_tokens(token_dict: dict[str, int], source: str) -> dict[str, int]:
    """`token_dict`, if it holds [UNK], [CLS] and [SEP]; else a ValueError naming `source`."""
    missing = [t for t in REQUIRED_TOKENS if t not in token_dict]
    if missing:
        raise ValueError(f"{source} lacks the special tokens {missing}; expected {list(SPECIAL_TOKENS)}")
    return token_dict


def load_vocab(
    path: str | os.PathLike,
    encoding: str = "utf-8",
    simplified: bool = False,
    startswith: Sequence[str] | None = None,
):
    """Read a one-token-a-line vocab.

    Returns the token dict; with `simplified=True` returns `(token_dict, keep_tokens)`
    where redundant tokens are dropped, `startswith` tokens come first, and
    `keep_tokens[new_id] = old_id` selects embedding rows of the original checkpoint.
    """
    if not os.path.isfile(path):
        raise missing_path("vocab file", path)
    token_dict: dict[str, int] = {}
    with open(path, encoding=encoding) as reader:
        try:
            for line in reader:
                fields = line.split()
                token = fields[0] if fields else line.strip()
                token_dict[token] = len(token_dict)
        except UnicodeDecodeError as error:
            raise FileFormatError(path, f"line {len(token_dict) + 1} is not {encoding} ({error.reason}); expected "
                                        "one token a line") from None
    if not any(token_dict):
        raise FileFormatError(path, f"holds no token (an empty file); expected one token a line, "
                                    f"{' '.join(SPECIAL_TOKENS)} among them")
    if not simplified:
        return token_dict

    new_dict: dict[str, int] = {}
    keep_tokens: list[int] = []
    check_special_tokens(token_dict, str(path))
    for token in startswith or ():
        if token not in token_dict:
            raise FileFormatError(path, f"lacks {token}, a token the vocabulary should start with")
        new_dict[token] = len(new_dict)
        keep_tokens.append(token_dict[token])
    for token, old_id in sorted(token_dict.items(), key=lambda item: item[1]):
        if token not in new_dict and not is_redundant(token):
            new_dict[token] = len(new_dict)
            keep_tokens.append(old_id)
    return new_dict, keep_tokens


def save_vocab(path: str | os.PathLike, token_dict: dict[str, int]) -> None:
    """Write tokens one a line in id order."""
    with open(path, "w", encoding="utf-8") as writer:
        for token, _ in sorted(token_dict.items(), key=lambda item: item[1]):
            writer.write(token + "\n")


def truncate_sequences(maxlen: int, index: int, *sequences: list) -> None:
    """Pop `index` from the longest sequence (the first on ties) until the total fits."""
    sequences = [s for s in sequences if s]
    while sum(len(s) for s in sequences) > maxlen:
        lengths = [len(s) for s in sequences]
        sequences[lengths.index(max(lengths))].pop(index)


class Tokenizer:
    """BERT WordPiece tokenizer, id-for-id compatible with bert4keras' `Tokenizer`.

    Args:
        vocab: a vocab.txt path or a token -> id dict.
        do_lower_case: lower-case and strip accents (uncased and Chinese models).
        pre_tokenize: optional word splitter for word-level vocabularies, e.g.
            `lambda s: jieba.cut(s, HMM=False)`; words found in the vocab stay whole.
        word_maxlen: words longer than this become one (unknown) token.

    Example:
        >>> tokenizer = Tokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "你": 4})
        >>> tokenizer.encode("你")
        ([2, 4, 3], [0, 0, 0])
    """

    def __init__(
        self,
        vocab: str | os.PathLike | dict[str, int],
        do_lower_case: bool = True,
        pre_tokenize: Callable[[str], Iterable[str]] | None = None,
        word_maxlen: int = 200,
    ):
        if not isinstance(vocab, dict):
            vocab = check_special_tokens(load_vocab(vocab), f"vocab {vocab!s}")
        check_special_tokens(vocab, "the token dict")
        self.token_dict = dict(vocab)
        self.id_dict = {i: t for t, i in self.token_dict.items()}
        self.vocab_size = len(self.token_dict)
        self.do_lower_case = do_lower_case
        self.pre_tokenize = pre_tokenize
        self.word_maxlen = word_maxlen
        self.pad_id = self.token_dict.get("[PAD]", 0)
        self.unk_id = self.token_dict["[UNK]"]
        self.cls_id = self.token_dict["[CLS]"]
        self.sep_id = self.token_dict["[SEP]"]
        self.mask_id = self.token_dict.get("[MASK]")
        # Memos of pure functions of the vocabulary: how a character is split out, a
        # word's WordPiece tokens (bounded: cleared when full) and how an id decodes.
        self._split_forms: dict[str, str] = {}
        self._word_pieces: dict[str, list[str]] = {}
        self._decode_forms: dict[int, tuple[str, bool, bool]] = {}

    # ------------------------------------------------------------------ ids
    def token_to_id(self, token: str) -> int:
        return self.token_dict.get(token, self.unk_id)

    def tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.token_to_id(t) for t in tokens]

    def id_to_token(self, token_id: int) -> str:
        try:
            return self.id_dict[int(token_id)]
        except KeyError:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary (expected 0 <= id < {self.vocab_size})"
            ) from None

    def ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.id_to_token(i) for i in ids]

    # ------------------------------------------------------------- tokenize
    def tokenize(self, text: str, maxlen: int | None = None) -> list[str]:
        """`[CLS] tokens [SEP]`, cut from the end (keeping `[SEP]`) to `maxlen`."""
        tokens = ["[CLS]", *self._tokenize(text), "[SEP]"]
        if maxlen is not None:
            truncate_sequences(maxlen, -2, tokens)
        return tokens

    def encode(
        self, first: str | list[str], second: str | list[str] | None = None, maxlen: int | None = None
    ) -> tuple[list[int], list[int]]:
        """Ids and segment ids of `[CLS] first [SEP]` or `[CLS] first [SEP] second [SEP]`.

        With `maxlen`, the longer part loses tokens from its end (its `[SEP]` kept) until
        the whole sequence is at most `maxlen` long.
        """
        first_tokens = self.tokenize(first) if isinstance(first, str) else list(first)
        second_tokens = None
        if second is not None:
            second_tokens = self.tokenize(second) if isinstance(second, str) else list(second)
        if maxlen is not None:
            # The second part's [CLS] is still present and removed below.
            truncate_sequences(maxlen + (second is not None), -2, first_tokens, second_tokens)
        token_ids = self.tokens_to_ids(first_tokens)
        segment_ids = [0] * len(token_ids)
        if second_tokens is not None:
            second_ids = self.tokens_to_ids(second_tokens[1:])
            token_ids += second_ids
            segment_ids += [1] * len(second_ids)
        return token_ids, segment_ids

    def _tokenize(self, text: str, pre_tokenize: bool = True) -> list[str]:
        if self.do_lower_case:
            text = normalize(text)
        if pre_tokenize and self.pre_tokenize is not None:
            tokens = []
            for word in self.pre_tokenize(text):
                if word in self.token_dict:
                    tokens.append(word)
                else:
                    tokens.extend(self._tokenize(word, pre_tokenize=False))
            return tokens
        forms = self._split_forms
        spaced = "".join([forms[ch] if ch in forms else self._split_form(ch) for ch in text])
        pieces = self._word_pieces
        tokens = []
        for word in spaced.split():
            known = pieces.get(word)  # one lookup: another thread may clear the memo between two
            tokens.extend(known if known is not None else self._word_piece(word))
        return tokens

    def _split_form(self, ch: str) -> str:
        """`ch` as it enters the split on spaces: punctuation and CJK characters spaced
        apart, spaces as a space, dropped characters as nothing."""
        if is_punctuation(ch) or is_cjk_character(ch):
            form = f" {ch} "
        elif is_space(ch):
            form = " "
        else:
            form = "" if is_dropped(ch) else ch
        self._split_forms[ch] = form
        return form

    def _word_piece(self, word: str) -> list[str]:
        """Greedy longest-match-first WordPiece (memoised); an unsplittable word stays whole."""
        if len(self._word_pieces) >= WORD_MEMO_SIZE:
            self._word_pieces.clear()
        tokens = self._word_pieces[word] = self._split_word(word)
        return tokens

    def _split_word(self, word: str) -> list[str]:
        if len(word) > self.word_maxlen:
            return [word]
        tokens, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_dict:
                    break
                end -= 1
            if end == start:
                return [word]
            tokens.append(piece)
            start = end
        return tokens

    # --------------------------------------------------------------- decode
    def decode(self, ids: Iterable[int]) -> str:
        """Readable text: special tokens dropped, word pieces merged, CJK unspaced.

        bert4keras' rules, per token (looked up once per id, `_decode_form`): `##x` adds
        `x`; one CJK character adds itself; one punctuation mark adds itself and a space;
        any other token adds itself after a CJK character, else a space and itself. Then
        runs of spaces become one, and no space is kept after CJK punctuation, `+-/={(<[`,
        in `'s`-style contractions or inside a decimal number (all need a space to apply).
        """
        forms = self._decode_forms
        parts, after_cjk = [], False
        for token_id in ids:
            piece, joins, ends_cjk = forms.get(token_id) or self._decode_form(token_id)
            if not joins:
                piece = piece if parts and after_cjk else " " + piece
            if piece:
                parts.append(piece)
                after_cjk = ends_cjk
        text = "".join(parts)
        if " " in text:
            text = re.sub(" +", " ", text)
            text = re.sub("' (re|m|s|t|ve|d|ll) ", "'\\1 ", text)
            text = _NO_SPACE_AFTER.sub("\\1", text)
            text = re.sub(r"(\d\.) (\d)", "\\1\\2", text)
        return text.strip()

    def _decode_form(self, token_id: int) -> tuple[str, bool, bool]:
        """How token `token_id` enters `decode`: `(piece, joins, ends_cjk)`, the text it
        adds, whether it adds it as it is (else it follows a CJK character unspaced,
        anything else after a space) and whether that text ends in a CJK character. A
        special token adds nothing."""
        token = self.id_to_token(token_id)
        if is_special(token):
            form = ("", True, False)
        elif token.startswith("##"):
            form = (token[2:], True, bool(token[2:]) and is_cjk_character(token[-1]))
        elif len(token) == 1 and is_cjk_character(token):
            form = (token, True, True)
        elif len(token) == 1 and is_punctuation(token):
            form = (token + " ", True, False)
        else:
            form = (token, False, bool(token) and is_cjk_character(token[-1]))
        self._decode_forms[token_id] = form
        return form

    def rematch(self, text: str, tokens: Sequence[str]) -> list[list[int]]:
        """For each token, the indices of the characters of `text` it came from."""
        if self.do_lower_case:
            text = text.lower()
        normalized, char_map = "", []
        for i, ch in enumerate(text):
            if self.do_lower_case:
                ch = normalize(ch)
            ch = "".join(c for c in ch if not is_dropped(c))
            normalized += ch
            char_map.extend([i] * len(ch))
        mapping, offset = [], 0
        for token in tokens:
            if is_special(token):
                mapping.append([])
                continue
            token = stem(token)
            start = normalized.index(token, offset)
            end = start + len(token)
            mapping.append(char_map[start:end])
            offset = end
        return mapping
