"""The SimBERT training loop: one UniLM backbone, seq2seq + similarity losses, AdamW,
atomic resumable checkpoints, progress bar, metrics.jsonl and a loss curve.

Flow: `TrainConfig` -> `Trainer(config)` (tokenizer, backbone, teacher, training model,
optimizer) -> `Trainer.fit()` (`simbert.data.training_batches`, `keras.Model.fit`,
`simbert.callbacks`) -> `output.dir/checkpoint-<step>/` (released layout + training
state) -> `FitResult`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass

import keras
import numpy as np

from simbert.api import SimBERT
from simbert.callbacks import CheckpointSaver, LossCurve, ProgressLogger, SamplePrinter
from simbert.checkpoints import assign_weights, read_training_state, read_weights, write_training_state
from simbert.compiled import use_compilation_cache
from simbert.config import DataConfig, TrainConfig, TrainingConfig
from simbert.data import ReadReport, batch_dataset, build_char_vocab, read_training_groups, training_batches
from simbert.directories import (
    LOSS_PLOT_FILE,
    METRICS_FILE,
    TRAINER_STATE_FILE,
    TRAINING_STATE_FILE,
    build_backbone,
    checkpoint_dir,
    checkpoint_dirs,
    load_pretrained,
    save_pretrained,
)
from simbert.losses import DistillationLoss, Seq2SeqLoss, SimilarityLoss
from simbert.models import Transformer
from simbert.optimizers import AdamW
from simbert.shapes import ShapeBuckets
from simbert.tokenizer import Tokenizer, load_vocab

logger = logging.getLogger(__name__)


def linear_warmup(learning_rate: float, warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """`lr * min(1, (step + 1) / warmup_steps)`: linear warm-up, then constant.

    Keras' `CosineDecay` with `alpha=1` (no decay: its cosine factor is 1) warms up
    linearly from `lr / w` at step 0 to `lr` at step `w - 1`, which is this schedule.
    """
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / warmup_steps, decay_steps=1, alpha=1.0,
        warmup_target=learning_rate, warmup_steps=warmup_steps - 1)


def compiles_step(jit_compile: bool | str) -> bool:
    """`training.jit_compile` for the active backend: "auto" is XLA on JAX (Keras would
    otherwise run the JAX step eagerly, op by op) and TensorFlow's graph path on
    TensorFlow (faster than XLA on CPU, see docs/benchmarks.md)."""
    if jit_compile == "auto":
        return keras.backend.backend() == "jax"
    return bool(jit_compile)


def batch_buckets(data: DataConfig, step_compiled: bool) -> ShapeBuckets:
    """Training batch shapes: lengths and target widths rounded up to `data.length_step`
    (default 16 when the step is compiled per shape, else 1: no padding), at most
    `data.max_tokens`."""
    length_step = data.length_step or (16 if step_compiled else 1)
    return ShapeBuckets(length_step, max_length=data.max_tokens)


def default_workers() -> int:
    """Batch-building processes when `data.workers` is not set: a quarter of the CPU
    cores, at most 8 (none on a 2-core machine, where they would take the step's cores)."""
    return min(8, (os.cpu_count() or 1) // 4)


class TrainingModel(keras.Model):
    """A functional `keras.Model` that counts how often its training step is traced:
    once per compiled program on JAX and TensorFlow, once per step when run eagerly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_traces = 0

    def train_step(self, *args, **kwargs):
        self.step_traces += 1
        return super().train_step(*args, **kwargs)


def build_training_model(backbone: Transformer, training: TrainingConfig) -> keras.Model:
    """The compiled model `fit` trains: inputs `(token_ids, segment_ids, target_positions)`,
    outputs `seq2seq` (MLM logits at the target positions only, about half of them),
    `similarity` (pooled [CLS]) and, with a teacher, `distillation` (pooled again);
    losses weighted as configured; AdamW without decay on LayerNorm and bias."""
    token_ids, segment_ids = backbone.inputs
    positions = keras.Input(shape=(None,), dtype="int32", name="target_positions")
    # Only [CLS] (pooled) and the target positions (MLM) leave the last layer.
    cls_and_targets = keras.ops.concatenate([keras.ops.zeros_like(positions[:, :1]), positions], axis=1)
    sequence = backbone.sequence_output(token_ids, segment_ids, output_positions=cls_and_targets)
    pooled = backbone.pool(sequence)
    logits = backbone.mlm_logits(sequence[:, 1:])
    outputs = {"seq2seq": logits, "similarity": pooled}
    written = backbone.kernels.written_cross_entropy
    losses = {"seq2seq": Seq2SeqLoss(written),
              "similarity": SimilarityLoss(training.scale, training.mask_duplicates, written)}
    weights = {"seq2seq": training.seq2seq_weight, "similarity": training.similarity_weight}
    if training.teacher:
        outputs["distillation"] = pooled
        losses["distillation"] = DistillationLoss()
        weights["distillation"] = training.distillation_weight
    model = TrainingModel([token_ids, segment_ids, positions], outputs, name="simbert_training")
    learning_rate = training.learning_rate
    if training.warmup_steps:
        learning_rate = linear_warmup(training.learning_rate, training.warmup_steps)
    # A fixed name, so that the optimizer's variable paths (the training-state keys) are
    # the same in every process.
    optimizer = AdamW(learning_rate=learning_rate, weight_decay=training.weight_decay,
                      clipnorm=training.clipnorm, name="adamw")
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                  jit_compile=compiles_step(training.jit_compile))
    return model


@dataclass
class FitResult:
    """What `Trainer.fit` did: the steps it started and ended at, the step whose loss was
    NaN or inf (training stopped there), why it stopped early ("requested",
    "already complete") if it did, the first and last metrics lines written, and the
    throughput after the first (compiling) step, and how many training-step programs were
    compiled (traces; at most `batch_shapes`, the shapes the batch buckets allow when the
    step is compiled per shape; None for TensorFlow's graph, traced for any shape)."""

    start_step: int
    step: int
    nan_step: int | None = None
    stopped: str | None = None
    first: dict | None = None
    last: dict | None = None
    samples_per_second: float | None = None
    compiled_programs: int = 0
    batch_shapes: int | None = None


class Trainer:
    """Trains a SimBERT model as described by a `TrainConfig`.

    `request_stop()` (thread-safe; the `simbert train` command calls it on SIGINT and
    SIGTERM) makes `fit` save a checkpoint after the current step and return.

    Example:
        >>> trainer = Trainer(TrainConfig.from_yaml("configs/tiny.yaml"))
        >>> result = trainer.fit()          # writes runs/tiny/checkpoint-*/ and metrics.jsonl
    """

    def __init__(self, config: TrainConfig):
        training = config.training
        keras.utils.set_random_seed(training.seed)
        use_compilation_cache(training.compilation_cache)
        self.config = config
        self.output_dir = config.output.dir
        self.report = ReadReport()
        self.stop_event = threading.Event()
        self.tokenizer, self.backbone = self._build_tokenizer_and_backbone()
        self.teacher = None
        if training.teacher:
            self.teacher = SimBERT.from_pretrained(training.teacher, max_tokens=config.data.max_tokens,
                                                   compilation_cache=None)
        self.training_model = build_training_model(self.backbone, training)
        # XLA compiles the step once per batch shape.
        self.buckets = batch_buckets(config.data, self.training_model.jit_compile)
        self.workers = default_workers() if config.data.workers is None else config.data.workers
        self.optimizer = self.training_model.optimizer

    def request_stop(self) -> None:
        self.stop_event.set()

    def read_groups(self):
        """The training groups, read afresh (a new pass over the file)."""
        return read_training_groups(self.config.data, self.report)

    def _build_tokenizer_and_backbone(self) -> tuple[Tokenizer, Transformer]:
        model, precision = self.config.model, self.config.training.precision
        if model.pretrained:
            return load_pretrained(model.pretrained, model.model_type, simplify_vocab=model.simplify_vocab,
                                   dropout_rate=model.dropout_rate, dtype=precision)
        if model.config is None:
            raise ValueError("model: give either `pretrained` (a model directory) or `config` "
                             "(bert_config fields for a random model)")
        if model.vocab:
            token_dict = load_vocab(model.vocab)
        else:
            token_dict = build_char_vocab(text for group in self.read_groups() for text in group)
        backbone = build_backbone({**model.config, "vocab_size": len(token_dict)},
                                  model_type=model.model_type or "bert", application="unilm", with_pool="linear",
                                  with_mlm="linear", dropout_rate=model.dropout_rate, dtype=precision)
        return Tokenizer(token_dict, do_lower_case=True), backbone

    # ---------------------------------------------------------------- batches
    def _teacher_similarities(self, texts: list[str]) -> np.ndarray:
        """The teacher's cosine matrix of `texts`, the distillation target."""
        vectors = self.teacher.encode(texts)
        return vectors @ vectors.T

    def _batches(self, start_step: int):
        data, training = self.config.data, self.config.training
        return training_batches(self.read_groups, self.tokenizer, data, training.batch_size, training.seed,
                                start_step, self._teacher_similarities if self.teacher is not None else None,
                                self.buckets, self.workers)

    def _fit_input(self, batches):
        """The batch generator as `fit` takes it: a tf.data pipeline on TensorFlow, as it is elsewhere."""
        if keras.backend.backend() != "tensorflow":
            return batches
        return batch_dataset(lambda: batches, with_distillation=self.teacher is not None)

    # ------------------------------------------------------------ checkpoints
    def _state_variables(self) -> list:
        """What a resumed run needs beyond the weights: the optimizer's slots and step, and
        the dropout generators' states (so the random stream carries on too)."""
        return [*self.optimizer.variables, *self.training_model.non_trainable_variables]

    def save_checkpoint(self, step: int) -> str:
        """Write `checkpoint-<step>` atomically (temp directory, then rename); keep the last K."""
        final = checkpoint_dir(self.output_dir, step)
        temporary = os.path.join(self.output_dir, "." + os.path.basename(final) + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        save_pretrained(self.backbone, temporary, self.tokenizer.token_dict)
        write_training_state(os.path.join(temporary, TRAINING_STATE_FILE), self._state_variables())
        with open(os.path.join(temporary, TRAINER_STATE_FILE), "w", encoding="utf-8") as writer:
            json.dump({"step": step, "model_type": self.backbone.config.model_type,
                       "config": self.config.to_dict()}, writer, indent=2)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
        for _, old in checkpoint_dirs(self.output_dir)[: -self.config.output.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore_checkpoint(self, path: str) -> int:
        """Load weights, optimizer and random state from a checkpoint directory; return its step."""
        assign_weights(self.backbone, read_weights(path), path)
        self.optimizer.build(self.training_model.trainable_variables)
        read_training_state(os.path.join(path, TRAINING_STATE_FILE), self._state_variables())
        with open(os.path.join(path, TRAINER_STATE_FILE), encoding="utf-8") as reader:
            return int(json.load(reader)["step"])

    # ---------------------------------------------------------------- fitting
    def fit(self, resume: bool = False, callbacks: list | None = None) -> FitResult:
        """Train to `training.steps`; with `resume`, continue from the latest checkpoint.

        `callbacks` are extra Keras callbacks, run after the logger and checkpoint saver.
        """
        os.makedirs(self.output_dir, exist_ok=True)
        self.stop_event.clear()
        start_step = 0
        existing = checkpoint_dirs(self.output_dir)
        if resume and existing:
            start_step = self.restore_checkpoint(existing[-1][1])
            logger.info("resumed from %s at step %d", existing[-1][1], start_step)
        elif resume:
            logger.warning("--resume: no checkpoint in %s, starting from step 0", self.output_dir)
        total, output = self.config.training.steps, self.config.output
        if start_step >= total:
            return FitResult(start_step, start_step, stopped="already complete")
        metrics_path = os.path.join(self.output_dir, METRICS_FILE)
        progress = ProgressLogger(metrics_path, start_step, total, self.config.training.batch_size,
                                  output.log_every, self.stop_event)
        callbacks = [keras.callbacks.TerminateOnNaN(), progress,
                     CheckpointSaver(self.save_checkpoint, start_step, total, output.save_every, self.stop_event),
                     LossCurve(metrics_path, os.path.join(self.output_dir, LOSS_PLOT_FILE)), *(callbacks or [])]
        if output.sample_every:
            texts = output.sample_texts or [group[0] for _, group in zip(range(3), self.read_groups())]
            sampler = SimBERT(self.backbone, self.tokenizer, max_tokens=self.config.data.max_tokens)
            callbacks.append(SamplePrinter(sampler, texts, output.sample_every, start_step))
        traces_before = self.training_model.step_traces
        batches = self._batches(start_step)
        try:
            self.training_model.fit(self._fit_input(batches), steps_per_epoch=total - start_step, epochs=1,
                                    shuffle=False, verbose=0, callbacks=callbacks)
        finally:
            batches.close()  # stops the batch workers
        programs = self.training_model.step_traces - traces_before
        shapes = self.buckets.training_shapes() if self.training_model.jit_compile else None
        if shapes is None:
            logger.info("traced the training step %d time(s) (one graph for any batch shape)", programs)
        else:
            logger.info("compiled %d training step program(s) (batch buckets allow %d shapes)", programs, shapes)
        if progress.nan_step is None:
            self.save_checkpoint(progress.step)
        if self.report.skipped_records or self.report.skipped_groups:
            logger.warning("data: skipped %d unreadable records and %d groups with < 2 distinct texts",
                           self.report.skipped_records, self.report.skipped_groups)
        return FitResult(start_step, progress.step, progress.nan_step,
                         "requested" if self.stop_event.is_set() else None, progress.first, progress.last,
                         progress.samples_per_second(), programs, shapes)
