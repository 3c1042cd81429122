"""Deployment: a versioned SavedModel for TF Serving (`saved_model`), TFLite for devices (`tflite`), and the
in-graph pre/post-processing both share (`endpoints`)."""

from pix2pixhd_tf.serving.endpoints import DEFAULT_MAX_PIXELS, DEFAULT_SEED
from pix2pixhd_tf.serving.saved_model import export_model, export_saved_model, next_version
from pix2pixhd_tf.serving.tflite import TFLITE_VARIANTS, benchmark_tflite, export_tflite, run_tflite

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SEED",
    "TFLITE_VARIANTS",
    "benchmark_tflite",
    "export_model",
    "export_saved_model",
    "export_tflite",
    "next_version",
    "run_tflite",
]
