"""The SimBERT training loop: one UniLM backbone, seq2seq + similarity losses, AdamW,
atomic resumable checkpoints, progress bar, metrics.jsonl and a loss curve.

Flow: `TrainConfig` -> `Trainer(config)` (tokenizer, backbone, teacher, training model,
optimizer) -> `Trainer.fit()` (`simbert.data.training_batches`, `keras.Model.fit`,
`simbert.callbacks`) -> `output.dir/checkpoint-<step>/` (released layout + training
state) -> `FitResult`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import keras
import numpy as np

from simbert.api import SimBERT
from simbert.cached_step import check_similarity_chunk, uses_cached_step
from simbert.callbacks import CheckpointSaver, DispatchAhead, LossCurve, ProgressLogger, SamplePrinter
from simbert.checkpoints import (
    assign_training_state,
    keep_tensorflow_off_the_gpus,
    read_training_state,
    write_training_state,
)
from simbert.compiled import use_compilation_cache
from simbert.config import DataConfig, TrainConfig
from simbert.data import batch_dataset, build_char_vocab, has_mined_rows, negatives_per_row, training_batches
from simbert.directories import (
    TRAINER_STATE_FILE,
    TRAINING_STATE_FILE,
    VOCAB_FILE,
    ModelFiles,
    RunDirectory,
    RunDirectoryTaken,  # noqa: F401 (importable from here, where it was defined before RunDirectory)
    RunLock,
    build_backbone,
    config_path,
    load_pretrained,
    read_config,
    read_model_files,
    read_trainer_state,
    resolve_model_directory,
    save_pretrained,
)
from simbert.distribution import batch_layout
from simbert.errors import DataError, FileFormatError, missing_path
from simbert.kernels import Platform
from simbert.labelled_pairs import classification_batches, labelled_training_batches, read_training_pairs
from simbert.models import Transformer
from simbert.pair_classifier import assign_head, read_head, write_head
from simbert.readers import ReadReport, listed_files, read_training_groups
from simbert.shapes import ShapeBuckets
from simbert.tokenizer import Tokenizer, load_vocab
from simbert.training_model import build_training_model, compiles_step, learning_rate_schedule
from simbert.workers import Prefetcher

logger = logging.getLogger(__name__)


def batch_buckets(data: DataConfig, step_compiled: bool) -> ShapeBuckets:
    """Training batch shapes: lengths and target widths rounded up to `data.length_step`
    (default 16 when the step is compiled per shape, else 1: no padding), at most
    `data.max_tokens`."""
    length_step = data.length_step or (16 if step_compiled else 1)
    return ShapeBuckets(length_step, max_length=data.max_tokens)


# Batches kept ready by the prefetch thread for the training loop.
PREFETCH_BATCHES = 4


def default_workers() -> int:
    """Batch-building processes when `data.workers` is not set: a quarter of the CPU
    cores, at most 8 (none on a 2-core machine, where they would take the step's cores)."""
    return min(8, (os.cpu_count() or 1) // 4)


@dataclass
class FitResult:
    """What `Trainer.fit` did: the steps it started and ended at, the step whose loss was
    NaN or inf (training stopped there), why it stopped early ("requested",
    "already complete") if it did, the first and last metrics lines written, and the
    throughput after the first (compiling) step, how many training-step programs were
    compiled (traces; at most `batch_shapes`, the shapes the batch buckets allow when the
    step is compiled per shape; None for TensorFlow's graph, traced for any shape),
    `input_wait_s`, the time the training loop waited for batches (the pipeline is the
    bottleneck when this is a large part of the run: raise `data.workers`), and
    `checkpoint`, the checkpoint directory written at the end (None if none was)."""

    start_step: int
    step: int
    nan_step: int | None = None
    stopped: str | None = None
    first: dict | None = None
    last: dict | None = None
    samples_per_second: float | None = None
    compiled_programs: int = 0
    batch_shapes: int | None = None
    input_wait_s: float = 0.0
    checkpoint: str | None = None


# Recipe fields a resumed run must share with the checkpoint's: the model, and what
# decides the batch stream.
RESUME_FIELDS = ("model.model_type", "model.pretrained", "model.config", "model.vocab", "model.simplify_vocab",
                 "model.hierarchical_position", "training.batch_size", "training.seed", "data.max_chars",
                 "training.objective", "training.keep_generation", "training.num_labels",
                 "data.negatives_per_pair", "data.file_batches")


class ResumeMismatch(ValueError):
    """The recipe differs from the checkpoint's in a field that resuming must keep."""


@dataclass
class ResumePoint:
    """A checkpoint read in full, ready to continue from (its model built when training
    starts); `head`: a pair classifier's head tensors (`simbert.pair_classifier.read_head`)."""

    step: int
    path: str
    recipe: dict
    training_state: dict
    files: ModelFiles
    head: dict | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        return self.files.tokenizer


def recipe_path(field: str, path: str) -> str:
    """`path`, the value of the recipe's `field`, if it exists; else an error naming both."""
    if not os.path.exists(path):
        raise missing_path(field, path)
    return path


def recipe_value(recipe: dict, dotted: str):
    """The recipe's value of `section.name`; a field the recipe lacks (written before the
    field existed) has its default."""
    section, name = dotted.split(".")
    default = getattr(getattr(TrainConfig(), section), name)
    return recipe.get(section, {}).get(name, default)


class Trainer:
    """Trains a SimBERT model as described by a `TrainConfig`.

    Building a `Trainer` only checks: the recipe's paths and numbers, that the training
    file reads, that no other live run trains into `output.dir`, and that the directory
    holds no earlier run's checkpoints (unless `resume` or `overwrite`); with `resume` it
    reads the newest checkpoint that reads in full (older ones are tried when it does
    not) and checks that the recipe agrees with it in `RESUME_FIELDS` (`resume_anyway`:
    warn instead of refusing). Nothing is written and no process-wide state changes.

    Training starts in `fit()`, or on entering a `with Trainer(...) as trainer:` block
    (which keeps the run lock until the block ends): the lock file is taken, the seeds
    are set (`training.seed`), the compilation cache is switched on
    (`training.compilation_cache`), `overwrite` deletes the earlier checkpoints and the
    model is built (`trainer.backbone`, `trainer.training_model`).

    `request_stop()` (thread-safe; the `simbert train` command calls it on SIGINT and
    SIGTERM, through `stop_event`) makes `fit` finish the steps it has started (the next
    one; on JAX, where the loop runs ahead of the device, up to 2 more), save a checkpoint
    and return; a stop requested before training starts returns before the first step.

    Args:
        config: the recipe.
        resume: continue from the newest readable checkpoint in `output.dir`.
        overwrite: delete `output.dir`'s checkpoints and metrics when training starts.
        resume_anyway: resume although the recipe changed a field of `RESUME_FIELDS`.
        stop_event: set it to stop training (see `request_stop`).

    Example:
        >>> result = Trainer(TrainConfig.from_yaml("configs/tiny.yaml")).fit()   # runs/tiny/checkpoint-*/
        >>> with Trainer(config, resume=True) as trainer:
        ...     trainer.backbone.summary()
        ...     result = trainer.fit()
    """

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False,
                 resume_anyway: bool = False, stop_event: threading.Event | None = None):
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
        self.platform = Platform.current()
        self.config = config
        self.output_dir = config.output.dir
        self.run = RunDirectory(self.output_dir)
        self.resume, self.overwrite, self.resume_anyway = resume, overwrite, resume_anyway
        self.report, self._counted_sources = ReadReport(), set()
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        training = config.training
        if training.teacher:
            recipe_path("training.teacher", training.teacher)
        # Devices and processes; only process 0 of a multi-process run writes in output.dir.
        self.layout = batch_layout(training.distribution, training.devices, training.batch_size, self.platform)
        # The cached contrastive step's chunks divide each device's rows (issue 28).
        check_similarity_chunk(training.similarity_chunk, training.batch_size, len(self.layout.devices))
        self.check_data()
        if self.layout.writes:
            self.run.check_free()
        self.tokenizer = self.resume_point = None
        self._seen_checkpoints = []
        if resume:
            try:
                self._find_resume_point()
            except FileFormatError:
                self.run.check_free()  # a run that started since is named, not its half-written checkpoints
                raise
        elif self.layout.writes:
            self.run.check_unclaimed(overwrite)
        if self.resume_point is None:
            self._check_model_recipe()
        self.backbone = None
        self.teacher = None
        self.training_model = None
        self.optimizer = None
        # XLA compiles the step once per batch shape.
        self.buckets = batch_buckets(config.data, compiles_step(training.jit_compile, self.platform))
        self.workers = default_workers() if config.data.workers is None else config.data.workers
        self._negatives = {}  # step -> mean negatives a row of its batch saw
        self._mined_rows = False  # whether a batch held mined negatives (more rows: other shapes)

    @property
    def lock(self) -> RunLock:
        """The run lock of `output.dir` (held between `start` and `close`)."""
        return self.run.lock

    def request_stop(self) -> None:
        self.stop_event.set()

    # ------------------------------------------------------------ starting
    @property
    def started(self) -> bool:
        """Whether the run has started and not been closed since."""
        return self.lock.held or (not self.layout.writes and self.training_model is not None)

    def start(self) -> "Trainer":
        """Take the run lock, set the seeds and the compilation cache, claim the output
        directory (`overwrite` deletes its checkpoints) and build the model; `fit` calls
        it, and so does entering a `with` block. A process other than process 0 of a
        multi-process run takes no lock and claims nothing. Returns the trainer."""
        if self.started:
            return self
        if self.layout.writes:
            self.lock.acquire()
        try:
            if self.training_model is None:  # not started before
                self._claim_and_build()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _claim_and_build(self) -> None:
        """What starting a run does once (the lock held): process-wide setup, the output
        directory claimed, the model built."""
        training = self.config.training
        keras.utils.set_random_seed(training.seed)
        use_compilation_cache(training.compilation_cache)
        keep_tensorflow_off_the_gpus()
        if self.layout.writes:
            self.run.claim(self.resume, self.overwrite)
        if self.resume and self.run.checkpoints() != self._seen_checkpoints:
            logger.warning("the checkpoints in %s changed since this trainer was built; reading them again",
                           self.output_dir)
            self._find_resume_point()
        with self.layout.scope():  # variables replicated over the devices
            if self.resume_point is not None:
                self.backbone = self.resume_point.files.build(application=self.application,
                                                              dropout_rate=self.config.model.dropout_rate,
                                                              dtype=training.precision)
            else:
                self.tokenizer, self.backbone = self._build_tokenizer_and_backbone()
            self.training_model = build_training_model(self.backbone, training, self.platform,
                                                       devices=len(self.layout.devices))  # chunks per device
            if self.resume_point is not None and self.resume_point.head is not None:
                assign_head(self.training_model.get_layer("classifier"), self.resume_point.head,
                            self.resume_point.path)
            self.optimizer = self.training_model.optimizer
        if training.teacher:  # on this process's own device: it encodes each batch on the host's side
            self.teacher = SimBERT.from_pretrained(recipe_path("training.teacher", training.teacher),
                                                   max_tokens=self.config.data.max_tokens)
        # The model's own answer: Keras may turn XLA off where the model does not support it.
        self.buckets = batch_buckets(self.config.data, self.training_model.jit_compile)

    def close(self) -> None:
        """Release the run lock."""
        self.lock.release()

    def __enter__(self) -> "Trainer":
        return self.start()

    def __exit__(self, kind, error, traceback) -> None:
        self.close()

    @property
    def classifies(self) -> bool:
        """Whether the run trains a pair classifier (objective cross_encoder)."""
        return self.config.training.objective == "cross_encoder"

    @property
    def application(self) -> str:
        """The backbone's attention mask: a pair classifier's rows see both texts
        ("encoder"); SimBERT's and CoSENT's the UniLM mask."""
        return "encoder" if self.classifies else "unilm"

    @property
    def reads_labelled_pairs(self) -> bool:
        """Whether the objective trains on labelled pairs (cosent, cross_encoder), not groups."""
        return self.config.training.objective != "simbert"

    def read_groups(self, source: int | None = None, counted: bool = True):
        """The training records, read afresh (a new pass over the files), or file number
        `source`'s alone: groups of similar texts, or `LabelledPair`s for an objective that
        reads labelled pairs. Skipped records are counted in `self.report` during the
        first pass over each file that starts with `counted` (training's passes), so each
        is counted once; a run that stops within that pass reports the skips it met."""
        sources = set(range(len(listed_files(self.config.data)))) if source is None else {source}
        report = self.report if counted and not sources <= self._counted_sources else ReadReport()
        if counted:
            self._counted_sources |= sources
        if self.reads_labelled_pairs:
            return read_training_pairs(self.config.data, report,
                                       self.config.training.num_labels if self.classifies else None, source)
        return read_training_groups(self.config.data, report, source)

    def _record_texts(self, record, mined: list | None = None) -> list[str]:
        """The texts of a record of `read_groups` (a group's mined negatives too; `mined`,
        when given, gets an item when the group has some)."""
        if self.reads_labelled_pairs:
            return [record.first, record.second]
        negatives = getattr(record, "negatives", ())
        if negatives and mined is not None and not mined:
            mined.append(True)
        return [*record, *negatives]  # a vocabulary built from the data covers them

    def check_data(self) -> None:
        """Read the training file before building anything: a missing file, a directory, an
        unreadable record (`on_error: raise`) or a file without one usable group fails
        here, naming the file. When the vocabulary is built from the data (or may be
        compared with a checkpoint's) the pass reads the whole file and its character
        vocabulary is kept as `data_characters`; otherwise (None) it stops at the first
        usable group."""
        self.report, self._counted_sources = ReadReport(), set()
        model = self.config.model
        whole = not model.pretrained and not model.vocab
        groups = iter(self.read_groups())
        first = next(groups, None)
        if first is None:
            reasons = "; ".join(self.report.reasons[:3]) or "no records"
            usable = ("labelled pair" if self.reads_labelled_pairs else "group of two or more distinct texts")
            raise DataError(f"data.train {self.config.data.train} holds no {usable} "
                            f"({self.report.skipped_records} records skipped, {self.report.skipped_groups} groups "
                            f"with < 2 distinct texts; {reasons})")
        if getattr(first, "negatives", ()) and self.config.data.negatives_per_pair:
            self._check_mined_negatives()  # now, not at the first batch, when the first group has them
        self._check_each_file_has_a_record()
        self.data_characters = None
        if whole:
            mined = []  # whether a group of the pass holds negatives: checked now, not at its batch
            self.data_characters = build_char_vocab(
                text for record in itertools.chain([first], groups)
                for text in self._record_texts(record, mined))
            if mined and self.config.data.negatives_per_pair:
                self._check_mined_negatives()
        if not whole:  # the full passes of training count every file's skipped records
            self.report, self._counted_sources = ReadReport(), set()

    def _check_each_file_has_a_record(self) -> None:
        """With batches drawn from one file each (`data.file_batches` round_robin or
        proportional), every file must hold a usable record: one that holds none is named
        now, not when its first batch comes."""
        files = listed_files(self.config.data)
        if self.config.data.file_batches == "mixed" or len(files) < 2:
            return
        for source, path in enumerate(files):
            if next(iter(self.read_groups(source, counted=False)), None) is None:
                raise DataError(f"data.train {path} holds no usable record; data.file_batches "
                                f"{self.config.data.file_batches} draws whole batches from each file "
                                f"(leave the file out, or use data.file_batches mixed)")

    def _check_model_recipe(self) -> None:
        """The model part of the recipe, before anything is built: its paths exist and a
        training row's tokens fit its positions (read from the pretrained config file
        where it reads; `load_pretrained` names any other problem with the directory)."""
        model = self.config.model
        if model.pretrained:
            recipe_path("model.pretrained", model.pretrained)
            try:
                positions = read_config(config_path(resolve_model_directory(model.pretrained)),
                                        **self._position_overrides())
            except (OSError, ValueError):
                return
            self._check_positions(positions.max_length, f"model.pretrained {model.pretrained}")
            return
        if model.config is None:
            raise ValueError("model: give either `pretrained` (a model directory) or `config` "
                             "(bert_config fields for a random model)")
        if model.vocab:
            recipe_path("model.vocab", model.vocab)
        positions = model.config.get("max_position_embeddings", 512)
        alpha = (model.hierarchical_position if model.hierarchical_position is not None
                 else model.config.get("hierarchical_position"))
        if (model.model_type or "bert") == "bert":
            self._check_positions(positions * positions if alpha else positions,
                                  "model.config.max_position_embeddings" + (" (squared: hierarchical_position)"
                                                                            if alpha else ""))

    def _build_tokenizer_and_backbone(self) -> tuple[Tokenizer, Transformer]:
        model, precision = self.config.model, self.config.training.precision
        if model.pretrained:
            tokenizer, backbone = load_pretrained(recipe_path("model.pretrained", model.pretrained),
                                                  model.model_type, application=self.application,
                                                  simplify_vocab=model.simplify_vocab,
                                                  dropout_rate=model.dropout_rate, dtype=precision,
                                                  hierarchical_position=model.hierarchical_position)
            self._check_positions(backbone.config.max_length, f"model.pretrained {model.pretrained}")
            return tokenizer, backbone
        token_dict = load_vocab(recipe_path("model.vocab", model.vocab)) if model.vocab else self.data_characters
        backbone = build_backbone({**model.config, "vocab_size": len(token_dict)},
                                  model_type=model.model_type or "bert", application=self.application,
                                  with_pool="linear",
                                  with_mlm="linear", dropout_rate=model.dropout_rate, dtype=precision,
                                  hierarchical_position=model.hierarchical_position)
        return Tokenizer(token_dict, do_lower_case=True), backbone

    def _position_overrides(self) -> dict:
        """The recipe's `model.hierarchical_position`, as a `read_config` override."""
        alpha = self.config.model.hierarchical_position
        return {} if alpha is None else {"hierarchical_position": alpha}

    def _check_positions(self, positions: int | None, source: str) -> None:
        """A training row holds up to `data.max_tokens` tokens, each needing a position
        (`positions` None: any length, RoFormer)."""
        if positions is not None and self.config.data.max_tokens > positions:
            raise ValueError(f"data.max_chars {self.config.data.max_chars} makes rows of up to "
                             f"{self.config.data.max_tokens} tokens, but {source} gives {positions} positions; "
                             f"use max_chars <= {positions // 2}")

    # -------------------------------------------------------------- resuming
    def _read_checkpoint(self, path: str) -> ResumePoint:
        """A checkpoint read in full (`RunDirectory.newest_readable` tries older ones when
        this raises)."""
        state = read_trainer_state(path)
        training_state = read_training_state(os.path.join(path, TRAINING_STATE_FILE))
        files = read_model_files(path, state.get("model_type"))
        # A pair classifier's head, when both runs train one: a checkpoint of another objective
        # has none, and `_check_resume` names the changed objective rather than the missing file.
        head = None
        if self.classifies and recipe_value(state["config"], "training.objective") == "cross_encoder":
            head = read_head(path)
        return ResumePoint(state["step"], path, state["config"], training_state, files, head)

    def _find_resume_point(self) -> None:
        """`resume`: the newest checkpoint that reads in full, checked against the recipe
        (None, with a warning, when the directory holds none)."""
        self._seen_checkpoints = self.run.checkpoints()
        self.resume_point = self.run.newest_readable(self._read_checkpoint)
        if self.resume_point is None:
            logger.warning("--resume: no checkpoint in %s, starting from step 0", self.output_dir)
            return
        self._check_resume(self.resume_point, self.resume_anyway)
        self.tokenizer = self.resume_point.tokenizer

    def _check_resume(self, point: ResumePoint, anyway: bool) -> None:
        """Refuse (or with `anyway` warn) when the recipe changed a field of
        `RESUME_FIELDS`; report data characters the checkpoint's vocabulary lacks."""
        current = self.config.to_dict()
        changed = [(name, recipe_value(point.recipe, name), recipe_value(current, name)) for name in RESUME_FIELDS
                   if recipe_value(point.recipe, name) != recipe_value(current, name)]
        if self.config.model.vocab and load_vocab(self.config.model.vocab) != point.tokenizer.token_dict:
            changed.append(("model.vocab (contents)", f"{point.path}/{VOCAB_FILE}", self.config.model.vocab))
        if changed:
            lines = "; ".join(f"{name} is {old!r} in the checkpoint but {new!r} now" for name, old, new in changed)
            if not anyway:
                raise ResumeMismatch(f"cannot resume {point.path}: {lines}. Restore the recipe, or pass "
                                     f"--resume-anyway (Trainer(resume_anyway=True)) to continue the checkpoint's "
                                     f"model with the new settings")
            logger.warning("resuming %s anyway: %s; the checkpoint's model and vocabulary are kept",
                           point.path, lines)
        unknown = []
        if not self.config.model.pretrained and not self.config.model.vocab:  # a vocabulary built from the data
            unknown = sorted(set(self.data_characters) - set(point.tokenizer.token_dict))
        if unknown:
            logger.warning("the data has %d character(s) not in %s/%s (e.g. %s); they are read as [UNK] "
                           "(the checkpoint's vocabulary is kept, never rebuilt)", len(unknown), point.path,
                           VOCAB_FILE, " ".join(unknown[:10]))

    # ---------------------------------------------------------------- batches
    def _teacher_similarities(self, texts: list[str]) -> np.ndarray:
        """The teacher's cosine matrix of `texts`, the distillation target."""
        vectors = self.teacher.encode(texts)
        return vectors @ vectors.T

    def _batches(self, start_step: int):
        """This process's rows of every global batch from `start_step` on (every process
        builds the same global batch, so lengths agree), its negatives recorded by step."""
        data, training = self.config.data, self.config.training
        if self.classifies:
            batches = classification_batches(self.read_groups, self.tokenizer, data, training.batch_size,
                                             training.seed, start_step, self.buckets, self.workers)
            yield from (self.layout.local_part(batch) for batch in batches)
            return
        if self.reads_labelled_pairs:
            batches = labelled_training_batches(self.read_groups, self.tokenizer, data, training.batch_size,
                                                training.seed, start_step, training.keep_generation, self.buckets,
                                                self.workers)
            yield from (self.layout.local_part(batch) for batch in batches)
            return
        batches = training_batches(self.read_groups, self.tokenizer, data, training.batch_size, training.seed,
                                   start_step, self._teacher_similarities if self.teacher is not None else None,
                                   self.buckets, self.workers)
        for step, batch in enumerate(batches, start_step + 1):
            self._negatives[step] = negatives_per_row(batch[1]["similarity"], training.mask_duplicates)
            if has_mined_rows(batch[1]["similarity"]):
                self._check_mined_negatives()
                self._mined_rows = True
            yield self.layout.local_part(batch)

    def negatives_at(self, step: int) -> float | None:
        """The mean negatives a row of step `step`'s batch saw (None once forgotten)."""
        for old in [key for key in list(self._negatives) if key < step]:  # list(): the batch thread adds keys
            self._negatives.pop(old, None)
        return self._negatives.get(step)

    def _check_mined_negatives(self) -> None:
        """Mined negatives (a group's "negatives") add rows after the pairs' rows of a
        batch, which only the plain step on one device takes: refuse the cached step and
        a batch split over devices or processes, naming the recipe fields."""
        training, devices = self.config.training, len(self.layout.devices)
        use = (f"data.train {self.config.data.train} holds mined negatives (\"negatives\"), whose rows follow the "
               f"pair rows of a batch")
        if uses_cached_step(training.similarity_chunk, training.batch_size, devices):
            raise ValueError(f"{use}; training.similarity_chunk {training.similarity_chunk} (the cached step) does "
                             f"not take them: leave training.similarity_chunk out, or set data.negatives_per_pair: 0 "
                             f"to train without them")
        if devices > 1 or self.layout.processes > 1:
            raise ValueError(f"{use}; a batch split over {devices} devices in {self.layout.processes} process(es) "
                             f"(training.distribution {training.distribution}) does not take them: set "
                             f"training.distribution: none, or data.negatives_per_pair: 0 to train without them")

    def _fit_input(self, batches):
        """The batches as `fit` takes them: a tf.data pipeline where the platform feeds
        one, else a generator (Keras takes generators, not any iterator)."""
        if not self.platform.feeds_tf_data:
            return (batch for batch in batches)
        first = next(batches)
        return batch_dataset(lambda: itertools.chain([first], batches), first)

    def _only_loss(self) -> tuple[str, float] | None:
        """`(name, weight)` of the training model's loss when it has one (see `ProgressLogger`)."""
        weights = self.training_model.output_loss_weights
        if len(weights) != 1:
            return None
        return next(iter(weights.items()))

    # ------------------------------------------------------------ checkpoints
    def _state_variables(self) -> list:
        """What a resumed run needs beyond the weights: the optimizer's slots and step, and
        the dropout generators' states (so the random stream carries on too)."""
        return [*self.optimizer.variables, *self.training_model.non_trainable_variables]

    def _write_checkpoint(self, directory: str, step: int) -> None:
        save_pretrained(self.backbone, directory, self.tokenizer.token_dict)
        if self.classifies:  # the head beside the backbone, in the same staged directory
            write_head(self.training_model.get_layer("classifier"), directory)
        write_training_state(os.path.join(directory, TRAINING_STATE_FILE), self._state_variables())
        with open(os.path.join(directory, TRAINER_STATE_FILE), "w", encoding="utf-8") as writer:
            json.dump({"step": step, "model_type": self.backbone.config.model_type,
                       "config": self.config.to_dict()}, writer, indent=2)

    def save_checkpoint(self, step: int) -> str | None:
        """Write `checkpoint-<step>` whole or not at all and keep the last `output.keep`,
        never removing the one just written (`RunDirectory.save_checkpoint`); the run
        must have started. Returns its path (None in a process that does not write)."""
        if self.started and not self.layout.writes:
            return None
        if not self.lock.held:
            raise RuntimeError("save_checkpoint: the run has not started (call it inside `with Trainer(...)` or fit)")
        return self.run.save_checkpoint(step, lambda directory: self._write_checkpoint(directory, step),
                                        self.config.output.keep)

    def _restore(self, point: ResumePoint) -> int:
        """Load the optimizer and random state of `point` (its weights came with its backbone)."""
        with self.layout.scope():
            self.optimizer.build(self.training_model.trainable_variables)
        assign_training_state(point.training_state, self._state_variables(),
                              os.path.join(point.path, TRAINING_STATE_FILE))
        return point.step

    # ---------------------------------------------------------------- fitting
    def fit(self, callbacks: list | None = None) -> FitResult:
        """Train to `training.steps` (from the resume point, if any).

        Args:
            callbacks: extra Keras callbacks, run after the logger and checkpoint saver.

        Returns:
            A `FitResult`. Called outside a `with` block, `fit` starts the run itself and
            releases the output directory when done.
        """
        if self.started:
            return self._fit(callbacks)
        with self:
            return self._fit(callbacks)

    def _fit(self, callbacks: list | None) -> FitResult:
        start_step = 0
        if self.resume_point is not None:
            start_step = self._restore(self.resume_point)
            logger.info("resumed from %s at step %d", self.resume_point.path, start_step)
            self.resume_point = None  # its arrays are no longer needed
        total, output = self.config.training.steps, self.config.output
        if start_step >= total:
            return FitResult(start_step, start_step, stopped="already complete")
        if self.stop_event.is_set():
            return FitResult(start_step, start_step, stopped="requested")
        writes = self.layout.writes
        if writes:
            self.run.keep_metrics_until(start_step)
        logger.info("%s", self.layout.describe())
        progress = ProgressLogger(self.run.metrics_path if writes else None, start_step, total,
                                  self.config.training.batch_size, output.log_every, self.stop_event,
                                  learning_rate_schedule(self.config.training), self.negatives_at,
                                  self._only_loss())
        callbacks = [progress,
                     CheckpointSaver(self.save_checkpoint, start_step, total, output.save_every, self.stop_event),
                     *([LossCurve(self.run.metrics_path, self.run.loss_plot_path)] if writes else []),
                     *(callbacks or [])]
        if output.sample_every and self.layout.processes > 1:
            logger.warning("output.sample_every: samples are not printed in a multi-process run (every process "
                           "would have to generate them together)")
        elif output.sample_every:
            texts = output.sample_texts or [self._record_texts(record)[0] for _, record in zip(
                range(3), self.read_groups(counted=False))]
            sampler = SimBERT(self.backbone, self.tokenizer, max_tokens=self.config.data.max_tokens)
            callbacks.append(SamplePrinter(sampler, texts, output.sample_every, start_step))
        callbacks = DispatchAhead(callbacks, self.training_model, verbose=0, epochs=1, steps=total - start_step)
        traces_before = self.training_model.step_traces
        batches = Prefetcher(self._batches(start_step), PREFETCH_BATCHES)
        started = time.perf_counter()
        try:
            with self.layout.scope():  # fit shards each batch over the devices
                self.training_model.fit(self._fit_input(batches), steps_per_epoch=total - start_step, epochs=1,
                                        shuffle=False, verbose=0, callbacks=callbacks)
        finally:
            callbacks.close()
            batches.close()  # stops the batch workers
        logger.info("waited %.1f s of %.1f s for batches (data.workers: %d)", batches.waited_s,
                    time.perf_counter() - started, self.workers)
        programs = self.training_model.step_traces - traces_before
        shapes = self.buckets.training_shapes() if self.training_model.jit_compile else None
        if shapes is not None and self._mined_rows:  # batches with mined negatives have more rows
            shapes *= 2
        if shapes is None:
            logger.info("traced the training step %d time(s) (one graph for any batch shape)", programs)
        else:
            logger.info("compiled %d training step program(s) (batch buckets allow %d shapes)", programs, shapes)
        checkpoint = None
        if progress.nan_step is None:
            checkpoint = self.save_checkpoint(progress.step)
        else:
            saved = self.run.checkpoints()
            kept = (f"the newest checkpoint is {saved[-1][1]} (step {saved[-1][0]})" if saved
                    else "no checkpoint was written")
            logger.error("loss became %s at step %d; training stopped and nothing was saved; %s",
                         progress.nan_loss, progress.nan_step, kept)
        if self.report.skipped_records or self.report.skipped_groups:
            logger.warning("data: skipped %d unreadable records and %d groups with < 2 distinct texts",
                           self.report.skipped_records, self.report.skipped_groups)
        return FitResult(start_step, progress.step, progress.nan_step,
                         "requested" if self.stop_event.is_set() else None, progress.first, progress.last,
                         progress.samples_per_second(), programs, shapes, round(batches.waited_s, 3), checkpoint)
