"""The training step is compiled (never run op by op unless asked) and compiles a bounded
number of programs on batches of many lengths; on JAX `fit` starts a step before reading
the loss of the one before; batch workers never outlive `fit`.
Runs on TensorFlow here and on JAX through test_jax_backend.py."""

import json
import threading
import types

import keras
import numpy as np
import pytest

from helpers import child_processes, tiny_config
from simbert.callbacks import DispatchAhead, ProgressLogger
from simbert.checkpoints import read_training_state, read_weights
from simbert.directories import TRAINING_STATE_FILE, checkpoint_dir
from simbert.trainer import Trainer


class RaiseAt(keras.callbacks.Callback):
    def __init__(self, batch, async_safe=False):
        super().__init__()
        self.batch = batch
        self.async_safe = async_safe  # on JAX: raised in DispatchAhead's worker, then in the loop

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise RuntimeError("callback failed")


def test_training_step_is_compiled_with_a_bounded_number_of_programs(tmp_path):
    config = tiny_config(tmp_path, 40)  # data_sample.json rows of many lengths: 9-65 tokens
    config.output.log_every = 40
    trainer = Trainer(config)
    result = trainer.fit()
    assert result.step == 40
    assert trainer.training_model.jit_compile == (keras.backend.backend() == "jax")  # "auto"
    if keras.backend.backend() == "jax":  # one XLA program per batch shape, shapes bucketed
        assert result.batch_shapes == 10  # lengths 16..64, target widths up to the length
        assert 1 <= result.compiled_programs <= result.batch_shapes
    else:  # TensorFlow's graph path: traced for unknown lengths, no padding
        assert result.batch_shapes is None and 1 <= result.compiled_programs <= 2


def test_an_eager_step_is_counted_once_per_step(tmp_path):
    """The trace counter the previous test relies on does see every eager step."""
    config = tiny_config(tmp_path, 4, jit_compile=False)
    with Trainer(config) as trainer:
        trainer.training_model.run_eagerly = True
        assert trainer.fit().compiled_programs == 4


@pytest.mark.parametrize("async_safe", [False, True])
def test_batch_workers_stop_when_fit_fails(tmp_path, async_safe):
    config = tiny_config(tmp_path, 50)
    config.data.workers = 2
    trainer = Trainer(config)
    try:
        trainer.fit(callbacks=[RaiseAt(3, async_safe)])
    except RuntimeError as error:
        assert "callback failed" in str(error)
    else:
        raise AssertionError("fit should have raised")
    assert child_processes() == []


def test_a_checkpoint_between_logged_steps_holds_that_steps_weights(tmp_path):
    """On JAX `fit` keeps the training state apart from the variables between the steps a
    callback reads the model at; a checkpoint saved at step 2 of a run that logs every 4
    steps holds the same weights and state as the last checkpoint of a 2-step run."""
    between = tiny_config(tmp_path / "between", 4)
    between.output.save_every, between.output.log_every = 2, 4
    Trainer(between).fit()
    straight = tiny_config(tmp_path / "straight", 2)
    straight.output.log_every = 1
    trainer = Trainer(straight)
    trainer.fit()
    # The logged learning rate is the warm-up's (0.002, 10 steps) for the next step, as
    # the optimizer reads it.
    with open(tmp_path / "straight" / "metrics.jsonl", encoding="utf-8") as reader:
        rates = [json.loads(line)["lr"] for line in reader]
    np.testing.assert_allclose(rates, [0.002 * 2 / 10, 0.002 * 3 / 10], rtol=1e-6)
    assert abs(float(keras.ops.convert_to_numpy(trainer.training_model.optimizer.learning_rate)) - rates[-1]) < 1e-9
    saved, expected = checkpoint_dir(tmp_path / "between", 2), checkpoint_dir(tmp_path / "straight", 2)
    later = read_weights(checkpoint_dir(tmp_path / "between", 4))
    for read in (read_weights, lambda path: read_training_state(f"{path}/{TRAINING_STATE_FILE}")):
        saved_values, expected_values = read(saved), read(expected)
        assert saved_values.keys() == expected_values.keys()
        for name, value in expected_values.items():
            np.testing.assert_allclose(saved_values[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert any(not np.allclose(later[name], value) for name, value in read_weights(saved).items())


def test_on_jax_the_loss_is_read_off_the_training_loop(tmp_path, monkeypatch):
    """Keras starts the next step without waiting for the device only when every callback
    is `async_safe` or has no batch-end hook; it then reads the loss (`pythonify_logs`)
    and runs the batch ends in other threads. TensorFlow's Keras backend is not
    thread-safe: there they run on the loop's thread. On JAX the loop itself reads
    nothing back from the device (a read would make it wait for the step), apart from
    the checkpoint it saves at the end."""
    import jax

    threads, loop_reads, saving = [], [], threading.local()
    take = ProgressLogger.on_train_batch_end
    array_type, save = type(jax.numpy.zeros(())), Trainer.save_checkpoint
    read = array_type._value  # what np.asarray, float() and .item() of a JAX array go through

    def recording(self, batch, logs=None):
        threads.append(threading.current_thread())
        take(self, batch, logs)

    def counted_read(array):
        if threading.current_thread() is threading.main_thread() and not getattr(saving, "active", False):
            loop_reads.append(array.shape)
        return read.__get__(array)

    def marked_save(self, step):
        saving.active = True
        try:
            return save(self, step)
        finally:
            saving.active = False

    monkeypatch.setattr(ProgressLogger, "on_train_batch_end", recording)
    monkeypatch.setattr(array_type, "_value", property(counted_read))
    monkeypatch.setattr(Trainer, "save_checkpoint", marked_save)
    config = tiny_config(tmp_path, 12)
    config.output.save_every = 4
    result = Trainer(config).fit()
    assert result.step == 12 and len(threads) == 12
    on_jax = keras.backend.backend() == "jax"
    off_the_loop = [thread is not threading.main_thread() for thread in threads]
    assert off_the_loop == [on_jax] * 12
    if on_jax:  # one read a step would be 12; at most the end of the run's own bookkeeping
        assert len(loop_reads) <= 2, loop_reads


def test_batch_ends_run_in_order_behind_the_loop_and_their_errors_reach_it():
    """On JAX `DispatchAhead` runs the batch ends in a worker thread, in order, and a batch
    starts once the batch end `ahead` (2) before it is done; a callback's error is raised
    in the loop. On TensorFlow they run in the loop, at once."""
    on_jax = keras.backend.backend() == "jax"
    released, seen = threading.Event(), []

    class Recorder(keras.callbacks.Callback):
        async_safe = True

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                released.wait(60)
            if batch == 4:
                raise ValueError("disk full")
            seen.append((batch, logs["loss"], threading.current_thread() is threading.main_thread()))

    callbacks = DispatchAhead([Recorder()], types.SimpleNamespace(), ahead=2)
    assert callbacks.dispatching == on_jax
    if not on_jax:
        released.set()

    def loss(batch):
        return {"loss": keras.ops.convert_to_tensor(float(batch))}

    callbacks.on_train_begin()
    for batch in range(3):
        callbacks.on_train_batch_begin(batch)
        callbacks.on_train_batch_end(batch, loss(batch))
    starting = threading.Thread(target=callbacks.on_train_batch_begin, args=(3,))
    starting.start()
    starting.join(0.5 if on_jax else 60)
    assert starting.is_alive() == on_jax  # waiting for batch 0's end
    released.set()
    starting.join(60)
    assert not starting.is_alive()
    callbacks.on_train_batch_end(3, loss(3))
    with pytest.raises(ValueError, match="disk full"):
        callbacks.on_train_batch_end(4, loss(4))
        callbacks.on_train_batch_begin(7)  # waits for batch 4's end
    assert seen == [(batch, float(batch), not on_jax) for batch in range(4)]
    callbacks.close()
