"""The platform policy: every decision that depends on the Keras backend or the device,
made in one place. `Platform.current()` answers them for the active backend as named
fields (pad to shape buckets, compile the training step, feed `fit` from tf.data, run
callbacks ahead of the device, ...), and `Kernels` picks the implementation of each hot
spot the layers and losses use. Other modules read these fields; none asks Keras for the
backend itself (tests/test_layering.py checks).

The backends are Keras' TensorFlow and JAX (`BACKENDS`): `check_backend` refuses another.

Kernel choices, measured in docs/benchmarks.md: the written-out GELU, LayerNorm and
cross-entropy gradients measured faster on a CPU and on a GPU under XLA; fused attention
(`keras.ops.dot_product_attention`, no dropout, and cuDNN refuses the pruned last block)
stays off until measured faster on inference; the blocked top-k measured faster on a CPU
and is off on a GPU until measured there; `end_check_every` is 1 everywhere until a GPU
measures otherwise. Every choice computes the same function (tests/test_models.py); the
variants differ in rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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
GPU_KERNELS = Kernels(blocked_top_k=False)  # see the module docstring


def accelerator() -> str:
    """"gpu" when the active Keras backend computes on a GPU, else "cpu"."""
    if check_backend() == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def default_kernels() -> Kernels:
    """The kernels that measured fastest on this backend and device."""
    return Platform.current().kernels


@dataclass(frozen=True)
class Platform:
    """What simbert does differently on each backend and device, decided here only.

    The backend's fields are set at once; `accelerator` and `kernels` ask the backend for
    its devices, which starts it (TensorFlow then reads `TF_XLA_FLAGS`), so they are read
    on first use, once the caller's process-wide setup is done.

    Attributes:
        backend: the Keras backend, "tensorflow" or "jax".
        accelerator: "gpu" or "cpu" (on first use).
        kernels: the hot spots' implementations (`Kernels`; on first use).
        compiles_per_shape: each input shape of a compiled function is its own XLA
            program (JAX), so inputs are padded to a few shape buckets; otherwise one
            graph serves every shape (TensorFlow), and padding would only add work.
        compiles_training_step: what `training.jit_compile: auto` means: XLA on JAX
            (Keras would otherwise run the JAX step op by op), TensorFlow's graph path
            on TensorFlow (faster than XLA on a CPU, see docs/benchmarks.md).
        feeds_tf_data: `fit` takes the batches through a tf.data pipeline (TensorFlow);
            otherwise from a Python generator.
        dispatches_ahead: the training loop may run callbacks in a worker thread behind
            the device (JAX dispatches asynchronously; TensorFlow's Keras backend is not
            thread-safe).
        fused_adamw: AdamW's update is TensorFlow's fused `ResourceApplyAdam`.
        exports_graphs: SavedModel and ONNX export run here (TensorFlow); on JAX Keras
            would write StableHLO the installed TensorFlow may not read.
        tensorflow_is_a_guest: another backend computes, and TensorFlow is only used to
            write bert4keras checkpoints: it should stay off the GPUs.
        distributes: a step can run data parallel over several devices and processes
            (`keras.distribution` on JAX; see `simbert.distribution`).

    Example:
        >>> platform = Platform.current()
        >>> platform.backend, platform.compiles_per_shape
        ('tensorflow', False)
    """

    backend: str
    compiles_per_shape: bool
    compiles_training_step: bool
    feeds_tf_data: bool
    dispatches_ahead: bool
    fused_adamw: bool
    exports_graphs: bool
    tensorflow_is_a_guest: bool
    distributes: bool

    @classmethod
    def current(cls) -> "Platform":
        """The policy of the active Keras backend and its device (a ValueError for a
        backend simbert does not run on)."""
        backend = check_backend()
        jax = backend == "jax"
        return cls(backend=backend, compiles_per_shape=jax, compiles_training_step=jax, feeds_tf_data=not jax,
                   dispatches_ahead=jax, fused_adamw=not jax, exports_graphs=not jax, tensorflow_is_a_guest=jax,
                   distributes=jax)

    @cached_property
    def accelerator(self) -> str:
        return accelerator()

    @cached_property
    def kernels(self) -> Kernels:
        return GPU_KERNELS if self.accelerator == "gpu" else CPU_KERNELS
