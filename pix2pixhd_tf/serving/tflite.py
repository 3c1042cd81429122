"""TFLite for devices: a fixed-size, batch-1, generator-only model (`export_tflite`), and running it.

The label/instance encoding stays in the graph (the same `serving.endpoints` code as the SavedModel, so
the same `inputs.generator_input`); the feature map is an input (no encoder, no cluster sampling).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from pix2pixhd_tf.experiment import load_networks
from pix2pixhd_tf.inputs import to_uint8
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving.endpoints import Endpoints

__all__ = [
    "TFLITE_VARIANTS",
    "benchmark_tflite",
    "export_tflite",
    "interpreter_class",
    "interpreter_runtime",
    "run_tflite",
]

logger = logging.getLogger(__name__)

TFLITE_VARIANTS = ("float32", "float16", "dynamic_range")


class _FrozenEndpoints(Endpoints):
    """G's weights as graph constants (`stateless_call`): the TFLite converter leaves Keras 3 variables
    as uninitialised READ_VARIABLE ops, which run on garbage (the NaNs of DESIGN.md §6)."""

    def __init__(self, opts: Options, generator: keras.Model):
        super().__init__(opts, generator, None, None)
        self.trainable = [tf.constant(keras.ops.convert_to_numpy(v)) for v in generator.trainable_variables]
        self.non_trainable = [tf.constant(keras.ops.convert_to_numpy(v)) for v in generator.non_trainable_variables]

    def run_generator(self, x: tf.Tensor) -> tf.Tensor:
        y, _ = self.generator.stateless_call(self.trainable, self.non_trainable, x, training=False)
        return y


def _tflite_module(endpoints: Endpoints, size: tuple[int, int]) -> tf.Module:
    """A batch-1, fixed-size generator-only module: the label/instance encoding stays in the graph
    (ONE_HOT, NOT_EQUAL, CONCATENATION are TFLite builtins); the feature map is an input."""
    h, w = size
    fixed = (1, h, w)
    specs = endpoints.map_specs(fixed)
    if endpoints.use_features:
        specs.append(endpoints.features_spec(fixed))
    names = [s.name for s in specs]

    def serve(*args):
        kw = dict(zip(names, args))
        label = kw[endpoints.label_name]
        y = endpoints.generate(label, kw.get("instance"), kw.get("features"))
        return {"image": to_uint8(y), "image_float": y}

    module = tf.Module()
    module.serve = tf.function(serve, input_signature=specs, autograph=False)
    return module


def export_tflite(
    opts: Options,
    output_dir: str,
    *,
    size: tuple[int, int],
    variants: Sequence[str] = TFLITE_VARIANTS,
    generator: keras.Model | None = None,
) -> dict[str, str]:
    """Convert the generator to TFLite files at a fixed size, one per variant.

    The model is batch 1 and generator-only: inputs `label` int32 [1,H,W] (`input_image` uint8 [1,H,W,
    input_nc] for label_nc 0), `instance` int32 [1,H,W] unless no_instance, and for feature models
    `features` float32 [1,H,W,feat_num] (no encoder and no cluster sampling: compute features with the
    SavedModel's `encode` or pick cluster centres yourself). Outputs: `image` uint8 [1,H,W,output_nc] and
    `image_float` float32 in [-1, 1]. Label ids are NOT range-checked (TFLite drops Assert ops): ids >=
    label_nc give an all-zero one-hot.

    Variants: float32; float16 (weights stored as float16, computed in float32 on CPU); dynamic_range
    (int8 weights, activations quantised on the fly). Converted with `TFLiteConverter.from_saved_model`
    on a fixed-shape SavedModel written for the purpose (from_concrete_functions gave NaNs, DESIGN.md §6).

    Returns:
        {variant: path of the .tflite file}, files named `{opts.name}_{H}x{W}_{variant}.tflite`.
    """
    unknown = set(variants) - set(TFLITE_VARIANTS)
    if unknown:
        raise ValueError(f"unknown TFLite variants {sorted(unknown)}; choose from {', '.join(TFLITE_VARIANTS)}")
    h, w = size
    if generator is None:
        generator, _, _ = load_networks(opts)
    endpoints = _FrozenEndpoints(opts, generator)
    if h % endpoints.g_multiple or w % endpoints.g_multiple:
        raise ValueError(f"TFLite size {h}x{w}: height and width must be multiples of {endpoints.g_multiple}")
    os.makedirs(output_dir, exist_ok=True)
    module = _tflite_module(endpoints, (h, w))
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve.get_concrete_function()})
        for variant in variants:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if variant == "float16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif variant == "dynamic_range":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            path = os.path.join(output_dir, f"{opts.name}_{h}x{w}_{variant}.tflite")
            with open(path, "wb") as f:
                f.write(converter.convert())
            paths[variant] = path
            logger.info("wrote %s (%.1f KiB)", path, os.path.getsize(path) / 1024)
    return paths


def interpreter_class() -> type:
    """The TFLite interpreter every .tflite run here goes through: LiteRT's `ai_edge_litert` (the extras
    `.[tflite]` and `.[test]`) when installed, else the deprecated `tf.lite.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # optional extra `.[tflite]`
    except ImportError:  # LiteRT is the successor of tf.lite.Interpreter, which still works
        return tf.lite.Interpreter
    return Interpreter


def interpreter_runtime() -> str:
    """'ai_edge_litert' or 'tf.lite': which runtime `run_tflite` and `benchmark_tflite` use (for reports)."""
    return "tf.lite" if interpreter_class() is tf.lite.Interpreter else "ai_edge_litert"


def _interpreter(path: str, num_threads: int | None = None):
    return interpreter_class()(model_path=path, num_threads=num_threads)


def run_tflite(
    path: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default", num_threads: int | None = None
) -> dict[str, np.ndarray]:
    """Run a .tflite file's signature on named numpy inputs (LiteRT when installed, else tf.lite)."""
    interpreter = _interpreter(path, num_threads)
    runner = interpreter.get_signature_runner(signature)
    return {k: np.asarray(v) for k, v in runner(**{k: np.asarray(v) for k, v in inputs.items()}).items()}


def benchmark_tflite(path: str, runs: int = 10, num_threads: int | None = None) -> dict[str, float]:
    """File size and CPU latency of one .tflite file on valid dummy inputs (zeros: label 0 everywhere).

    Returns {'size_mb', 'mean_ms', 'median_ms', 'min_ms'} and prints one line.
    """
    interpreter = _interpreter(path, num_threads)
    runner = interpreter.get_signature_runner("serving_default")
    inputs = {name: np.zeros(d["shape"], d["dtype"]) for name, d in runner.get_input_details().items()}
    runner(**inputs)  # warm-up: allocation and kernel preparation
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        runner(**inputs)
        times.append((time.perf_counter() - start) * 1000.0)
    result = {
        "size_mb": os.path.getsize(path) / 2**20,
        "mean_ms": float(np.mean(times)),
        "median_ms": float(np.median(times)),
        "min_ms": float(np.min(times)),
    }
    print(
        f"{os.path.basename(path)}: {result['size_mb']:.2f} MiB, CPU latency median {result['median_ms']:.1f} ms "
        f"(mean {result['mean_ms']:.1f}, min {result['min_ms']:.1f}, {len(times)} runs, {interpreter_runtime()})"
    )
    return result
