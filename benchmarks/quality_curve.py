"""Quality against training steps, trained vs averaged G, from the numbered checkpoints of one run.

For every `epoch_N` checkpoint of an experiment trained with --ema_decay, and for each of G's weights (the
trained ones and their moving average): encode the training set with that checkpoint's E and cluster it
(tools/encode_features.py), synthesise the test split with one cluster sampled per instance
(tools/test.py, `--sample_seed=0`), and score the images with the oracle segmenter and SWD
(tools/evaluate.py --metrics=seg,swd --phase2=train). Writes a JSON of every score and a plot
(PNG, drawn with Pillow: no plotting package needed) of the mean IoU ratio, pixel accuracy ratio and SWD
ratio against steps.

  python -m benchmarks.quality_curve --flagfile=configs/local.cfg --ema_decay=0.999 --name=local_ema \
      --segmenter=checkpoints/segmenter --output=benchmarks/quality_curve
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from pix2pixhd_tf import flags as p2p_flags
from pix2pixhd_tf.evaluation import protocol
from pix2pixhd_tf.inference import run_test
from pix2pixhd_tf.styles.encoding import encode_features
from pix2pixhd_tf.training import checkpoint as ckpt

_SERIES = ("raw", "averaged")


def score_checkpoint(opts, which_epoch: str, weights: str, segmenter, workdir: str) -> dict:
    """The evaluation of one checkpoint with one set of G/E weights ('raw' or 'averaged')."""
    run_opts = opts.replace(which_epoch=which_epoch, raw_weights=weights == "raw", phase="train")
    cluster_file = None
    if opts.use_encoder:
        cluster_file = os.path.join(workdir, f"clusters_{which_epoch}_{weights}.npz")
        encode_features(run_opts, which_epoch=which_epoch, progress=False).save(cluster_file)
    results = os.path.join(workdir, f"results_{which_epoch}_{weights}")
    test_opts = run_opts.replace(phase="test", results_dir=results, how_many=1000)
    result = run_test(test_opts, seed=0, cluster_file=cluster_file, progress=False)
    report = protocol.evaluate(
        opts.dataroot,
        os.path.join(result.web_dir, "images"),
        label_nc=opts.label_nc,
        phase="test",
        metrics=("seg", "swd"),
        segmenter=segmenter,
        inception_weights=None,
        reference_dir=os.path.join(opts.dataroot, "train_img"),
        progress=False,
    )
    seg = report["segmentation"]
    return {
        "pixel_accuracy": seg["generated"]["pixel_accuracy"],
        "mean_iou": seg["generated"]["mean_iou"],
        "pixel_accuracy_ratio": seg["generated"]["pixel_accuracy"] / seg["real"]["pixel_accuracy"],
        "mean_iou_ratio": seg["generated"]["mean_iou"] / seg["real"]["mean_iou"],
        "swd_ratio": report["swd"]["ratio"],
        "oracle": {k: seg["real"][k] for k in ("pixel_accuracy", "mean_iou")},
        "images": os.path.join(result.web_dir, "images"),
    }


def epoch_checkpoints(experiment: str) -> list[int]:
    return sorted(
        int(m.group(1)) for n in ckpt.available_checkpoints(experiment) if (m := re.match(r"epoch_(\d+)$", n))
    )


def plot(rows: list[dict], path: str) -> None:
    """Three panels side by side (mean IoU ratio, pixel accuracy ratio, SWD ratio vs steps): raw in grey,
    averaged in blue, targets dashed."""
    panels = [
        ("mean IoU ratio (target >= 0.95)", "mean_iou_ratio", 0.95),
        ("pixel accuracy ratio (target >= 0.98)", "pixel_accuracy_ratio", 0.98),
        ("SWD ratio (target <= 1.2)", "swd_ratio", 1.2),
    ]
    width, height, pad = 360, 300, 48
    canvas = Image.new("RGB", (width * len(panels), height + 30), "white")
    draw = ImageDraw.Draw(canvas)
    steps = [r["steps"] for r in rows]
    colours = {"raw": (130, 130, 130), "averaged": (30, 90, 200)}
    for p, (title, key, target) in enumerate(panels):
        x0 = p * width
        values = [r[s][key] for r in rows for s in _SERIES] + [target]
        lo, hi = min(values), max(values)
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)

        def xy(step, value, x0=x0, lo=lo, hi=hi):
            x = x0 + pad + (width - 1.5 * pad) * (step - min(steps)) / max(1, max(steps) - min(steps))
            y = pad / 2 + (height - 1.5 * pad) * (hi - value) / (hi - lo)
            return x, y

        draw.text((x0 + pad, 4), title, fill="black")
        draw.rectangle([x0 + pad, pad / 2, x0 + width - pad / 2, height - pad], outline=(200, 200, 200))
        for frac in (0.0, 0.5, 1.0):
            value = lo + frac * (hi - lo)
            draw.text((x0 + 2, xy(steps[0], value)[1] - 6), f"{value:.3f}", fill="black")
        for step in (steps[0], steps[len(steps) // 2], steps[-1]):
            draw.text((xy(step, lo)[0] - 12, height - pad + 4), str(step), fill="black")
        ty = xy(steps[0], target)[1]
        for x in range(int(x0 + pad), int(x0 + width - pad / 2), 8):
            draw.line([(x, ty), (x + 4, ty)], fill=(200, 60, 60))
        for series in _SERIES:
            points = [xy(r["steps"], r[series][key]) for r in rows]
            draw.line(points, fill=colours[series], width=2)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colours[series])
    draw.text(
        (pad, height + 8), "steps ->   grey: trained (raw) G   blue: averaged G   red dashes: target", fill="black"
    )
    canvas.save(path)


def main(argv):
    del argv
    opts = p2p_flags.options_from_flags()
    experiment = ckpt.experiment_dir(opts)
    epochs = epoch_checkpoints(experiment)
    if FLAGS.which_epochs:
        epochs = [e for e in epochs if str(e) in FLAGS.which_epochs]
    if not epochs:
        raise SystemExit(f"no epoch_N checkpoints in {experiment}: train with --save_epoch_freq")
    steps_per_epoch = opts.steps_per_epoch or opts.synthetic_size
    segmenter = protocol.load_segmenter(FLAGS.segmenter)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="quality_curve_")
    # Checkpoints scored by an earlier (interrupted, or run-while-training) call are kept, not scored again.
    done = {}
    if os.path.isfile(FLAGS.output + ".json"):
        with open(FLAGS.output + ".json") as f:
            previous = json.load(f)
        if previous["experiment"] == experiment:
            done = {row["epoch"]: row for row in previous["rows"]}
    rows = []
    for epoch in epochs:
        row = done.get(epoch) or {"epoch": epoch, "steps": epoch * steps_per_epoch // opts.batchSize}
        for series in _SERIES:
            if series not in row:
                row[series] = score_checkpoint(opts, str(epoch), series, segmenter, workdir)
            print(epoch, series, {k: round(v, 4) for k, v in row[series].items() if isinstance(v, float)}, flush=True)
        rows.append(row)
        with open(FLAGS.output + ".json", "w") as f:
            json.dump({"experiment": experiment, "ema_decay": opts.ema_decay, "rows": rows}, f, indent=1)
    plot(rows, FLAGS.output + ".png")
    last = rows[-1]
    for series in _SERIES:
        shutil.copytree(last[series]["images"], os.path.join(workdir, f"last_{series}"), dirs_exist_ok=True)
    print(f"wrote {FLAGS.output}.json and {FLAGS.output}.png; images under {workdir}")
    print(
        np.array(
            [
                [r["steps"]]
                + [r[s][k] for s in _SERIES for k in ("pixel_accuracy_ratio", "mean_iou_ratio", "swd_ratio")]
                for r in rows
            ]
        ).round(4)
    )


FLAGS = flags.FLAGS
if __name__ == "__main__":
    p2p_flags.define_flags()
    flags.DEFINE_string("segmenter", None, "The oracle segmenter (tools/train_segmenter.py --output).", required=True)
    flags.DEFINE_string("output", "benchmarks/quality_curve", "Writes OUTPUT.json and OUTPUT.png.")
    flags.DEFINE_string("workdir", "", "Where clusters and images go (default: a new temporary folder).")
    flags.DEFINE_list("which_epochs", [], "Score only these epoch_N checkpoints (default: all of them).")
    app.run(main)
