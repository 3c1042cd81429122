"""The multi-scale PatchGAN discriminators (paper §3.2) that also supply the feature-matching features."""

from __future__ import annotations

import keras

from pix2pixhd_tf.networks.fast_ops import check_recompute
from pix2pixhd_tf.networks.layers import AvgPoolExcludePad, ConvChain, FunctionalNetwork, LeakyReLU, conv

_PACKAGE = "pix2pixhd_tf"
_KW, _PADW = 4, 2  # kernel 4, padding ceil((4 - 1) / 2) = 2, as in the official code
_SLOPE = 0.2


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NLayerDiscriminator(FunctionalNetwork):
    """70×70-style conditional PatchGAN returning the output of every block (n_layers_D + 2 tensors).

    Called on [condition, image]: the label map (input_nc - image_nc channels) and the real or generated
    image. Its first conv sees their concatenation, as the official D's does, but the label map gets no
    gradient (`layers.ConditionalConv2D`).

    The last tensor is the real/fake map (raw scores: the BCE loss applies the sigmoid itself, in a
    numerically stable form); the others are the features that feature matching compares. The final conv
    runs in float32 so mixed precision never rounds the scores.

    `recompute` (`--recompute=all`): the backward pass keeps only the inputs (and what the losses keep of
    the returned features), and runs the forward again (`fast_ops.recompute`).
    """

    CONFIG = ("input_nc", "ndf", "n_layers_D", "image_nc", "recompute")

    def __init__(
        self, input_nc: int, ndf: int = 64, n_layers_D: int = 3, image_nc: int = 3, recompute: bool = False, **kwargs
    ):
        inputs = _condition_and_image_inputs(input_nc, image_nc)
        x = conv(ndf, _KW, input_nc, strides=2, padding=_PADW, conditional=True, name="layer0")(inputs)
        # No IN here: the gradient keeps the activation, so grappler can fuse conv + bias + LeakyReLU.
        outputs = [LeakyReLU(_SLOPE, grad_from="output", name="layer0_lrelu")(x)]
        chain = ConvChain(outputs[0], slope=_SLOPE)
        nf = ndf
        for n in range(1, n_layers_D + 1):
            nf_prev, nf = nf, min(nf * 2, 512)
            strides = 2 if n < n_layers_D else 1
            chain.unit(nf, _KW, nf_prev, strides=strides, padding=_PADW, name=f"layer{n}", norm_name=f"layer{n}_norm")
            outputs.append(chain.activated(f"layer{n}_lrelu"))  # a feature for feature matching
        outputs.append(chain.output_conv(1, _KW, nf, padding=_PADW, name=f"layer{n_layers_D + 1}", dtype="float32"))
        super().__init__(inputs, outputs, **kwargs)
        self.input_nc = input_nc
        self.ndf = ndf
        self.n_layers_D = n_layers_D
        self.image_nc = image_nc
        self.recompute = recompute
        self.recompute_call = recompute


def _condition_and_image_inputs(input_nc: int, image_nc: int) -> list:
    if not 0 < image_nc < input_nc:
        raise ValueError(f"a conditional D sees label channels and {image_nc} image channels: input_nc={input_nc}")
    return [
        keras.Input((None, None, input_nc - image_nc), name="condition"),
        keras.Input((None, None, image_nc), name="image"),
    ]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiscaleDiscriminator(FunctionalNetwork):
    """num_D identical discriminators, called on [label map, image]; output i comes from the one that sees
    both downsampled i times.

    Sub-discriminators keep the official names: `scale{num_D-1}` judges full resolution, `scale0` the
    coarsest (the official forward pairs result i with scale num_D-1-i).

    `recompute` (`--recompute`): "all" makes each sub-discriminator one recompute segment; "none" and
    "blocks" (a D has no residual blocks) change nothing here.
    """

    CONFIG = ("input_nc", "ndf", "n_layers_D", "num_D", "image_nc", "recompute")

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers_D: int = 3,
        num_D: int = 2,
        image_nc: int = 3,
        recompute: str = "none",
        **kwargs,
    ):
        check_recompute(recompute)
        inputs = _condition_and_image_inputs(input_nc, image_nc)
        x = inputs
        results = []
        for i in range(num_D):
            net = NLayerDiscriminator(
                input_nc, ndf, n_layers_D, image_nc, recompute=recompute == "all", name=f"scale{num_D - 1 - i}"
            )
            results.append(list(net(x)))
            if i != num_D - 1:
                pool = AvgPoolExcludePad(name=f"downsample_{i + 1}")
                x = [pool(t) for t in x]
        super().__init__(inputs, results, **kwargs)
        self.input_nc = input_nc
        self.ndf = ndf
        self.n_layers_D = n_layers_D
        self.num_D = num_D
        self.image_nc = image_nc
        self.recompute = recompute

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        # A functional model unwraps a one-element output list, which would turn num_D=1's
        # [[block outputs]] into [block outputs]: the losses would read each block as a scale.
        return [outputs] if self.num_D == 1 else outputs

    def scale(self, index: int) -> NLayerDiscriminator:
        """The sub-discriminator with official name `scale{index}`."""
        return self.get_layer(f"scale{index}")
