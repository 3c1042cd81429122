"""A small PyTorch re-implementation of the official pix2pixHD networks: the anchor of the parity tests and
of the PyTorch rows of the benchmarks. Needs torch (`pip install -e ".[convert]"`).

Written for this project from the architecture description (DESIGN.md §3). What it must share with
NVIDIA's `models/networks.py` is the module structure and therefore the state-dict keys: every network
keeps its layers in `nn.Sequential`s at the official positions (`model.1.weight`, `model.13.conv_block.5.bias`,
`model1_2.3.weight`, `scale0_layer2.0.weight`, `layer1.5.weight` ...), so a state dict of these modules is
shaped like an official checkpoint. Nothing else in the package imports it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False)


def _c7_norm_relu(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, out_nc, 7), _norm(out_nc), nn.ReLU(True)]


def _down(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [nn.Conv2d(in_nc, out_nc, 3, stride=2, padding=1), _norm(out_nc), nn.ReLU(True)]


def _up(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(in_nc, out_nc, 3, stride=2, padding=1, output_padding=1), _norm(out_nc), nn.ReLU(True)]


def _head(in_nc: int, out_nc: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(in_nc, out_nc, 7), nn.Tanh()]


def _encoder_decoder(in_nc: int, ngf: int, n_down: int, n_blocks: int) -> list[nn.Module]:
    """c7s1-ngf, n_down × down (×2), n_blocks × ResnetBlock, n_down × up (÷2): the official module list."""
    mods = _c7_norm_relu(in_nc, ngf)
    for i in range(n_down):
        mods += _down(ngf * 2**i, ngf * 2 ** (i + 1))
    mods += [ResnetBlock(ngf * 2**n_down) for _ in range(n_blocks)]
    for i in range(n_down, 0, -1):
        mods += _up(ngf * 2**i, ngf * 2 ** (i - 1))
    return mods


class ResnetBlock(nn.Module):
    """`conv_block` = [pad, conv3, IN, ReLU, pad, conv3, IN]; out = x + conv_block(x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim),
        )  # fmt: skip

    def forward(self, x):
        return x + self.conv_block(x)


class GlobalGenerator(nn.Module):
    def __init__(self, input_nc: int, output_nc: int, ngf: int, n_downsampling: int, n_blocks: int):
        super().__init__()
        self.model = nn.Sequential(*_encoder_decoder(input_nc, ngf, n_downsampling, n_blocks), *_head(ngf, output_nc))

    def forward(self, x):
        return self.model(x)


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancer(nn.Module):
    """`model` = G1 (at ngf·2^n) without its head; `model{n}_1` front ends, `model{n}_2` back ends."""

    def __init__(
        self, input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, n_local_enhancers, n_blocks_local
    ):
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        trunk = _encoder_decoder(input_nc, ngf * 2**n_local_enhancers, n_downsample_global, n_blocks_global)
        self.model = nn.Sequential(*trunk)
        for n in range(1, n_local_enhancers + 1):
            g = ngf * 2 ** (n_local_enhancers - n)
            front = _c7_norm_relu(input_nc, g) + _down(g, 2 * g)
            back = [ResnetBlock(2 * g) for _ in range(n_blocks_local)] + _up(2 * g, g)
            if n == n_local_enhancers:
                back += _head(ngf, output_nc)
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))
        self.downsample = _avg_pool()

    def forward(self, x):
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front, back = getattr(self, f"model{n}_1"), getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


class Encoder(nn.Module):
    """G1's conv stacks without residual blocks, tanh, then a per-instance mean (a plain loop: a reference)."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int, n_downsampling: int):
        super().__init__()
        self.model = nn.Sequential(*_encoder_decoder(input_nc, ngf, n_downsampling, 0), *_head(ngf, output_nc))

    def forward(self, image, inst):
        features = self.model(image)
        pooled = features.clone()
        for b in range(features.shape[0]):
            for i in torch.unique(inst[b]):
                mask = inst[b, 0] == i
                pooled[b][:, mask] = features[b][:, mask].mean(dim=1, keepdim=True)
        return pooled


def _d_blocks(input_nc: int, ndf: int, n_layers: int) -> list[list[nn.Module]]:
    kw, padw = 4, 2
    blocks = [[nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]]
    nf = ndf
    for n in range(1, n_layers + 1):
        nf_prev, nf = nf, min(nf * 2, 512)
        stride = 2 if n < n_layers else 1
        blocks.append([nn.Conv2d(nf_prev, nf, kw, stride=stride, padding=padw), _norm(nf), nn.LeakyReLU(0.2, True)])
    blocks.append([nn.Conv2d(nf, 1, kw, stride=1, padding=padw)])
    return blocks


class NLayerDiscriminator(nn.Module):
    """With get_interm_feat: `model0` .. `model{n+1}`, one Sequential per block; else one flat `model`."""

    def __init__(self, input_nc: int, ndf: int, n_layers: int, get_interm_feat: bool):
        super().__init__()
        self.get_interm_feat = get_interm_feat
        blocks = _d_blocks(input_nc, ndf, n_layers)
        if get_interm_feat:
            for n, block in enumerate(blocks):
                setattr(self, f"model{n}", nn.Sequential(*block))
        else:
            self.model = nn.Sequential(*[m for block in blocks for m in block])
        self.n_blocks = len(blocks)

    def blocks(self) -> list[nn.Module]:
        if self.get_interm_feat:
            return [getattr(self, f"model{n}") for n in range(self.n_blocks)]
        return [self.model]

    def forward(self, x):
        outputs = []
        for block in self.blocks():
            x = block(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """Sub-networks registered as `scale{i}_layer{j}` (get_interm_feat) or `layer{i}`; result i is scale num_D-1-i."""

    def __init__(self, input_nc: int, ndf: int, n_layers: int, num_D: int, get_interm_feat: bool):
        super().__init__()
        self.num_D = num_D
        self.nets = []
        for i in range(num_D):
            net = NLayerDiscriminator(input_nc, ndf, n_layers, get_interm_feat)
            if get_interm_feat:
                for j, block in enumerate(net.blocks()):
                    setattr(self, f"scale{i}_layer{j}", block)
            else:
                setattr(self, f"layer{i}", net.model)
            self.nets.append(net.blocks())
        self.downsample = _avg_pool()

    def forward(self, x):
        results = []
        for i in range(self.num_D):
            outputs = []
            y = x
            for block in self.nets[self.num_D - 1 - i]:
                y = block(y)
                outputs.append(y)
            results.append(outputs)
            if i != self.num_D - 1:
                x = self.downsample(x)
        return results


def state_dict_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return np.transpose(x.detach().cpu().numpy(), (0, 2, 3, 1))
