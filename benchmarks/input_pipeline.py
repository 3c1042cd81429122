"""Input pipeline samples/s: PNG folders vs TFRecord shards, beside the training step rate (not a test).

    python -m benchmarks.input_pipeline --sizes=512x1024,1024x2048 --samples=24 --num_shards=4 \
        --out=benchmarks/input_pipeline_cpu.json

For each size, the built-in synthetic street scenes are written at that size under --workdir, once as they
are ("flat": large flat regions, small PNGs that decode fast) and once with noise added to the real images
("photo": PNGs about as large as Cityscapes' photos, which is what decoding costs on real data); each is
packed into shards with `tfrecords.write_tfrecords` (its time is reported: it decodes every file once as its
check). Then `build_dataset` (training: shuffle, flip; --resize_or_crop none, batch 1, --nThreads 0 =
AUTOTUNE, repeated) is read for --passes passes' worth of samples after one untimed pass, from the folder
and from the shards, --repeats times each in alternating order; the rate is samples per second of wall time
on this machine. Every sample is decoded in full
(label, instance, image) and flipped at random, as in training.

The training step rate beside it is not measured here: it is read from benchmarks/results_cpu.json (the
Keras train_step of the paper's G1, two-scale D, no VGG, on this machine), where `tools/benchmark.py`
measured it; that file says when and under what load.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from benchmarks.harness import cpu_model, load_average, peak_rss_mb
from pix2pixhd_tf.data import tfrecords
from pix2pixhd_tf.data.dataset import build_dataset
from pix2pixhd_tf.data.files import DatasetLayout
from pix2pixhd_tf.data.synthetic import write_synthetic_dataset
from pix2pixhd_tf.flags import parse_size
from pix2pixhd_tf.options import Options

flags.DEFINE_list("sizes", ["512x1024", "1024x2048"], "Image sizes, HEIGHTxWIDTH.")
flags.DEFINE_list("textures", ["flat", "photo"], "flat: synthetic scenes as they are; photo: noise added to images.")
flags.DEFINE_integer("samples", 24, "Training samples per dataset.")
flags.DEFINE_integer("num_shards", 4, "TFRecord shards per dataset.")
flags.DEFINE_integer("passes", 2, "Timed passes over the dataset (after one warm-up pass).")
flags.DEFINE_integer("repeats", 2, "Measurements of each format, alternating which goes first (a shared machine).")
flags.DEFINE_string(
    "workdir", "/tmp/input_pipeline_bench", "Where the datasets and shards are written (removed after)."
)
flags.DEFINE_string("out", "benchmarks/input_pipeline_cpu.json", "The JSON results.")
FLAGS = flags.FLAGS

RESULTS_CPU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_cpu.json")


def add_photo_noise(root: str, seed: int = 0, sigma: float = 12.0) -> None:
    """Adds Gaussian noise to every real image of `root`, so PNGs are as costly to decode as photos."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "train_img")
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        image = np.asarray(Image.open(path), np.float32)
        noisy = np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path)


def bytes_per_sample(root: str) -> float:
    total = sum(
        os.path.getsize(os.path.join(root, d, f))
        for d in ("train_label", "train_inst", "train_img")
        for f in os.listdir(os.path.join(root, d))
    )
    return total / len(os.listdir(os.path.join(root, "train_label")))


def read_rate(opts: Options, samples: int, passes: int) -> dict[str, Any]:
    """Steady samples/s of the training pipeline of `opts` (repeated): `passes` x `samples` samples timed
    after one untimed pass (file cache, tf.data threads and traced functions warm)."""
    batches = iter(build_dataset(opts, seed=0, repeat=True))
    for _ in range(samples // opts.batchSize):
        next(batches)
    start, count = time.perf_counter(), 0
    for _ in range(passes * samples // opts.batchSize):
        count += int(next(batches)["label"].shape[0])
    seconds = time.perf_counter() - start
    return {"samples": count, "seconds": round(seconds, 3), "samples_per_s": round(count / seconds, 2)}


def train_step_rates() -> list[dict[str, Any]]:
    """The measured G1 training iterations (no VGG, no XLA, batch 1) from benchmarks/results_cpu.json."""
    try:
        with open(RESULTS_CPU) as f:
            records = json.load(f).get("records", [])
    except (OSError, ValueError):
        return []
    keep = []
    for r in records:
        wanted = r.get("suite") == "train" and r.get("framework") == "keras" and r.get("net") == "global"
        if (
            wanted
            and not r.get("vgg")
            and not r.get("xla")
            and r.get("batch") == 1
            and r.get("precision", "fp32") == "fp32"
        ):
            keep.append(
                {k: r.get(k) for k in ("net", "size", "s_per_iter", "images_per_s", "load_before", "load_after")}
            )
    return keep


def main(argv: list[str]) -> None:
    del argv
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores (shared)",
        "load_before": load_average(),
        "settings": {k: FLAGS[k].value for k in ("sizes", "textures", "samples", "num_shards", "passes", "repeats")},
        "records": [],
    }
    os.makedirs(FLAGS.workdir, exist_ok=True)
    for size in FLAGS.sizes:
        h, w = parse_size(size)
        for texture in FLAGS.textures:
            root = os.path.join(FLAGS.workdir, f"{size}_{texture}")
            shutil.rmtree(root, ignore_errors=True)
            write_synthetic_dataset(root, n_train=FLAGS.samples, n_test=1, height=h, width=w, seed=0, progress=False)
            if texture == "photo":
                add_photo_noise(root)
            opts = Options(
                dataroot=root, label_nc=9, batchSize=1, loadSize=w, fineSize=w, resize_or_crop="none", nThreads=0
            )
            start = time.perf_counter()
            shards = os.path.join(root, "shards", "train-*.tfrecord")
            tfrecords.write_tfrecords(DatasetLayout.of(opts), phase="train", output=shards, num_shards=FLAGS.num_shards)
            pack_s = time.perf_counter() - start
            formats = [("png folder", root), ("tfrecord", shards)]
            runs = [(r, fmt) for r in range(FLAGS.repeats) for fmt in (formats if r % 2 == 0 else formats[::-1])]
            for repeat, (fmt, dataroot) in runs:
                rate = read_rate(opts.replace(dataroot=dataroot), FLAGS.samples, FLAGS.passes)
                record = {
                    "size": size,
                    "texture": texture,
                    "format": fmt,
                    "repeat": repeat,
                    "bytes_per_sample": round(bytes_per_sample(root)),
                    "pack_s_per_sample": round(pack_s / FLAGS.samples, 3),
                    **rate,
                    "load": load_average(),
                }
                print(json.dumps(record))
                results["records"].append(record)
            shutil.rmtree(root, ignore_errors=True)
    results["load_after"] = load_average()
    results["peak_rss_mb"] = peak_rss_mb()
    results["train_step"] = train_step_rates()
    with open(FLAGS.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {FLAGS.out}; peak RSS {results['peak_rss_mb']} MiB")


if __name__ == "__main__":
    app.run(main)
