"""Adam with TensorFlow's fused update kernel: same arithmetic as Keras' Adam, one pass over memory."""

from __future__ import annotations

import keras
import tensorflow as tf

_PACKAGE = "pix2pixhd_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose dense updates run TensorFlow's `ResourceApplyAdam` kernel.

    Keras 3's Adam builds each variable's update from about ten separate tensor ops, each a full pass over
    the variable; the fused kernel applies the same update (bias-corrected step size, epsilon added to
    sqrt(v)) in one multi-threaded pass, several times faster on a CPU for G1's 182M parameters
    (benchmarks/README.md). Other backends, sparse gradients and amsgrad keep Keras' own update; the slot
    variables are Keras' own, so checkpoints are interchangeable with `keras.optimizers.Adam`.
    """

    def update_step(self, gradient, variable, learning_rate):
        if (
            keras.backend.backend() != "tensorflow"
            or self.amsgrad
            or isinstance(gradient, tf.IndexedSlices)
            or not hasattr(variable, "handle")
        ):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )
