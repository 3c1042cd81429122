"""The feature encoder E with instance-wise average pooling (paper §3.4)."""

from __future__ import annotations

import keras

from pix2pixhd_tf.networks.generator import global_trunk
from pix2pixhd_tf.networks.layers import FunctionalNetwork, InstanceAveragePool

_PACKAGE = "pix2pixhd_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Encoder(FunctionalNetwork):
    """An encoder-decoder (G1's down/up stacks, no residual blocks) whose output is averaged per instance.

    Inputs: the real image [N,H,W,input_nc] in [-1, 1] and the instance map [N,H,W] (int). Output: the
    pooled features [N,H,W,feat_num]; every pixel of an instance carries that instance's feature, which is
    what the generator sees and what k-means clusters.
    """

    CONFIG = ("input_nc", "feat_num", "nef", "n_downsample_E")

    def __init__(self, input_nc: int = 3, feat_num: int = 3, nef: int = 16, n_downsample_E: int = 4, **kwargs):
        image = keras.Input((None, None, input_nc), name="image")
        instance = keras.Input((None, None), dtype="int32", name="instance")
        features = global_trunk(image, input_nc, nef, n_downsample_E, n_blocks=0).output(feat_num, nef)
        pooled = InstanceAveragePool(name="instance_pool")(features, instance)
        super().__init__([image, instance], pooled, **kwargs)
        self.input_nc = input_nc
        self.feat_num = feat_num
        self.nef = nef
        self.n_downsample_E = n_downsample_E

    @property
    def size_multiple(self) -> int:
        return 2**self.n_downsample_E
