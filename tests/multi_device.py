"""What tests/test_distribution.py runs in JAX subprocesses with simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`): `python multi_device.py COMMAND
ARGS...`, each command writing its results for the test to compare. One process does
several runs, so that the backend starts once.

Commands:
    gradients OUT MODE            the loss and every gradient of one training step on the
                                  small recipe's first batch (MODE: none | data_parallel |
                                  auto), written to OUT (.npz)
    train OUT_DIR MODE STEPS      a run of the small recipe (dropout on); MODE as above
    resume OUT_DIR MODE STEPS     the same run, resumed from OUT_DIR's newest checkpoint
    devices WORK                  all of the single-process runs the tests compare, under WORK
    recipe OUT_YAML OUT_DIR STEPS the small recipe as a YAML file, for the `simbert` command
    encode OUT MODE               the vectors of `SimBERT.encode` (.npy)
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def recipe(output_dir, steps, mode, dropout=0.0, keep_programs=True):
    """The small recipe into `output_dir`. With `keep_programs` its compiled programs are
    kept in `compiled/` beside `output_dir`, so that the run resumed in this process
    loads the step the run before it compiled instead of compiling it again."""
    from helpers import tiny_config

    cache = os.path.join(os.path.dirname(os.path.abspath(output_dir)), "compiled") if keep_programs else None
    config = tiny_config(output_dir, steps, distribution=mode, compilation_cache=cache, batch_size=16)
    config.model.config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    config.model.dropout_rate = dropout
    config.model.config["attention_probs_dropout_prob"] = dropout
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

    trainer = Trainer(recipe(output_dir, int(steps), mode, dropout=0.1), resume=resume)
    result = trainer.fit()
    print("layout", mode, trainer.layout.describe())
    print("steps", result.start_step, result.step)


def devices(work):
    """The runs tests/test_distribution.py compares, in one process: the gradients of one
    step on one device and on all, 30 steps on one device, 20 on all then resumed to 30."""
    gradients(os.path.join(work, "gradients-none.npz"), "none")
    gradients(os.path.join(work, "gradients-auto.npz"), "auto")
    train(os.path.join(work, "one"), "none", 30)
    train(os.path.join(work, "all"), "data_parallel", 20)
    train(os.path.join(work, "all"), "data_parallel", 30, resume=True)


def write_recipe(out_yaml, output_dir, steps):
    import yaml

    # No compilation cache: the processes of a run must compile alike (one that loaded the
    # step while the other compiled it would wait at the first collective past gloo's
    # 30 s deadline; JAX's cache is written by process 0 only).
    config = recipe(output_dir, int(steps), "auto", dropout=0.1, keep_programs=False)
    with open(out_yaml, "w", encoding="utf-8") as writer:
        yaml.safe_dump(config.to_dict(), writer, allow_unicode=True)


def encode(out, mode):
    """`SimBERT.encode` of 37 texts in batches of 16 (a last one of 5) on the devices MODE
    gives, with the compiled programs it counts, and `gen_synonyms` with a seed; written
    to OUT (.npz). Traces are kept in a compilation cache beside OUT, which runs on other
    device counts share: each must store and load its own."""
    import numpy as np

    from helpers import TINY_CONFIG, write_model_dir
    from simbert import SimBERT

    work = os.path.dirname(out)
    directory = write_model_dir(os.path.join(work, f"model-{mode}"), TINY_CONFIG)
    model = SimBERT.from_pretrained(directory, max_tokens=16, distribution=mode,
                                    compilation_cache=os.path.join(work, "cache"))
    texts = [" ".join(f"w{(7 * i + j) % 90 + 1}" for j in range(1 + i % 11)) for i in range(37)]
    vectors = model.encode(texts, batch_size=16)
    programs = model.compiled_programs
    again = model.encode(texts[:3], batch_size=16)  # a batch of 3 rows: 4 on one device and on 4
    synonyms = model.gen_synonyms("w5 w6 w7", n=12, k=5, seed=3, with_scores=True)
    np.savez(out, vectors=vectors, again=again, programs=programs, devices=len(model.layout.devices),
             sharded=len(model.source_pass.pooled(np.zeros((4, 16), "int32")).sharding.device_set),
             synonyms=np.array([text for text, _ in synonyms]), scores=np.array([score for _, score in synonyms]))

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    command, *arguments = sys.argv[1:]
    if command == "resume":
        train(*arguments, resume=True)
    else:
        {"gradients": gradients, "train": train, "devices": devices, "recipe": write_recipe,
         "encode": encode}[command](*arguments)
