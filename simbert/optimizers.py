"""AdamW with a fused per-variable update on TensorFlow.

Keras' AdamW updates each variable with about a dozen elementwise ops (each a pass over
the variable); on TensorFlow this class does the Adam step with TensorFlow's fused Adam
kernel and the decoupled decay with its fused gradient-descent kernel, one pass each.
The maths, the slots (`momentums`, `velocities`) and hence saved optimizer state are
Keras' own; other backends run Keras' update unchanged (JAX fuses it when it compiles).
The trainer runs on one device; the fused update does not go through tf.distribute's
per-replica machinery, so under a distribution strategy use `keras.optimizers.AdamW`.
"""

from __future__ import annotations

import keras

from simbert.kernels import Platform

# What `AdamW` uses of Keras' AdamW beyond its public API (setup.py pins Keras to the minor
# version the tests check them on).
PRIVATE_KERAS_ATTRIBUTES = ("_momentums", "_velocities", "_get_variable_index", "_use_weight_decay",
                            "_apply_weight_decay")


def _resource(variable):
    """The TensorFlow resource handle of a Keras or TensorFlow variable."""
    return variable.value.handle if isinstance(variable, keras.Variable) else variable.handle


@keras.saving.register_keras_serializable(package="simbert")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, same arguments and results:

        w -= lr * wd * w                                  (decay, unless excluded)
        m += (1 - b1) (g - m),   v += (1 - b2) (g^2 - v)
        w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    with `t` the 1-based step. AMSGrad falls back to Keras' update.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fused_update = Platform.current().fused_adamw

    def _fused(self):
        return self._fused_update and not self.amsgrad

    def update_step(self, gradient, variable, learning_rate):
        if not self._fused():
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_resource(variable), m=_resource(self._momentums[index]), v=_resource(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or not self._fused():
            return super()._apply_weight_decay(variables)
        import tensorflow as tf

        for variable in variables:
            if self._use_weight_decay(variable):
                dtype = variable.dtype
                rate = tf.cast(self.learning_rate, dtype) * tf.cast(self.weight_decay, dtype)
                tf.raw_ops.ResourceApplyGradientDescent(var=_resource(variable), alpha=rate,
                                                        delta=tf.convert_to_tensor(variable))
