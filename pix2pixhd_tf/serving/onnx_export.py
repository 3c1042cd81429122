"""ONNX for ONNX Runtime, TensorRT, Triton and onnxruntime-web: the generator with the SavedModel's inputs.

The model takes the inputs of `serving_default` (`label` int32 [N,H,W], `instance` int32 [N,H,W] unless
no_instance; `input_image` uint8 [N,H,W,input_nc] for label_nc 0) with dynamic N, H and W, builds G's
input in the graph with the same `serving.endpoints` code as the SavedModel (so the same
`inputs.encode_input` + `inputs.generator_input`), and returns `image` uint8 [N,H,W,output_nc].

Feature models take `features` float32 [N,H,W,feat_num] as a third input, like `generate_with_features`:
in-graph style sampling (the SavedModel's `serving_default` / `generate_with_seed`) is not exported. Compute
the feature map with `Synthesizer.sample_features` / `styles.sample_feature_map` (the same draw as the
SavedModel for a given seed), or from the SavedModel's `encode`.

ONNX has no INVALID_ARGUMENT: the SavedModel's checks (`tf.debugging.Assert`) are dropped by the converter,
and ONNX Runtime runs whatever it is fed. What it does with bad input (asserted in tests/test_onnx.py):
- a label id >= label_nc gives an all-zero one-hot at that pixel (no error; the image is generated from
  the boundary map and features alone there); a negative id -k counts from the end (ONNX OneHot wraps
  negative indices), i.e. it is read as class label_nc - k;
- a height or width that is not a multiple of G's size multiple gives an image of another size (global G)
  or an ONNX Runtime error (a local G, whose skip connection cannot add mismatched sizes);
- wrong dtypes, ranks or channel counts are refused by ONNX Runtime before running (INVALID_ARGUMENT
  from `InferenceSession.run`), as are missing inputs.
Check label ranges and sizes in the client (export/client_onnx.py does).

`float16_weights` writes a variant with float16 weights (float32 compute), within one uint8 level of the
Keras generator (tests/test_onnx.py; export/README.md has the measured error).

Requires the optional extra `.[onnx]` (tf2onnx, onnx; onnxruntime to run the model).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from pix2pixhd_tf.experiment import load_networks
from pix2pixhd_tf.inputs import to_uint8
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving.endpoints import Endpoints

__all__ = [
    "ONNX_OPSET",
    "benchmark_onnx",
    "export_onnx",
    "float16_weights",
    "onnx_input_names",
    "onnx_session",
    "run_onnx",
]

logger = logging.getLogger(__name__)

# Opset 17: supported by ONNX Runtime >= 1.11 and TensorRT >= 8.5.
ONNX_OPSET = 17


def onnx_input_names(opts: Options) -> list[str]:
    """The ONNX model's input names, in order."""
    names = ["label" if opts.label_nc else "input_image"]
    if not opts.no_instance:
        names.append("instance")
    if opts.use_features:
        names.append("features")
    return names


def _serve_function(endpoints: Endpoints) -> tuple[tf.types.experimental.GenericFunction, list[tf.TensorSpec]]:
    """A tf.function with dynamic N, H, W: (label[, instance][, features]) -> {'image': uint8}."""
    specs = endpoints.map_specs()
    if endpoints.use_features:
        specs.append(endpoints.features_spec())
    names = [s.name for s in specs]

    def serve(*args):
        kw = dict(zip(names, args))
        y = endpoints.generate(kw[endpoints.label_name], kw.get("instance"), kw.get("features"))
        return {"image": to_uint8(y)}

    return tf.function(serve, input_signature=specs, autograph=False), specs


def export_onnx(
    opts: Options,
    output_dir: str,
    *,
    generator: keras.Model | None = None,
    opset: int = ONNX_OPSET,
) -> str:
    """Convert the generator (with the in-graph label/instance encoding) to `{output_dir}/{opts.name}.onnx`.

    Inputs and outputs: see the module docstring. G's variables are frozen into the file as initializers.
    Our InstanceNormalization (a training-mode fused batch norm on batch-folded channels, see
    `networks.layers`) converts as it is: tf2onnx lowers FusedBatchNormV3(is_training=True) to
    mean / variance / normalise nodes, which tests/test_onnx.py checks against Keras to one uint8 level.

    Returns:
        The path of the .onnx file.
    """
    import tf2onnx  # optional extra `.[onnx]`: only exporting needs it

    if generator is None:
        generator, _, _ = load_networks(opts)
    endpoints = Endpoints(opts, generator, None, None)
    fn, specs = _serve_function(endpoints)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{opts.name}.onnx")
    tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset, output_path=path)
    logger.info("wrote %s (%.1f KiB)", path, os.path.getsize(path) / 1024)
    return path


def float16_weights(path: str, output_path: str | None = None) -> str:
    """Write a copy of an .onnx file whose float32 weights are stored as float16 (half the file), each cast
    back to float32 by a Cast node, so the network still computes in float32 (as TFLite's float16 variant
    does on CPU; TensorRT's `--fp16` chooses half-precision kernels itself).

    Returns:
        The new file's path (default: `{stem}_float16.onnx` beside `path`).
    """
    import onnx  # optional extra `.[onnx]`
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__float16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    output_path = output_path or os.path.splitext(path)[0] + "_float16.onnx"
    onnx.save(model, output_path)
    logger.info("wrote %s (%.1f KiB)", output_path, os.path.getsize(output_path) / 1024)
    return output_path


def onnx_session(path: str, num_threads: int | None = None):
    """An ONNX Runtime CPU InferenceSession (`num_threads`: intra-op threads, None = ONNX Runtime's default)."""
    import onnxruntime as ort  # optional extra `.[onnx]`: only running an .onnx file needs it

    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(path: str, inputs: Mapping[str, np.ndarray], num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Run an .onnx file with ONNX Runtime (CPU) on named numpy inputs; returns {output name: array}."""
    session = onnx_session(path, num_threads)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v) for k, v in inputs.items()})))


def benchmark_onnx(
    path: str, inputs: Mapping[str, np.ndarray], runs: int = 10, num_threads: int | None = None
) -> dict[str, float]:
    """ONNX Runtime CPU latency of one .onnx file on `inputs`: {'size_mb', 'mean_ms', 'median_ms', 'min_ms'}."""
    session = onnx_session(path, num_threads)
    feed = {k: np.asarray(v) for k, v in inputs.items()}
    session.run(None, feed)  # warm-up
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "size_mb": os.path.getsize(path) / 2**20,
        "mean_ms": float(np.mean(times)),
        "median_ms": float(np.median(times)),
        "min_ms": float(np.min(times)),
    }
