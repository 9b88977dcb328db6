"""Which implementation of each hot spot the layers and losses use, decided in one place
per backend and device (the numbers behind each choice are in docs/benchmarks.md).
The backends are Keras' TensorFlow and JAX (`BACKENDS`): `check_backend` refuses another.

The written-out kernels (a GELU, LayerNorm and cross-entropy whose gradients are one
short expression each) were chosen on a CPU, where each op is a pass over memory. On an
H100 under XLA (BERT-base, batch 128, mixed_bfloat16) they measured faster too: 16.9 ms
a step, against 17.3-18.3 ms with any one of them left to autodiff and 18.0 ms with all
three. `keras.ops.dot_product_attention` has no dropout, so it cannot serve a training
step with attention dropout, and cuDNN refuses the pruned last block (fewer queries than
keys); it stays off until measured on inference. Every choice computes the same function
(tests/test_models.py); the variants differ in rounding only.

`blocked_top_k` (the sampler's top-k in two small passes, `generation.blocked_top_k`:
the same values and indices) took a 32-step loop of top-5 over 100 x 13685 logits from
93-99 ms to 35-48 ms under XLA on a 2-core CPU; not yet measured on a GPU, so off there.

`end_check_every`: the sampling loop's check whether every sample has ended is a loop
condition XLA evaluates on the device; on a GPU each evaluation is read back by the host
before the next step is launched, so checking every k steps (an inner loop of known trip
count between checks) may let the launches run ahead, at the price of up to k - 1 steps
after the last sample ends. On a 2-core CPU 1, 4, 8 and 31 measured the same (within
noise); 1 everywhere until a GPU measures otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras


@dataclass(frozen=True)
class Kernels:
    """`written_gelu`: `layers.gelu` (float32 math, gradient written out) rather than
    autodiff of Keras' exact GELU. `written_layer_norm`: `layers.LayerNorm`'s gradient
    rather than Keras' autodiff. `written_cross_entropy`: `losses.cross_entropy_with_logits`
    rather than autodiff of `logsumexp(z) - z_y`. `fused_attention`:
    `keras.ops.dot_product_attention` where no attention dropout applies (inference, or a
    rate of 0), else the written-out softmax attention. `blocked_top_k`:
    `generation.blocked_top_k` rather than `keras.ops.top_k` for the sampler's top-k.
    `end_check_every`: decoding steps the sampling loop runs between checks whether every
    sample has ended (1: after each step, as soon as possible)."""

    written_gelu: bool = True
    written_layer_norm: bool = True
    written_cross_entropy: bool = True
    fused_attention: bool = False
    blocked_top_k: bool = True
    end_check_every: int = 1

    def __post_init__(self):
        if not isinstance(self.end_check_every, int) or self.end_check_every < 1:
            raise ValueError(f"end_check_every should be a positive integer, got {self.end_check_every!r}")


BACKENDS = ("tensorflow", "jax")  # the Keras backends simbert compiles for and is tested on


def check_backend() -> str:
    """The active Keras backend, or a ValueError saying how to pick one simbert runs on."""
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise ValueError(f"the Keras backend is {backend!r}, and simbert runs on TensorFlow or JAX: set "
                         f"KERAS_BACKEND=tensorflow (the default install) or KERAS_BACKEND=jax (on a GPU, with "
                         f"pip install -e \".[gpu]\"); KERAS_BACKEND, else ~/.keras/keras.json, chooses the backend")
    return backend


CPU_KERNELS = Kernels()
GPU_KERNELS = Kernels(blocked_top_k=False)  # measured: see the module docstring


def accelerator() -> str:
    """"gpu" when the active Keras backend computes on a GPU, else "cpu"."""
    if check_backend() == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def default_kernels() -> Kernels:
    """The kernels that measured fastest on this backend and device."""
    return GPU_KERNELS if accelerator() == "gpu" else CPU_KERNELS
