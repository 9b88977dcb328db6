"""The training step is compiled (never run op by op unless asked) and compiles a bounded
number of programs on batches of many lengths; batch workers never outlive `fit`.
Runs on TensorFlow here and on JAX through test_jax_backend.py."""

import keras

from helpers import child_processes, tiny_config
from simbert.trainer import Trainer


class RaiseAt(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

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
    trainer = Trainer(config)
    trainer.training_model.run_eagerly = True
    assert trainer.fit().compiled_programs == 4


def test_batch_workers_stop_when_fit_fails(tmp_path):
    config = tiny_config(tmp_path, 50)
    config.data.workers = 2
    trainer = Trainer(config)
    try:
        trainer.fit(callbacks=[RaiseAt(3)])
    except RuntimeError as error:
        assert "callback failed" in str(error)
    else:
        raise AssertionError("fit should have raised")
    assert child_processes() == []
