"""What tests/test_distribution.py runs in JAX subprocesses with simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`): `python multi_device.py COMMAND
ARGS...`, each command printing or writing its results for the test to compare.

Commands:
    gradients OUT MODE            the loss and every gradient of one training step on the
                                  tiny recipe's first batch (MODE: none | data_parallel),
                                  written to OUT (.npz)
    train OUT_DIR MODE STEPS      a run of the tiny recipe (dropout on); MODE as above
    resume OUT_DIR MODE STEPS     the same run, resumed from OUT_DIR's newest checkpoint
    process OUT_DIR STEPS COORDINATOR N I   process I of N of a multi-process run
    encode OUT MODE               the vectors of `SimBERT.encode` (.npy)
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def recipe(output_dir, steps, mode, dropout=0.0):
    from helpers import tiny_config

    config = tiny_config(output_dir, steps, distribution=mode, compilation_cache=None, batch_size=16)
    config.model.config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    config.model.dropout_rate = dropout
    config.data.max_chars = 16
    config.data.workers = 0
    config.output.save_every, config.output.log_every, config.output.keep = 10, 1, 5
    return config


def gradients(out, mode):
    import jax
    import numpy as np

    from simbert.trainer import Trainer

    trainer = Trainer(recipe(os.path.join(os.path.dirname(out), f"run-{mode}"), 1, mode))
    with trainer:
        model = trainer.training_model
        inputs, targets = next(trainer._batches(0))
        sharded = inputs, targets
        if trainer.layout.distribution is not None:
            sharded = jax.tree.map(lambda array: jax.device_put(
                array, trainer.layout.distribution.get_data_layout(array.shape).backend_layout), (inputs, targets))
        with trainer.layout.scope():
            model.optimizer.build(model.trainable_variables)
        optimizer_variables = [v.value for v in model.optimizer.variables]
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(trainable, x, y):
            value, _ = model.compute_loss_and_updates(trainable, non_trainable, [], x, y, None, training=True,
                                                   optimizer_variables=optimizer_variables)
            return value

        value, grads = jax.jit(jax.value_and_grad(loss))(trainable, *sharded)
        arrays = {"loss": np.asarray(value), "devices": np.asarray(len(trainer.layout.devices))}
        arrays.update({f"grad/{v.path}": np.asarray(g) for v, g in zip(model.trainable_variables, grads)})
        np.savez(out, **arrays)


def train(output_dir, mode, steps, resume=False):
    from simbert.trainer import Trainer

    result = Trainer(recipe(output_dir, int(steps), mode, dropout=0.1), resume=resume).fit()
    print("steps", result.start_step, result.step)


def process(output_dir, steps, coordinator, count, index):
    from simbert.distribution import ProcessGroup

    ProcessGroup(coordinator, int(count), int(index)).join(heartbeat_timeout_s=10, initialization_timeout_s=60)
    train(output_dir, "data_parallel", steps)


def encode(out, mode):
    import numpy as np

    from helpers import TINY_CONFIG, write_model_dir
    from simbert import SimBERT

    directory = os.path.join(os.path.dirname(out), "model")
    write_model_dir(directory, TINY_CONFIG)
    model = SimBERT.from_pretrained(directory, distribution=mode)
    texts = [f"第{i}句话是一个例子" * (1 + i % 3) for i in range(37)]
    np.save(out, model.encode(texts, batch_size=16))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    command, *arguments = sys.argv[1:]
    if command == "resume":
        train(*arguments, resume=True)
    else:
        {"gradients": gradients, "train": train, "process": process, "encode": encode}[command](*arguments)
