"""Gradients on whichever backend the tests run (TensorFlow or JAX)."""

import keras


def value_and_gradients(function, *args, upstream=None):
    """`function(*args)` and the gradients of `sum(upstream * function(*args))` with respect
    to each argument, on the active backend (`upstream` defaults to ones)."""
    if keras.backend.backend() == "jax":
        import jax

        outputs, pullback = jax.vjp(function, *args)
        weights = jax.numpy.ones_like(outputs) if upstream is None else jax.numpy.asarray(upstream, outputs.dtype)
        return outputs, pullback(weights)
    import tensorflow as tf

    args = [tf.convert_to_tensor(arg) for arg in args]
    with tf.GradientTape() as tape:
        for arg in args:
            tape.watch(arg)
        outputs = function(*args)
    weights = None if upstream is None else tf.cast(upstream, outputs.dtype)
    return outputs, tape.gradient(outputs, args, output_gradients=weights)
