"""What sets the peak of a training step: every tensor alive at the step's memory peak, by op.

    python -m benchmarks.memory_profile --net=local --size=1024x2048 --setting=blocks \
        --output=benchmarks/memory_profile_local_blocks.json
    python -m benchmarks.memory_profile --net=local --size=1024x2048 --setting=none --allocator=malloc
    python -m benchmarks.memory_profile --tiny --size=64x128 --output=/tmp/profile.json   # a smoke run

The step is the one `benchmarks.memory` measures (the paper's 3-scale D, batch 1, no VGG). By default
(`--allocator=traced`) it runs with TensorFlow's BFC allocator on the CPU (TF_CPU_ALLOCATOR_USE_BFC, set
before TensorFlow loads), whose allocations the profiler records with the op and shape of each tensor. One
step traces, the next is profiled; replaying its allocations gives the bytes in use over time, the moment of the peak and what was
alive then (the bytes each op asked for). The process's RSS is sampled beside it: what the allocator keeps
beyond the tensors (rounding, freed chunks it holds) and the runtime's own memory show as the difference.
`--allocator=pool|malloc` gives that RSS curve for TensorFlow's default allocator and for malloc.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import harness  # noqa: E402
from pix2pixhd_tf.flags import parse_size  # noqa: E402

flags.DEFINE_enum("net", "local", ["global", "local"], "G of the step.")
flags.DEFINE_string("size", "1024x2048", "HEIGHTxWIDTH of the batch.")
flags.DEFINE_enum("setting", "none", list(harness.MEMORY_SETTINGS), "The setting of benchmarks.memory to profile.")
flags.DEFINE_bool("tiny", False, "A tiny network (ngf 8), to check the tool quickly.")
flags.DEFINE_enum(
    "allocator",
    "traced",
    ["traced", "pool", "malloc"],
    "traced: a BFC allocator whose events the profiler records (what is alive at the peak); pool: TensorFlow's "
    "default oneDNN pool; malloc: TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1. pool and malloc "
    "give the RSS curve only.",
)
flags.DEFINE_integer("top", 25, "Ops listed in the report.")
flags.DEFINE_string("output", "benchmarks/memory_profile.json", "JSON report; Markdown beside it (.md).")
FLAGS = flags.FLAGS

MiB = 2**20


@dataclass(frozen=True)
class Allocation:
    """One allocator event of the profiled step; `bytes_in_use` is the allocator's total after it."""

    time_ps: int
    address: int
    size: int  # bytes the op asked for (the allocator may hand out a larger chunk)
    bytes_in_use: int
    op: str
    shape: str
    is_free: bool


def read_allocations(xplane_path: str) -> list[Allocation]:
    """The BFC allocator's MemoryAllocation / MemoryDeallocation events of an XSpace file, in time order."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        stat_names = {k: m.name for k, m in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = names.get(event.metadata_id, "")
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    value = stat.int64_value or stat.uint64_value or stat.str_value
                    if stat.ref_value:
                        value = stat_names.get(stat.ref_value, "")
                    stats[stat_names.get(stat.metadata_id, "")] = value
                events.append(
                    Allocation(
                        time_ps=line.timestamp_ns * 1000 + event.offset_ps,
                        address=int(stats.get("addr", 0)),
                        size=int(stats.get("requested_bytes", 0) or stats.get("allocation_bytes", 0)),
                        bytes_in_use=int(stats.get("bytes_allocated", 0)),
                        op=str(stats.get("tf_op", "") or "(no op)"),
                        shape=str(stats.get("shape", "")),
                        is_free=kind == "MemoryDeallocation",
                    )
                )
    events.sort(key=lambda e: e.time_ps)
    return events


def alive_at_peak(events: Sequence[Allocation]) -> tuple[int, list[Allocation], list[int]]:
    """(peak bytes in use, the allocations of this trace alive at that moment, bytes in use after each event).

    Frees of tensors allocated before the trace started (the weights' older buffers, say) are not
    matched here; their bytes are in the allocator's own total, which this reports as the peak.
    """
    live: dict[int, Allocation] = {}
    peak, at_peak, curve = -1, [], []
    for event in events:
        if event.is_free:
            live.pop(event.address, None)
        else:
            live[event.address] = event
        curve.append(event.bytes_in_use)
        if event.bytes_in_use > peak:
            peak, at_peak = event.bytes_in_use, list(live.values())
    return peak, at_peak, curve


class RssSampler:
    """The process's resident set size every `interval_s` on a background thread, while in a `with` block."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(harness._rss_mb() or 0.0)
            time.sleep(self.interval_s)

    def summary(self) -> dict:
        curve = self.samples or [0.0]
        return {"peak_mib": max(curve), "start_mib": curve[0], "end_mib": curve[-1],
                "curve_mib": curve[:: max(1, len(curve) // 400)]}


def group_by_op(allocations: Iterable[Allocation], top: int) -> list[dict]:
    groups: dict[str, list[Allocation]] = collections.defaultdict(list)
    for a in allocations:
        groups[a.op].append(a)
    rows = [
        {
            "op": op,
            "tensors": len(items),
            "mib": sum(a.size for a in items) / MiB,
            "shapes": sorted({a.shape for a in items})[:3],
        }
        for op, items in groups.items()
    ]
    rows.sort(key=lambda r: -r["mib"])
    return rows[:top]


def group_by_phase(allocations: Iterable[Allocation]) -> dict[str, float]:
    """MiB alive at the peak by where they were made: G, D or E (`G_3/...`), forward or gradient, or other."""
    phases: dict[str, float] = collections.defaultdict(float)
    for a in allocations:
        grad = a.op.startswith("gradient_tape/")
        scope = a.op.removeprefix("gradient_tape/").split("/")[0]
        net = {"G": "G", "D": "D", "E": "E"}.get(scope.split("_")[0], "other")
        if "adam" in a.op.lower():
            net = "optimizer"
        phases[f"{net} {'gradient' if grad else 'forward'}"] += a.size / MiB
    return dict(sorted(phases.items(), key=lambda kv: -kv[1]))


def _allocator_info(bfc: bool) -> dict:
    import tensorflow as tf

    if not bfc:
        return {}
    info = tf.config.experimental.get_memory_info("CPU:0")
    tf.config.experimental.reset_memory_stats("CPU:0")
    return {"in_use_mib": info["current"] / MiB, "peak_mib": info["peak"] / MiB}


def profile_step(net: str, size: Sequence[int], overrides: dict, top: int, allocator: str = "traced") -> dict:
    import tensorflow as tf

    bfc = allocator == "traced"

    rss = {"after_import_mib": harness._rss_mb()}
    opts, model, step, data = harness.build_train_step(net, size, overrides=overrides)
    rss["after_build_mib"] = harness._rss_mb()
    in_tensors = {"after_build": _allocator_info(bfc)}
    with RssSampler() as first:
        step(data)  # traces and runs once: the weights and Adam's moments exist from here on
    in_tensors["first_step"] = _allocator_info(bfc)
    logdir = tempfile.mkdtemp(prefix="p2phd-memprof-")
    with RssSampler() as second:
        if bfc:
            tf.profiler.experimental.start(logdir)
        {k: float(v) for k, v in step(data).items()}
        if bfc:
            tf.profiler.experimental.stop()
    in_tensors["second_step"] = _allocator_info(bfc)
    report = {
        "net": net,
        "size": harness.size_text(size),
        "recompute": opts.recompute,
        "precision": "fp16" if opts.fp16 else "bf16" if opts.bf16 else "fp32",
        "allocator": allocator,
        "g_params": int(model.generator.count_params()),
        "d_params": int(model.discriminator.count_params()),
        "peak_rss_mib": harness.peak_rss_mb(),
        "rss": {**rss, "first_step": first.summary(), "second_step": second.summary()},
        "allocator_mib": in_tensors,
    }
    if not bfc:
        return report
    (xplane,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    events = read_allocations(xplane)
    peak, alive, curve = alive_at_peak(events)
    step_bytes = sum(a.size for a in alive)
    return {
        **report,
        "trace_peak_mib": peak / MiB,
        "alive_at_peak_made_in_step_mib": step_bytes / MiB,
        "rest_of_allocator_peak_mib": (peak - step_bytes) / MiB,
        "events": len(events),
        "peak_event_index": curve.index(peak) if curve else None,
        "by_phase_mib": group_by_phase(alive),
        "by_op": group_by_op(alive, top),
        "curve_mib": [round(c / MiB, 1) for c in curve[:: max(1, len(curve) // 400)]],
    }


def to_markdown(report: dict) -> str:
    rss, alloc = report["rss"], report["allocator_mib"]
    lines = [
        f"# Memory of one training step: {report['net']} G, {report['size']}, recompute={report['recompute']}, "
        f"{report['precision']}, {report['allocator']} allocator",
        "",
        f"- Process RSS: {rss['after_import_mib']:.0f} MiB after importing TensorFlow, {rss['after_build_mib']:.0f} "
        f"after building the networks and optimizers; peak {rss['first_step']['peak_mib']:.0f} during the first "
        f"step (tracing included), {rss['second_step']['peak_mib']:.0f} during the second; process peak "
        f"{report['peak_rss_mib']:.0f}.",
    ]
    if report["allocator"] == "traced":
        lines += [
            f"- Allocator (bytes in tensors): {alloc['after_build']['in_use_mib']:.0f} MiB in use after the build, "
            f"peak {alloc['first_step']['peak_mib']:.0f} in the first step, {alloc['first_step']['in_use_mib']:.0f} "
            f"in use after it (weights, Adam moments, the batch), peak {alloc['second_step']['peak_mib']:.0f} in the "
            "second.",
            f"- At the second step's peak: {report['alive_at_peak_made_in_step_mib']:.0f} MiB in tensors made during "
            f"the step (the bytes their ops asked for); the other "
            f"{report['rest_of_allocator_peak_mib']:.0f} MiB of the allocator's peak are the weights, Adam's moments "
            "and the batch, and the allocator's rounding.",
            "",
            "| made in | MiB alive at the peak |",
            "|---|---|",
            *(f"| {k} | {v:.0f} |" for k, v in report["by_phase_mib"].items()),
            "",
            "| op | tensors | MiB | shapes |",
            "|---|---|---|---|",
            *(
                f"| `{r['op']}` | {r['tensors']} | {r['mib']:.0f} | {', '.join(r['shapes'])} |"
                for r in report["by_op"]
            ),
        ]
    return "\n".join(lines) + "\n"


def choose_allocator(allocator: str) -> None:
    """Before TensorFlow loads (it reads these when it creates its CPU allocator)."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("choose the allocator before TensorFlow is imported")
    if allocator == "traced":
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    else:
        os.environ[harness.SYSTEM_ALLOCATOR_ENV] = "1" if allocator == "malloc" else "0"


def main(argv: Sequence[str]) -> None:
    del argv
    choose_allocator(FLAGS.allocator)
    overrides = {**harness.PAPER_D, **(harness.TINY_NET if FLAGS.tiny else {}), **harness.MEMORY_SETTINGS[FLAGS.setting]}
    report = profile_step(FLAGS.net, parse_size(FLAGS.size), overrides, FLAGS.top, FLAGS.allocator)
    report["environment"] = harness.environment()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=1)
    markdown = os.path.splitext(FLAGS.output)[0] + ".md"
    with open(markdown, "w") as f:
        f.write(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {FLAGS.output} and {markdown}")


if __name__ == "__main__":
    app.run(main)
