"""Smoke tests of the benchmark tool: tiny networks, one or two calls, result structure and FLOP counting.

No timing is asserted: the figures themselves come from `tools/benchmark.py` (see benchmarks/README.md).
"""

import keras
import pytest

from pix2pixhd_tf import networks
from benchmarks import harness

# label_nc 5 + instance = 6 input channels, ngf 8, 2 downsamples, 1 block, 2 tiny D scales.
TINY = dict(label_nc=5, ngf=8, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1, ndf=8, n_layers_D=2)
SIZE = (32, 32)
TIMING_KEYS = {
    "first_call_s",
    "median_s",
    "mean_s",
    "min_s",
    "max_s",
    "times_s",
    "runs",
    "warmup",
    "load_before",
    "load_after",
}


def test_flops_of_hand_computable_convs():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)  # 6x6x4 outputs, 3x3x3 window each
    x = keras.layers.Conv2DTranspose(2, 3, strides=2)(x)  # each of the 6x6x4 inputs spreads over 3x3x2 outputs
    model = keras.Model(inputs, x)

    rows = harness.conv_flops(model, 8, 8)

    assert [r["kind"] for r in rows] == ["conv", "conv_transpose"]
    assert rows[0]["output"] == [1, 6, 6, 4] and rows[1]["output"] == [1, 13, 13, 2]
    assert rows[0]["flops"] == 2 * (6 * 6) * (3 * 3 * 3) * 4
    assert rows[1]["flops"] == 2 * (6 * 6) * (3 * 3 * 4) * 2
    assert harness.count_generator_flops(model, 8, 8) == 7776 + 5184


def test_flops_of_convs_run_as_matmuls():
    from pix2pixhd_tf.networks.fast_ops import MATMUL_CONV_MIN_CHANNELS
    from pix2pixhd_tf.networks.layers import ResnetBlock

    c = MATMUL_CONV_MIN_CHANNELS
    inputs = keras.Input((4, 6, c))
    model = keras.Model(inputs, ResnetBlock(c)(inputs))

    rows = harness.conv_flops(model, 4, 6)

    assert [r["kind"] for r in rows] == ["conv_as_matmul"] * 2
    assert all(r["kernel"] == [3, 3, c, c] and r["flops"] == 2 * (4 * 6) * (3 * 3 * c) * c for r in rows)


@pytest.mark.parametrize("net", ["global", "local"])
def test_generator_flops_match_torch_flop_counter(net):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    opts = harness.benchmark_options(net, TINY)
    ours = harness.count_generator_flops(networks.build_generator(opts), *SIZE)
    reference = harness._torch_generator(harness.load_torch_reference(), opts)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        reference(torch.zeros(1, opts.generator_input_nc, *SIZE))
    assert ours == counter.get_total_flops()


def test_onnx_generator_mode():
    """The opt-in 'onnx' runtime: export_onnx + ONNX Runtime CPU, timed like the SavedModel row."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    assert "onnx" in harness.GENERATOR_MODES and "onnx" not in harness.DEFAULT_GENERATOR_MODES
    common = dict(size=SIZE, runs=1, warmup=0, overrides=TINY)
    (function, onnx) = harness.run_case("generator_latency", dict(modes=["function", "onnx"], **common))
    assert onnx["mode"] == "onnx" and TIMING_KEYS <= onnx.keys() and len(onnx["times_s"]) == 1
    assert onnx["export_s"] > 0 and onnx["flops"] == function["flops"] > 0
    results = {
        "environment": {**harness.environment(), "load_average_before": [0.1] * 3, "load_average_after": [0.2] * 3},
        "records": [{**r, "onednn": "default"} for r in (function, onnx)],
        "targets": [],
        "errors": [],
    }
    markdown = harness.to_markdown(results)
    assert "ONNX Runtime CPU" in markdown and "Keras function" in markdown


def test_suites_return_records_and_markdown():
    pytest.importorskip("torch")
    common = dict(size=SIZE, runs=1, warmup=0, overrides=TINY)
    records = harness.run_case("matmul_rate", dict(n=64, runs=1))
    records += harness.run_case("generator_latency", dict(modes=["eager", "function"], **common))
    records += harness.run_case("train_step_throughput", common)
    # One torch thread: on a busy machine, tiny ops spend their time at OpenMP barriers, not computing.
    records += harness.run_case("torch_generator_latency", dict(threads=1, **common))
    records += harness.run_case("torch_train_step", dict(threads=1, **common))
    for record in records:
        record["onednn"] = "default"

    matmul, eager, function, train, torch_gen, torch_train = records
    assert matmul["tensorflow_gflops"] > 0 and matmul["numpy_gflops"] > 0
    assert (eager["mode"], function["mode"]) == ("eager", "function")
    for record in (eager, function, train, torch_gen, torch_train):
        assert TIMING_KEYS <= record.keys() and len(record["times_s"]) == 1
        assert record["peak_rss_mb"] > 0
    assert eager["flops"] == torch_gen["torch_flops"] > 0
    assert train["losses_finite"] and train["s_per_iter"] > 0 and train["images_per_s"] > 0
    assert not train["vgg"] and not train["xla"]
    assert torch_train["kind"] == "train" and torch_train["s_per_iter"] > 0

    summary = harness.summarize(records)
    assert summary["matmul_gflops"] == matmul["tensorflow_gflops"]
    assert eager["fraction_of_matmul"] > 0 and eager["vs_torch_time"] > 0 and train["vs_torch_rss"] > 0
    targets = harness.targets_from_records(records, summary["matmul_gflops"], size="32x32")
    assert [t["met"] in (True, False) for t in targets] == [True] * 4  # train time and RSS, G time and matmul share
    results = {
        "environment": {**harness.environment(), "load_average_before": [0.1] * 3, "load_average_after": [0.2] * 3},
        "records": records,
        "targets": targets,
        "errors": [],
    }
    markdown = harness.to_markdown(results)
    for heading in ("matmul rate", "Generator forward", "Training iteration", "Targets"):
        assert heading in markdown

    # A re-measured configuration replaces its old record; the others stay.
    rerun = {**results, "records": [{**train, "median_s": 1e3}], "cases": [], "invocations": [{"cases": ["rerun"]}]}
    merged = harness.merge_results({**results, "invocations": []}, rerun)
    assert len(merged["records"]) == len(records)
    assert [r["median_s"] for r in merged["records"] if r["suite"] == "train"] == [1e3]


def test_isolated_case_reports_its_own_peak_rss():
    (record,) = harness.run_isolated("matmul_rate", dict(n=64, runs=1, engines=["numpy"]), env={"BENCH_TEST": "1"})
    assert record["numpy_gflops"] > 0 and "tensorflow_gflops" not in record
    assert record["env"] == {"BENCH_TEST": "1"}
    assert 0 < record["baseline_rss_mb"] <= record["peak_rss_mb"]


def test_plan_and_sizes():
    cases = harness.plan_cases(
        ["train", "torch"], sizes=[(512, 1024), (256, 512)], nets=["global"], onednn=["default", "0"]
    )
    train = [c for c in cases if c.suite == "train"]
    assert len(train) == 2 * 2 * 2  # oneDNN x VGG x XLA, at the smallest size only
    assert {c.kwargs["size"] for c in train} == {(256, 512)}
    assert {c.env.get("TF_ENABLE_ONEDNN_OPTS") for c in train} == {None, "0"}
    assert [c.name for c in cases if c.suite == "torch"] == ["torch_generator_latency"] * 2 + ["torch_train_step"]
    assert harness.parse_size("512x1024") == (512, 1024)
    with pytest.raises(ValueError, match="unknown suites"):
        harness.plan_cases(["speed"])


def test_memory_profile_replays_allocations_to_the_peak_and_what_is_alive_then():
    """The replay of allocator events: the peak is the largest bytes-in-use, and what is alive then is every
    allocation of the trace not yet freed, grouped by network and direction."""
    from benchmarks.memory_profile import Allocation, alive_at_peak, group_by_op, group_by_phase

    MiB = 2**20

    def event(t, address, size, in_use, op="", free=False):
        return Allocation(t, address, size * MiB, in_use * MiB, op, "[1]", free)

    events = [
        event(0, 1, 100, 1100, "G_1/conv/Conv2D"),
        event(1, 2, 50, 1150, "D_3/scale2/layer0/Pad"),
        event(2, 2, 50, 1100, free=True),
        event(3, 3, 200, 1300, "gradient_tape/D_3/scale2/layer1/Conv2DBackpropInput"),  # the peak
        event(4, 1, 100, 1200, free=True),
        event(5, 4, 10, 1210, "g_adam/Adam"),
    ]
    peak, alive, curve = alive_at_peak(events)
    assert peak == 1300 * MiB and curve == [e.bytes_in_use for e in events]
    assert sorted(a.address for a in alive) == [1, 3]
    assert group_by_phase(alive) == {"D gradient": 200.0, "G forward": 100.0}
    assert [(r["op"], r["mib"]) for r in group_by_op(alive, top=1)] == [
        ("gradient_tape/D_3/scale2/layer1/Conv2DBackpropInput", 200.0)
    ]
