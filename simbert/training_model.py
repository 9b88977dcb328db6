"""The model `Trainer.fit` trains: the UniLM backbone's seq2seq and similarity outputs (and
distillation's), their losses and weights, AdamW and the learning-rate schedule, compiled
as the platform decides (`Platform.compiles_training_step`).
"""

from __future__ import annotations

import keras

from simbert.cached_step import cached_step, uses_cached_step
from simbert.config import TrainingConfig
from simbert.cosent import CoSENTLoss
from simbert.kernels import Platform
from simbert.losses import DistillationLoss, Seq2SeqLoss, SimilarityLoss
from simbert.models import Transformer
from simbert.optimizers import AdamW
from simbert.pair_classifier import build_head


def linear_warmup(learning_rate: float, warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """`lr * min(1, (step + 1) / warmup_steps)`: linear warm-up, then constant.

    Keras' `CosineDecay` with `alpha=1` (no decay: its cosine factor is 1) warms up
    linearly from `lr / w` at step 0 to `lr` at step `w - 1`, which is this schedule.
    """
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / warmup_steps, decay_steps=1, alpha=1.0,
        warmup_target=learning_rate, warmup_steps=warmup_steps - 1)


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then linear decay to 0 at `total_steps` (sentence-transformers'
    and transformers' default "WarmupLinear"), with this module's warm-up:

        lr_t = lr * max(0, min((t + 1) / w, (T - t) / (T - w)))       (w = 0: lr (T - t) / T)
    """

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        factor = keras.ops.minimum((step + 1) / self.warmup_steps, decay) if self.warmup_steps else decay
        return self.learning_rate * keras.ops.maximum(factor, 0.0)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def learning_rate_schedule(training: TrainingConfig) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`training.learning_rate`, warmed up linearly over `training.warmup_steps` if any,
    then constant (`training.lr_decay: none`) or decayed linearly to 0 at `training.steps`."""
    if training.lr_decay == "linear":
        return WarmupLinearDecay(training.learning_rate, training.warmup_steps, training.steps)
    if training.warmup_steps:
        return linear_warmup(training.learning_rate, training.warmup_steps)
    return training.learning_rate


def compiles_step(jit_compile: bool | str, platform: Platform) -> bool:
    """`training.jit_compile` on `platform`: "auto" is `platform.compiles_training_step`."""
    if jit_compile == "auto":
        return platform.compiles_training_step
    return bool(jit_compile)


class TrainingModel(keras.Model):
    """A functional `keras.Model` that counts how often its training step is traced:
    once per compiled program on JAX and TensorFlow, once per step when run eagerly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_traces = 0

    def train_step(self, *args, **kwargs):
        self.step_traces += 1
        return super().train_step(*args, **kwargs)


class CachedTrainingModel(TrainingModel):
    """A `TrainingModel` whose step is the cached contrastive step
    (`simbert.cached_step`): the losses over the whole batch, activations for `chunk`
    rows per device at a time; compiled without Keras losses (the step holds them), its
    logs are the plain model's (`loss`, `seq2seq_loss`, `similarity_loss`, ...)."""

    def __init__(self, inputs, outputs, losses: dict, weights: dict, chunk: int, devices: int, platform: Platform,
                 **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        # Pass 1 needs only the pooled vectors: the same layers without the MLM head.
        embedder = keras.Model(inputs, {"similarity": outputs["similarity"]}, name="simbert_embedder")
        self.cached_step = cached_step(self, losses, weights, chunk, devices, platform, embedder)
        self.loss_trackers = self.cached_step.trackers  # owned here: reset, synced and logged with the model's

    def train_step(self, *args):
        self.step_traces += 1
        return self.cached_step.train_step(*args)


def build_training_model(backbone: Transformer, training: TrainingConfig, platform: Platform,
                         devices: int = 1) -> keras.Model:
    """The compiled model `fit` trains, by `training.objective`.

    simbert: inputs `(token_ids, segment_ids, target_positions)`, outputs `seq2seq` (MLM
    logits at the target positions only, about half of them), `similarity` (pooled
    [CLS]) and, with a teacher, `distillation` (pooled again). cosent: output `cosent`
    (pooled [CLS]) of inputs `(token_ids, segment_ids)`, or with `keep_generation` the
    simbert inputs and `seq2seq` output beside it. cross_encoder: output `classification`,
    the logits of a `simbert.pair_classifier.ClassifierHead` (`training.num_labels`) on
    the pooled [CLS] of inputs `(token_ids, segment_ids)` (the backbone an encoder, see
    `Trainer`), softmax cross-entropy in float32, weight 1; the head is the layer
    "classifier". Losses weighted as configured (the CoSENT loss by
    `similarity_weight`); AdamW without decay on LayerNorm and bias.

    With `training.similarity_chunk` below the `batch_size / devices` rows a device holds
    (`devices`: those the batch is sharded over), a `CachedTrainingModel`."""
    token_ids, segment_ids = backbone.inputs
    written = backbone.kernels.written_cross_entropy
    inputs, outputs, losses, weights = [token_ids, segment_ids], {}, {}, {}
    generates = training.objective == "simbert" or training.keep_generation
    if generates:
        positions = keras.Input(shape=(None,), dtype="int32", name="target_positions")
        inputs.append(positions)
        # Only [CLS] (pooled) and the target positions (MLM) leave the last layer.
        cls_and_targets = keras.ops.concatenate([keras.ops.zeros_like(positions[:, :1]), positions], axis=1)
        sequence = backbone.sequence_output(token_ids, segment_ids, output_positions=cls_and_targets)
        outputs["seq2seq"] = backbone.mlm_logits(sequence[:, 1:])
        losses["seq2seq"] = Seq2SeqLoss(written)
        weights["seq2seq"] = training.seq2seq_weight
    else:  # only [CLS] leaves the last layer
        sequence = backbone.sequence_output(token_ids, segment_ids,
                                            output_positions=keras.ops.zeros_like(token_ids[:, :1]))
    pooled = backbone.pool(sequence)
    if training.objective == "cross_encoder":
        head = build_head(backbone, training.num_labels)
        outputs["classification"] = head(pooled)
        losses["classification"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                              name="classification")
        weights["classification"] = 1.0
    elif training.objective == "cosent":
        outputs["cosent"] = pooled
        losses["cosent"] = CoSENTLoss(training.cosent_scale)
        weights["cosent"] = training.similarity_weight
    else:
        outputs["similarity"] = pooled
        losses["similarity"] = SimilarityLoss(training.scale, training.mask_duplicates, written)
        weights["similarity"] = training.similarity_weight
    if training.teacher:
        outputs["distillation"] = pooled
        losses["distillation"] = DistillationLoss()
        weights["distillation"] = training.distillation_weight
    cached = training.objective == "simbert" and uses_cached_step(training.similarity_chunk, training.batch_size,
                                                                   devices)
    if cached:
        model = CachedTrainingModel(inputs, outputs, losses, weights, training.similarity_chunk, devices, platform,
                                    name="simbert_training")
    else:
        model = TrainingModel(inputs, outputs, name="simbert_training")
    model.output_loss_weights = weights  # what each output's loss weighs in `loss`
    learning_rate = learning_rate_schedule(training)
    # A fixed name, so that the optimizer's variable paths (the training-state keys) are
    # the same in every process.
    optimizer = AdamW(learning_rate=learning_rate, weight_decay=training.weight_decay,
                      clipnorm=training.clipnorm, name="adamw")
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer=optimizer, loss=None if cached else losses, loss_weights=None if cached else weights,
                  jit_compile=compiles_step(training.jit_compile, platform))
    return model
