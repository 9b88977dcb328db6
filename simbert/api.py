"""`SimBERT`: load a model directory, encode sentences, generate paraphrases, search.

Flow: `from_pretrained(dir)` -> Tokenizer + UniLM Transformer (pooler 'linear', MLM
'linear') -> `encode` (pooled [CLS], l2-normalised) / `generate` (CachedDecoder) ->
`gen_synonyms` (generate, dedupe, rank by cosine) / `most_similar` (SimilarityIndex).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from simbert.checkpoints import is_hf_directory, read_hf_config, save_pretrained
from simbert.evaluation import Whitening, fit_whitening
from simbert.generation import CachedDecoder
from simbert.models import Transformer, build_transformer_model
from simbert.retrieval import SimilarityIndex
from simbert.tokenizer import Tokenizer

WHITENING_FILE = "whitening.npz"


def resolve_model_directory(path: str | os.PathLike) -> str:
    """A model directory, or the latest `checkpoint-*` inside a training output directory."""
    from simbert.trainer import checkpoint_dirs

    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path} does not exist")
    checkpoints = checkpoint_dirs(path)
    if checkpoints and not os.path.isfile(os.path.join(path, "vocab.txt")):
        return checkpoints[-1][1]
    return path


def infer_model_type(directory: str) -> str | None:
    """'bert' or 'roformer' where the files say it (HF config, our bert_config / trainer state)."""
    candidates = [os.path.join(directory, name) for name in ("config.json", "bert_config.json", "trainer_state.json")]
    for path in candidates:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as reader:
                model_type = json.load(reader).get("model_type")
            if model_type in ("bert", "roformer"):
                return model_type
    return None


class SimBERT:
    """A SimBERT model: one UniLM BERT/RoFormer that embeds and generates.

    Example:
        >>> model = SimBERT.from_pretrained("runs/tiny")
        >>> vectors = model.encode(["今天天气怎么样", "明天会下雨吗"])
        >>> model.gen_synonyms("今天天气怎么样", n=20, k=5)
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, maxlen: int = 64, name: str = ""):
        if backbone.application != "unilm" or backbone.pooler is None:
            raise ValueError("SimBERT needs a Transformer built with application='unilm' and with_pool")
        if tokenizer.vocab_size > backbone.vocab_size:
            raise ValueError(f"the vocabulary has {tokenizer.vocab_size} tokens but the model's embedding has "
                             f"{backbone.vocab_size} rows (a simplified vocab with keep_tokens, or the wrong vocab.txt?)")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.maxlen = maxlen
        self.name = name
        self.encoder = backbone.pooled_encoder()
        self._decoder: CachedDecoder | None = None
        self.index: SimilarityIndex | None = None
        self.whitening: Whitening | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, model: str | None = None, maxlen: int = 64,
                        pre_tokenize: Callable[[str], Iterable[str]] | None = None) -> "SimBERT":
        """Load a released TF-checkpoint directory, a trainer output (its latest checkpoint)
        or an HF directory. `model` ('bert'/'roformer') defaults to what the files say,
        else 'bert'. `maxlen` caps source and generated lengths (tokens)."""
        directory = resolve_model_directory(path)
        model = model or infer_model_type(directory) or "bert"
        vocab_path = os.path.join(directory, "vocab.txt")
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"{directory} has no vocab.txt")
        tokenizer = Tokenizer(vocab_path, do_lower_case=True, pre_tokenize=pre_tokenize)
        if is_hf_directory(directory):
            config = read_hf_config(directory)
        else:
            config = os.path.join(directory, "bert_config.json")
        backbone = build_transformer_model(config, directory, model=model, application="unilm",
                                           with_pool="linear", with_mlm="linear")
        simbert = cls(backbone, tokenizer, maxlen, name=os.path.basename(os.path.normpath(str(path))))
        if os.path.isfile(os.path.join(directory, WHITENING_FILE)):
            simbert.whitening = Whitening.load(os.path.join(directory, WHITENING_FILE))
        return simbert

    def save(self, path: str | os.PathLike) -> None:
        """Write the released layout: bert_config.json, vocab.txt, bert_model.ckpt.*, and
        whitening.npz when a whitening is set."""
        save_pretrained(self.backbone, path, self.tokenizer.token_dict)
        if self.whitening is not None:
            self.whitening.save(os.path.join(path, WHITENING_FILE))

    def fit_whitening(self, texts: Sequence[str], dim: int | None = None, batch_size: int = 64) -> Whitening:
        """Fit BERT-whitening on the raw vectors of `texts` and apply it from now on
        (in `encode`, the index and `gen_synonyms` ranking); `dim` keeps that many dimensions."""
        self.whitening = None
        self.whitening = fit_whitening(self.encode(texts, batch_size=batch_size, normalize=False), dim)
        return self.whitening

    @property
    def dimension(self) -> int:
        """Width of the vectors `encode` returns."""
        return self.whitening.dim if self.whitening is not None else self.backbone.hidden_size

    # ---------------------------------------------------------------- encoding
    def _check_text(self, text: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"expected non-empty text, got {text!r}")
        return text

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True,
               progress: bool = False) -> np.ndarray:
        """Pooled [CLS] vectors of `[CLS] text [SEP]`, one float32 row per text, in order.

        Texts longer than `maxlen` tokens are truncated from the end. Batches are formed
        from texts of similar length to cut padding. With a whitening set, vectors are
        whitened (then normalised if `normalize`).
        """
        if isinstance(texts, str):
            raise ValueError("encode expects a list of texts; wrap a single text in a list")
        encoded = [self.tokenizer.encode(self._check_text(t), maxlen=self.maxlen)[0] for t in texts]
        vectors = np.zeros((len(encoded), self.backbone.hidden_size), "float32")
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="encoding", disable=not progress):
            length = max(len(encoded[i]) for i in batch)
            token_ids = np.zeros((len(batch), length), "int32")
            for row, i in enumerate(batch):
                token_ids[row, : len(encoded[i])] = encoded[i]
            self.backbone.check_inputs(token_ids, np.zeros_like(token_ids))
            vectors[batch] = np.asarray(self.encoder.predict_on_batch([token_ids, np.zeros_like(token_ids)]),
                                        "float32")
        if self.whitening is not None:
            return self.whitening(vectors, normalize)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    # -------------------------------------------------------------- generation
    @property
    def decoder(self) -> CachedDecoder:
        if self._decoder is None:
            self._decoder = CachedDecoder(self.backbone, self.tokenizer.sep_id, self.maxlen, self.maxlen)
        return self._decoder

    def _source_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(self._check_text(text), maxlen=self.maxlen)[0]

    def generate(self, text: str, n: int = 1, topk: int | None = None, topp: float | None = None,
                 temperature: float = 1.0, maxlen: int | None = None, seed: int | None = None) -> list[str]:
        """n sampled continuations of `[CLS] text [SEP]` (text truncated to maxlen tokens)."""
        samples = self.decoder.sample(self._source_ids(text), n, topk, topp, temperature, maxlen, seed)
        return [self.tokenizer.decode(ids) for ids in samples]

    def beam_search(self, text: str, beam_size: int = 4, maxlen: int | None = None) -> str:
        return self.tokenizer.decode(self.decoder.beam_search(self._source_ids(text), beam_size, maxlen))

    def gen_synonyms(self, text: str, n: int = 100, k: int = 20, with_scores: bool = False,
                     topk: int | None = 5, **sampling) -> list:
        """Sample n paraphrases (top-k 5 as the original), drop duplicates and the input,
        rank by cosine to the input's vector and return at most k (with scores if asked)."""
        candidates = [c for c in dict.fromkeys(self.generate(text, n, topk=topk, **sampling))
                      if c and c != text]
        if not candidates or k <= 0:
            return []
        vectors = self.encode([text] + candidates)
        scores = vectors[1:] @ vectors[0]
        order = np.argsort(-scores, kind="stable")[:k]
        if with_scores:
            return [(candidates[i], float(scores[i])) for i in order]
        return [candidates[i] for i in order]

    # --------------------------------------------------------------- retrieval
    def build_index(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                    **index_options) -> SimilarityIndex:
        """Encode `texts` once into a `SimilarityIndex` kept on the model for most_similar."""
        self.index = SimilarityIndex(self.dimension, model_name=self.name, **index_options)
        self.index.add(list(texts), self.encode(texts, batch_size=batch_size, progress=progress))
        return self.index

    def load_index(self, directory: str | os.PathLike) -> SimilarityIndex:
        self.index = SimilarityIndex.load(directory, expected_dimension=self.dimension)
        return self.index

    def most_similar(self, text: str, topn: int = 10) -> list[tuple[str, float]]:
        """The `topn` indexed texts closest to `text`, as (text, cosine) pairs."""
        return self.most_similar_batch([text], topn)[0]

    def most_similar_batch(self, texts: Sequence[str], topn: int = 10) -> list[list[tuple[str, float]]]:
        if self.index is None:
            raise ValueError("no index: call build_index(texts) or load_index(directory) first")
        return self.index.search(self.encode(texts), topn)


def gen_synonyms(model: SimBERT, text: str, n: int = 100, k: int = 20, **options) -> list:
    """The original script's helper: `model.gen_synonyms(text, n, k)`."""
    return model.gen_synonyms(text, n=n, k=k, **options)


def most_similar(model: SimBERT, text: str, corpus: Sequence[str] | None = None, topn: int = 10):
    """The original script's helper: rank `corpus` (or the model's index) against `text`."""
    if corpus is not None:
        model.build_index(corpus)
    return model.most_similar(text, topn)
