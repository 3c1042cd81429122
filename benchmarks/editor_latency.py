"""How long the editor takes to show the image after an edit (the number in benchmarks/editor_latency.md).

    python -m benchmarks.editor_latency --flagfile=configs/local.cfg --runs=30    # 256x512
    python -m benchmarks.editor_latency --flagfile=configs/cityscapes_512p.cfg --height=512 --width=1024

The networks of the config are built with random weights (latency does not depend on training), with a
random cluster bank of the config's n_clusters per class, behind the real web app (`create_app`, FastAPI's
in-process TestClient: no sockets, everything else as served). One run is one round trip of the page:
POST an edit, then GET the regenerated image.png (the generator runs, the PNG is encoded). Edits cycle
through a brush stroke, a restyle, an added object and an undo on a synthetic 256x512 street scene; only
edits that changed the scene are timed (an unchanged scene is served from the cache).
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
import warnings
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks.harness import cpu_model
from pix2pixhd_tf.flags import define_flags, options_from_flagfile, options_from_flags
from pix2pixhd_tf.options import Options

__all__ = ["measure_edit_latency"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FLAGFILE = os.path.join(REPO_ROOT, "configs", "local.cfg")


def measure_edit_latency(
    opts: Options | None = None, *, height: int = 256, width: int = 512, runs: int = 20, warmup: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Median (and more) seconds from POSTing an edit to having the regenerated PNG, over `runs` edits.

    Args:
        opts: the model's options (default: configs/local.cfg).
        height, width: the scene size (multiples of the generator's size multiple).

    Returns:
        {'median_s', 'mean_s', 'min_s', 'max_s', 'generate_median_s' (the backend alone, within the same
        requests, from the app's X-Generate-Ms header), 'runs', 'height',
        'width', 'config', 'nproc', 'cpu', 'load_before', 'cpu_share' (this process's CPU time over wall time x
        cores while timing: near 1 on an otherwise idle machine), 'date'}.
    """
    import keras

    from pix2pixhd_tf import networks
    from pix2pixhd_tf.data.classes import SYNTHETIC
    from pix2pixhd_tf.data.synthetic import CAR, ROAD, SIDEWALK, generate_scene
    from pix2pixhd_tf.editor.app import create_app
    from pix2pixhd_tf.editor.backends import CheckpointBackend
    from pix2pixhd_tf.editor.scene import encode_id_png
    from pix2pixhd_tf.inference import Synthesizer
    from pix2pixhd_tf.styles import ClusterBank

    with warnings.catch_warnings():  # Starlette >= 1.0 asks for httpx2 instead of httpx; both work
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    opts = opts or options_from_flagfile(DEFAULT_FLAGFILE)
    keras.utils.set_random_seed(seed)
    generator, encoder = networks.build_generator(opts), networks.build_encoder(opts)
    rng = np.random.default_rng(seed)
    k = max(1, opts.n_clusters)
    bank = ClusterBank(rng.uniform(-1, 1, (opts.label_nc, k, opts.feat_num)), np.full(opts.label_nc, k))
    backend = CheckpointBackend(Synthesizer(opts, generator, encoder, bank if opts.use_features else None))
    classes = SYNTHETIC if opts.label_nc == SYNTHETIC.label_nc else None  # the scenes are synthetic ones
    client = TestClient(create_app(backend, classes=classes))

    scene = generate_scene(seed, height, width)
    files = {
        "label": ("label.png", encode_id_png(scene.label, sixteen_bit=False), "image/png"),
        "instance": ("instance.png", encode_id_png(scene.instance, sixteen_bit=True), "image/png"),
    }
    response = client.post("/api/sessions/upload", files=files)
    response.raise_for_status()
    state = response.json()
    sid = state["session"]
    cars = [r["id"] for r in state["regions"] if r["class_id"] == CAR] or [None]

    styles: dict[int, int] = {}
    revision = [state["revision"]]
    generate_ms: list[float] = []

    def edit(i: int) -> bool:
        """One edit (brush stroke, restyle, new object or undo) and the image after it; whether it changed."""
        x, y = float(rng.uniform(20, width - 50)), float(rng.uniform(height / 2, height - 20))
        kind = i % 4
        if kind == 1 and cars[0] is not None and opts.use_features:
            car = cars[i % len(cars)]
            styles[car] = (styles.get(car, -1) + 1) % k
            body = {"op": "restyle", "region": car, "style": styles[car]}
        elif kind == 2:
            body = {"op": "add_object", "points": [[x, y], [x + 20, y]], "class_id": CAR, "radius": 8}
        elif kind == 3:
            body = None
        else:
            body = {
                "op": "paint",
                "points": [[x, y], [x + 30, y + 5]],
                "class_id": [ROAD, SIDEWALK][i % 2],
                "radius": 6,
            }
        if body is None:
            response = client.post(f"/api/sessions/{sid}/undo")
        else:
            response = client.post(f"/api/sessions/{sid}/edit", json=body)
        response.raise_for_status()
        image = client.get(f"/api/sessions/{sid}/image.png")
        image.raise_for_status()
        changed = response.json()["revision"] != revision[0]
        revision[0] = response.json()["revision"]
        if changed:
            generate_ms.append(float(image.headers["X-Generate-Ms"]))
        return changed

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for i in range(warmup):
        edit(i)
    generate_ms.clear()
    times: list[float] = []
    i = warmup
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while len(times) < runs and i < warmup + 4 * runs:
        start = time.perf_counter()
        if edit(i):  # only edits that changed the scene count (an unchanged scene serves the cached image)
            times.append(time.perf_counter() - start)
        i += 1
    # This process's share of the machine while timing: near 1 when it had every core (no contention).
    cpu_share = (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * (os.cpu_count() or 1))
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "generate_median_s": statistics.median(generate_ms) / 1000.0,
        "runs": runs,
        "height": height,
        "width": width,
        "config": f"netG={opts.netG} ngf={opts.ngf} n_downsample_global={opts.n_downsample_global} "
        f"n_blocks_global={opts.n_blocks_global} label_nc={opts.label_nc} feat_num={opts.feat_num if opts.use_features else 0}",
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "load_before": load_before,
        "cpu_share": cpu_share,
        "date": datetime.date.today().isoformat(),
    }


def _define_flags() -> None:
    define_flags()  # the experiment's flags (networks, classes), e.g. from --flagfile=configs/local.cfg
    flags.DEFINE_integer("height", 256, "Scene height.")
    flags.DEFINE_integer("width", 512, "Scene width.")
    flags.DEFINE_integer("runs", 20, "Timed edits.")


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    result = measure_edit_latency(options_from_flags(), height=FLAGS.height, width=FLAGS.width, runs=FLAGS.runs)
    print(
        f"| {result['date']} | {result['height']}x{result['width']} | {result['median_s'] * 1000:.0f} ms | "
        f"{result['mean_s'] * 1000:.0f} / {result['min_s'] * 1000:.0f} / {result['max_s'] * 1000:.0f} ms | "
        f"{result['generate_median_s'] * 1000:.0f} ms | {result['runs']} | {result['nproc']} x {result['cpu']} | "
        f"{result['load_before']:.2f} | {result['cpu_share']:.2f} |"
    )
    print(result)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
