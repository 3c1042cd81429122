"""The coarse-to-fine generator: the global generator G1 and the local enhancers G2 (paper §3.2).

Layers are named after the official `nn.Sequential` indices (`model_1` is `model.1` in a PyTorch
state dict, `model1_2_3` is `model1_2.3`), so checkpoint conversion is a lookup, not a guess.
"""

from __future__ import annotations

import keras
from keras import layers

from pix2pixhd_tf.networks.fast_ops import check_recompute
from pix2pixhd_tf.networks.layers import AvgPoolExcludePad, ConvChain, FunctionalNetwork

_PACKAGE = "pix2pixhd_tf"


class GeneratorStack:
    """One of the official generator's nn.Sequential stacks (`model`, `model1_1`, `model1_2`, ...), built in
    the paper's units on a Keras tensor. Each layer takes the name of its official position
    (`{name}_{index}`), counting the pads and ReLUs that run inside other layers (`layers.ConvChain`).
    `recompute_blocks`: its residual blocks recompute their forward in the backward pass (`--recompute`).
    """

    def __init__(self, x, name: str, recompute_blocks: bool = False):
        self.chain = ConvChain(x, slope=0.0, recompute_blocks=recompute_blocks)
        self.name = name
        self.index = 0  # the next official position

    def c7s1(self, filters: int, in_channels: int):
        """c7s1-k: ReflectionPad2d(3), conv7, IN, ReLU."""
        _, conv_name, norm_name, _ = self._positions(4)
        self.chain.unit(filters, 7, in_channels, padding=3, pad_mode="reflect", name=conv_name, norm_name=norm_name)

    def down(self, filters: int, in_channels: int):
        """dk: conv3 stride 2 (padding 1), IN, ReLU."""
        conv_name, norm_name, _ = self._positions(3)
        self.chain.unit(filters, 3, in_channels, strides=2, padding=1, name=conv_name, norm_name=norm_name)

    def residual(self, dim: int):
        """Rk: a ResnetBlock."""
        (name,) = self._positions(1)
        self.chain.residual(dim, name=name)

    def up(self, filters: int, in_channels: int):
        """uk: transposed conv3 stride 2 (padding 1, output_padding 1), IN, ReLU."""
        conv_name, norm_name, _ = self._positions(3)
        self.chain.up_unit(filters, in_channels, name=conv_name, norm_name=norm_name)

    def relu(self):
        """The features, with the ReLU of the last unit applied (before an addition)."""
        return self.chain.activated(f"{self.name}_{self.index - 1}")

    def output(self, output_nc: int, in_channels: int):
        """ReflectionPad2d(3), conv7, tanh; tanh runs in float32 so mixed precision never clips the image."""
        _, conv_name, tanh_name = self._positions(3)
        x = self.chain.output_conv(output_nc, 7, in_channels, padding=3, pad_mode="reflect", name=conv_name)
        return layers.Activation("tanh", dtype="float32", name=tanh_name)(x)

    def _positions(self, count: int) -> list[str]:
        names = [f"{self.name}_{self.index + i}" for i in range(count)]
        self.index += count
        return names


def global_trunk(
    x, input_nc: int, ngf: int, n_downsampling: int, n_blocks: int, name: str = "model", recompute_blocks: bool = False
):
    """G1 without its output head: c7s1-ngf, n_downsampling x d(2x), n_blocks x R, n_downsampling x u(1/2)."""
    g = GeneratorStack(x, name, recompute_blocks)
    g.c7s1(ngf, input_nc)
    for i in range(n_downsampling):
        g.down(ngf * 2 ** (i + 1), ngf * 2**i)
    for _ in range(n_blocks):
        g.residual(ngf * 2**n_downsampling)
    for i in range(n_downsampling, 0, -1):
        g.up(ngf * 2 ** (i - 1), ngf * 2**i)
    return g


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GlobalGenerator(FunctionalNetwork):
    """G1, the global generator network (the paper's 1024×512 Cityscapes model at ngf 64).

    `recompute` (`--recompute`, training memory only; the weights and outputs are the same): "blocks"
    recomputes each residual block's forward in the backward pass, "all" also the whole network's.
    """

    CONFIG = ("input_nc", "output_nc", "ngf", "n_downsample_global", "n_blocks_global", "recompute")

    def __init__(
        self,
        input_nc: int,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        recompute: str = "none",
        **kwargs,
    ):
        check_recompute(recompute)
        inputs = keras.Input((None, None, input_nc), name="input")
        trunk = global_trunk(
            inputs, input_nc, ngf, n_downsample_global, n_blocks_global, recompute_blocks=recompute != "none"
        )
        super().__init__(inputs, trunk.output(output_nc, ngf), **kwargs)
        self.recompute = recompute
        self.recompute_call = recompute == "all"
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
    resolution and adds its front-end features to the coarser generator's last feature map.

    `recompute` as in `GlobalGenerator` ("blocks": G1's and the enhancers' residual blocks).
    """

    CONFIG = (
        "input_nc",
        "output_nc",
        "ngf",
        "n_downsample_global",
        "n_blocks_global",
        "n_local_enhancers",
        "n_blocks_local",
        "recompute",
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
        recompute: str = "none",
        **kwargs,
    ):
        check_recompute(recompute)
        blocks = recompute != "none"
        inputs = keras.Input((None, None, input_nc), name="input")
        pyramid = [inputs]
        for i in range(n_local_enhancers):
            pyramid.append(AvgPoolExcludePad(name=f"downsample_{i + 1}")(pyramid[-1]))

        coarser = global_trunk(
            pyramid[-1],
            input_nc,
            ngf * 2**n_local_enhancers,
            n_downsample_global,
            n_blocks_global,
            recompute_blocks=blocks,
        )
        for n in range(1, n_local_enhancers + 1):
            g = ngf * 2 ** (n_local_enhancers - n)
            front = GeneratorStack(pyramid[n_local_enhancers - n], f"model{n}_1")
            front.c7s1(g, input_nc)
            front.down(2 * g, g)
            front_features, coarser_features = front.relu(), coarser.relu()
            back = GeneratorStack(
                layers.Add(name=f"model{n}_add")([front_features, coarser_features]), f"model{n}_2", blocks
            )
            for _ in range(n_blocks_local):
                back.residual(2 * g)
            back.up(g, 2 * g)
            coarser = back
        super().__init__(inputs, coarser.output(output_nc, ngf), **kwargs)
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        self.n_downsample_global = n_downsample_global
        self.n_blocks_global = n_blocks_global
        self.n_local_enhancers = n_local_enhancers
        self.n_blocks_local = n_blocks_local
        self.recompute = recompute
        self.recompute_call = recompute == "all"

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.n_downsample_global + self.n_local_enhancers)

    def global_layers(self) -> list[keras.layers.Layer]:
        """The layers of the embedded G1 (named `model_*`): frozen for the first niter_fix_global epochs."""
        return [layer for layer in self.layers if layer.name.startswith("model_") and layer.weights]

    def global_variables(self) -> list[keras.Variable]:
        return [v for layer in self.global_layers() for v in layer.trainable_variables]
