"""pix2pixHD in Keras 3 on TensorFlow."""

from pix2pixhd_tf.options import Options

__version__ = "0.1.0"
__all__ = ["Options", "__version__"]
