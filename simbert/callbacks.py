"""Keras callbacks of a training run, each given the values it uses (paths, a save
function, a stop event, the model to sample from), never the trainer itself.

Steps are counted from the run's start: `start_step + batch + 1` after a batch.

None of them makes `fit` wait for the device after a step. Keras runs the batch-end
callbacks in a thread pool, letting the loop dispatch the next step while the device
computes this one, only when every callback is `async_safe` or has no batch-end hook;
its `pythonify_logs` (reading the loss) is what waits. So the logger, the one that reads
the loss, is `async_safe` and takes the steps in order whatever thread runs them; the
callbacks that read weights (saving, sampling) act at the start of the next batch, on
the loop's thread, when the weights of the step before are the state `fit` holds. On
JAX, `fit` keeps that state apart from the model's variables within an epoch; reading
`Callback.model` puts it back (Keras' `jax_state_sync`, a pass over every variable), so
only those two read it, when they use it. TensorFlow's Keras backend is not thread-safe:
there every callback runs on the loop's thread, in the same order.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable, Sequence

import keras
import numpy as np
from tqdm import tqdm

from simbert.api import SimBERT


def with_step_weights(callback: keras.callbacks.Callback) -> keras.Model:
    """The callback's model with the weights of the step just run in its variables: on
    JAX, `Callback.model` puts the training state back (`jax_state_sync`)."""
    return callback.model


class ProgressLogger(keras.callbacks.Callback):
    """tqdm bar (step, losses, samples/s) and a metrics file (JSON lines), one line per
    logged step holding the mean of each loss over the steps since the previous line.

    Keras reports running means since the start of `fit`, `m_n`; the mean over steps
    (k, n] is `(n m_n - k m_k) / (n - k)`. A line is also written at the last step and
    when a stop is requested, and training then stops. A NaN or inf loss is recorded as
    `nan_step` and `nan_loss` and stops training (the message is the trainer's); later
    steps are not taken in.
    `learning_rate` (a number or a Keras schedule of the step) gives the logged `lr`,
    the rate for the next step, as the optimizer's `learning_rate` would.

    `async_safe`: Keras may hand the batch ends to several threads, so they are taken
    under a lock, in batch order (an early arrival waits in `pending`). A batch starts
    only once the step `AHEAD` before it is taken in.
    """

    KEYS = ("loss", "seq2seq_loss", "similarity_loss", "distillation_loss")
    AHEAD = 2  # steps the loop may start beyond the last one taken in (a bound on a stop's delay)
    async_safe = True

    def __init__(self, metrics_path: str, start_step: int, total_steps: int, batch_size: int, log_every: int,
                 stop_event: threading.Event,
                 learning_rate: float | keras.optimizers.schedules.LearningRateSchedule):
        super().__init__()
        self.metrics_path = metrics_path
        self.learning_rate = learning_rate
        self.start_step = self.step = start_step
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.log_every = max(log_every, 1)
        self.stop_event = stop_event
        self.bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
        self.previous_sums = {}
        self.previous_count = 0
        self.first = self.last = None
        self.nan_step = None
        self.nan_loss = None
        self.started = None
        self.training_model = None
        self.pending = {}
        self.taken = threading.Condition()

    def set_model(self, model):
        super().set_model(model)
        self.training_model = model  # `Callback.model` would sync the state on JAX

    def on_train_batch_begin(self, batch, logs=None):
        if self.started is None and batch == 1:
            self.started = time.perf_counter()  # after the first (compiling) step
        with self.taken:
            self.taken.wait_for(lambda: self.step - self.start_step >= batch - self.AHEAD
                                or self.nan_step is not None)

    def samples_per_second(self) -> float | None:
        steps = self.step - self.start_step - 1
        if self.started is None or steps <= 0:
            return None
        return steps * self.batch_size / (time.perf_counter() - self.started)

    def learning_rate_at(self, step: int) -> float:
        rate = self.learning_rate
        if callable(rate):
            rate = keras.ops.convert_to_numpy(rate(step))
        return float(rate)

    def finite_through(self, step: int) -> bool:
        """Whether every loss up to `step` was finite; waits until that step is taken in."""
        with self.taken:
            self.taken.wait_for(lambda: self.step >= step or self.nan_step is not None)
            return self.nan_step is None or self.nan_step > step

    def on_train_batch_end(self, batch, logs=None):
        with self.taken:
            self.pending[batch] = logs
            while self.step - self.start_step in self.pending:
                self._take(self.step - self.start_step, self.pending.pop(self.step - self.start_step))
            self.taken.notify_all()

    def _take(self, batch, logs):
        if self.nan_step is not None:
            return
        count = batch + 1
        if not np.isfinite(logs["loss"]):
            self.nan_step, self.nan_loss = self.start_step + count, float(logs["loss"])
            self.training_model.stop_training = True
            return
        self.step = self.start_step + count
        self.bar.update(1)
        stopping = self.stop_event.is_set()
        if stopping:
            self.training_model.stop_training = True
        if self.step % self.log_every and self.step != self.total_steps and not stopping:
            return
        sums = {key: logs[key] * count for key in self.KEYS if key in logs}
        window = count - self.previous_count
        means = {key: (sums[key] - self.previous_sums.get(key, 0.0)) / window for key in sums}
        self.previous_sums, self.previous_count = sums, count
        record = {"step": self.step, **{k: round(float(v), 6) for k, v in means.items()},
                  "lr": self.learning_rate_at(self.step)}
        self.first = self.first or record
        self.last = record
        with open(self.metrics_path, "a", encoding="utf-8") as writer:
            writer.write(json.dumps(record) + "\n")
        rate = self.samples_per_second()
        self.bar.set_postfix(seq2seq=f"{means['seq2seq_loss']:.3f}", similarity=f"{means['similarity_loss']:.3f}",
                             samples_per_s=f"{rate:.1f}" if rate else "-")

    def on_train_end(self, logs=None):
        self.bar.close()


class CheckpointSaver(keras.callbacks.Callback):
    """Calls `save(step)` every `save_every` steps before the last (which the caller saves
    after `fit`), at the start of the next batch, unless a loss up to that step was not
    finite (`finite_through(step)`)."""

    def __init__(self, save: Callable[[int], str], start_step: int, total_steps: int, save_every: int,
                 finite_through: Callable[[int], bool]):
        super().__init__()
        self.save = save
        self.start_step = start_step
        self.total_steps = total_steps
        self.save_every = save_every
        self.finite_through = finite_through

    def on_train_batch_begin(self, batch, logs=None):
        step = self.start_step + batch  # the step just run
        due = batch and self.save_every and step % self.save_every == 0 and step < self.total_steps
        if due and self.finite_through(step):
            with_step_weights(self)
            self.save(step)


class SamplePrinter(keras.callbacks.Callback):
    """Every `every` steps, prints `model.gen_synonyms` of each of `texts`: at the start of
    the next batch, or at the end of training after the last step."""

    def __init__(self, model: SimBERT, texts: Sequence[str], every: int, start_step: int):
        super().__init__()
        self.simbert = model
        self.texts = list(texts)
        self.every = every
        self.start_step = start_step
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._print_after(self.start_step + batch)
        self.batches = batch + 1

    def on_train_end(self, logs=None):
        self._print_after(self.start_step + self.batches)

    def _print_after(self, step: int) -> None:
        if step == self.start_step or step % self.every:
            return
        with_step_weights(self)
        for text in self.texts:
            samples = self.simbert.gen_synonyms(text, n=20, k=3, seed=step)
            tqdm.write(f"step {step} | {text} -> {' / '.join(samples)}")


class LossCurve(keras.callbacks.Callback):
    """At the end of training, draws each loss of the metrics file against step into
    `image_path` (matplotlib's Figure API: no global backend or pyplot state)."""

    LOSSES = ("seq2seq_loss", "similarity_loss", "distillation_loss")

    def __init__(self, metrics_path: str, image_path: str):
        super().__init__()
        self.metrics_path = metrics_path
        self.image_path = image_path

    def on_train_end(self, logs=None):
        if not os.path.isfile(self.metrics_path):
            return
        from matplotlib.figure import Figure

        with open(self.metrics_path, encoding="utf-8") as reader:
            records = [json.loads(line) for line in reader if line.strip()]
        figure = Figure(figsize=(7, 4))
        axis = figure.subplots()
        for key in self.LOSSES:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                axis.plot(*zip(*points), label=key)
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend()
        figure.tight_layout()
        figure.savefig(self.image_path, dpi=100)
