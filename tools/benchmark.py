"""Speed and memory figures: training step, generator forward (Keras, SavedModel, TFLite), PyTorch reference.

    python tools/benchmark.py                          # everything at 256x512 -> benchmarks/results_cpu.{json,md}
    python tools/benchmark.py --suites=matmul,generator,torch --sizes=256x512,512x1024 --nets=global,local
    python tools/benchmark.py --suites=train --xla=off,on --vgg=off --onednn=default,0,1 --max_load=1.5
    python tools/benchmark.py --tiny --runs=1 --warmup=0 --output=/tmp/bench.json   # a one-minute smoke run

Each configuration runs in a fresh Python process, so its peak RSS is its own and --onednn settings
(TF_ENABLE_ONEDNN_OPTS) apply before TensorFlow loads. Networks have random weights: latency does not
depend on them. The paper's G1 (ngf 64, 4 downsamples, 9 blocks, label_nc 35 + instance) and the local
generator (ngf 32, one enhancer; at 512x1024 its G1 sees 256x512) are benchmarked with the official
two-scale D. See benchmarks/README.md for what the figures mean and how to reproduce them.
"""

import json
import os
import sys

from absl import app, flags

# The harness lives in benchmarks/ beside its results, outside the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import harness  # noqa: E402
from pix2pixhd_tf import cli
from pix2pixhd_tf.flags import parse_size  # noqa: E402

flags.DEFINE_list("suites", list(harness.SUITES), f"Suites to run: any of {', '.join(harness.SUITES)}.")
flags.DEFINE_list("sizes", ["256x512"], "Image sizes HEIGHTxWIDTH for the generator, tflite and torch suites.")
flags.DEFINE_list("nets", list(harness.NETS), "Generators: global (G1, ngf 64) and/or local (ngf 32, one enhancer).")
flags.DEFINE_list("train_sizes", [], "Training sizes (default: the smallest of --sizes).")
flags.DEFINE_list("train_nets", ["global"], "Generators to train (global and/or local).")
flags.DEFINE_integer("batchSize", 1, "Training batch size (the train suite).")
flags.DEFINE_list("vgg", ["off", "on"], "Train without (off) and/or with (on) the VGG19 loss (random weights).")
flags.DEFINE_list("xla", ["off", "on"], "Train step without (off) and/or with (on) tf.function(jit_compile=True).")
flags.DEFINE_list(
    "onednn", ["default"], "TF_ENABLE_ONEDNN_OPTS settings for the train and generator suites: default (unset), 0, 1."
)
flags.DEFINE_list(
    "generator_modes",
    list(harness.DEFAULT_GENERATOR_MODES),
    f"Generator runtimes to time, any of {', '.join(harness.GENERATOR_MODES)} (onnx needs `pip install .[onnx]`).",
)
flags.DEFINE_list("tflite_variants", list(harness.TFLITE_VARIANTS), "TFLite variants to convert and time.")
flags.DEFINE_integer("runs", 5, "Timed calls per configuration (the median is reported).")
flags.DEFINE_integer("warmup", 1, "Untimed calls after the first one (which is reported as first_call_s).")
flags.DEFINE_integer("matmul_n", 4096, "Side of the square fp32 matmul that measures the machine's rate.")
flags.DEFINE_integer("matmul_runs", 5, "Matmul repetitions (the best is reported).")
flags.DEFINE_float(
    "max_load", 0.0, "Before each configuration wait until the 1-minute load average is below this (0 = don't)."
)
flags.DEFINE_float(
    "load_timeout_s", 1800, "Wait at most this long for --max_load, then run anyway (the load is recorded)."
)
flags.DEFINE_float("case_timeout_s", 3600, "Give up on a configuration after this many seconds.")
flags.DEFINE_bool("isolate", True, "Run each configuration in a fresh process (needed for peak RSS and --onednn).")
flags.DEFINE_bool("tiny", False, "Benchmark a tiny network (ngf 8, 2 downsamples, 1 block) to check the tool quickly.")
flags.DEFINE_string("output", "benchmarks/results_cpu.json", "JSON results; the Markdown tables go beside it (.md).")
flags.DEFINE_bool(
    "merge", False, "Add to an existing --output: re-measured configurations replace theirs, the others are kept."
)
FLAGS = flags.FLAGS
_SETTINGS = (
    "suites", "sizes", "nets", "train_sizes", "train_nets", "batchSize", "vgg", "xla", "onednn", "generator_modes",
    "tflite_variants", "runs", "warmup", "matmul_n", "matmul_runs", "max_load", "isolate", "tiny", "merge",
)  # fmt: skip

TINY = dict(label_nc=5, ngf=8, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1, ndf=8, n_layers_D=2)


def _switches(values: list[str], name: str) -> list[bool]:
    allowed = {"off": False, "on": True}
    if not values or any(v not in allowed for v in values):
        raise app.UsageError(f"--{name} takes off and/or on, got {','.join(values)!r}")
    return [allowed[v] for v in values]


def main(argv):
    del argv
    cases = harness.plan_cases(
        FLAGS.suites,
        [parse_size(s) for s in FLAGS.sizes],
        FLAGS.nets,
        FLAGS.runs,
        FLAGS.warmup,
        train_sizes=[parse_size(s) for s in FLAGS.train_sizes] or None,
        train_nets=FLAGS.train_nets,
        batch=FLAGS.batchSize,
        vgg=_switches(FLAGS.vgg, "vgg"),
        xla=_switches(FLAGS.xla, "xla"),
        onednn=FLAGS.onednn,
        generator_modes=FLAGS.generator_modes,
        tflite_variants=FLAGS.tflite_variants,
        matmul_n=FLAGS.matmul_n,
        matmul_runs=FLAGS.matmul_runs,
        overrides=TINY if FLAGS.tiny else None,
    )
    results = harness.run_benchmarks(
        cases,
        isolate=FLAGS.isolate,
        max_load=FLAGS.max_load,
        load_timeout_s=FLAGS.load_timeout_s,
        case_timeout_s=FLAGS.case_timeout_s,
    )
    results["invocations"][-1]["settings"] = {name: FLAGS[name].value for name in _SETTINGS}
    if FLAGS.merge and os.path.exists(FLAGS.output):
        with open(FLAGS.output) as f:
            results = harness.merge_results(json.load(f), results)
    json_path, md_path = harness.write_results(results, FLAGS.output)
    print(f"wrote {json_path} and {md_path}")
    for target in results["targets"]:
        print(f"{'MET ' if target['met'] else 'MISS'} {target['target']}: {target['measured']}")
    if results["errors"]:
        print(f"{len(results['errors'])} configuration(s) failed: see {md_path}")


if __name__ == "__main__":
    cli.run(main)
