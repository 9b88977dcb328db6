"""The SimBERT training loop: one UniLM backbone, seq2seq + similarity losses, AdamW,
atomic resumable checkpoints, progress bar, metrics.jsonl and a loss curve.

Flow: `TrainConfig` -> `Trainer.build()` (tokenizer, backbone, training model,
optimizer) -> `Trainer.fit()` (batches from `simbert.data`, `keras.Model.fit`, the
callbacks below) -> `output.dir/checkpoint-<step>/` (released layout + optimizer state).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time

import keras
import numpy as np
from tqdm import tqdm

from simbert.checkpoints import assign_weights, read_tf_checkpoint, save_pretrained
from simbert.config import TrainConfig, TrainingConfig
from simbert.data import (
    PairSampler,
    ReadReport,
    SourceMasker,
    build_char_vocab,
    make_batch,
    read_groups,
    read_pairs,
)
from simbert.losses import DistillationLoss, Seq2SeqLoss, SimilarityLoss
from simbert.models import Transformer, build_transformer_model
from simbert.optimizers import AdamW
from simbert.tokenizer import SPECIAL_TOKENS, Tokenizer, load_vocab

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.npz"
STATE_FILE = "trainer_state.json"


@keras.saving.register_keras_serializable(package="simbert")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`lr * min(1, (step + 1) / warmup_steps)`: linear warm-up, then constant."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return self.learning_rate * keras.ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints under `output_dir`, oldest first, as `(step, path)`."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(CHECKPOINT_PREFIX) and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(name[len(CHECKPOINT_PREFIX):]), path))
    return sorted(found)


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
    losses = {"seq2seq": Seq2SeqLoss(), "similarity": SimilarityLoss(training.scale, training.mask_duplicates)}
    weights = {"seq2seq": training.seq2seq_weight, "similarity": training.similarity_weight}
    if training.teacher:
        outputs["distillation"] = pooled
        losses["distillation"] = DistillationLoss()
        weights["distillation"] = training.distillation_weight
    model = keras.Model([token_ids, segment_ids, positions], outputs, name="simbert_training")
    learning_rate = training.learning_rate
    if training.warmup_steps:
        learning_rate = WarmupSchedule(training.learning_rate, training.warmup_steps)
    optimizer = AdamW(learning_rate=learning_rate, weight_decay=training.weight_decay,
                      clipnorm=training.clipnorm)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights, jit_compile=training.jit_compile)
    return model


class Trainer:
    """Trains a SimBERT model as described by a `TrainConfig`.

    Example:
        >>> trainer = Trainer(TrainConfig.from_yaml("configs/tiny.yaml"))
        >>> history = trainer.fit()          # writes runs/tiny/checkpoint-*/ and metrics.jsonl
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output_dir = config.output.dir
        self.report = ReadReport()
        self.backbone: Transformer | None = None
        self.stop_requested = False

    # --------------------------------------------------------------- building
    def _read_groups(self):
        data = self.config.data
        if not os.path.isfile(data.train):
            raise FileNotFoundError(f"training file {data.train} does not exist")
        if data.format == "groups":
            return read_groups(data.train, data.on_error, self.report)
        return read_pairs(data.train, data.on_error, self.report, data.pair_threshold)

    def _build_tokenizer_and_backbone(self):
        model = self.config.model
        heads = dict(model=model.type, application="unilm", with_pool="linear", with_mlm="linear",
                     dropout_rate=model.dropout_rate)
        if model.pretrained:
            vocab_path = os.path.join(model.pretrained, "vocab.txt")
            keep_tokens = None
            if model.simplify_vocab:
                token_dict, keep_tokens = load_vocab(vocab_path, simplified=True, startswith=list(SPECIAL_TOKENS))
            else:
                token_dict = load_vocab(vocab_path)
            backbone = build_transformer_model(os.path.join(model.pretrained, "bert_config.json"),
                                               model.pretrained, keep_tokens=keep_tokens, **heads)
        else:
            if model.config is None:
                raise ValueError("model: give either `pretrained` (a released directory) or `config` "
                                 "(bert_config fields for a random model)")
            if model.vocab:
                token_dict = load_vocab(model.vocab)
            else:
                token_dict = build_char_vocab(text for group in self._read_groups() for text in group)
            backbone = build_transformer_model({**model.config, "vocab_size": len(token_dict)}, **heads)
        return Tokenizer(token_dict, do_lower_case=True), backbone

    def build(self) -> None:
        """Tokenizer, backbone, training model and optimizer, compiled."""
        training = self.config.training
        keras.utils.set_random_seed(training.seed)
        previous_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(training.precision)  # captured by the layers built now
        try:
            self.tokenizer, self.backbone = self._build_tokenizer_and_backbone()
        finally:
            keras.config.set_dtype_policy(previous_policy)
        self.teacher = self._load_teacher(training.teacher) if training.teacher else None
        self.training_model = build_training_model(self.backbone, training)
        self.optimizer = self.training_model.optimizer

    def _load_teacher(self, directory: str):
        tokenizer = Tokenizer(os.path.join(directory, "vocab.txt"))
        teacher = build_transformer_model(os.path.join(directory, "bert_config.json"), directory,
                                          model=self.config.model.type, application="unilm", with_pool="linear")
        return tokenizer, teacher

    # ---------------------------------------------------------------- batches
    def batches(self, start_step: int = 0):
        """Endless `(inputs, targets)` batches; the stream after `start_step` steps is the
        same as in an uninterrupted run with the same seed."""
        data, training = self.config.data, self.config.training
        pairs_per_batch = training.batch_size // 2
        pairs = iter(PairSampler(self._read_groups, data.maxlen, training.seed, data.shuffle_buffer))
        for _ in range(start_step * pairs_per_batch):
            next(pairs)
        masker = SourceMasker(self.tokenizer) if data.mask_source else None
        step = start_step
        while True:
            batch_pairs = [next(pairs) for _ in range(pairs_per_batch)]
            if masker is not None:
                masker.rng.seed(training.seed * 1_000_003 + step)
            inputs, targets = make_batch(batch_pairs, self.tokenizer, data.maxlen, masker, data.pad_to_multiple)
            if self.teacher is not None:
                targets["distillation"] = self._teacher_similarities(batch_pairs)
            step += 1
            yield inputs, targets

    def _stream(self, start_step: int):
        """`batches` for `fit`. On TensorFlow it is wrapped in a tf.data pipeline with every
        length dimension declared variable (Keras would otherwise guess fixed sizes from
        the first two batches) and tf.data's autotuning off: with it on, the iterator's
        teardown at the end of `fit` waited ~15 s for the autotuning thread in about one
        run in three of the tiny config (throughput is the same without it)."""
        if keras.backend.backend() != "tensorflow":
            return self.batches(start_step)
        import tensorflow as tf

        ids = tf.TensorSpec((None, None), tf.int32)
        targets = {"seq2seq": tf.TensorSpec((None, None, 2), tf.int32),
                   "similarity": tf.TensorSpec((None,), tf.int32)}
        if self.teacher is not None:
            targets["distillation"] = tf.TensorSpec((None, None), tf.float32)
        dataset = tf.data.Dataset.from_generator(lambda: self.batches(start_step),
                                                 output_signature=((ids, ids, ids), targets))
        options = tf.data.Options()
        options.autotune.enabled = False
        return dataset.with_options(options)

    def _teacher_similarities(self, batch_pairs):
        tokenizer, teacher = self.teacher
        sources = [text for a, b in batch_pairs for text in (a, b)]
        encoded = [tokenizer.encode(text, maxlen=self.config.data.maxlen * 2)[0] for text in sources]
        token_ids = np.zeros((len(encoded), max(map(len, encoded))), "int32")
        for i, ids in enumerate(encoded):
            token_ids[i, : len(ids)] = ids
        vectors = np.asarray(teacher.predict_on_batch([token_ids, np.zeros_like(token_ids)]), "float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors @ vectors.T

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> str:
        """Write `checkpoint-<step>` atomically (temp directory, then rename); keep the last K."""
        final = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{step:07d}")
        temporary = os.path.join(self.output_dir, f".tmp-{CHECKPOINT_PREFIX}{step:07d}")
        shutil.rmtree(temporary, ignore_errors=True)
        save_pretrained(self.backbone, temporary, self.tokenizer.token_dict)
        np.savez(os.path.join(temporary, TRAINING_STATE_FILE), **{
            f"{group}_{i:05d}": np.asarray(v.numpy()) for group, variables in self._state_variables().items()
            for i, v in enumerate(variables)})
        with open(os.path.join(temporary, STATE_FILE), "w", encoding="utf-8") as writer:
            json.dump({"step": step, "model_type": self.backbone.model_type,
                       "config": self.config.to_dict()}, writer, indent=2)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
        for _, old in checkpoint_dirs(self.output_dir)[: -self.config.output.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _state_variables(self) -> dict[str, list]:
        """What a resumed run needs beyond the weights: the optimizer's slots and step, and
        the dropout seed generators' states (so the random stream carries on too)."""
        return {"optimizer": list(self.optimizer.variables),
                "model": list(self.training_model.non_trainable_variables)}

    def restore_checkpoint(self, path: str) -> int:
        """Load weights, optimizer and random state from a checkpoint directory; return its step."""
        assign_weights(self.backbone, read_tf_checkpoint(path), path)
        self.optimizer.build(self.training_model.trainable_variables)
        with np.load(os.path.join(path, TRAINING_STATE_FILE), allow_pickle=False) as saved:
            for group, variables in self._state_variables().items():
                values = [saved[key] for key in sorted(saved.files) if key.startswith(group + "_")]
                if len(values) != len(variables):
                    raise ValueError(f"{path}: {TRAINING_STATE_FILE} holds {len(values)} {group} variables, "
                                     f"the trainer has {len(variables)} (was the model changed?)")
                for variable, value in zip(variables, values):
                    if tuple(variable.shape) != value.shape:
                        raise ValueError(f"{path}: {group} variable {variable.path} has shape {value.shape} "
                                         f"in the checkpoint but {tuple(variable.shape)} here")
                    variable.assign(value)
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as reader:
            return int(json.load(reader)["step"])

    # ---------------------------------------------------------------- fitting
    def fit(self, resume: bool = False, callbacks: list | None = None) -> dict:
        """Train to `training.steps`; with `resume`, continue from the latest checkpoint.

        `callbacks` are extra Keras callbacks, run after the logger and checkpoint saver.
        """
        if self.backbone is None:
            self.build()
        os.makedirs(self.output_dir, exist_ok=True)
        start_step = 0
        existing = checkpoint_dirs(self.output_dir)
        if resume and existing:
            start_step = self.restore_checkpoint(existing[-1][1])
            logger.info("resumed from %s at step %d", existing[-1][1], start_step)
        elif resume:
            logger.warning("--resume: no checkpoint in %s, starting from step 0", self.output_dir)
        total = self.config.training.steps
        if start_step >= total:
            return {"start_step": start_step, "step": start_step, "stopped": "already complete"}
        progress = ProgressLogger(self, start_step, total)
        callbacks = [progress, CheckpointSaver(self, start_step), *(callbacks or [])]
        if self.config.output.sample_every:
            callbacks.append(SamplePrinter(self, start_step))
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.training_model.fit(self._stream(start_step), steps_per_epoch=total - start_step, epochs=1,
                                    shuffle=False, verbose=0, callbacks=callbacks)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            progress.close()
        if progress.nan_step is None:
            self.save_checkpoint(progress.step)
        plot_losses(os.path.join(self.output_dir, "metrics.jsonl"), os.path.join(self.output_dir, "loss.png"))
        if self.report.skipped_records or self.report.skipped_groups:
            logger.warning("data: skipped %d unreadable records and %d groups with < 2 distinct texts",
                           self.report.skipped_records, self.report.skipped_groups)
        return {"start_step": start_step, "step": progress.step, "nan_step": progress.nan_step,
                "stopped": "signal" if self.stop_requested else None, "first": progress.first,
                "last": progress.last, "samples_per_second": progress.samples_per_second()}

    def _request_stop(self, signum, frame):
        self.stop_requested = True


class CheckpointSaver(keras.callbacks.Callback):
    """Saves every `save_every` steps, and on SIGINT/SIGTERM saves and stops."""

    def __init__(self, trainer: Trainer, start_step: int):
        super().__init__()
        self.trainer = trainer
        self.start_step = start_step

    def on_train_batch_end(self, batch, logs=None):
        step = self.start_step + batch + 1
        if not np.isfinite(logs.get("loss", 0.0)):
            return  # ProgressLogger stops training; the last good checkpoint stays
        every = self.trainer.config.output.save_every
        if self.trainer.stop_requested or (every and step % every == 0 and step < self.trainer.config.training.steps):
            self.trainer.save_checkpoint(step)
        if self.trainer.stop_requested:
            self.model.stop_training = True


class SamplePrinter(keras.callbacks.Callback):
    """Every `sample_every` steps, prints gen_synonyms of a few texts from the model."""

    def __init__(self, trainer: Trainer, start_step: int):
        from simbert.api import SimBERT

        super().__init__()
        self.trainer = trainer
        self.start_step = start_step
        output = trainer.config.output
        self.texts = list(output.sample_texts) or [group[0] for _, group in zip(range(3), trainer._read_groups())]
        self.simbert = SimBERT(trainer.backbone, trainer.tokenizer, maxlen=trainer.config.data.maxlen * 2)

    def on_train_batch_end(self, batch, logs=None):
        step = self.start_step + batch + 1
        if step % self.trainer.config.output.sample_every:
            return
        for text in self.texts:
            samples = self.simbert.gen_synonyms(text, n=20, k=3, seed=step)
            tqdm.write(f"step {step} | {text} -> {' / '.join(samples)}")


class ProgressLogger(keras.callbacks.Callback):
    """tqdm bar (step, losses, samples/s) and `metrics.jsonl`, one line per logged step
    holding the mean of each loss over the steps since the previous line.

    Keras reports running means since the start of `fit`, `m_n`; the mean over steps
    (k, n] is `(n m_n - k m_k) / (n - k)`. A NaN or inf loss stops training.
    """

    KEYS = ("loss", "seq2seq_loss", "similarity_loss", "distillation_loss")

    def __init__(self, trainer: Trainer, start_step: int, total: int):
        super().__init__()
        self.trainer = trainer
        self.start_step = self.step = start_step
        self.batch_size = trainer.config.training.batch_size
        self.log_every = max(trainer.config.output.log_every, 1)
        self.metrics_path = os.path.join(trainer.output_dir, "metrics.jsonl")
        self.bar = tqdm(total=total, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
        self.previous_sums = {}
        self.previous_count = 0
        self.first = self.last = None
        self.nan_step = None
        self.started = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.started is None and batch == 1:
            self.started = time.perf_counter()  # after the first (compiling) step

    def samples_per_second(self) -> float | None:
        steps = self.step - self.start_step - 1
        if self.started is None or steps <= 0:
            return None
        return steps * self.batch_size / (time.perf_counter() - self.started)

    def on_train_batch_end(self, batch, logs=None):
        count = batch + 1
        self.step = self.start_step + count
        if not np.isfinite(logs["loss"]):
            self.nan_step = self.step
            tqdm.write(f"loss became {logs['loss']} at step {self.step}; training stopped. The last good "
                       f"checkpoint in {self.trainer.output_dir} is kept.")
            self.model.stop_training = True
            return
        self.bar.update(1)
        if self.step % self.log_every and self.step != self.trainer.config.training.steps \
                and not self.trainer.stop_requested:
            return
        sums = {key: logs[key] * count for key in self.KEYS if key in logs}
        window = count - self.previous_count
        means = {key: (sums[key] - self.previous_sums.get(key, 0.0)) / window for key in sums}
        self.previous_sums, self.previous_count = sums, count
        record = {"step": self.step, **{k: round(float(v), 6) for k, v in means.items()},
                  "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        self.first = self.first or record
        self.last = record
        with open(self.metrics_path, "a", encoding="utf-8") as writer:
            writer.write(json.dumps(record) + "\n")
        rate = self.samples_per_second()
        self.bar.set_postfix(seq2seq=f"{means['seq2seq_loss']:.3f}", similarity=f"{means['similarity_loss']:.3f}",
                             samples_per_s=f"{rate:.1f}" if rate else "-")

    def close(self):
        self.bar.close()


def plot_losses(metrics_path: str, image_path: str) -> None:
    """Draw seq2seq and similarity loss against step from metrics.jsonl."""
    if not os.path.isfile(metrics_path):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path, encoding="utf-8") as reader:
        records = [json.loads(line) for line in reader if line.strip()]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key in ("seq2seq_loss", "similarity_loss", "distillation_loss"):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            axis.plot(*zip(*points), label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    plt.close(figure)
