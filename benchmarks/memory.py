"""Training memory at the paper's resolutions, ours (--recompute, --bf16, --fp16) beside the PyTorch reference.

    python -m benchmarks.memory                                   # both rows, every setting (about an hour here)
    python -m benchmarks.memory --rows=local:1024x2048 --settings=torch,none,blocks,all,bf16 --runs=2 --warmup=0
    python -m benchmarks.memory --tiny --runs=1 --warmup=0 --output=/tmp/memory.json   # a one-minute smoke run

Rows are the paper's configurations with its 3-scale D (ndf 64, batch 1, label_nc 35 + instance map, no VGG:
the reference has no VGG loss): the final stage, local G (ngf 32, one enhancer) at 1024x2048, and the global
G (ngf 64) at 512x1024. Each setting of a row runs in a fresh process (`harness.run_isolated`), so its peak
RSS (ru_maxrss, framework included) is its own; step times are only comparable within one invocation, as
the load of a shared machine changes between invocations. Results: `--output` (JSON) and a Markdown table
beside it; benchmarks/memory_cpu.md holds the readings.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import harness  # noqa: E402
from pix2pixhd_tf.flags import parse_size  # noqa: E402

# setting -> Options overrides of our train step (harness.MEMORY_SETTINGS); "torch" is the PyTorch reference.
SETTINGS = harness.MEMORY_SETTINGS
PAPER = harness.PAPER_D
TINY = harness.TINY_NET

flags.DEFINE_list("rows", ["local:1024x2048", "global:512x1024"], "NET:HEIGHTxWIDTH rows to measure.")
flags.DEFINE_list(
    "settings", ["torch", "none", "blocks", "all", "bf16"], f"Any of torch, {', '.join(SETTINGS)}, in the run order."
)
flags.DEFINE_list(
    "allocators",
    ["pool"],
    "Tensor allocators of our settings, each in the run order: pool (TensorFlow's default oneDNN BFC pool) "
    "and malloc (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1: less memory, slower; see harness.SYSTEM_ALLOCATOR_ENV).",
)
flags.DEFINE_integer("runs", 2, "Timed steps per setting (the median is reported).")
flags.DEFINE_integer("warmup", 0, "Untimed steps after the first one (which is reported as first_call_s).")
flags.DEFINE_float("max_load", 0.0, "Before each setting wait until the 1-minute load average is below this.")
flags.DEFINE_float("case_timeout_s", 3600, "Give up on a setting after this many seconds.")
flags.DEFINE_bool("tiny", False, "A tiny network (ngf 8) at the given sizes, to check the tool quickly.")
flags.DEFINE_string("output", "benchmarks/memory_cpu.json", "JSON results; the Markdown table goes beside it (.md).")
FLAGS = flags.FLAGS


ALLOCATOR_ENV = {"pool": {harness.SYSTEM_ALLOCATOR_ENV: "0"}, "malloc": {harness.SYSTEM_ALLOCATOR_ENV: "1"}}


def plan(
    rows: Sequence[tuple[str, tuple[int, int]]],
    settings: Sequence[str],
    runs: int,
    warmup: int,
    tiny: bool = False,
    allocators: Sequence[str] = ("pool",),
) -> list[harness.Case]:
    """One case per (row, setting, allocator), a row's cases one after another so that their step times are
    measured under as similar a load as this machine allows."""
    unknown = [s for s in settings if s != "torch" and s not in SETTINGS]
    unknown += [a for a in allocators if a not in ALLOCATOR_ENV]
    if unknown:
        raise ValueError(
            f"unknown settings {unknown}; choose from torch, {', '.join(SETTINGS)} and allocators "
            f"{', '.join(ALLOCATOR_ENV)}"
        )
    base = {**PAPER, **(TINY if tiny else {})}
    cases = []
    for net, size in rows:
        for setting in settings:
            if setting == "torch":
                kwargs = dict(net=net, size=size, runs=runs, warmup=warmup, overrides=base)
                cases.append(harness.Case("torch", "torch_train_step", kwargs))
            else:
                overrides = {**base, **SETTINGS[setting]}
                kwargs = dict(net=net, size=size, runs=runs, warmup=warmup, overrides=overrides)
                for allocator in allocators:
                    cases.append(harness.Case("train", "train_step_throughput", kwargs, ALLOCATOR_ENV[allocator]))
    return cases


def _setting(record: dict) -> str:
    if record["framework"] == "torch":
        return "PyTorch reference"
    precision = {"fp32": "", "bf16": "bf16 ", "fp16": "fp16 "}[record["precision"]]
    return f"{precision}recompute={record['recompute']}, {record.get('allocator', 'pool')}"


def table(records: Sequence[dict]) -> str:
    """Markdown: one line per (row, setting, allocator), with ratios to the row's PyTorch and our default
    (fp32, recompute none, TensorFlow's pool)."""
    lines = [
        "| net | size | setting, allocator | peak RSS MiB | RSS / PyTorch | RSS / ours default | s per step | "
        "time / ours default | time / PyTorch | timed steps | load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        same_row = [o for o in records if o["net"] == r["net"] and o["size"] == r["size"]]
        torch = next((o for o in same_row if o["framework"] == "torch"), None)
        ours = next(
            (
                o
                for o in same_row
                if o["framework"] != "torch"
                and o["precision"] == "fp32"
                and o["recompute"] == "none"
                and o.get("allocator", "pool") == "pool"
            ),
            None,
        )

        def ratio(field, other, r=r):
            return f"{r[field] / other[field]:.2f}" if other else "–"

        lines.append(
            f"| {r['net']} | {r['size']} | {_setting(r)} | {r['peak_rss_mb']:.0f} | {ratio('peak_rss_mb', torch)} | "
            f"{ratio('peak_rss_mb', ours)} | {r['s_per_iter']:.1f} | {ratio('s_per_iter', ours)} | "
            f"{ratio('s_per_iter', torch)} | {r['runs']} | {r['load_before'][0]} → {r['load_after'][0]} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    rows = []
    for row in FLAGS.rows:
        net, _, size = row.partition(":")
        rows.append((net, parse_size(size)))
    cases = plan(rows, FLAGS.settings, FLAGS.runs, FLAGS.warmup, FLAGS.tiny, FLAGS.allocators)
    results = harness.run_benchmarks(cases, isolate=True, max_load=FLAGS.max_load, case_timeout_s=FLAGS.case_timeout_s)
    results["invocations"][-1]["settings"] = {
        name: FLAGS[name].value for name in ("rows", "settings", "allocators", "runs", "warmup", "max_load", "tiny")
    }
    markdown = table(results["records"])
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=1, default=harness._json_default)
    md_path = os.path.splitext(FLAGS.output)[0] + "_table.md"
    with open(md_path, "w") as f:
        f.write(markdown + "\n")
        f.writelines(f"\nFAILED: {e['case']}\n\n```\n{e['error']}\n```\n" for e in results["errors"])
    print(markdown)
    print(f"wrote {FLAGS.output} and {md_path}")
    for error in results["errors"]:
        print(f"FAILED: {error['case']}: {error['error'][-500:]}")


if __name__ == "__main__":
    app.run(main)
