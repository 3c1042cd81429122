"""The multi-scale PatchGAN discriminators (paper §3.2) that also supply the feature-matching features."""

from __future__ import annotations

import keras

from pix2pixhd_tf.layers import AvgPoolExcludePad, FunctionalNetwork, LeakyReLU, conv, instance_norm

_PACKAGE = "pix2pixhd_tf"
_KW, _PADW = 4, 2  # kernel 4, padding ceil((4 - 1) / 2) = 2, as in the official code


def _conv_block(x, filters: int, in_channels: int, strides: int, name: str, norm: bool, activation: bool, dtype=None):
    x = conv(filters, _KW, in_channels, strides=strides, padding=_PADW, name=name, dtype=dtype)(x)
    if norm:
        x = instance_norm(f"{name}_norm")(x)
    if activation:
        x = LeakyReLU(0.2, name=f"{name}_lrelu")(x)
    return x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NLayerDiscriminator(FunctionalNetwork):
    """70×70-style PatchGAN returning the output of every block (n_layers_D + 2 tensors).

    The last tensor is the real/fake map (raw scores: the BCE loss applies the sigmoid itself, in a
    numerically stable form); the others are the features that feature matching compares. The final conv
    runs in float32 so mixed precision never rounds the scores.
    """

    CONFIG = ("input_nc", "ndf", "n_layers_D")

    def __init__(self, input_nc: int, ndf: int = 64, n_layers_D: int = 3, **kwargs):
        inputs = keras.Input((None, None, input_nc), name="input")
        outputs = [_conv_block(inputs, ndf, input_nc, 2, "layer0", norm=False, activation=True)]
        nf = ndf
        for n in range(1, n_layers_D):
            nf_prev, nf = nf, min(nf * 2, 512)
            outputs.append(_conv_block(outputs[-1], nf, nf_prev, 2, f"layer{n}", norm=True, activation=True))
        nf_prev, nf = nf, min(nf * 2, 512)
        outputs.append(_conv_block(outputs[-1], nf, nf_prev, 1, f"layer{n_layers_D}", norm=True, activation=True))
        outputs.append(
            _conv_block(outputs[-1], 1, nf, 1, f"layer{n_layers_D + 1}", norm=False, activation=False, dtype="float32")
        )
        super().__init__(inputs, outputs, **kwargs)
        self.input_nc = input_nc
        self.ndf = ndf
        self.n_layers_D = n_layers_D


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiscaleDiscriminator(FunctionalNetwork):
    """num_D identical discriminators; output i comes from the one that sees the input downsampled i times.

    Sub-discriminators keep the official names: `scale{num_D-1}` judges full resolution, `scale0` the
    coarsest (the official forward pairs result i with scale num_D-1-i).
    """

    CONFIG = ("input_nc", "ndf", "n_layers_D", "num_D")

    def __init__(self, input_nc: int, ndf: int = 64, n_layers_D: int = 3, num_D: int = 2, **kwargs):
        inputs = keras.Input((None, None, input_nc), name="input")
        x = inputs
        results = []
        for i in range(num_D):
            net = NLayerDiscriminator(input_nc, ndf, n_layers_D, name=f"scale{num_D - 1 - i}")
            results.append(list(net(x)))
            if i != num_D - 1:
                x = AvgPoolExcludePad(name=f"downsample_{i + 1}")(x)
        super().__init__(inputs, results, **kwargs)
        self.input_nc = input_nc
        self.ndf = ndf
        self.n_layers_D = n_layers_D
        self.num_D = num_D

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        # A functional model unwraps a one-element output list, which would turn num_D=1's
        # [[block outputs]] into [block outputs]: the losses would read each block as a scale.
        return [outputs] if self.num_D == 1 else outputs

    def scale(self, index: int) -> NLayerDiscriminator:
        """The sub-discriminator with official name `scale{index}`."""
        return self.get_layer(f"scale{index}")
