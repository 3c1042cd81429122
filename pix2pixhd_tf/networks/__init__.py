"""The pix2pixHD networks and the one place that builds them from `Options`."""

from __future__ import annotations

from pix2pixhd_tf.networks.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from pix2pixhd_tf.networks.encoder import Encoder
from pix2pixhd_tf.networks.generator import GlobalGenerator, LocalEnhancer
from pix2pixhd_tf.options import Options

__all__ = [
    "Encoder",
    "GlobalGenerator",
    "LocalEnhancer",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "build_discriminator",
    "build_encoder",
    "build_generator",
]


def build_generator(opts: Options) -> GlobalGenerator | LocalEnhancer:
    """G from the flags; `--recompute` changes only what its backward pass keeps, not its weights."""
    common = dict(
        input_nc=opts.generator_input_nc,
        output_nc=opts.output_nc,
        ngf=opts.ngf,
        n_downsample_global=opts.n_downsample_global,
        n_blocks_global=opts.n_blocks_global,
        recompute=opts.recompute,
        name="G",
    )
    if opts.netG == "global":
        return GlobalGenerator(**common)
    return LocalEnhancer(**common, n_local_enhancers=opts.n_local_enhancers, n_blocks_local=opts.n_blocks_local)


def build_discriminator(opts: Options) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(
        opts.discriminator_input_nc,
        opts.ndf,
        opts.n_layers_D,
        opts.num_D,
        image_nc=opts.output_nc,
        recompute=opts.recompute,
        name="D",
    )


def build_encoder(opts: Options) -> Encoder | None:
    """E for instance_feat / label_feat models that encode on the fly (None otherwise)."""
    if not opts.use_encoder:
        return None
    return Encoder(opts.output_nc, opts.feat_num, opts.nef, opts.n_downsample_E, name="E")
