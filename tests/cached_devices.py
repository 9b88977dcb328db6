"""What tests/test_cached_step.py runs in a JAX subprocess with simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`): `python cached_devices.py WORK`
writes under WORK
    plain.npz         the loss and every gradient of the plain step on one device,
    cached-1.npz      the same of the cached step (`training.similarity_chunk` 1: chunks of
                      one row a device) data parallel over every device, same first batch
                      and weights,
    run.json          a 2-step cached data-parallel run (chunks of 2 rows a device): model
                      class, steps, last logs.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def recipe(output_dir, mode, chunk=None, steps=1):
    from helpers import tiny_config

    config = tiny_config(output_dir, steps, distribution=mode, compilation_cache=None, batch_size=16,
                         similarity_chunk=chunk)
    config.model.config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                               attention_probs_dropout_prob=0.0)
    config.model.dropout_rate = 0.0
    config.data.max_chars = 16
    config.data.workers = 0
    config.output.log_every = 1
    return config


def loss_and_gradients(trainer, batch, weights=None):
    """The loss and gradients of one step of `trainer`'s model on `batch` (sharded as `fit`
    shards it), its weights set to `weights` first when given."""
    import jax
    import numpy as np

    model, layout = trainer.training_model, trainer.layout
    if weights is not None:
        for variable, value in zip(model.trainable_variables, weights):
            variable.assign(value)
    if layout.distribution is not None:
        batch = jax.tree.map(lambda array: jax.device_put(
            array, layout.distribution.get_data_layout(array.shape).backend_layout), batch)
    with layout.scope():
        model.optimizer.build(model.trainable_variables)
    optimizer = [v.value for v in model.optimizer.variables]
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    if hasattr(model, "cached_step"):
        def step(trainable, x, y):
            (loss, _), grads, _ = model.cached_step.loss_and_gradients(trainable, non_trainable, optimizer, x, y)
            return loss, grads
    else:
        def loss(trainable, x, y):
            value, _ = model.compute_loss_and_updates(trainable, non_trainable, [], x, y, None, training=True,
                                                   optimizer_variables=optimizer)
            return value
        step = jax.value_and_grad(loss)
    value, grads = jax.jit(step)(trainable, *batch)
    arrays = {"loss": np.asarray(value), "devices": np.asarray(len(layout.devices))}
    arrays.update({f"grad/{v.path}": np.asarray(g) for v, g in zip(model.trainable_variables, grads)})
    return arrays


def main(work):
    import numpy as np

    from simbert.trainer import Trainer

    with Trainer(recipe(os.path.join(work, "plain"), "none")) as trainer:
        batch = next(trainer._batches(0))
        weights = [np.asarray(v.value) for v in trainer.training_model.trainable_variables]
        np.savez(os.path.join(work, "plain.npz"), **loss_and_gradients(trainer, batch))
    with Trainer(recipe(os.path.join(work, "cached"), "data_parallel", 1)) as trainer:
        arrays = loss_and_gradients(trainer, batch, weights)
        np.savez(os.path.join(work, "cached-1.npz"), chunks=trainer.training_model.cached_step.chunk_count(16),
                 **arrays)
    trainer = Trainer(recipe(os.path.join(work, "run"), "data_parallel", 2, steps=2))
    result = trainer.fit()
    with open(os.path.join(work, "run.json"), "w", encoding="utf-8") as writer:
        json.dump({"model": type(trainer.training_model).__name__, "step": result.step, "last": result.last}, writer)


if __name__ == "__main__":
    main(sys.argv[1])
