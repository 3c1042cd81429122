"""Speed and memory of pix2pixHD on this machine, beside the PyTorch reference and the machine's matmul rate.

Every measurement is a function returning a flat dict (a "record"); `run_benchmarks` runs the selected
suites, each configuration in a fresh Python process (`run_isolated`) so that peak RSS figures never mix
and environment settings such as `TF_ENABLE_ONEDNN_OPTS` take effect before TensorFlow loads.

| suite     | what                                                                                     |
|-----------|------------------------------------------------------------------------------------------|
| matmul    | the machine's fp32 matmul rate (TensorFlow and numpy, best of N), the yardstick below      |
| generator | G forward: Keras eager call, tf.function, tf.function(jit_compile=True), SavedModel, ONNX Runtime CPU (opt-in) |
| tflite    | G forward as TFLite float32 / float16 / dynamic_range, and each one's error vs Keras       |
| train     | `Pix2PixHD.train_step` (G + multi-scale D, Adam) with/without VGG, with/without XLA        |
| torch     | the PyTorch reference modules (pix2pixhd_tf/testing/torch_reference.py): G forward, official iteration   |

Conventions: sizes are (height, width) of the full-resolution image; a local generator at 512x1024 runs
its G1 at 256x512. FLOPs count 2 per multiply-add of the Conv2D / Conv2DTranspose layers only (norms,
padding and activations are left out), with a transposed conv counted over its *input* pixels
(H_in·W_in·kh·kw·Cin·Cout multiply-adds: the work it does, and what `torch.utils.flop_counter` counts).

Nothing heavy is imported at module level: a PyTorch worker process must not load TensorFlow (its peak
RSS would count TensorFlow's), and the parent process only orchestrates.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pix2pixhd_tf.flags import parse_size
from pix2pixhd_tf.options import Options

SUITES = ("matmul", "generator", "tflite", "train", "torch")
NETS = ("global", "local")
GENERATOR_MODES = ("eager", "function", "xla", "saved_model", "onnx")
# 'onnx' needs the optional extra `.[onnx]`, so it runs only when asked for (--generator_modes=...,onnx).
DEFAULT_GENERATOR_MODES = ("eager", "function", "xla", "saved_model")
TFLITE_VARIANTS = ("float32", "float16", "dynamic_range")
ONEDNN_SETTINGS = ("default", "0", "1")

# The paper's Cityscapes G1 (label_nc 35 + instance = 36 input channels), the official two-scale D, and the
# 1024p local generator (ngf 32, one enhancer). Options' defaults already are G1's; only ngf differs.
NET_OPTIONS = {
    "global": dict(netG="global", ngf=64, n_downsample_global=4, n_blocks_global=9),
    "local": dict(
        netG="local", ngf=32, n_downsample_global=4, n_blocks_global=9, n_local_enhancers=1, n_blocks_local=3
    ),
}
BASE_OPTIONS = dict(label_nc=35, num_D=2, n_layers_D=3, ndf=64, batchSize=1)

# What the issue reports for the official PyTorch code on this CPU (256x512, ngf 64, num_D 2).
ISSUE_REFERENCE = {"train_s_per_iter_no_vgg": 11.9, "generator_forward_s": 2.4, "train_peak_rss_gb": 4.0}
TARGET_MATMUL_FRACTION = 0.75
TARGET_QUANTIZED_SPEEDUP = 1.5

Record = dict[str, Any]

# TensorFlow's x86 CPU build takes all but small tensors from a BFC pool (MklCPUAllocator), which keeps the
# step's high-water mark resident and often hands a tensor a chunk far larger than itself; this variable
# sends them to malloc instead: less peak memory, slower steps (benchmarks/memory_cpu.md).
SYSTEM_ALLOCATOR_ENV = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"

# The memory benchmarks' settings: Options overrides of our train step, by name.
MEMORY_SETTINGS = {
    "none": {},
    "blocks": {"recompute": "blocks"},
    "all": {"recompute": "all"},
    "bf16": {"bf16": True},
    "bf16_blocks": {"bf16": True, "recompute": "blocks"},
    "bf16_all": {"bf16": True, "recompute": "all"},
    "fp16": {"fp16": True},
}
PAPER_D = {"num_D": 3, "n_layers_D": 3, "ndf": 64}  # the paper's 3-scale D
TINY_NET = dict(label_nc=5, ngf=8, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1, ndf=8, n_layers_D=2)


# ---------------------------------------------------------------------------------------- options


def benchmark_options(net: str, overrides: Mapping[str, Any] | None = None) -> Options:
    """The options of a benchmarked configuration: the paper's G1 or local G, two-scale D, label_nc 35.

    `overrides` replaces any field (tests pass a tiny network here).
    """
    if net not in NET_OPTIONS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    return Options(**{**BASE_OPTIONS, **NET_OPTIONS[net], **dict(overrides or {})})


def size_text(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


# ------------------------------------------------------------------------------------ environment


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_load(
    max_load: float, timeout_s: float, poll_s: float = 15.0, log: Callable[[str], None] = print
) -> Record:
    """Wait until the 1-minute load average is below `max_load` (0 = do not wait), at most `timeout_s`.

    Returns {'waited_s', 'load', 'reached'}: a benchmark on a shared machine records whether it ran quiet.
    """
    start = time.monotonic()
    load = load_average()
    while max_load > 0 and load[0] >= max_load and time.monotonic() - start < timeout_s:
        log(f"load average {load[0]:.2f} >= {max_load}: waiting")
        time.sleep(poll_s)
        load = load_average()
    return {
        "waited_s": round(time.monotonic() - start, 1),
        "load": load,
        "reached": max_load <= 0 or load[0] < max_load,
    }


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The instruction-set flags of /proc/cpuinfo that decide kernel speed (and float16 rounding) here."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=_repo_root(),
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> Record:
    """The machine and software the figures belong to (no framework is imported)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            mem_total = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "memory_gib": mem_total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": _version("tensorflow-cpu", "tensorflow", "tf-nightly"),
        "keras": _version("keras"),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "onnxruntime": _version("onnxruntime"),
        "TF_ENABLE_ONEDNN_OPTS": onednn if onednn is not None else "unset (TensorFlow's default: on for x86 CPUs)",
        "git_commit": _git_commit(),
        "load_average": load_average(),
    }


# ------------------------------------------------------------------------------------------ timing


def _rss_mb() -> float | None:
    """Current resident set size of this process in MiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def time_calls(fn: Callable[[], Any], runs: int, warmup: int) -> Record:
    """Call `fn` once (recorded as `first_call_s`: tracing, compilation, allocation), `warmup` more
    times untimed, then `runs` times timed. `fn` must return only when its work is done.

    Returns {'first_call_s', 'median_s', 'mean_s', 'min_s', 'max_s', 'stdev_s', 'times_s', 'runs', 'warmup',
    'load_before', 'load_after'}.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    load_before = load_average()
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "first_call_s": round(first, 4),
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "times_s": [round(t, 4) for t in times],
        "runs": runs,
        "warmup": warmup,
        "load_before": load_before,
        "load_after": load_average(),
    }


def _tf_memory_info() -> Record:
    """tf.config.experimental.get_memory_info for the first device (not supported on CPU: says so)."""
    import tensorflow as tf

    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    try:
        info = tf.config.experimental.get_memory_info(device)
        return {"device": device, "current_mb": info["current"] / 2**20, "peak_mb": info["peak"] / 2**20}
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        return {"device": device, "unsupported": str(err).splitlines()[0][:200]}


def _tf_threads() -> Record:
    import tensorflow as tf

    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default (nproc)",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default (nproc)",
    }


# ------------------------------------------------------------------------------------------- FLOPs


def conv_flops(model, h: int, w: int, batch: int = 1) -> list[Record]:
    """Every convolution of one forward of `model` at batch×h×w: its op name, output shape and FLOPs.

    The model is traced once at a fixed input shape, and each Conv2D / Conv2DBackpropInput (transposed
    conv) / MatMul (a 3x3 conv as im2col matmul; generators have no dense layers) op of that graph is read
    with its static shapes. Its conv layers are also found by walking the model's layers (nested ones
    included), and the two must agree: one op per layer call.

    Raises:
        ValueError: the traced graph and the model's conv layers disagree (an unknown conv kind, or a
            layer called more than once).
    """
    import keras
    import tensorflow as tf

    channels = model.input_shape[-1]
    spec = tf.TensorSpec([batch, h, w, channels], tf.float32)
    graph = tf.function(lambda x: model(x, training=False), autograph=False).get_concrete_function(spec).graph
    rows = []
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, cout = op.inputs[1].shape.as_list()
            n, ho, wo, _ = op.outputs[0].shape.as_list()
            macs = n * ho * wo * kh * kw * cin * cout
            kind, out_shape = "conv", [n, ho, wo, cout]
        elif op.type == "Conv2DBackpropInput":  # a transposed conv: inputs (output sizes, kernel, its input)
            kh, kw, cout, cin = op.inputs[1].shape.as_list()
            n, hi, wi, _ = op.inputs[2].shape.as_list()
            macs = n * hi * wi * kh * kw * cin * cout
            kind, out_shape = "conv_transpose", op.outputs[0].shape.as_list()
        elif op.type == "MatMul":  # a 3x3 conv run as an im2col matmul (fast_ops.padded_conv2d)
            (m, k), cout = op.inputs[0].shape.as_list(), op.outputs[0].shape[-1]
            macs, cin, kh, kw = m * k * cout, k // 9, 3, 3
            kind, out_shape = "conv_as_matmul", op.outputs[0].shape.as_list()
        elif "Conv" in op.type and "Backprop" not in op.type:
            raise ValueError(f"conv_flops does not know the op {op.type} ({op.name})")
        else:
            continue
        if any(d is None for d in out_shape):
            raise ValueError(f"{op.name}: output shape {out_shape} is not static at {h}x{w}")
        rows.append(
            {"op": op.name, "kind": kind, "kernel": [kh, kw, cin, cout], "output": out_shape, "flops": 2 * macs}
        )
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))
    ]
    if len(layers) != len(rows):
        raise ValueError(f"{model.name} has {len(layers)} conv layers but one forward ran {len(rows)} convolutions")
    return rows


def count_generator_flops(model, h: int, w: int) -> int:
    """FLOPs of one batch-1 forward of `model` at h×w: Σ over its Conv2D / Conv2DTranspose layers of
    2·MACs, MACs = H_out·W_out·kh·kw·Cin·Cout for a conv and H_in·W_in·kh·kw·Cin·Cout for a transposed
    conv (it spreads each input pixel over a kh×kw window: counting its output pixels would count 4x the
    work at stride 2). See `conv_flops` for the per-layer rows."""
    return sum(row["flops"] for row in conv_flops(model, h, w))


# -------------------------------------------------------------------------------- random inputs


def random_label_maps(h: int, w: int, label_nc: int, seed: int = 0, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Blocky random label and instance maps int32 [1,h,w] (blocks, so the boundary map is not all ones)."""
    rng = np.random.default_rng(seed)
    cells = (-(-h // block), -(-w // block))

    def blocks(high):
        ids = rng.integers(0, high, (1, *cells))
        return np.repeat(np.repeat(ids, block, 1), block, 2)[:, :h, :w].astype(np.int32)

    label = blocks(label_nc)
    instance = label * 1000 + blocks(4)
    return label, instance


def _random_batch(opts: Options, h: int, w: int, batch: int, seed: int = 0) -> dict:
    import tensorflow as tf

    labels, instances = zip(*(random_label_maps(h, w, opts.label_nc, seed + i) for i in range(batch)))
    rng = np.random.default_rng(seed)
    return {
        "label": tf.constant(np.concatenate(labels)),
        "instance": tf.constant(np.concatenate(instances)),
        "image": tf.constant(rng.uniform(-1, 1, (batch, h, w, opts.output_nc)).astype(np.float32)),
    }


def _encoded_input(opts: Options, label: np.ndarray, instance: np.ndarray):
    from pix2pixhd_tf.inputs import encode_input

    return encode_input(label, instance, label_nc=opts.label_nc, input_nc=opts.input_nc)


def _seed(seed: int = 0) -> None:
    import keras

    keras.utils.set_random_seed(seed)


# ------------------------------------------------------------------------------------ the suites


def matmul_rate(n: int = 4096, runs: int = 5, engines: Sequence[str] = ("tensorflow", "numpy")) -> Record:
    """The machine's fp32 matmul rate: best of `runs` n×n @ n×n products, 2n³ FLOPs each, per engine.

    Returns {'n', 'runs', '<engine>_gflops', '<engine>_best_s', 'load_before', 'load_after'}.
    """
    record: Record = {"suite": "matmul", "n": n, "runs": runs, "load_before": load_average()}
    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    for engine in engines:
        if engine == "tensorflow":
            import tensorflow as tf

            ta, tb = tf.constant(a), tf.constant(b)
            fn = lambda ta=ta, tb=tb: tf.linalg.matmul(ta, tb).numpy()  # .numpy(): wait for the result
        elif engine == "numpy":
            fn = lambda: a @ b
        elif engine == "torch":
            import torch

            torch.set_num_threads(os.cpu_count())
            pa, pb = torch.from_numpy(a), torch.from_numpy(b)
            fn = lambda pa=pa, pb=pb: torch.mm(pa, pb)
        else:
            raise ValueError(f"unknown matmul engine {engine!r}")
        timing = time_calls(fn, runs, warmup=1)
        record[f"{engine}_best_s"] = timing["min_s"]
        record[f"{engine}_gflops"] = flops / timing["min_s"] / 1e9
    record["load_after"] = load_average()
    return record


def generator_latency(
    net: str = "global",
    size: Sequence[int] = (256, 512),
    runs: int = 5,
    warmup: int = 1,
    modes: Sequence[str] = DEFAULT_GENERATOR_MODES,
    overrides: Mapping[str, Any] | None = None,
) -> list[Record]:
    """Batch-1 forward latency of a random-weight generator, one record per mode.

    Modes: 'eager' (`generator(x)` op by op), 'function' (tf.function), 'xla' (tf.function(jit_compile=True)),
    'saved_model' (`serving_default` of `export.export_saved_model`, label/instance int32 in, uint8 out:
    includes the in-graph one-hot and boundary map), 'onnx' (`serving.onnx_export.export_onnx` run by ONNX
    Runtime on CPU, the same inputs and outputs as 'saved_model'). The other modes take the encoded input map.
    """
    import tensorflow as tf

    from pix2pixhd_tf import networks

    unknown = set(modes) - set(GENERATOR_MODES)
    if unknown:
        raise ValueError(f"unknown generator modes {sorted(unknown)}; choose from {GENERATOR_MODES}")
    h, w = size
    opts = benchmark_options(net, overrides)
    _seed()
    generator = networks.build_generator(opts)
    label, instance = random_label_maps(h, w, opts.label_nc)
    x = _encoded_input(opts, label, instance)
    flops = count_generator_flops(generator, h, w)
    common = {
        "suite": "generator",
        "net": net,
        "size": size_text(size),
        "batch": 1,
        "ngf": opts.ngf,
        "params": int(generator.count_params()),
        "flops": flops,
    }
    records = []
    for mode in modes:
        if mode == "eager":
            fn = lambda: generator(x, training=False).numpy()
        elif mode in ("function", "xla"):
            compiled = tf.function(lambda t: generator(t, training=False), jit_compile=mode == "xla", autograph=False)
            fn = lambda c=compiled: c(x).numpy()
        elif mode == "onnx":
            from pix2pixhd_tf.serving.onnx_export import export_onnx, onnx_session

            start = time.perf_counter()
            path = export_onnx(opts, tempfile.mkdtemp(prefix="p2phd-bench-onnx-"), generator=generator)
            export_s = time.perf_counter() - start
            session = onnx_session(path)
            feed = {"label": label, "instance": instance}
            fn = lambda s=session, feed=feed: s.run(None, feed)[0]
        else:
            from pix2pixhd_tf.serving.saved_model import export_saved_model

            export_dir = tempfile.mkdtemp(prefix="p2phd-bench-")
            start = time.perf_counter()
            path = export_saved_model(opts, export_dir, version=1, generator=generator)
            export_s = time.perf_counter() - start
            serving = tf.saved_model.load(path).signatures["serving_default"]
            inputs = {"label": tf.constant(label), "instance": tf.constant(instance)}
            fn = lambda s=serving, inputs=inputs: s(**inputs)["image"].numpy()
        record = {**common, "mode": mode, **time_calls(fn, runs, warmup)}
        if mode in ("saved_model", "onnx"):
            record["export_s"] = round(export_s, 2)
        records.append(record)
    for record in records:
        record["tf_memory_info"] = _tf_memory_info()
        record.update(_tf_threads())
    return records


def tflite_latency(
    net: str = "global",
    size: Sequence[int] = (256, 512),
    runs: int = 5,
    variants: Sequence[str] = TFLITE_VARIANTS,
    num_threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Record]:
    """TFLite forward latency (`export.benchmark_tflite`) and error vs the Keras model, one record per variant.

    The files come from `export.export_tflite` on a random-weight generator; the error is max/mean
    |TFLite image_float - Keras G(x)| on a random blocky label/instance map (outputs are in [-1, 1]).
    `num_threads` defaults to every core (the interpreter's own default may use one).
    """
    from pix2pixhd_tf import networks
    from pix2pixhd_tf.serving.tflite import benchmark_tflite, export_tflite, run_tflite

    h, w = size
    num_threads = num_threads or os.cpu_count()
    opts = benchmark_options(net, overrides)
    _seed()
    generator = networks.build_generator(opts)
    label, instance = random_label_maps(h, w, opts.label_nc, seed=1)
    reference = generator(_encoded_input(opts, label, instance), training=False).numpy()
    flops = count_generator_flops(generator, h, w)
    records = []
    with tempfile.TemporaryDirectory(prefix="p2phd-tflite-") as tmp:
        for variant in variants:
            start = time.perf_counter()
            path = export_tflite(opts, tmp, size=(h, w), variants=[variant], generator=generator)[variant]
            convert_s = time.perf_counter() - start
            out = run_tflite(path, {"label": label, "instance": instance}, num_threads=num_threads)["image_float"]
            diff = np.abs(out.astype(np.float64) - reference)
            load_before = load_average()
            timing = benchmark_tflite(path, runs=runs, num_threads=num_threads)
            records.append(
                {
                    "suite": "tflite",
                    "net": net,
                    "size": size_text(size),
                    "variant": variant,
                    "num_threads": num_threads,
                    "flops": flops,
                    "convert_s": round(convert_s, 2),
                    "file_mb": timing["size_mb"],
                    "median_s": timing["median_ms"] / 1000,
                    "mean_s": timing["mean_ms"] / 1000,
                    "min_s": timing["min_ms"] / 1000,
                    "runs": runs,
                    "max_abs_diff": float(diff.max()),
                    "mean_abs_diff": float(diff.mean()),
                    "load_before": load_before,
                    "load_after": load_average(),
                }
            )
            os.remove(path)
    return records


def _allocator() -> str:
    """This process's tensor allocator: TensorFlow's oneDNN pool or malloc (`memory.py --allocators`)."""
    return "malloc" if os.environ.get(SYSTEM_ALLOCATOR_ENV, "0").lower() in ("1", "true") else "pool"


def build_train_step(
    net: str,
    size: Sequence[int],
    batch: int = 1,
    vgg: bool = False,
    xla: bool = False,
    overrides: Mapping[str, Any] | None = None,
):
    """(options, model, step, batch): `Pix2PixHD.train_step` under tf.function, as `train.Trainer` runs it,
    on a fixed random batch. `vgg` adds the VGG19 loss with random weights (ImageNet's cannot be downloaded
    here; the work is the same)."""
    import keras
    import tensorflow as tf

    from pix2pixhd_tf.training import losses
    from pix2pixhd_tf.training.model import Pix2PixHD, make_optimizers

    h, w = size
    opts = benchmark_options(net, {**dict(overrides or {}), "no_vgg_loss": not vgg, "batchSize": batch, "xla": xla})
    # --bf16 / --fp16 in `overrides` set the policy as the trainer does (trainer.set_precision_policy).
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if opts.fp16 else "mixed_bfloat16" if opts.bf16 else "float32"
    )
    _seed()
    model = Pix2PixHD.from_options(opts, vgg=losses.build_vgg19_features(None) if vgg else None)
    model.compile(*make_optimizers(opts))
    data = _random_batch(opts, h, w, batch)
    return opts, model, tf.function(model.train_step, jit_compile=xla), data


def train_step_throughput(
    net: str = "global",
    size: Sequence[int] = (256, 512),
    batch: int = 1,
    vgg: bool = False,
    xla: bool = False,
    runs: int = 5,
    warmup: int = 1,
    overrides: Mapping[str, Any] | None = None,
) -> Record:
    """Seconds per `Pix2PixHD.train_step` (G and D forward/backward, two Adam updates) on a fixed batch.

    The step runs under tf.function (jit_compile=`xla`), as `train.Trainer` runs it. `vgg` adds the VGG19
    perceptual loss with random weights (the same work as ImageNet weights, which cannot be downloaded here).
    """
    opts, model, step, data = build_train_step(net, size, batch, vgg, xla, overrides)
    fn = lambda: {k: float(v) for k, v in step(data).items()}  # float(): wait for the step
    timing = time_calls(fn, runs, warmup)
    return {
        "suite": "train",
        "framework": "keras",
        "net": net,
        "size": size_text(size),
        "batch": batch,
        "vgg": vgg,
        "xla": xla,
        "g_params": int(model.generator.count_params()),
        "d_params": int(model.discriminator.count_params()),
        "precision": "fp16" if opts.fp16 else "bf16" if opts.bf16 else "fp32",
        "recompute": opts.recompute,
        "allocator": _allocator(),
        "num_D": opts.num_D,
        **timing,
        "s_per_iter": timing["median_s"],
        "images_per_s": batch / timing["median_s"],
        "losses_finite": bool(np.all(np.isfinite(list(fn().values())))),
        "tf_memory_info": _tf_memory_info(),
        **_tf_threads(),
    }


# ----------------------------------------------------------------------------- PyTorch reference


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def load_torch_reference():
    """`pix2pixhd_tf.testing.torch_reference`, imported only here: torch is an optional dependency."""
    from pix2pixhd_tf.testing import torch_reference

    return torch_reference


def _torch_generator(ref, opts: Options):
    if opts.netG == "global":
        return ref.GlobalGenerator(
            opts.generator_input_nc, opts.output_nc, opts.ngf, opts.n_downsample_global, opts.n_blocks_global
        )
    return ref.LocalEnhancer(
        opts.generator_input_nc,
        opts.output_nc,
        opts.ngf,
        opts.n_downsample_global,
        opts.n_blocks_global,
        opts.n_local_enhancers,
        opts.n_blocks_local,
    )


def _torch_setup(threads: int | None):
    import torch

    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(0)
    return {
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }


def torch_generator_latency(
    net: str = "global",
    size: Sequence[int] = (256, 512),
    runs: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Record:
    """Batch-1 forward latency of the PyTorch reference generator under torch.no_grad (NCHW, float32).

    Also counts its FLOPs with `torch.utils.flop_counter` on the first call, a cross-check of
    `count_generator_flops`.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = size
    opts = benchmark_options(net, overrides)
    info = _torch_setup(threads)
    ref = load_torch_reference()
    generator = _torch_generator(ref, opts).eval()
    x = torch.randn(1, opts.generator_input_nc, h, w)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            generator(x)
        timing = time_calls(lambda: generator(x), runs, warmup)
    return {
        "suite": "torch",
        "framework": "torch",
        "kind": "generator",
        "net": net,
        "size": size_text(size),
        "batch": 1,
        "params": sum(p.numel() for p in generator.parameters()),
        "torch_flops": int(counter.get_total_flops()),
        **info,
        **timing,
    }


def _torch_encode_input(label, instance, label_nc: int):
    """The official encode_input: one-hot (scatter) of the labels, then the instance boundary map."""
    import torch

    n, _, h, w = label.shape
    one_hot = torch.zeros(n, label_nc, h, w).scatter_(1, label.long(), 1.0)
    edge = torch.zeros_like(instance, dtype=torch.bool)
    edge[:, :, :, 1:] |= instance[:, :, :, 1:] != instance[:, :, :, :-1]
    edge[:, :, :, :-1] |= instance[:, :, :, 1:] != instance[:, :, :, :-1]
    edge[:, :, 1:, :] |= instance[:, :, 1:, :] != instance[:, :, :-1, :]
    edge[:, :, :-1, :] |= instance[:, :, 1:, :] != instance[:, :, :-1, :]
    return torch.cat([one_hot, edge.float()], dim=1)


def torch_train_step(
    net: str = "global",
    size: Sequence[int] = (256, 512),
    batch: int = 1,
    runs: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Record:
    """Seconds per official pix2pixHD iteration (no VGG) with the PyTorch reference modules.

    As the official `Pix2PixHDModel.forward` + train.py: encode the input, G forward, D on the detached
    fake, on the real, and on the fake; LSGAN and feature-matching losses; loss_G backward + Adam step,
    then loss_D backward + Adam step (Adam(lr, (beta1, 0.999)) for each).
    """
    import torch
    import torch.nn.functional as F

    h, w = size
    opts = benchmark_options(net, overrides)
    info = _torch_setup(threads)
    ref = load_torch_reference()
    generator = _torch_generator(ref, opts).train()
    discriminator = ref.MultiscaleDiscriminator(
        opts.discriminator_input_nc, opts.ndf, opts.n_layers_D, opts.num_D, True
    )
    opt_g = torch.optim.Adam(generator.parameters(), lr=opts.lr, betas=(opts.beta1, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opts.lr, betas=(opts.beta1, 0.999))
    labels, instances = zip(*(random_label_maps(h, w, opts.label_nc, i) for i in range(batch)))
    label = torch.from_numpy(np.concatenate(labels))[:, None]
    instance = torch.from_numpy(np.concatenate(instances))[:, None]
    real = torch.rand(batch, opts.output_nc, h, w) * 2 - 1
    feat_weight = 4.0 / (opts.n_layers_D + 1)
    d_weight = 1.0 / opts.num_D

    def gan_loss(preds, target: float):
        return sum(F.mse_loss(p[-1], torch.full_like(p[-1], target)) for p in preds)

    def step():
        input_label = _torch_encode_input(label, instance, opts.label_nc)
        fake = generator(input_label)
        pred_fake_pool = discriminator(torch.cat([input_label, fake.detach()], 1))
        loss_d_fake = gan_loss(pred_fake_pool, 0.0)
        pred_real = discriminator(torch.cat([input_label, real.detach()], 1))
        loss_d_real = gan_loss(pred_real, 1.0)
        pred_fake = discriminator(torch.cat([input_label, fake], 1))
        loss_g_gan = gan_loss(pred_fake, 1.0)
        loss_g_feat = 0.0
        for i in range(opts.num_D):
            for j in range(len(pred_fake[i]) - 1):
                l1 = F.l1_loss(pred_fake[i][j], pred_real[i][j].detach())
                loss_g_feat = loss_g_feat + d_weight * feat_weight * l1 * opts.lambda_feat
        loss_d = (loss_d_fake + loss_d_real) * 0.5
        loss_g = loss_g_gan + loss_g_feat
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        return loss_g.item(), loss_d.item()

    timing = time_calls(step, runs, warmup)
    return {
        "suite": "torch",
        "framework": "torch",
        "kind": "train",
        "net": net,
        "size": size_text(size),
        "batch": batch,
        "vgg": False,
        "g_params": sum(p.numel() for p in generator.parameters()),
        "d_params": sum(p.numel() for p in discriminator.parameters()),
        **info,
        **timing,
        "s_per_iter": timing["median_s"],
        "images_per_s": batch / timing["median_s"],
    }


# ------------------------------------------------------------------------------------ isolation

CASES: dict[str, Callable[..., Record | list[Record]]] = {
    "matmul_rate": matmul_rate,
    "generator_latency": generator_latency,
    "tflite_latency": tflite_latency,
    "train_step_throughput": train_step_throughput,
    "torch_generator_latency": torch_generator_latency,
    "torch_train_step": torch_train_step,
}


def _with_process_info(
    result: Record | list[Record], baseline_rss: float | None, env: Mapping[str, str]
) -> list[Record]:
    records = result if isinstance(result, list) else [result]
    process = {
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline_rss,
        "env": dict(env),
        "pid": os.getpid(),
    }
    return [{**record, **process} for record in records]


def run_case(name: str, kwargs: Mapping[str, Any]) -> list[Record]:
    """Run one case in this process (no isolation): its records with this process's peak RSS so far."""
    return _with_process_info(CASES[name](**kwargs), _rss_mb(), {})


def run_isolated(
    name: str, kwargs: Mapping[str, Any], env: Mapping[str, str] | None = None, timeout_s: float = 3600
) -> list[Record]:
    """Run one case in a fresh Python process with extra environment `env`; its records carry that process's
    peak RSS (`peak_rss_mb`, ru_maxrss) and its RSS after importing the framework (`baseline_rss_mb`).

    Raises:
        RuntimeError: the process failed; the message ends with its output.
    """
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; choose from {sorted(CASES)}")
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), **(env or {})}
    with tempfile.TemporaryDirectory(prefix="p2phd-bench-") as tmp:
        out = os.path.join(tmp, "records.json")
        command = [
            sys.executable,
            "-m",
            "benchmarks.harness",
            name,
            json.dumps(dict(kwargs)),
            out,
            json.dumps(dict(env or {})),
        ]
        proc = subprocess.run(
            command, check=False, env=child_env, capture_output=True, text=True, timeout=timeout_s, cwd=_repo_root()
        )
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"benchmark case {name}({kwargs}) failed with exit code {proc.returncode}:\n{tail}")
        with open(out) as f:
            return json.load(f)


def _worker(argv: Sequence[str]) -> None:
    """`python -m benchmarks.harness CASE KWARGS_JSON OUT_PATH ENV_JSON`: what `run_isolated` starts."""
    name, kwargs, out, env = argv
    kwargs = json.loads(kwargs)
    # Load the framework first, so baseline_rss_mb is the framework's footprint before any model exists.
    if name.startswith("torch_"):
        import torch  # noqa: F401
    elif name != "matmul_rate" or "tensorflow" in kwargs.get("engines", ("tensorflow",)):
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    baseline = _rss_mb()
    records = _with_process_info(CASES[name](**kwargs), baseline, json.loads(env))
    with open(out, "w") as f:
        json.dump(records, f, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ------------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: a case function, its arguments and extra environment variables."""

    suite: str
    name: str
    kwargs: dict
    env: dict = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k != "overrides")
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{self.name}({args}){' [' + env + ']' if env else ''}"


def _onednn_env(setting: str) -> dict:
    if setting not in ONEDNN_SETTINGS:
        raise ValueError(f"oneDNN setting must be one of {ONEDNN_SETTINGS}, got {setting!r}")
    return {} if setting == "default" else {"TF_ENABLE_ONEDNN_OPTS": setting}


def plan_cases(
    suites: Sequence[str] = SUITES,
    sizes: Sequence[Sequence[int]] = ((256, 512),),
    nets: Sequence[str] = NETS,
    runs: int = 5,
    warmup: int = 1,
    *,
    train_sizes: Sequence[Sequence[int]] | None = None,
    train_nets: Sequence[str] = ("global",),
    batch: int = 1,
    vgg: Sequence[bool] = (False, True),
    xla: Sequence[bool] = (False, True),
    onednn: Sequence[str] = ("default",),
    generator_modes: Sequence[str] = DEFAULT_GENERATOR_MODES,
    tflite_variants: Sequence[str] = TFLITE_VARIANTS,
    matmul_n: int = 4096,
    matmul_runs: int = 5,
    overrides: Mapping[str, Any] | None = None,
) -> list[Case]:
    """The configurations to run, in order. `train_sizes` defaults to the smallest of `sizes`
    (training is the slowest suite); the torch suite mirrors the generator and no-VGG train cases."""
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suites {sorted(unknown)}; choose from {', '.join(SUITES)}")
    for net in list(nets) + list(train_nets):
        if net not in NETS:
            raise ValueError(f"unknown net {net!r}; choose from {', '.join(NETS)}")
    sizes = [tuple(s) for s in sizes]
    train_sizes = [tuple(s) for s in (train_sizes or [min(sizes, key=lambda s: s[0] * s[1])])]
    extra = {"overrides": dict(overrides)} if overrides else {}
    cases = []
    if "matmul" in suites:
        cases.append(Case("matmul", "matmul_rate", {"n": matmul_n, "runs": matmul_runs}))
    if "generator" in suites:
        for setting in onednn:
            for net in nets:
                for size in sizes:
                    kwargs = dict(net=net, size=size, runs=runs, warmup=warmup, modes=list(generator_modes), **extra)
                    cases.append(Case("generator", "generator_latency", kwargs, _onednn_env(setting)))
    if "tflite" in suites:
        for net in nets:
            for size in sizes:
                kwargs = dict(net=net, size=size, runs=runs, variants=list(tflite_variants), **extra)
                cases.append(Case("tflite", "tflite_latency", kwargs))
    if "train" in suites:
        for setting in onednn:
            for net in train_nets:
                for size in train_sizes:
                    for use_vgg in vgg:
                        for use_xla in xla:
                            kwargs = dict(
                                net=net,
                                size=size,
                                batch=batch,
                                vgg=use_vgg,
                                xla=use_xla,
                                runs=runs,
                                warmup=warmup,
                                **extra,
                            )
                            cases.append(Case("train", "train_step_throughput", kwargs, _onednn_env(setting)))
    if "torch" in suites:
        for net in nets:
            for size in sizes:
                cases.append(
                    Case(
                        "torch", "torch_generator_latency", dict(net=net, size=size, runs=runs, warmup=warmup, **extra)
                    )
                )
        for net in train_nets:
            for size in train_sizes:
                kwargs = dict(net=net, size=size, batch=batch, runs=runs, warmup=warmup, **extra)
                cases.append(Case("torch", "torch_train_step", kwargs))
    return cases


def run_benchmarks(
    cases: Sequence[Case],
    *,
    isolate: bool = True,
    max_load: float = 0.0,
    load_timeout_s: float = 1800.0,
    case_timeout_s: float = 3600.0,
    log: Callable[[str], None] = print,
) -> Record:
    """Run `cases` (each in a fresh process when `isolate`), waiting before each for the 1-minute load
    average to drop below `max_load` (0 = never wait). A failing case is recorded with its error and the
    run goes on. Returns {'environment', 'cases', 'records', 'errors', 'summary', 'targets'}."""
    env_before = environment()
    records, errors = [], []
    for i, case in enumerate(cases, 1):
        quiet = wait_for_load(max_load, load_timeout_s, log=log)
        log(f"[{i}/{len(cases)}] {case.label} (load {quiet['load'][0]:.2f})")
        start = time.perf_counter()
        try:
            if isolate:
                result = run_isolated(case.name, case.kwargs, case.env, case_timeout_s)
            else:
                if case.env:
                    raise ValueError(f"{case.label}: environment settings need isolate=True")
                result = run_case(case.name, case.kwargs)
        except Exception as err:  # noqa: BLE001 - one failing configuration must not lose the others
            errors.append({"case": case.label, "error": str(err)[-3000:]})
            log(f"    FAILED: {str(err).splitlines()[0]}")
            continue
        for record in result:
            record.update(
                {
                    "onednn": case.env.get("TF_ENABLE_ONEDNN_OPTS", "default"),
                    "load_wait": quiet,
                    "case_wall_s": round(time.perf_counter() - start, 1),
                }
            )
            records.append(record)
            log("    " + _one_line(record))
    env = {**env_before, "load_average_before": env_before.pop("load_average"), "load_average_after": load_average()}
    results = {
        "environment": env,
        "cases": [dataclasses.asdict(c) for c in cases],
        "records": records,
        "errors": errors,
    }
    results["invocations"] = [{"environment": env, "cases": [case.label for case in cases]}]
    return finalize(results)


_RECORD_KEY = ("suite", "kind", "net", "size", "batch", "mode", "variant", "vgg", "xla", "onednn")


def merge_results(old: Record, new: Record) -> Record:
    """`new` added to `old` (e.g. a configuration re-run when the machine was quiet): a new record replaces
    an old one of the same configuration; the environment is the newest, each invocation's is kept."""
    key = lambda r: tuple(r.get(k) for k in _RECORD_KEY)
    replaced = {key(r) for r in new["records"]}
    rerun = {label for inv in new["invocations"] for label in inv["cases"]}
    merged = {
        "environment": new["environment"],
        "cases": old.get("cases", []) + new["cases"],
        "records": [r for r in old["records"] if key(r) not in replaced] + new["records"],
        "errors": [e for e in old.get("errors", []) if e["case"] not in rerun] + new["errors"],
        "invocations": old.get("invocations", []) + new["invocations"],
    }
    return finalize(merged)


def finalize(results: Record) -> Record:
    """(Re)compute the derived figures, the summary and the targets of `results` from its records."""
    records = results["records"]
    results["summary"] = summarize(records)
    sizes = sorted({r["size"] for r in records if "size" in r}, key=lambda s: parse_size(s)[0] * parse_size(s)[1])
    results["targets"] = [
        t for size in sizes for t in targets_from_records(records, results["summary"]["matmul_gflops"], size)
    ]
    return results


def _one_line(record: Record) -> str:
    what = record.get("mode") or record.get("variant") or record.get("kind") or ""
    if record["suite"] == "matmul":
        rates = ", ".join(f"{k[:-7]} {v:.1f} GFLOP/s" for k, v in record.items() if k.endswith("_gflops"))
        return f"matmul {record['n']}: {rates}"
    extra = ""
    if record["suite"] == "train":
        extra = f" vgg={record['vgg']} xla={record['xla']} oneDNN={record['onednn']}"
    return (
        f"{record['suite']} {record.get('net', '')} {record.get('size', '')} {what}{extra}: median {record['median_s']:.3f} s, "
        f"peak RSS {record['peak_rss_mb']:.0f} MiB, load {record.get('load_before', ['?'])[0]}"
    )


# ------------------------------------------------------------------------------------ summaries


def _matmul_gflops(records: Sequence[Record]) -> float | None:
    rates = [r["tensorflow_gflops"] for r in records if r["suite"] == "matmul" and "tensorflow_gflops" in r]
    return max(rates) if rates else None


def summarize(records: Sequence[Record]) -> Record:
    """Add the derived figures to the records (in place) and collect the comparisons.

    Generator and TFLite records get `gflops_per_s` and `fraction_of_matmul`; Keras records with a PyTorch
    counterpart (same net and size; train: no VGG, same batch) get `vs_torch_time` (ours / theirs: < 1 is
    faster) and `vs_torch_rss`; quantized TFLite records get `speedup_vs_float32`.
    """
    matmul = _matmul_gflops(records)
    torch_gen = {(r["net"], r["size"]): r for r in records if r["suite"] == "torch" and r["kind"] == "generator"}
    torch_train = {
        (r["net"], r["size"], r["batch"]): r for r in records if r["suite"] == "torch" and r["kind"] == "train"
    }
    tflite_fp32 = {(r["net"], r["size"]): r for r in records if r["suite"] == "tflite" and r["variant"] == "float32"}
    for r in records:
        if r["suite"] in ("generator", "tflite") and r.get("flops"):
            r["gflops_per_s"] = r["flops"] / r["median_s"] / 1e9
            r["fraction_of_matmul"] = r["gflops_per_s"] / matmul if matmul else None
        if r["suite"] == "torch" and r["kind"] == "generator" and r.get("torch_flops"):
            r["gflops_per_s"] = r["torch_flops"] / r["median_s"] / 1e9
            r["fraction_of_matmul"] = r["gflops_per_s"] / matmul if matmul else None
        theirs = None
        if r["suite"] in ("generator", "tflite"):
            theirs = torch_gen.get((r["net"], r["size"]))
        elif r["suite"] == "train" and not r["vgg"]:
            theirs = torch_train.get((r["net"], r["size"], r["batch"]))
        if theirs is not None:
            r["vs_torch_time"] = r["median_s"] / theirs["median_s"]
            r["vs_torch_rss"] = r["peak_rss_mb"] / theirs["peak_rss_mb"]
        if r["suite"] == "tflite" and r["variant"] != "float32" and (r["net"], r["size"]) in tflite_fp32:
            r["speedup_vs_float32"] = tflite_fp32[(r["net"], r["size"])]["median_s"] / r["median_s"]
    return {
        "matmul_gflops": matmul,
        "numpy_matmul_gflops": next((r.get("numpy_gflops") for r in records if r["suite"] == "matmul"), None),
        "records": len(records),
    }


def _best(records, **match):
    rows = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return min(rows, key=lambda r: r["median_s"]) if rows else None


def targets_from_records(records: Sequence[Record], matmul_gflops: float | None, size: str = "256x512") -> list[Record]:
    """The issue's targets at `size` (global G1): training speed and memory vs PyTorch, fp32 inference vs
    PyTorch and vs the matmul rate, quantized TFLite speed-up."""
    targets = []

    def add(target, measured, met, note=""):
        targets.append({"target": target, "measured": measured, "met": met, "note": note})

    torch_train = _best(records, suite="torch", kind="train", net="global", size=size)
    keras_train = [
        r for r in records if r["suite"] == "train" and r["net"] == "global" and r["size"] == size and not r["vgg"]
    ]
    default_train = _best(keras_train, xla=False, onednn="default")
    best_train = _best(keras_train)
    if best_train and torch_train:
        add(
            f"training iteration (no VGG, {size}) <= PyTorch reference",
            f"ours {best_train['median_s']:.2f} s (xla={best_train['xla']}, oneDNN={best_train['onednn']}; "
            f"default settings {default_train['median_s']:.2f} s) vs PyTorch {torch_train['median_s']:.2f} s"
            if default_train
            else f"ours {best_train['median_s']:.2f} s vs PyTorch {torch_train['median_s']:.2f} s",
            best_train["median_s"] <= torch_train["median_s"],
        )
        peak = min(r["peak_rss_mb"] for r in keras_train)
        add(
            f"training peak RSS (no VGG, {size}) <= PyTorch reference",
            f"ours {peak:.0f} MiB (lowest setting) vs PyTorch {torch_train['peak_rss_mb']:.0f} MiB",
            peak <= torch_train["peak_rss_mb"],
        )
    torch_gen = _best(records, suite="torch", kind="generator", net="global", size=size)
    keras_gen = _best(records, suite="generator", net="global", size=size)
    if keras_gen and torch_gen:
        add(
            f"fp32 generator forward ({size}) <= PyTorch reference",
            f"ours {keras_gen['median_s']:.3f} s ({keras_gen['mode']}) vs PyTorch {torch_gen['median_s']:.3f} s",
            keras_gen["median_s"] <= torch_gen["median_s"],
        )
    if keras_gen and matmul_gflops:
        fraction = keras_gen["flops"] / keras_gen["median_s"] / 1e9 / matmul_gflops
        add(
            f"fp32 generator forward ({size}) >= {TARGET_MATMUL_FRACTION:.0%} of the matmul rate",
            f"{fraction:.0%} ({keras_gen['flops'] / keras_gen['median_s'] / 1e9:.1f} of {matmul_gflops:.1f} GFLOP/s)",
            fraction >= TARGET_MATMUL_FRACTION,
        )
    fp32 = _best(records, suite="tflite", net="global", size=size, variant="float32")
    quantized = [
        r
        for r in records
        if r["suite"] == "tflite" and r["net"] == "global" and r["size"] == size and r["variant"] != "float32"
    ]
    if fp32 and quantized:
        best = min(quantized, key=lambda r: r["median_s"])
        fp32_keras = keras_gen["median_s"] if keras_gen else None
        add(
            f"quantized TFLite ({size}) >= {TARGET_QUANTIZED_SPEEDUP}x faster than fp32",
            f"{best['variant']}: {fp32['median_s'] / best['median_s']:.2f}x vs TFLite float32"
            + (f", {fp32_keras / best['median_s']:.2f}x vs the fastest Keras fp32" if fp32_keras else "")
            + f"; max abs diff {best['max_abs_diff']:.4f}, mean {best['mean_abs_diff']:.5f} (output range [-1, 1])",
            fp32["median_s"] / best["median_s"] >= TARGET_QUANTIZED_SPEEDUP,
        )
    return targets


# ------------------------------------------------------------------------------------ writing


def _f(spec: str):
    """A column formatter: format spec for numbers, '–' for missing values."""

    def fmt(value):
        if value is None:
            return "–"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if spec == "%":
            return f"{100 * value:.0f}%"
        return format(value, spec) if spec else str(value)

    return fmt


def _load(r: Record) -> str:
    return f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}"


# (header, record -> cell) per table; `get` reads a field through a formatter.
def _col(header: str, field: str, spec: str = "") -> tuple[str, Callable[[Record], str]]:
    return header, lambda r: _f(spec)(r.get(field))


_LOAD = ("load before → after", _load)
_GENERATOR_COLUMNS = [
    _col("net", "net"), _col("size", "size"), _col("runtime", "runtime"), _col("oneDNN", "onednn"),
    _col("median s", "median_s", ".3f"), _col("min s", "min_s", ".3f"), _col("first call s", "first_call_s", ".2f"),
    _col("GFLOP", "gflop", ".1f"), _col("GFLOP/s", "gflops_per_s", ".1f"), _col("of matmul", "fraction_of_matmul", "%"),
    _col("time ours/torch", "vs_torch_time", ".2f"), _col("peak RSS MiB", "peak_rss_mb", ".0f"), _LOAD,
]  # fmt: skip
_TFLITE_COLUMNS = [
    _col("net", "net"), _col("size", "size"), _col("variant", "variant"), _col("threads", "num_threads"),
    _col("file MiB", "file_mb", ".1f"), _col("median s", "median_s", ".3f"), _col("speed-up vs fp32", "speedup_vs_float32", ".2f"),
    _col("GFLOP/s", "gflops_per_s", ".1f"), _col("of matmul", "fraction_of_matmul", "%"), _col("time ours/torch", "vs_torch_time", ".2f"),
    _col("max abs diff", "max_abs_diff", ".2e"), _col("mean abs diff", "mean_abs_diff", ".2e"),
    _col("peak RSS MiB", "peak_rss_mb", ".0f"), _LOAD,
]  # fmt: skip
_TRAIN_COLUMNS = [
    _col("net", "net"), _col("size", "size"), _col("batch", "batch"), _col("runtime", "runtime"), _col("VGG", "vgg"),
    _col("XLA", "xla"), _col("oneDNN", "onednn"), _col("s/iter", "s_per_iter", ".2f"), _col("images/s", "images_per_s", ".3f"),
    _col("first call s", "first_call_s", ".1f"), _col("time ours/torch", "vs_torch_time", ".2f"),
    _col("peak RSS MiB", "peak_rss_mb", ".0f"), _col("RSS ours/torch", "vs_torch_rss", ".2f"), _LOAD,
]  # fmt: skip


def _order(r: Record) -> tuple:
    """Rows by net, size, framework (Keras first), oneDNN setting, VGG, XLA, then runtime/variant."""
    h, w = parse_size(r["size"]) if "size" in r else (0, 0)
    modes = GENERATOR_MODES + TFLITE_VARIANTS
    return (
        NETS.index(r["net"]) if r.get("net") in NETS else -1,
        h * w,
        r.get("framework") == "torch" or r["suite"] == "torch",
        ("default", "1", "0", "–").index(r.get("onednn", "default")),
        bool(r.get("vgg")),
        bool(r.get("xla")),
        modes.index(r.get("mode") or r.get("variant")) if (r.get("mode") or r.get("variant")) in modes else -1,
    )


def _table(columns, records: Sequence[Record], sort: bool = True) -> str:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += [
        "| " + " | ".join(cell(r) for _, cell in columns) + " |"
        for r in (sorted(records, key=_order) if sort else records)
    ]
    return "\n".join(lines)


def to_markdown(results: Record) -> str:
    """The results as Markdown: environment, then one table per suite, the targets and failures."""
    env = results["environment"]
    records = results["records"]
    out = ["# pix2pixhd_tf CPU benchmark", ""]
    out.append(
        f"{env['date']} · {env['cpu_model']} · {env['nproc']} cores ({', '.join(env['cpu_flags'])}) · {env['memory_gib']} GiB · "
        f"Python {env['python']} · TensorFlow {env['tensorflow']} · Keras {env['keras']} · torch {env['torch']} · "
        f"numpy {env['numpy']} · ai-edge-litert {env['ai_edge_litert']} · onnxruntime {env.get('onnxruntime')} · TF_ENABLE_ONEDNN_OPTS: {env['TF_ENABLE_ONEDNN_OPTS']} · "
        f"commit {env['git_commit']}"
    )
    out.append("")
    for inv in results.get("invocations", [results]):
        e = inv["environment"]
        out.append(
            f"- run of {e['date']}: load average (1/5/15 min) {'/'.join(map(str, e['load_average_before']))} before, "
            f"{'/'.join(map(str, e['load_average_after']))} after"
            + (f"; settings {inv['settings']}" if inv.get("settings") else "")
        )
    out.append("")
    out.append(
        "Times are medians of the timed calls (after one untimed first call and the warm-up calls). Every configuration ran "
        "in a fresh process; peak RSS is that process's ru_maxrss, framework included. The load column is the 1-minute "
        f"load average before → after the timed calls; it includes this benchmark's own threads (up to {env['nproc']}), so on "
        f"this {env['nproc']}-core machine a value well above {env['nproc']} means others shared the cores."
    )
    matmul = [r for r in records if r["suite"] == "matmul"]
    if matmul:
        out += ["", "## fp32 matmul rate (the yardstick)", ""]
        rows = [
            {"engine": e, "matrix": f"{r['n']}×{r['n']}", "best_s": r[f"{e}_best_s"], "gflops": r[f"{e}_gflops"], **r}
            for r in matmul
            for e in ("tensorflow", "numpy", "torch")
            if f"{e}_gflops" in r
        ]
        columns = [
            _col("engine", "engine"),
            _col("matrix", "matrix"),
            _col("best s", "best_s", ".3f"),
            _col("GFLOP/s", "gflops", ".1f"),
            _LOAD,
        ]
        out.append(_table(columns, rows, sort=False))
    gen = [
        {**r, "runtime": "ONNX Runtime CPU" if r["mode"] == "onnx" else f"Keras {r['mode']}", "gflop": r["flops"] / 1e9}
        for r in records
        if r["suite"] == "generator"
    ]
    gen += [
        {**r, "runtime": "PyTorch no_grad", "onednn": "–", "gflop": r["torch_flops"] / 1e9, "vs_torch_time": 1.0}
        for r in records
        if r["suite"] == "torch" and r["kind"] == "generator"
    ]
    if gen:
        out += ["", "## Generator forward (batch 1, fp32, random weights)", "", _table(_GENERATOR_COLUMNS, gen), ""]
        out.append(
            "GFLOP: convolutions only, 2 per multiply-add, transposed convs over their input pixels (the PyTorch rows: "
            "torch.utils.flop_counter's count, which agrees). 'of matmul' = GFLOP/s ÷ TensorFlow's fp32 matmul rate. "
            "SavedModel and ONNX Runtime rows include the in-graph one-hot, boundary map and uint8 conversion."
        )
    tfl = [r for r in records if r["suite"] == "tflite"]
    if tfl:
        # serving.tflite.interpreter_class falls back to tf.lite.Interpreter when ai-edge-litert is not installed.
        interpreter = "LiteRT interpreter" if env.get("ai_edge_litert") else "tf.lite.Interpreter"
        out += ["", f"## TFLite (batch 1, {interpreter})", "", _table(_TFLITE_COLUMNS, tfl), ""]
        out.append(
            "Differences: TFLite `image_float` vs the Keras generator on a random blocky label/instance map (outputs in [-1, 1])."
        )
    train = [{**r, "runtime": "Keras train_step"} for r in records if r["suite"] == "train"]
    train += [
        {**r, "runtime": "PyTorch reference", "xla": None, "onednn": "–", "vs_torch_time": 1.0, "vs_torch_rss": 1.0}
        for r in records
        if r["suite"] == "torch" and r["kind"] == "train"
    ]
    if train:
        out += [
            "",
            "## Training iteration (G + two-scale D forward/backward, two Adam updates)",
            "",
            _table(_TRAIN_COLUMNS, train),
            "",
        ]
        ref = ISSUE_REFERENCE
        out.append(
            f"The issue's figures for the official PyTorch code on this CPU (256x512, ngf 64, num_D 2): "
            f"{ref['train_s_per_iter_no_vgg']} s per iteration without VGG, {ref['generator_forward_s']} s per generator "
            f"forward, {ref['train_peak_rss_gb']} GB peak RSS."
        )
    if results.get("targets"):
        out += ["", "## Targets", ""]
        columns = [_col("target", "target"), _col("measured", "measured"), _col("met", "met")]
        out.append(_table(columns, results["targets"], sort=False))
    if results.get("errors"):
        out += ["", "## Failed configurations", ""]
        out += [f"- `{e['case']}`: {(e['error'].strip().splitlines() or ['?'])[-1]}" for e in results["errors"]]
    return "\n".join(out) + "\n"


def write_results(results: Record, json_path: str, markdown_path: str | None = None) -> tuple[str, str]:
    """Write the results as JSON and Markdown (default: the JSON path with .md). Returns both paths."""
    markdown_path = markdown_path or os.path.splitext(json_path)[0] + ".md"
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
        f.write("\n")
    with open(markdown_path, "w") as f:
        f.write(to_markdown(results))
    return json_path, markdown_path


if __name__ == "__main__":
    _worker(sys.argv[1:])
