"""`benchmarks.gpu --sections fit`: `Trainer.fit` on the AFQMC similar pairs (half of
BERT-base's layers at its width, mixed_bfloat16: a faster step than BERT-base, so a
harder test of the pipeline) against the pure step rate on the same batches, fed from
memory after every batch shape is compiled.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import afqmc_path
from benchmarks.gpu_common import record, sizes


def step_timer(batch_size: int):
    """A Keras callback noting the time each step's losses are read (when the step is
    done); its `samples_per_second()` is the rate over the second half of the steps, after
    every batch shape is compiled. `async_safe`, as the trainer's callbacks are, so that it
    does not make `fit` wait for each step before starting the next."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())  # after Keras read `logs`: the step is done

        def samples_per_second(self):
            times = sorted(self.times)  # batch ends may run in several threads
            half = len(times) // 2
            return (len(times) - 1 - half) * batch_size / (times[-1] - times[half])

    return StepTimer()


def section_fit(args, work, token_dict):
    import itertools

    import keras

    from simbert.config import TrainConfig
    from simbert.trainer import Trainer

    size = sizes(args.small)
    vocab_path = os.path.join(work, "fit_vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as writer:
        writer.write("\n".join(sorted(token_dict, key=token_dict.get)) + "\n")
    config = TrainConfig.from_dict({
        "model": {"model_type": "bert", "vocab": vocab_path,
                  "config": {**size.model, "num_hidden_layers": size.model["num_hidden_layers"] // 2 or 1,
                             "max_position_embeddings": 512}},
        "data": {"train": afqmc_path(args.data), "format": "pairs", "max_chars": 32},
        "training": {"steps": size.fit_steps, "batch_size": size.batch, "learning_rate": 1e-5,
                     "precision": "mixed_bfloat16", "compilation_cache": None},
        "output": {"dir": os.path.join(work, "fit_run"), "save_every": 10 ** 6, "log_every": 10},
    }, "benchmark")
    keras.backend.clear_session()
    with Trainer(config) as trainer:  # started: the model built, the run directory held
        batches = trainer._batches(0)
        prepared = [next(batches) for _ in range(size.fit_steps)]
        batches.close()
        pure = step_timer(size.batch)
        for callbacks in ([], [pure]):  # the first pass compiles every batch shape of the run
            trainer.training_model.fit((batch for batch in itertools.cycle(prepared)),
                                       steps_per_epoch=size.fit_steps, epochs=1, verbose=0, callbacks=callbacks)
        pipeline = step_timer(size.batch)
        result = trainer.fit(callbacks=[pipeline])  # the same batches, from the file, through the workers
    record(work, section="fit", name="Trainer.fit, AFQMC pairs, mixed_bfloat16, 6 layers", workers=trainer.workers,
           steps=size.fit_steps, pipeline_samples_per_second=pipeline.samples_per_second(),
           pure_step_samples_per_second=pure.samples_per_second(),
           fraction=pipeline.samples_per_second() / pure.samples_per_second(),
           compiled_programs=result.compiled_programs, batch_shapes=result.batch_shapes,
           input_wait_s=result.input_wait_s)
