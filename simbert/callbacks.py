"""Keras callbacks of a training run, each given the values it uses (paths, a save
function, a stop event, the model to sample from), never the trainer itself, and the
callback list that runs them.

Steps are counted from the run's start: `start_step + batch + 1` after a batch.

`fit` need not wait for the device after a step: reading a step's loss is the wait, and
`DispatchAhead` moves it, with the batch ends, to a worker thread, so that the loop
starts the next step while the device computes this one. The callbacks that read
weights (saving, sampling) act at the start of the next batch, on the loop's thread,
where the state `fit` holds is the weights of the step just run. On JAX, `fit` keeps
that state apart from the model's variables within an epoch; reading `Callback.model`
puts it back (Keras' `jax_state_sync`, a pass over every variable), so only those two
read it, when they use it.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Callable, Sequence

import keras
import numpy as np
from tqdm import tqdm

from simbert.api import SimBERT
from simbert.kernels import Platform


def with_step_weights(callback: keras.callbacks.Callback) -> keras.Model:
    """The callback's model with the weights of the step just run in its variables: on
    JAX, `Callback.model` puts the training state back (`jax_state_sync`)."""
    return callback.model


def runs_off_the_loop(callback: keras.callbacks.Callback) -> bool:
    """Whether the callback's batch ends may run in another thread, later: it says so
    (`async_safe`, Keras' flag) or has no batch-end hook."""
    base = keras.callbacks.Callback
    return getattr(callback, "async_safe", False) or (
        type(callback).on_train_batch_end is base.on_train_batch_end
        and type(callback).on_batch_end is base.on_batch_end)


class DispatchAhead(keras.callbacks.CallbackList):
    """The callback list of a `fit` whose loop runs up to `ahead` steps ahead of its batch
    ends: these (reading the losses, which waits for the step, then each callback's
    `on_train_batch_end`) run in order in one worker thread. A batch starts once the
    batch end `ahead` before it is done; the epoch's and training's ends wait for all.
    An error in the worker is raised in the loop at the next of these. On JAX only
    (which dispatches asynchronously; TensorFlow's Keras backend is not thread-safe),
    and only when every callback `runs_off_the_loop`; otherwise it is a plain
    `CallbackList`. `close()` stops the worker (for a `fit` that raised)."""

    def __init__(self, callbacks: Sequence[keras.callbacks.Callback], model: keras.Model, ahead: int = 2,
                 **params):
        super().__init__(list(callbacks), add_history=True, add_progbar=False, model=model, **params)
        self.ahead = ahead
        self.dispatching = Platform.current().dispatches_ahead and all(map(runs_off_the_loop, callbacks))
        self.batch_ends = queue.Queue()
        self.progress = threading.Condition()
        self.submitted = self.done = 0
        self.error = None
        self.worker = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.submitted = self.done = 0
        self.error = None
        if self.dispatching:
            self.worker = threading.Thread(target=self._run_batch_ends, name="batch-ends", daemon=True)
            self.worker.start()

    def on_train_batch_begin(self, batch, logs=None):
        if self.dispatching:
            self._wait_for(batch - self.ahead)
        super().on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if not self.dispatching:
            return super().on_train_batch_end(batch, logs)
        self.submitted = batch + 1
        self.batch_ends.put((batch, logs))

    def on_epoch_end(self, epoch, logs=None):
        if self.dispatching:
            self._wait_for(self.submitted)
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if self.dispatching:
            self._wait_for(self.submitted)
            self.close()
        super().on_train_end(logs)

    def close(self) -> None:
        if self.worker is not None:
            self.batch_ends.put(None)
            self.worker = None

    def _wait_for(self, count: int) -> None:
        with self.progress:
            self.progress.wait_for(lambda: self.done >= count or self.error is not None)
            if self.error is not None:
                raise self.error

    def _run_batch_ends(self) -> None:
        while (item := self.batch_ends.get()) is not None:
            batch, logs = item
            try:
                logs = {key: float(value) for key, value in logs.items()}
                for callback in self.callbacks:
                    callback.on_train_batch_end(batch, logs)
            except BaseException as error:  # raised in the loop by `_wait_for`
                with self.progress:
                    self.error = error
                    self.progress.notify_all()
                return
            with self.progress:
                self.done = batch + 1
                self.progress.notify_all()


class TrainingModelCallback(keras.callbacks.Callback):
    """A callback that keeps the model `fit` trains as `training_model`, to set
    `stop_training` on without `Callback.model`'s state sync on JAX."""

    def __init__(self):
        super().__init__()
        self.training_model = None

    def set_model(self, model):
        super().set_model(model)
        self.training_model = model


class ProgressLogger(TrainingModelCallback):
    """tqdm bar (step, losses, samples/s) and a metrics file (JSON lines), one line per
    logged step holding the mean of each loss over the steps since the previous line.

    Keras reports running means since the start of `fit`, `m_n`; the mean over steps
    (k, n] is `(n m_n - k m_k) / (n - k)`. A line is also written at the last step and
    when a stop is requested. A NaN or inf loss is recorded as `nan_step` and `nan_loss`
    and stops training (the message is the trainer's); the steps after it (started
    before it was read) are not taken in. `learning_rate` (a number or a Keras schedule
    of the step) gives the logged `lr`, the rate for the next step, as the optimizer's
    `learning_rate` would. `negatives(step)`, when given, is the mean number of negatives
    a row of that step's batch saw in the similarity softmax, logged as `negatives`.
    Without `metrics_path` (a process that does not write the run's files) only the bar
    shows. `only_loss` `(name, weight)`: the model's one loss, which Keras logs only as
    `loss` (its weight times the loss); it is logged as `<name>_loss` too. `async_safe`:
    it reads no weights, and its batch ends may run in another thread.
    """

    KEYS = ("loss", "seq2seq_loss", "similarity_loss", "cosent_loss", "classification_loss", "distillation_loss")
    async_safe = True

    def __init__(self, metrics_path: str | None, start_step: int, total_steps: int, batch_size: int,
                 log_every: int, stop_event: threading.Event,
                 learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                 negatives: Callable[[int], float | None] | None = None,
                 only_loss: tuple[str, float] | None = None):
        super().__init__()
        self.only_loss = only_loss
        self.metrics_path = metrics_path
        self.negatives = negatives
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

    def on_train_batch_begin(self, batch, logs=None):
        if self.started is None and batch == 1:
            self.started = time.perf_counter()  # after the first (compiling) step

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

    def on_train_batch_end(self, batch, logs=None):
        if self.nan_step is not None:
            return
        count = batch + 1
        self.step = self.start_step + count
        if not np.isfinite(logs["loss"]):
            self.nan_step, self.nan_loss = self.step, float(logs["loss"])
            self.training_model.stop_training = True
            return
        self.bar.update(1)
        if self.step % self.log_every and self.step != self.total_steps and not self.stop_event.is_set():
            return
        if self.only_loss is not None and f"{self.only_loss[0]}_loss" not in logs:
            name, weight = self.only_loss
            logs = {**logs, f"{name}_loss": logs["loss"] / weight if weight else 0.0}
        sums = {key: logs[key] * count for key in self.KEYS if key in logs}
        window = count - self.previous_count
        means = {key: (sums[key] - self.previous_sums.get(key, 0.0)) / window for key in sums}
        self.previous_sums, self.previous_count = sums, count
        record = {"step": self.step, **{k: round(float(v), 6) for k, v in means.items()},
                  "lr": self.learning_rate_at(self.step)}
        negatives = self.negatives(self.step) if self.negatives is not None else None
        if negatives is not None:
            record["negatives"] = round(negatives, 2)
        self.first = self.first or record
        self.last = record
        if self.metrics_path is not None:
            with open(self.metrics_path, "a", encoding="utf-8") as writer:
                writer.write(json.dumps(record) + "\n")
        rate = self.samples_per_second()
        losses = {key.removesuffix("_loss"): f"{means[key]:.3f}" for key in self.KEYS[1:] if key in means}
        self.bar.set_postfix(**losses,
                             **({"negatives": f"{negatives:.1f}"} if negatives is not None else {}),
                             samples_per_s=f"{rate:.1f}" if rate else "-")

    def on_train_end(self, logs=None):
        self.bar.close()


class CheckpointSaver(TrainingModelCallback):
    """At the start of a batch: stops training after it if a stop was requested, and calls
    `save(step)` for the step just run every `save_every` steps before the last (which
    the caller saves after `fit`) unless a loss so far was not finite (the running mean
    of `fit`'s losses is then not finite)."""

    def __init__(self, save: Callable[[int], str], start_step: int, total_steps: int, save_every: int,
                 stop_event: threading.Event):
        super().__init__()
        self.save = save
        self.start_step = start_step
        self.total_steps = total_steps
        self.save_every = save_every
        self.stop_event = stop_event

    def on_train_batch_begin(self, batch, logs=None):
        if self.stop_event.is_set():
            self.training_model.stop_training = True
        step = self.start_step + batch
        if not (batch and self.save_every and step % self.save_every == 0 and step < self.total_steps):
            return
        model = with_step_weights(self)
        if np.isfinite(float(model.get_metrics_result()["loss"])):
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

    LOSSES = ("seq2seq_loss", "similarity_loss", "cosent_loss", "classification_loss", "distillation_loss")

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
