"""pix2pixHD (Wang et al., CVPR 2018) in Keras 3 on TensorFlow.

The front door: everything a user of the paper's model needs, by the paper's names.

    import pix2pixhd_tf as p2p

    opts = p2p.Options(label_nc=35, netG="global", instance_feat=True)
    p2p.train(opts)                                   # G then D per step, checkpoints, TensorBoard
    synth = p2p.Synthesizer.from_checkpoint(opts)     # G (+ E + cluster bank) of the trained experiment
    image = synth.generate(label, instance, seed=0)   # uint8 [H, W, 3]
    p2p.export_saved_model(opts, "exported/label2city")

Subpackages by role: `networks` (G1, local enhancers, multiscale D, E), `training` (the GAN model, losses,
trainer, checkpoints), `styles` (cluster bank and sampling), `serving` (SavedModel, TFLite), `data`,
`evaluation`, `editor`. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pix2pixhd_tf.options import Options

# The public names and the module each lives in. They are imported on first use, so that
# `import pix2pixhd_tf.data.synthetic` (numpy only) does not load TensorFlow.
_EXPORTS = {
    "ClusterBank": "pix2pixhd_tf.styles",
    "Encoder": "pix2pixhd_tf.networks",
    "Experiment": "pix2pixhd_tf.experiment",
    "GlobalGenerator": "pix2pixhd_tf.networks",
    "LocalEnhancer": "pix2pixhd_tf.networks",
    "MultiscaleDiscriminator": "pix2pixhd_tf.networks",
    "NLayerDiscriminator": "pix2pixhd_tf.networks",
    "Pix2PixHD": "pix2pixhd_tf.training.model",
    "StyleSpec": "pix2pixhd_tf.styles",
    "Synthesizer": "pix2pixhd_tf.inference",
    "build_discriminator": "pix2pixhd_tf.networks",
    "build_encoder": "pix2pixhd_tf.networks",
    "build_generator": "pix2pixhd_tf.networks",
    "export_saved_model": "pix2pixhd_tf.serving.saved_model",
    "load_experiment": "pix2pixhd_tf.experiment",
    "train": "pix2pixhd_tf.training.trainer",
}

if TYPE_CHECKING:
    from pix2pixhd_tf.experiment import Experiment, load_experiment
    from pix2pixhd_tf.inference import Synthesizer
    from pix2pixhd_tf.networks import (
        Encoder,
        GlobalGenerator,
        LocalEnhancer,
        MultiscaleDiscriminator,
        NLayerDiscriminator,
        build_discriminator,
        build_encoder,
        build_generator,
    )
    from pix2pixhd_tf.serving.saved_model import export_saved_model
    from pix2pixhd_tf.styles import ClusterBank, StyleSpec
    from pix2pixhd_tf.training.model import Pix2PixHD
    from pix2pixhd_tf.training.trainer import train


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pix2pixhd_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"
__all__ = [
    "ClusterBank",
    "Encoder",
    "Experiment",
    "GlobalGenerator",
    "LocalEnhancer",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "Options",
    "Pix2PixHD",
    "StyleSpec",
    "Synthesizer",
    "__version__",
    "build_discriminator",
    "build_encoder",
    "build_generator",
    "export_saved_model",
    "load_experiment",
    "train",
]
