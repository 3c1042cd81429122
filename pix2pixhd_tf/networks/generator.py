"""The coarse-to-fine generator: the global generator G1 and the local enhancers G2 (paper §3.2).

Layers are named after the official `nn.Sequential` indices (`model_1` is `model.1` in a PyTorch
state dict, `model1_2_3` is `model1_2.3`), so checkpoint conversion is a lookup, not a guess.

The ReLU of each conv-IN-ReLU unit runs inside the layer that reads the unit (`input_relu_slope`,
`ResnetBlock(input_relu=True)`), so the tensor between units is IN's output: the one tensor that training
keeps for the unit's backward pass. Where two units meet in an addition, explicit ReLU layers apply it.
"""

from __future__ import annotations

import keras
from keras import layers

from pix2pixhd_tf.networks.layers import (
    AvgPoolExcludePad,
    FunctionalNetwork,
    LeakyReLU,
    ResnetBlock,
    TorchConvTranspose2D,
    conv,
    instance_norm,
)

_PACKAGE = "pix2pixhd_tf"


def _relu_slope(input_relu: bool) -> float | None:
    return 0.0 if input_relu else None


def conv_norm_relu(
    x, filters: int, in_channels: int, kernel_size: int, *, strides: int, name: str, index: int, input_relu: bool
):
    """[pad], conv, IN at official positions index, index+1; returns IN's output, whose ReLU (position
    index+2) the next layer applies. `input_relu`: `x` is such an output too."""
    reflect = kernel_size == 7  # the official model.{index - 1} is then a ReflectionPad2d(3)
    layer = conv(
        filters,
        kernel_size,
        in_channels,
        strides=strides,
        padding=3 if reflect else 1,
        pad_mode="reflect" if reflect else "zero",
        input_relu_slope=_relu_slope(input_relu),
        name=f"{name}_{index}",
    )
    return instance_norm(f"{name}_{index + 1}")(layer(x))


def up_norm_relu(x, filters: int, in_channels: int, *, name: str, index: int, input_relu: bool):
    """Transposed conv (x2), IN at official positions index, index+1; the ReLU as in `conv_norm_relu`."""
    x = TorchConvTranspose2D(filters, in_channels, input_relu_slope=_relu_slope(input_relu), name=f"{name}_{index}")(x)
    return instance_norm(f"{name}_{index + 1}")(x)


def output_head(x, output_nc: int, in_channels: int, *, name: str, index: int, input_relu: bool):
    """Reflect-pad 3, conv7, tanh; tanh runs in float32 so mixed precision never clips the image."""
    x = conv(
        output_nc,
        7,
        in_channels,
        padding=3,
        pad_mode="reflect",
        input_relu_slope=_relu_slope(input_relu),
        name=f"{name}_{index + 1}",
    )(x)
    return layers.Activation("tanh", dtype="float32", name=f"{name}_{index + 2}")(x)


def global_trunk(x, input_nc: int, ngf: int, n_downsampling: int, n_blocks: int, name: str = "model"):
    """G1 without its output head: c7s1-ngf, n_downsampling × d(2×), n_blocks × R, n_downsampling × u(½).

    Returns the features, the next official Sequential index (where the output head starts) and whether
    the features still need their ReLU (they do unless the trunk ends with a residual block).
    """
    x = conv_norm_relu(x, ngf, input_nc, 7, strides=1, name=name, index=1, input_relu=False)
    index = 4
    for i in range(n_downsampling):
        mult = 2**i
        x = conv_norm_relu(x, ngf * mult * 2, ngf * mult, 3, strides=2, name=name, index=index, input_relu=True)
        index += 3
    dim = ngf * 2**n_downsampling
    relu_pending = True
    for _ in range(n_blocks):
        x = ResnetBlock(dim, input_relu=relu_pending, name=f"{name}_{index}")(x)
        relu_pending = False
        index += 1
    for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        x = up_norm_relu(x, ngf * mult // 2, ngf * mult, name=name, index=index, input_relu=relu_pending)
        relu_pending = True
        index += 3
    return x, index, relu_pending


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GlobalGenerator(FunctionalNetwork):
    """G1, the global generator network (the paper's 1024×512 Cityscapes model at ngf 64)."""

    CONFIG = ("input_nc", "output_nc", "ngf", "n_downsample_global", "n_blocks_global")

    def __init__(
        self,
        input_nc: int,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        **kwargs,
    ):
        inputs = keras.Input((None, None, input_nc), name="input")
        x, index, relu_pending = global_trunk(inputs, input_nc, ngf, n_downsample_global, n_blocks_global)
        outputs = output_head(x, output_nc, ngf, name="model", index=index, input_relu=relu_pending)
        super().__init__(inputs, outputs, **kwargs)
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        self.n_downsample_global = n_downsample_global
        self.n_blocks_global = n_blocks_global

    @property
    def size_multiple(self) -> int:
        return 2**self.n_downsample_global


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LocalEnhancer(FunctionalNetwork):
    """G = {G1, G2, ...}: G1 at ngf·2^n works on the input downsampled n times; each enhancer doubles the
    resolution and adds its front-end features to the coarser generator's last feature map."""

    CONFIG = (
        "input_nc",
        "output_nc",
        "ngf",
        "n_downsample_global",
        "n_blocks_global",
        "n_local_enhancers",
        "n_blocks_local",
    )

    def __init__(
        self,
        input_nc: int,
        output_nc: int = 3,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        **kwargs,
    ):
        inputs = keras.Input((None, None, input_nc), name="input")
        pyramid = [inputs]
        for i in range(n_local_enhancers):
            pyramid.append(AvgPoolExcludePad(name=f"downsample_{i + 1}")(pyramid[-1]))

        ngf_global = ngf * 2**n_local_enhancers
        out, index, relu_pending = global_trunk(pyramid[-1], input_nc, ngf_global, n_downsample_global, n_blocks_global)
        relu_name = f"model_{index - 1}"  # official position of the pending ReLU of `out`
        for n in range(1, n_local_enhancers + 1):
            g = ngf * 2 ** (n_local_enhancers - n)
            front_name, back_name = f"model{n}_1", f"model{n}_2"
            y = pyramid[n_local_enhancers - n]
            y = conv_norm_relu(y, g, input_nc, 7, strides=1, name=front_name, index=1, input_relu=False)
            y = conv_norm_relu(y, 2 * g, g, 3, strides=2, name=front_name, index=4, input_relu=True)
            y = LeakyReLU(0.0, grad_from="input", name=f"{front_name}_6")(y)
            if relu_pending:
                out = LeakyReLU(0.0, grad_from="input", name=relu_name)(out)
            y = layers.Add(name=f"model{n}_add")([y, out])
            for i in range(n_blocks_local):
                y = ResnetBlock(2 * g, name=f"{back_name}_{i}")(y)
            y = up_norm_relu(y, g, 2 * g, name=back_name, index=n_blocks_local, input_relu=False)
            relu_pending, relu_name = True, f"{back_name}_{n_blocks_local + 2}"
            if n == n_local_enhancers:
                y = output_head(y, output_nc, ngf, name=back_name, index=n_blocks_local + 3, input_relu=True)
            out = y
        super().__init__(inputs, out, **kwargs)
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        self.n_downsample_global = n_downsample_global
        self.n_blocks_global = n_blocks_global
        self.n_local_enhancers = n_local_enhancers
        self.n_blocks_local = n_blocks_local

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.n_downsample_global + self.n_local_enhancers)

    def global_layers(self) -> list[keras.layers.Layer]:
        """The layers of the embedded G1 (named `model_*`): frozen for the first niter_fix_global epochs."""
        return [layer for layer in self.layers if layer.name.startswith("model_") and layer.weights]

    def global_variables(self) -> list[keras.Variable]:
        return [v for layer in self.global_layers() for v in layer.trainable_variables]
