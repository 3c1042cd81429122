"""An exponential moving average of G's (and E's) weights: the averaged generator.

GAN training leaves G's weights jittering around a good point from step to step, and that jitter is what
shows as speckle and checkerboard in the images; an average over the last ~1/(1 - decay) steps removes most
of it at no training cost (StyleGAN's G_ema, imaginaire's "model averaging"). The average lives in networks
of its own (built by the same builders as the trained ones), so a checkpoint restores it into a fresh G with
nothing more than another key (`average/generator`), and everything that runs a G can run it.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def average_decay(decay: float, count: tf.Tensor | int) -> tf.Tensor:
    """The decay of the average's update number `count` + 1: min(decay, count / (count + 10)).

    The ramp makes the first update a copy and lets the average follow the fast early changes of training,
    so the averaged G of an early checkpoint is not a blend with random initial weights; from about
    10 / (1 - decay) updates on (10000 for 0.999) it is the plain `decay`.
    """
    count = tf.cast(count, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), count / (count + 10.0))


class WeightAverage(tf.Module):
    """The averaged copies of G and E, and how many updates they have seen.

    Build it (like the networks it averages) inside the strategy scope: its weights are then mirrored like
    G's, and `update`, called in the training step, changes each replica's copy from that replica's G, with
    no communication (G's weights are equal on every replica, so their averages are too).
    """

    def __init__(self, generator: keras.Model, encoder: keras.Model | None = None, decay: float = 0.999):
        super().__init__(name="average")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema_decay={decay} must be in [0, 1): e.g. 0.999 (0 turns averaging off)")
        self.generator = generator
        self.encoder = encoder
        self.decay = decay
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="count")

    def reset(self, generator: keras.Model, encoder: keras.Model | None = None) -> None:
        """Make the average a copy of `generator` (and `encoder`) that has seen no update (call it outside
        `strategy.run`, e.g. after loading a pretrained G1 into a new G)."""
        for source, average in zip([generator, encoder], [self.generator, self.encoder]):
            if average is not None:
                for a, w in zip(average.weights, source.weights):
                    a.assign(w)
        self.count.assign(0)

    def networks(self) -> list[keras.Model]:
        return [net for net in (self.generator, self.encoder) if net is not None]

    def update(self, generator: keras.Model, encoder: keras.Model | None = None) -> None:
        """Move the average towards `generator`'s (and `encoder`'s) current weights by one step.

        Call it after G's optimizer has applied its update; in a `strategy.run` replica function or outside any.
        """
        sources = [generator] + ([encoder] if self.encoder is not None else [])
        pairs = []
        for source, average in zip(sources, self.networks()):
            if len(source.weights) != len(average.weights):
                raise ValueError(f"the averaged {average.name} does not have the layout of {source.name}")
            pairs += [(a, w) for a, w in zip(average.weights, source.weights) if keras.backend.is_float_dtype(a.dtype)]

        def update_all(strategy: tf.distribute.Strategy) -> None:
            def step(average, weight, count):
                keep = tf.cast(average_decay(self.decay, count), average.dtype)
                # keep·a + (1 - keep)·w rather than a - (1 - keep)·(a - w): the first update (keep 0) is an exact copy.
                return average.assign(keep * average + (1.0 - keep) * tf.cast(weight, average.dtype))

            for average, weight in pairs:
                strategy.extended.update(_raw(average), step, args=(_raw(weight), self.count), group=False)
            strategy.extended.update(self.count, lambda count: count.assign_add(1), group=False)

        # Keras' own optimizers update variables this way: a merge_call where the strategy needs one (Mirrored),
        # a direct call where it does not (MultiWorkerMirrored, the default strategy).
        tf.__internal__.distribute.interim.maybe_merge_call(update_all, tf.distribute.get_strategy())


def _raw(variable):
    """The tf.Variable behind a Keras variable (what tf.distribute's update expects)."""
    return variable.value if isinstance(variable, keras.Variable) else variable
