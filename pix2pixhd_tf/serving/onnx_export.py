"""ONNX for ONNX Runtime, TensorRT, Triton and onnxruntime-web: the generator with the SavedModel's inputs.

The model takes the inputs of `serving_default` (`label` int32 [N,H,W], `instance` int32 [N,H,W] unless
no_instance; `input_image` uint8 [N,H,W,input_nc] for label_nc 0) with dynamic N, H and W, builds G's
input in the graph with the same `serving.endpoints` code as the SavedModel (so the same
`inputs.encode_input` + `inputs.generator_input`), and returns `image` uint8 [N,H,W,output_nc].

Feature models take `features` float32 [N,H,W,feat_num] as a third input, like `generate_with_features`.
With their cluster bank they also get a second file, `{name}_seed.onnx` (`export_onnx(..., seed_input=True)`),
the SavedModel's `generate_with_seed`: inputs label, instance and `seed` int32 [N] (one per image;
`serving_default` is seed 0), styles sampled in the graph from the embedded bank by
`styles.sample_features_graph` with the ONNX twin of the draw (`serving.onnx_sampling`), so ONNX Runtime
gives the SavedModel's image for the same seed (tests/test_onnx.py). Two files rather than one with both
inputs because ONNX Runtime must be fed every graph input: each file's inputs are all required.

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
from pix2pixhd_tf.serving.onnx_sampling import cluster_draw_portable
from pix2pixhd_tf.styles import ClusterBank, sample_features_graph

__all__ = [
    "ONNX_OPSET",
    "SEED_SUFFIX",
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


_WEIGHT_PREFIX = "g_weight_"  # G's variables enter the converted graph as inputs of these names
SEED_SUFFIX = "_seed"  # {name}_seed.onnx: the sampled-styles model (generate_with_seed)


def onnx_input_names(opts: Options, seed_input: bool = False) -> list[str]:
    """The ONNX model's input names, in order (`seed_input`: the `{name}_seed.onnx` model's)."""
    names = ["label" if opts.label_nc else "input_image"]
    if not opts.no_instance:
        names.append("instance")
    if opts.use_features:
        names.append("seed" if seed_input else "features")
    return names


class _OnnxEndpoints(Endpoints):
    """Endpoints for conversion: G runs on its weights fed as graph inputs (`weights`, set while tracing;
    see `export_onnx` for why), and style sampling uses the ONNX twin of the draw (`RandomIndexShuffle`
    has no ONNX op)."""

    def __init__(self, opts: Options, generator: keras.Model, bank: ClusterBank | None):
        super().__init__(opts, generator, None, bank)
        self.weights: list[tf.Tensor] = []

    def weight_specs(self) -> list[tf.TensorSpec]:
        """One spec per G variable (trainable first, as `stateless_call` takes them), named `g_weight_{i}`."""
        variables = self.generator.trainable_variables + self.generator.non_trainable_variables
        return [
            tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=f"{_WEIGHT_PREFIX}{i}") for i, v in enumerate(variables)
        ]

    def run_generator(self, x: tf.Tensor) -> tf.Tensor:
        n = len(self.generator.trainable_variables)
        y, _ = self.generator.stateless_call(self.weights[:n], self.weights[n:], x, training=False)
        return y

    def sampled_features(self, label, instance, seed) -> tf.Tensor:
        regions = label if self.opts.label_feat else instance
        return sample_features_graph(regions, seed, self.bank, feat_num=self.opts.feat_num, draw=cluster_draw_portable)


def _serve_function(
    endpoints: _OnnxEndpoints, seed_input: bool = False
) -> tuple[tf.types.experimental.GenericFunction, list[tf.TensorSpec]]:
    """A tf.function with dynamic N, H, W: (label[, instance][, features | seed], *G's weights) -> {'image':
    uint8}; `export_onnx` turns the weight inputs into initializers."""
    specs = endpoints.map_specs()
    if endpoints.use_features:
        specs.append(tf.TensorSpec([None], tf.int32, name="seed") if seed_input else endpoints.features_spec())
    names = [s.name for s in specs]
    weight_specs = endpoints.weight_specs()

    def serve(*args):
        kw = dict(zip(names, args))
        endpoints.weights = list(args[len(names) :])
        label, instance = kw[endpoints.label_name], kw.get("instance")
        if seed_input:
            y = endpoints.generate_sampled(label, instance, kw["seed"])
        else:
            y = endpoints.generate(label, instance, kw.get("features"))
        return {"image": to_uint8(y)}

    specs = specs + weight_specs
    return tf.function(serve, input_signature=specs, autograph=False), specs


def _fold_constants(graph, constants: dict[str, np.ndarray]) -> None:
    """Evaluate, in numpy, the weight-layout nodes tf2onnx leaves on weights fed as inputs (Transpose of
    conv kernels, Reshape/Squeeze of biases and matmul weights), so the file holds ready weights as
    initializers, like a conversion from frozen constants. `constants`: initializer name -> value."""
    from onnx import helper, numpy_helper  # optional extra `.[onnx]`

    def attr(node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def evaluate(node, args):
        if node.op_type == "Transpose":
            return np.transpose(args[0], attr(node, "perm"))
        if node.op_type == "Reshape":
            shape = [d if d != 0 or attr(node, "allowzero", 0) else args[0].shape[i] for i, d in enumerate(args[1])]
            return args[0].reshape(shape)
        if node.op_type == "Squeeze":
            axes = tuple(args[1]) if len(args) > 1 else tuple(i for i, d in enumerate(args[0].shape) if d == 1)
            return np.squeeze(args[0], axis=axes)
        if node.op_type == "Unsqueeze":
            return np.expand_dims(args[0], tuple(args[1]))
        if node.op_type == "Identity":
            return args[0]
        return None

    kept = []
    for node in graph.node:
        value = None
        if node.input and len(node.output) == 1 and all(i in constants for i in node.input if i):
            value = evaluate(node, [constants[i] for i in node.input if i])
        if value is None:
            kept.append(node)
        else:
            constants[node.output[0]] = value
    used = {i for node in kept for i in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items() if k in used)


def export_onnx(
    opts: Options,
    output_dir: str,
    *,
    generator: keras.Model | None = None,
    bank: ClusterBank | None = None,
    seed_input: bool = False,
    opset: int = ONNX_OPSET,
) -> str:
    """Convert the generator (with the in-graph label/instance encoding) to `{output_dir}/{opts.name}.onnx`,
    or with `seed_input` the sampled-styles model `{output_dir}/{opts.name}_seed.onnx`.

    Inputs and outputs: see the module docstring. G's weights are stored in the file as initializers
    (converted as graph inputs, then moved there, which keeps tf2onnx's memory small).
    Our InstanceNormalization (a training-mode fused batch norm on batch-folded channels, see
    `networks.layers`) converts as it is: tf2onnx lowers FusedBatchNormV3(is_training=True) to
    mean / variance / normalise nodes, which tests/test_onnx.py checks against Keras to one uint8 level.

    Args:
        bank: the cluster bank to embed (needed with `seed_input`).
        seed_input: write the model with a `seed` input instead of `features` (feature models only).

    Returns:
        The path of the .onnx file.

    Raises:
        ValueError: `seed_input` for a model without features or without a cluster bank.
    """
    import onnx  # optional extra `.[onnx]`: only exporting needs tf2onnx and onnx
    import tf2onnx
    from onnx import numpy_helper

    if seed_input and not opts.use_features:
        raise ValueError("seed_input: only feature models (--instance_feat / --label_feat) sample styles")
    if seed_input and bank is None:
        raise ValueError(
            "seed_input needs the experiment's cluster bank (clusters.npz): run tools/encode_features.py first, "
            "or pass --cluster_path"
        )
    if generator is None:
        generator, _, _ = load_networks(opts)
    endpoints = _OnnxEndpoints(opts, generator, bank)
    fn, specs = _serve_function(endpoints, seed_input)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{opts.name}{SEED_SUFFIX if seed_input else ''}.onnx")
    model, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
    # G's weights were graph inputs: tf2onnx then never sees them, which keeps its graph copies, Grappler's
    # constant folding and its optimizers small (an ngf 32 global G: 5.0 GiB peak RSS when converted from
    # frozen constants, 1.9 GiB this way; export/README.md). Now they become initializers.
    variables = generator.trainable_variables + generator.non_trainable_variables
    weights = {f"{_WEIGHT_PREFIX}{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants.update((name, value) for name, value in weights.items())
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    _fold_constants(model.graph, constants)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    logger.info("wrote %s (%.1f KiB)", path, os.path.getsize(path) / 1024)
    return path


def float16_weights(path: str, output_path: str | None = None) -> str:
    """Write a copy of an .onnx file whose float32 weights are stored as float16 (half the file), each cast
    back to float32 by a Cast node, so the network still computes in float32 (as TFLite's float16 variant
    does on CPU; TensorRT's `--fp16` chooses half-precision kernels itself).

    Only tensors of rank >= 2 (conv kernels, matmul weights, cluster centres: nearly all the bytes) whose
    values fit float16's range are converted. Scalars and vectors stay float32: biases are small, and the
    seed model's index arithmetic has float constants such as 2^31 that float16 cannot hold.

    Returns:
        The new file's path (default: `{stem}_float16.onnx` beside `path`).
    """
    import onnx  # optional extra `.[onnx]`
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        value = numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None
        if value is None or value.ndim < 2 or np.abs(value).max(initial=0.0) > np.finfo(np.float16).max:
            kept.append(init)
            continue
        half = numpy_helper.from_array(value.astype(np.float16), f"{init.name}__float16")
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
