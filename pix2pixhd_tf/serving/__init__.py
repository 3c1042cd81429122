"""Deployment: a versioned SavedModel for TF Serving (`saved_model`), TFLite for devices (`tflite`), ONNX for
ONNX Runtime / TensorRT (`onnx_export`, optional extra `.[onnx]`), and the in-graph pre/post-processing they
share (`endpoints`)."""

from pix2pixhd_tf.serving.endpoints import DEFAULT_MAX_PIXELS, DEFAULT_SEED
from pix2pixhd_tf.serving.onnx_export import benchmark_onnx, export_onnx, float16_weights, run_onnx
from pix2pixhd_tf.serving.saved_model import EXPORT_FORMATS, export_model, export_saved_model, next_version
from pix2pixhd_tf.serving.tflite import TFLITE_VARIANTS, benchmark_tflite, export_tflite, run_tflite

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SEED",
    "EXPORT_FORMATS",
    "TFLITE_VARIANTS",
    "benchmark_onnx",
    "benchmark_tflite",
    "export_model",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "float16_weights",
    "next_version",
    "run_onnx",
    "run_tflite",
]
