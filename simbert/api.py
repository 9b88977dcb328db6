"""`SimBERT`: load a model directory, encode sentences, generate paraphrases, search.

Flow: `from_pretrained(dir)` -> `directories.load_pretrained` (Tokenizer + UniLM
Transformer, pooler 'linear', MLM 'linear') -> `encode` (SourcePass: pooled [CLS],
l2-normalised) / `generate` (CachedDecoder, prefilled by the same SourcePass) ->
`gen_synonyms` (generate, dedupe, rank by cosine) / `most_similar` (SimilarityIndex).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import threading
from typing import Callable, Iterable, Sequence

import keras
import numpy as np
from tqdm import tqdm

from simbert.arguments import check_integer, check_precision
from simbert.compiled import use_compilation_cache
from simbert.directories import WHITENING_FILE, load_pretrained, save_pretrained, with_latest_checkpoint
from simbert.distribution import InferenceLayout, inference_layout
from simbert.generation import CachedDecoder
from simbert.gibbs import GibbsSampler
from simbert.index_parts import PART_KEY, CorpusPart
from simbert.kernels import Platform, check_backend
from simbert.models import Transformer
from simbert.pair_classifier import PairScorer, rerank_candidates
from simbert.retrieval import (
    INDEX_SETTINGS,
    IndexLock,
    IndexWriter,
    SimilarityIndex,
    Whitening,
    fit_whitening,
    l2_normalize,
)
from simbert.shapes import ShapeBuckets
from simbert.source_pass import SourcePass
from simbert.tokenizer import Tokenizer

SYNONYM_BATCH = 64  # texts gen_synonyms encodes per batch (its input and candidates)
ENCODE_IN_FLIGHT = 4  # batches `encode` starts before reading the first of them back
RERANK_TOP = 50  # candidates `most_similar(..., rerank=)` re-scores by default

logger = logging.getLogger(__name__)


class SimBERT:
    """A SimBERT model: one UniLM BERT/RoFormer that embeds and generates.

    Usually made by `SimBERT.from_pretrained`. Loading or calling it changes no
    process-wide setting (see `simbert.use_compilation_cache`).

    Args:
        backbone: a `Transformer` built with `application="unilm"` and a pooler.
        tokenizer: the `Tokenizer` of the backbone's vocabulary.
        max_tokens: caps each encoded text and each source (`[CLS] text [SEP]`, longer
            texts are cut from the end) and the tokens a generated text may have.
        name: the model's name, recorded by the indexes it builds.
        distribution: where `encode` runs, as the recipe's `training.distribution`:
            "auto" (every local device when the JAX backend sees more than one, else one),
            "none" (one device; the default here, which leaves the variables of a
            backbone built elsewhere, e.g. a trainer's, where they are) or
            "data_parallel" (JAX only); or an `InferenceLayout`. Over several devices the
            variables are replicated and each encode batch is split by rows over them;
            generation runs the same program on each. `from_pretrained` defaults to "auto".

    Example:
        >>> model = SimBERT.from_pretrained("runs/tiny")
        >>> vectors = model.encode(["今天天气怎么样", "明天会下雨吗"])
        >>> model.gen_synonyms("今天天气怎么样", n=20, k=5)
    """

    def __init__(self, backbone: Transformer, tokenizer: Tokenizer, max_tokens: int = 64, name: str = "",
                 distribution: str | InferenceLayout = "none"):
        if backbone.application != "unilm" or backbone.pooler is None:
            raise ValueError("SimBERT needs a Transformer built with application='unilm' and with_pool")
        check_integer("max_tokens", max_tokens, 3)
        if tokenizer.vocab_size > backbone.config.vocab_size:
            raise ValueError(f"the vocabulary has {tokenizer.vocab_size} tokens but the model's embedding has "
                             f"{backbone.config.vocab_size} rows (a simplified vocab with keep_tokens, or the "
                             "wrong vocab.txt?)")
        self.layout = distribution if isinstance(distribution, InferenceLayout) else inference_layout(distribution)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.name = name
        self.layout.replicate(backbone.variables)
        if self.layout.distribution is not None:
            logger.info("encoding %s", self.layout.describe())
        # On JAX each padded shape is a program compiled once, so batches are padded to
        # buckets (see `simbert.shapes`); TensorFlow's one graph takes any shape, so there
        # padding would only add work (100 gen_synonyms candidates of 34 tokens: 128 x 48).
        per_shape = Platform.current().compiles_per_shape
        self.shapes = ShapeBuckets(length_step=16 if per_shape else 1, pad_rows=per_shape,
                                   max_length=min(max_tokens, backbone.config.max_length or max_tokens))
        # One forward pass for encode and the sampler's prefill (one graph on TensorFlow).
        self.source_pass = SourcePass(backbone, place=self.layout.shard)
        self._decoder: CachedDecoder | None = None
        self._gibbs: GibbsSampler | None = None
        self._decoder_lock = threading.Lock()
        self.index: SimilarityIndex | None = None
        self.whitening: Whitening | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, model_type: str | None = None, max_tokens: int = 64,
                        pre_tokenize: Callable[[str], Iterable[str]] | None = None,
                        compilation_cache: str | None = None, precision: str | None = None,
                        distribution: str = "auto",
                        hierarchical_position: bool | float | None = None) -> "SimBERT":
        """Load a released TF-checkpoint directory, a trainer output (its latest checkpoint)
        or an HF directory. A whitening.npz beside the weights is applied.

        Args:
            path: a released directory (bert_config.json, vocab.txt, bert_model.ckpt.*), a
                training output directory (its newest checkpoint, read whole while the run
                goes on), or a Hugging Face directory (config.json + model.safetensors or
                pytorch_model.bin).
            model_type: "bert" or "roformer" (default: what the files say, else "bert").
            max_tokens: tokens kept per text and per generated text (at least 3).
            pre_tokenize: splits a text into words before WordPiece (jieba for word-level
                RoFormer / WoBERT vocabularies; default: none).
            compilation_cache: None (the default) leaves the process's compilation
                settings alone; a directory (or "default": ~/.cache/simbert/xla) first
                calls `simbert.use_compilation_cache(compilation_cache)`, which keeps
                compiled programs there for later processes (a process-wide setting: the
                caller's choice).
            precision: the dtype policy the model computes in (`PRECISIONS`; default
                Keras' global one, float32 unless set): "mixed_bfloat16" keeps float32
                weights and computes in bfloat16 (LayerNorm, GELU and softmax in
                float32), the GPU's fast path; its vectors differ a little from float32's
                (docs/benchmarks.md).
            distribution: "auto", "none" or "data_parallel": where `encode` runs (see
                `SimBERT`); on JAX "auto" splits each batch over every local device.
            hierarchical_position: a BERT's n learned positions stretched to n^2 (True:
                alpha 0.4, or an alpha; False: off; None: as the directory says), so
                `max_tokens` may go past n. RoFormer takes any length without it.

        Returns:
            The `SimBERT`.

        Example:
            >>> model = SimBERT.from_pretrained("chinese_simbert_L-12_H-768_A-12")
            >>> roformer = SimBERT.from_pretrained("chinese_roformer-sim-char_L-12_H-768_A-12",
            ...                                    model_type="roformer", precision="mixed_bfloat16")
            >>> on_all = SimBERT.from_pretrained("runs/tiny", distribution="data_parallel")  # JAX
        """
        check_backend()
        if precision is not None:
            check_precision("precision", precision)
        layout = inference_layout(distribution)  # a refused mode stops before the weights are read
        use_compilation_cache(compilation_cache)

        def read(directory: str) -> "SimBERT":
            tokenizer, backbone = load_pretrained(directory, model_type, pre_tokenize=pre_tokenize, dtype=precision,
                                                  hierarchical_position=hierarchical_position)
            simbert = cls(backbone, tokenizer, max_tokens, name=os.path.basename(os.path.normpath(str(path))),
                          distribution=layout)
            if os.path.isfile(os.path.join(directory, WHITENING_FILE)):
                simbert.whitening = Whitening.load(os.path.join(directory, WHITENING_FILE))
            return simbert

        return with_latest_checkpoint(path, read)

    def save(self, path: str | os.PathLike) -> None:
        """Write a model directory (`simbert.directories.save_pretrained`), and
        whitening.npz when a whitening is set (else a whitening.npz already there, which
        loading would apply, is removed).

        Args:
            path: the directory to write; `SimBERT.from_pretrained(path)` reads it back.

        Example:
            >>> model.fit_whitening(corpus, dim=256)
            >>> model.save("runs/whitened")
        """
        save_pretrained(self.backbone, path, self.tokenizer.token_dict)
        whitening_path = os.path.join(path, WHITENING_FILE)
        if self.whitening is not None:
            self.whitening.save(whitening_path)
        elif os.path.exists(whitening_path):
            os.remove(whitening_path)

    def fit_whitening(self, texts: Sequence[str], dim: int | None = None, batch_size: int = 64) -> Whitening:
        """Fit BERT-whitening on the raw vectors of `texts` and apply it from now on
        (in `encode`, the index and `gen_synonyms` ranking).

        Args:
            texts: the corpus to fit on (at least two texts).
            dim: dimensions kept (default: all).
            batch_size: texts encoded per batch.

        Returns:
            The `Whitening` (mean and transform), also kept as `model.whitening`.

        Example:
            >>> model.fit_whitening(corpus_sentences, dim=256)
            >>> model.encode(["花呗怎么还款"]).shape
            (1, 256)
        """
        self.whitening = None
        self.whitening = fit_whitening(self.encode(texts, batch_size=batch_size, normalize=False), dim)
        return self.whitening

    @property
    def compiled_programs(self) -> int:
        """Programs compiled so far by `encode` and the sampler (each distinct input shape
        of a compiled function is one; see `simbert.shapes` for how few there are)."""
        programs = self._decoder.compiled_programs if self._decoder is not None else self.source_pass.programs
        return programs + (self._gibbs.compiled_programs if self._gibbs is not None else 0)

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the config and the tensors that place the vectors
        (pooler, the last block's output LayerNorm, a whitening): recorded by an index to
        tell the model that built it from another."""
        digest = hashlib.sha256(json.dumps(self.backbone.config.to_dict(), sort_keys=True).encode())
        norm = self.backbone.blocks[-1].output_norm
        arrays = [keras.ops.convert_to_numpy(v) for v in (*self.backbone.pooler.weights, *norm.weights)]
        if self.whitening is not None:
            arrays += [self.whitening.mean, self.whitening.transform]
        for array in arrays:
            digest.update(np.ascontiguousarray(array, "float32").tobytes())
        return digest.hexdigest()[:16]

    @property
    def dimension(self) -> int:
        """Width of the vectors `encode` returns."""
        return self.whitening.dim if self.whitening is not None else self.backbone.config.hidden_size

    # ---------------------------------------------------------------- encoding
    def _source_ids(self, text: str, name: str = "text") -> list[int]:
        """`[CLS] text [SEP]`, cut to `max_tokens`; a text with no token once the tokenizer
        has cleaned it (empty, only spaces, control or zero-width characters) raises
        naming it (`name`: how the caller calls it)."""
        if not isinstance(text, str):
            raise ValueError(f"{name} should be a string, got {type(text).__name__} {text!r}")
        ids = self.tokenizer.encode(text, maxlen=self.max_tokens)[0]
        if len(ids) <= 2:
            raise ValueError(f"{name} {text!r} has no token once cleaned (empty, or only spaces, control or "
                             f"zero-width characters)")
        return ids

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True,
               progress: bool = False) -> np.ndarray:
        """Pooled [CLS] vectors of `[CLS] text [SEP]`, one float32 row per text, in order.

        Texts longer than `max_tokens` tokens are truncated from the end. Batches are
        formed from texts of similar length to cut padding, then padded to the buckets of
        `self.shapes` (padding is masked, padded rows are dropped: the vectors are those
        of the texts alone). With a whitening set, vectors are whitened (then normalised
        if `normalize`).

        Args:
            texts: a list of strings (a text with no token once cleaned raises ValueError).
            batch_size: texts per batch.
            normalize: l2-normalise the rows (False: the raw pooled vectors).
            progress: show a progress bar over the batches.

        Returns:
            A float32 array of shape `(len(texts), model.dimension)`.

        Example:
            >>> vectors = model.encode(["微信和支付宝哪个好", "支付宝和微信哪个更好用"])
            >>> float(vectors[0] @ vectors[1])          # cosine similarity
        """
        if isinstance(texts, str):
            raise ValueError("encode expects a list of texts; wrap a single text in a list")
        check_integer("batch_size", batch_size)
        return self._encode_ids([self._source_ids(text, f"texts[{i}]") for i, text in enumerate(texts)],
                                batch_size, normalize, progress)

    def _encode_ids(self, encoded: list[list[int]], batch_size: int = 64, normalize: bool = True,
                    progress: bool = False) -> np.ndarray:
        """`encode` of texts already turned into `[CLS] ... [SEP]` ids."""
        vectors = np.zeros((len(encoded), self.backbone.config.hidden_size), "float32")
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        # Every shape this call needs is known now: their programs are built side by side.
        self.source_pass.prepare_pooled({self._padded_shape([len(encoded[i]) for i in batch], batch_size)
                                         for batch in batches})

        def read_back(rows, pooled):
            vectors[rows] = np.asarray(keras.ops.convert_to_numpy(pooled)[: len(rows)], "float32")

        # Reading a batch back waits for the device; the batches after it are started
        # first (on JAX, which dispatches asynchronously), so that the device is not idle
        # while the host pads the next batch or compiles its shape.
        in_flight = collections.deque()
        for batch in tqdm(batches, desc="encoding", disable=not progress):
            token_ids = self._padded([encoded[i] for i in batch], batch_size)
            self.backbone.check_inputs(token_ids, np.zeros_like(token_ids))
            in_flight.append((batch, self.source_pass.pooled(token_ids)))
            if len(in_flight) > ENCODE_IN_FLIGHT:
                read_back(*in_flight.popleft())
        for rows, pooled in in_flight:
            read_back(rows, pooled)
        if self.whitening is not None:
            return self.whitening(vectors, normalize)
        return l2_normalize(vectors) if normalize else vectors

    def _padded_shape(self, lengths: Sequence[int], batch_size: int) -> tuple[int, int]:
        """`(rows, length)` of the padded batch: `self.shapes`' bucket, its rows rounded up
        to a multiple of the devices the batch is split over."""
        rows, length = self.shapes.shape(lengths, batch_size)
        return self.layout.rows(rows), length

    def _padded(self, sequences: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
        """`self.shapes.pad(sequences)`, with zero rows up to `_padded_shape`'s."""
        token_ids = self.shapes.pad(sequences, batch_size)
        rows = self.layout.rows(len(token_ids))
        return np.pad(token_ids, ((0, rows - len(token_ids)), (0, 0))) if rows > len(token_ids) else token_ids

    def warm_up(self, batch_size: int = 64, sample_rows: Sequence[int] = ()) -> int:
        """Compile now what later calls would compile: `encode` for every padded shape of
        batches up to `batch_size` (on TensorFlow its one graph), and for each of
        `sample_rows` (`CachedDecoder.sample`'s `rows`) the sampler, with the shapes
        gen_synonyms encodes its candidates in.

        Args:
            batch_size: the largest `encode` batch to prepare for.
            sample_rows: sampler sizes (`generate`'s `rows`) to compile.

        Returns:
            The number of programs compiled.

        Example:
            >>> model.warm_up(64, sample_rows=(32,))    # what `simbert serve` does at start
        """
        before = self.compiled_programs
        shapes = [(1, self.shapes.max_length)]
        if self.shapes.pad_rows:
            sizes = {batch_size, SYNONYM_BATCH} if sample_rows else {batch_size}
            shapes = sorted({(self.layout.rows(rows), length) for size in sizes
                             for rows, length in self.shapes.shapes(size)})
        self.source_pass.prepare_pooled(shapes)  # built in other threads while the samplers compile
        source = [self.tokenizer.cls_id, self.tokenizer.sep_id]
        for rows in sample_rows:
            self.decoder.sample(source, n=rows, topk=5, rows=rows)
        for rows, length in shapes:
            token_ids = np.zeros((rows, length), "int32")
            token_ids[:, 0], token_ids[:, 1] = self.tokenizer.cls_id, self.tokenizer.sep_id
            self.source_pass.pooled(token_ids)
        return self.compiled_programs - before

    # -------------------------------------------------------------- generation
    @property
    def decoder(self) -> CachedDecoder:
        with self._decoder_lock:  # made once, by the first of concurrent callers
            if self._decoder is None:
                self._decoder = CachedDecoder(self.backbone, self.tokenizer.sep_id, self.max_tokens,
                                              self.max_tokens, self.source_pass)
        return self._decoder

    def generate(self, text: str, n: int = 1, topk: int | None = None, topp: float | None = None,
                 temperature: float = 1.0, max_new_tokens: int | None = None, seed: int | None = None,
                 progress: bool = False, rows: int | None = None,
                 cancel: threading.Event | None = None) -> list[str]:
        """n sampled continuations of `[CLS] text [SEP]`, each at most `max_new_tokens`
        (default and cap: `max_tokens`) tokens; drawn `rows` at a time in chunks of
        bounded memory (see `CachedDecoder.sample`), with a progress bar over the chunks
        if asked.

        Args:
            text: the source text.
            n: samples to draw (at least 1).
            topk: sample from the `topk` most likely tokens (None: all).
            topp: then from the smallest set of them whose probability reaches `topp`.
            temperature: divide the logits by it (above 0).
            max_new_tokens: tokens a sample may have (default and cap: `max_tokens`).
            seed: seed of the sampling noise (the samples are the same for any `rows`).
            progress: show a progress bar over the chunks.
            rows: samples drawn per compiled call (default: n, at most 128).
            cancel: an event another thread may set to stop before the next chunk
                (raises `simbert.generation.SamplingCancelled`; a server's timeout uses it).

        Returns:
            A list of n decoded texts, duplicates and the input included.

        Example:
            >>> model.generate("明天北京会下雨吗", n=5, topk=5, seed=0)
        """
        return self._decoded_samples(self._source_ids(text), n, topk=topk, topp=topp, temperature=temperature,
                                     max_new_tokens=max_new_tokens, seed=seed, progress=progress, rows=rows,
                                     cancel=cancel)

    def _decoded_samples(self, source_ids: list[int], n: int, **sampling) -> list[str]:
        """`CachedDecoder.sample` of `source_ids`, each sample decoded to text."""
        return [self.tokenizer.decode(ids) for ids in self.decoder.sample(source_ids, n, **sampling)]

    @property
    def gibbs_sampler(self) -> GibbsSampler:
        """The Gibbs sampler of the MLM head (`simbert.gibbs`), made on first use."""
        with self._decoder_lock:  # made once, by the first of concurrent callers
            if self._gibbs is None:
                # Lengths up to this model's limit, in buckets of 16 on every backend.
                self._gibbs = GibbsSampler.from_tokenizer(self.backbone, self.tokenizer,
                                                          shapes=ShapeBuckets(max_length=self.shapes.max_length))
        return self._gibbs

    def gibbs_sample(self, text: str | None = None, length: int | None = None, n: int = 1, steps: int = 200,
                     burn_in: int = 50, topk: int | None = None, temperature: float = 1.0,
                     positions: Sequence[int] | None = None, seed: int | None = None) -> list[list[str]]:
        """Sentences drawn by Gibbs sampling with the MLM head (`simbert.gibbs`): n chains
        start from `[CLS] text [SEP]` (editing the text) or from `length` `[MASK]`s; at each
        step every chain masks one of its editable tokens, drawn uniformly, and writes back a
        token sampled from the MLM's distribution there (never a special token). `[CLS]`,
        `[SEP]` and the length never change. The chains run side by side in one compiled
        loop; the same seed gives the same samples, on TensorFlow and on JAX.

        Args:
            text: the text to edit (cut to `max_tokens` tokens); None to start from `length`.
            length: tokens of a sentence sampled from `[MASK]`s, 1 .. the model's length
                limit (`max_tokens`, within its positions) - 2 (no `text`).
            n: chains (at least 1).
            steps: steps per chain, one token resampled at each (at least 1).
            burn_in: first steps whose samples are dropped, 0 .. steps - 1.
            topk: sample from the `topk` most likely tokens (None: every token but the
                special ones).
            temperature: divide the logits by it (above 0).
            positions: the tokens that may change, counted from 0 after `[CLS]` (default all).
            seed: seed of the noise (positions and draws).

        Returns:
            n lists, one a chain, of `steps - burn_in` decoded texts: chain c's text after
            `burn_in + k + 1` steps at `[c][k]`.

        Example:
            >>> chains = model.gibbs_sample("科学技术是第一生产力", n=4, steps=200, burn_in=50, seed=0)
            >>> chains[0][-1]                                    # chain 0's last sample
            >>> model.gibbs_sample(length=12, n=2, topk=20, positions=[0, 1, 2], seed=1)
        """
        if (text is None) == (length is None):
            raise ValueError("gibbs_sample takes a text to edit or a length to sample from [MASK]s, one of the two; "
                             f"got text={text!r}, length={length!r}")
        sampler = self.gibbs_sampler  # a vocabulary without [MASK] is refused here
        if text is not None:
            start = self._source_ids(text)
        else:
            check_integer("length", length, 1, self.shapes.max_length - 2)
            tokenizer = self.tokenizer
            start = [tokenizer.cls_id] + [tokenizer.mask_id] * length + [tokenizer.sep_id]
        samples = sampler.sample(start, n=n, steps=steps, burn_in=burn_in, topk=topk, temperature=temperature,
                                 positions=positions, seed=seed)
        return [[self.tokenizer.decode(ids) for ids in chain] for chain in samples]

    def beam_search(self, text: str, beam_size: int = 4, max_new_tokens: int | None = None) -> str:
        """The most likely continuation of `[CLS] text [SEP]` by beam search.

        Args:
            text: the source text.
            beam_size: hypotheses kept at each step.
            max_new_tokens: tokens the result may have (default and cap: `max_tokens`).

        Returns:
            The decoded text.

        Example:
            >>> model.beam_search("明天北京会下雨吗", beam_size=4)
        """
        return self.tokenizer.decode(self.decoder.beam_search(self._source_ids(text), beam_size, max_new_tokens))

    def gen_synonyms(self, text: str, n: int = 100, k: int = 20, with_scores: bool = False,
                     topk: int | None = 5, **sampling) -> list:
        """Sample n paraphrases (top-k 5 as the original), drop duplicates and the input,
        rank by cosine to the input's vector and return at most k (with scores if asked).

        Args:
            text: the text to paraphrase.
            n: samples to draw (at least 1).
            k: paraphrases to return at most (at least 1; fewer when samples repeat).
            with_scores: return `(text, cosine)` pairs instead of texts.
            topk: sampling's top-k (default 5, the original script's setting).
            **sampling: more of `generate`'s options (`topp`, `temperature`, `seed`, `cancel`, ...).

        Returns:
            The paraphrases, most similar first: texts, or `(text, cosine)` pairs.

        Example:
            >>> model.gen_synonyms("微信和支付宝哪个好", n=100, k=20)
        """
        check_integer("k", k)
        source = self._source_ids(text)
        candidates, encoded = [], [source]
        for candidate in dict.fromkeys(self._decoded_samples(source, n, topk=topk, **sampling)):
            if candidate == text:
                continue
            ids = self.tokenizer.encode(candidate, maxlen=self.max_tokens)[0]
            if len(ids) > 2:  # a token besides [CLS] and [SEP]
                candidates.append(candidate)
                encoded.append(ids)
        if not candidates:
            return []
        vectors = self._encode_ids(encoded, SYNONYM_BATCH)
        scores = vectors[1:] @ vectors[0]
        order = np.argsort(-scores, kind="stable")[:k]
        if with_scores:
            return [(candidates[i], float(scores[i])) for i in order]
        return [candidates[i] for i in order]

    # --------------------------------------------------------------- retrieval
    def make_index(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                   **index_options) -> SimilarityIndex:
        """A `SimilarityIndex` of `texts` encoded by this model (the model keeps no reference).

        Args:
            texts: the corpus.
            batch_size: texts encoded per batch.
            progress: show a progress bar.
            **index_options: `SimilarityIndex` options (`dtype`, `backend`, `faiss_index`).

        Returns:
            The `SimilarityIndex`, in memory.

        Example:
            >>> index = model.make_index(corpus, dtype="float16")
            >>> model.most_similar("花呗怎么还款", topn=5, index=index)
        """
        index = SimilarityIndex(self.dimension, model_name=self.name, model_fingerprint=self.fingerprint,
                                **index_options)
        index.add(list(texts), self.encode(texts, batch_size=batch_size, progress=progress))
        return index

    def write_index(self, texts: Iterable[str], count: int, directory: str | os.PathLike, batch_size: int = 64,
                    chunk_size: int = 8192, append: bool = False, progress: bool = False,
                    part: CorpusPart | None = None, **index_options) -> SimilarityIndex:
        """Encode `texts` (`count` of them, e.g. a file's lines streamed) `chunk_size` at a
        time straight into the index files of `directory` (`IndexWriter`: one chunk of
        vectors in memory, the directory replaced whole at the end). With `append`, the
        index already there is extended (it must be this model's). One process writes an
        index at a time (`IndexLock`, `<directory>.lock`): a second is refused with
        `IndexInUse` naming the first.

        Args:
            texts: the corpus, any iterable of strings.
            count: how many texts `texts` yields.
            directory: the index directory to write (replaced whole at the end).
            batch_size: texts encoded per batch.
            chunk_size: texts encoded and written per chunk.
            append: extend the index already in `directory`.
            progress: show a progress bar.
            part: the corpus lines `texts` are (`CorpusPart`), recorded for
                `simbert.index_parts.merge_indexes`; a part is written whole, not appended to.
            **index_options: `SimilarityIndex` options (`dtype`, `backend`, `faiss_index`); with
                `append`, each must equal the index's (an append keeps its settings).

        Returns:
            The index, loaded memory-mapped.

        Example:
            >>> with open("corpus.txt", encoding="utf-8") as lines:
            ...     model.write_index((line.strip() for line in lines), count, "faq_index")
            >>> part = CorpusPart.of_file("corpus.txt", 0, 3)     # part 0 of 3, for merge_indexes
            >>> model.write_index(part.texts("corpus.txt"), sum(1 for _ in part.texts("corpus.txt")),
            ...                   "part-0", part=part)
        """
        check_integer("chunk_size", chunk_size)
        if append and part is not None:
            raise ValueError(f"an index part ({part.describe()}) is written whole; it cannot be appended to "
                             f"{directory}")
        iterator = iter(texts)
        # Locked before the index to extend is read, so a concurrent write cannot slip
        # between that read and the swap (and lose its texts): one is refused instead.
        lock = IndexLock(directory)
        lock.acquire()
        try:
            if append:
                base = SimilarityIndex.load(directory, expected_dimension=self.dimension)
                base.check_model(self.fingerprint, self.name, strict=True)
                meta = base.meta
                for key, value in index_options.items():  # an append keeps the index's settings
                    if key not in INDEX_SETTINGS:
                        raise TypeError(f"write_index got an unexpected option {key!r} (an index's settings: "
                                        f"{', '.join(INDEX_SETTINGS)})")
                    if meta.get(key) != value:
                        raise ValueError(f"{key} {value!r} differs from the index in {directory} ({key} "
                                         f"{meta.get(key)!r}); an append keeps the index's settings: leave "
                                         f"{key} out, or rebuild the index without appending")
            else:
                base = None
                meta = SimilarityIndex(self.dimension, model_name=self.name, model_fingerprint=self.fingerprint,
                                       **index_options).meta
                if part is not None:
                    meta[PART_KEY] = part.meta
        except BaseException:
            lock.release()
            raise
        with IndexWriter(directory, meta, count + (len(base) if base is not None else 0), lock=lock) as writer:
            for start in range(0, len(base) if base is not None else 0, chunk_size):
                writer.add(base.texts[start:start + chunk_size], base.vectors[start:start + chunk_size])
            with tqdm(total=count, desc="indexing", unit="text", disable=not progress) as bar:
                for chunk in iter(lambda: list(itertools.islice(iterator, chunk_size)), []):
                    writer.add(chunk, self.encode(chunk, batch_size=batch_size))
                    bar.update(len(chunk))
        return SimilarityIndex.load(directory, expected_dimension=self.dimension)

    def build_index(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                    **index_options) -> SimilarityIndex:
        """`make_index(texts)`, kept on the model as `model.index` for most_similar.

        Args:
            texts: the corpus.
            batch_size: texts encoded per batch.
            progress: show a progress bar.
            **index_options: `SimilarityIndex` options (`dtype`, `backend`, `faiss_index`).

        Returns:
            The `SimilarityIndex`.

        Example:
            >>> model.build_index(["花呗怎么还款", "借呗怎么提额"])
            >>> model.most_similar("花呗如何还钱", topn=1)
        """
        self.index = self.make_index(texts, batch_size, progress, **index_options)
        return self.index

    def load_index(self, directory: str | os.PathLike) -> SimilarityIndex:
        """Load an index directory (`write_index`, `simbert index`) as `model.index`.

        Args:
            directory: the index directory; its vectors must have this model's dimension.

        Returns:
            The `SimilarityIndex`, memory-mapped.

        Example:
            >>> model.load_index("faq_index")
            >>> model.most_similar("花呗怎么还款", topn=10)
        """
        self.index = SimilarityIndex.load(directory, expected_dimension=self.dimension)
        return self.index

    def most_similar(self, text: str, topn: int = 10, index: SimilarityIndex | None = None,
                     rerank: PairScorer | None = None, rerank_top: int | None = None) -> list[tuple]:
        """The `topn` texts of `index` (default: `model.index`) closest to `text`, as
        (text, cosine) pairs; with `rerank`, the `rerank_top` closest re-scored by that pair
        classifier and the `topn` it scores highest returned as (text, score, cosine).

        Args:
            text: the query.
            topn: results to return.
            index: the index to search (default: `model.index`).
            rerank: a `simbert.PairClassifier` (a cross-encoder) whose score of
                `(text, candidate)` orders the candidates.
            rerank_top: candidates re-scored (default 50; at least `topn` are).

        Returns:
            A list of `(text, cosine)` pairs, most similar first; with `rerank`,
            `(text, score, cosine)` triples, highest score first.

        Example:
            >>> model.most_similar("微信和支付宝哪个好", topn=10)
            >>> model.most_similar("微信和支付宝哪个好", topn=10, rerank=PairClassifier.from_pretrained("runs/afqmc"))
        """
        if not isinstance(text, str):
            raise ValueError(f"text should be a string, got {type(text).__name__} {text!r}; for several texts "
                             f"use most_similar_batch")
        return self.most_similar_batch([text], topn, index, rerank, rerank_top)[0]

    def most_similar_batch(self, texts: Sequence[str], topn: int = 10, index: SimilarityIndex | None = None,
                           rerank: PairScorer | None = None, rerank_top: int | None = None) -> list[list[tuple]]:
        """`most_similar` of each of `texts`, encoded together (and, with `rerank`, their
        candidates scored together).

        Args:
            texts: the queries.
            topn: results per query.
            index: the index to search (default: `model.index`).
            rerank: a `simbert.PairClassifier` that re-scores and orders the candidates.
            rerank_top: candidates re-scored a query (default 50; at least `topn` are).

        Returns:
            One list of `(text, cosine)` pairs per query; with `rerank`, of
            `(text, score, cosine)` triples.

        Example:
            >>> model.most_similar_batch(["花呗怎么还款", "借呗怎么提额"], topn=3)
        """
        if isinstance(texts, str):
            raise ValueError("most_similar_batch expects a list of texts; for one text use most_similar")
        check_integer("topn", topn)  # as `simbert search --topn` and /similar: at least 1
        index = index if index is not None else self.index
        if index is None:
            raise ValueError("no index: call build_index(texts) or load_index(directory) first, or pass one")
        if rerank is None:
            return index.search(self.encode(texts), topn)
        candidates = max(topn, RERANK_TOP if rerank_top is None else check_integer("rerank_top", rerank_top))
        return rerank_candidates(rerank, texts, index.search(self.encode(texts), candidates), topn)


def gen_synonyms(model: SimBERT, text: str, n: int = 100, k: int = 20, **options) -> list:
    """The original script's helper: `model.gen_synonyms(text, n, k)`."""
    return model.gen_synonyms(text, n=n, k=k, **options)


def most_similar(model: SimBERT, text: str, corpus: Sequence[str] | None = None, topn: int = 10):
    """The original script's helper: rank `corpus` (encoded into a temporary index; the
    model's own index is left alone) or else the model's index against `text`."""
    index = model.make_index(corpus) if corpus is not None else None
    return model.most_similar(text, topn, index)
