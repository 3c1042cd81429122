"""Does k-means of the encoder's features recover the synthetic dataset's car paints? (issue "Styles and inference")

    python tools/train.py --flagfile=configs/local.cfg
    python tools/encode_features.py --flagfile=configs/local.cfg
    python -m benchmarks.style_report --flagfile=configs/local.cfg

Assigns every training car to its nearest cluster, compares with the ground-truth paint in
{dataroot}/meta.json (purity, NMI, paints found vs present), and renders a strip of one test scene with
every car cluster (`variants.png`). Writes report.json and variants.png to --report_dir (default
{results_dir}/{name}/style_report).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from pix2pixhd_tf import visualize
from pix2pixhd_tf.data.classes import META_FILE, ClassTable
from pix2pixhd_tf.data.dataset import build_dataset
from pix2pixhd_tf.data.synthetic import read_synthetic_meta
from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.inference import Synthesizer
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles import classes_of
from pix2pixhd_tf.styles.encoding import collect_instance_features


def cluster_purity(assignments: Sequence[int], modes: Sequence[int]) -> float:
    """Fraction of instances whose cluster's majority ground-truth mode is their own mode (1 = pure)."""
    assignments, modes = np.asarray(assignments), np.asarray(modes)
    if assignments.shape != modes.shape or assignments.ndim != 1:
        raise ValueError(f"assignments {assignments.shape} and modes {modes.shape} must be equal 1-D arrays")
    if not len(modes):
        return float("nan")
    correct = sum(np.bincount(modes[assignments == k]).max() for k in np.unique(assignments))
    return float(correct / len(modes))


@dataclasses.dataclass
class ModeRecovery:
    """How well clusters recover known appearance modes (e.g. the synthetic car paints)."""

    n_instances: int
    purity: float  # cluster -> majority mode accuracy
    nmi: float  # normalised mutual information between clusters and modes
    modes_present: list[int]  # ground-truth modes among the instances
    modes_found: list[int]  # modes that are the majority of at least one cluster
    clusters: list[dict[str, Any]]  # per cluster: index, size, mode, mode_name, fraction
    mode_names: list[str]

    def summary(self) -> str:
        def name(m: int) -> str:
            return self.mode_names[m] if m < len(self.mode_names) else str(m)

        missing = sorted(set(self.modes_present) - set(self.modes_found))
        scores = f"purity {self.purity:.3f}, NMI {self.nmi:.3f}"
        lines = [
            f"{self.n_instances} instances, {len(self.clusters)} clusters: {scores}",
            f"modes found {len(self.modes_found)} of {len(self.modes_present)} present: "
            f"{', '.join(name(m) for m in self.modes_found)}"
            + (f" (missing: {', '.join(name(m) for m in missing)})" if missing else ""),
        ]
        lines += [
            f"  cluster {c['cluster']}: {c['size']} instances, {c['fraction']:.0%} {c['mode_name']}"
            for c in self.clusters
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mode_recovery(assignments: Sequence[int], modes: Sequence[int], mode_names: Sequence[str] = ()) -> ModeRecovery:
    """Compare cluster assignments with ground-truth modes: purity, NMI, and which modes clusters found."""
    from sklearn.metrics import normalized_mutual_info_score  # here: scikit-learn takes seconds to import

    assignments, modes = np.asarray(assignments, int), np.asarray(modes, int)
    purity = cluster_purity(assignments, modes)
    clusters = []
    for k in np.unique(assignments):
        counts = np.bincount(modes[assignments == k])
        mode = int(counts.argmax())
        clusters.append(
            {
                "cluster": int(k),
                "size": int(counts.sum()),
                "mode": mode,
                "mode_name": mode_names[mode] if mode < len(mode_names) else str(mode),
                "fraction": float(counts.max() / counts.sum()),
            }
        )
    return ModeRecovery(
        n_instances=len(modes),
        purity=purity,
        nmi=float(normalized_mutual_info_score(modes, assignments)) if len(modes) else float("nan"),
        modes_present=sorted(set(modes.tolist())),
        modes_found=sorted({c["mode"] for c in clusters}),
        clusters=clusters,
        mode_names=list(mode_names),
    )



def _scene_modes(meta: dict[str, Any], phase: str) -> dict[str, dict[int, int]]:
    scenes = meta.get("scenes", {}).get(phase)
    if scenes is None:
        raise ValueError(f"meta.json has no scenes for phase {phase!r}: is it the synthetic dataset's meta.json?")
    return {s["name"]: {int(i["id"]): int(i["mode"]) for i in s["instances"]} for s in scenes}


def _nearest_mode(colour: np.ndarray, mode_rgbs: np.ndarray) -> int:
    return int(((mode_rgbs - colour[None]) ** 2).sum(-1).argmin())


def style_report(
    opts: Options,
    meta: dict[str, Any] | str,
    *,
    class_id: int = 8,
    which_epoch: str | None = None,
    cluster_file: str | None = None,
    output_dir: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Do the clusters of a trained feature model recover the synthetic dataset's appearance modes?

    1. E encodes the training scenes; every kept instance of `class_id` (default 8, car) is assigned to the
       nearest centre of the cluster bank and compared with its ground-truth mode from meta.json
       (`styles.mode_recovery`: purity, NMI, modes found vs present).
    2. On the test scene with the most `class_id` pixels, G renders one variant per cluster (all instances
       of the class get that centre; everything else one fixed sample): `variants.png`, a strip of
       label | real | cluster 0 | cluster 1 | ...; the median colour of the class's pixels in each variant
       is matched to the nearest mode colour ("rendered modes": does G actually paint what E encodes?).

    Writes `report.json` and `variants.png` to `output_dir` (default `{results_dir}/{name}/style_report`).

    Args:
        opts: the trained feature experiment's flags (e.g. configs/local.cfg).
        meta: the dataset's meta.json (path or loaded dict).
        class_id: the class to study.

    Returns:
        The report (also in report.json).
    """
    if isinstance(meta, str):
        meta = read_synthetic_meta(meta)
    class_names = meta.get("class_names", [])
    class_name = class_names[class_id] if class_id < len(class_names) else str(class_id)
    mode_list = meta.get("modes", {}).get(class_name, [])
    mode_names = [m["name"] for m in mode_list]
    mode_rgbs = np.array([m["rgb"] for m in mode_list], np.float32).reshape(-1, 3)

    synth = Synthesizer.from_checkpoint(opts, which_epoch=which_epoch, cluster_file=cluster_file)
    if synth.clusters is None:
        raise FileNotFoundError(f"no cluster bank at {synth.cluster_file}: run tools/encode_features.py first")
    if synth.clusters.counts[class_id] == 0:
        raise ValueError(f"class {class_id} ({class_name}) has no clusters in {synth.cluster_file}")

    # 1. Clusters vs ground-truth modes on the training scenes.
    features = collect_instance_features(opts, synth.encoder, phase="train", progress=progress)
    truth = _scene_modes(meta, "train")
    rows = np.flatnonzero(features.kept & (features.classes == class_id))
    modes = []
    for r in rows:
        scene = os.path.basename(features.paths[features.image_index[r]])
        instance_id = int(features.region_ids[r])
        if scene not in truth or instance_id not in truth[scene]:
            raise ValueError(
                f"meta.json does not describe instance {instance_id} of {scene}: is --dataroot the synthetic "
                "dataset this meta.json belongs to?"
            )
        modes.append(truth[scene][instance_id])
    assignments = synth.clusters.assign(class_id, features.features[rows]) if len(rows) else np.zeros(0, int)
    recovery = mode_recovery(assignments, np.asarray(modes, int), mode_names)

    # 2. The variant strip on the test scene with most pixels of the class.
    test_opts = opts.replace(batchSize=1, serial_batches=True, no_flip=True, load_features=False)
    best, best_pixels = None, 0
    for batch in build_dataset(test_opts, phase="test", training=False, with_paths=True):
        regions = synth.regions(batch["label"].numpy(), batch["instance"].numpy() if "instance" in batch else None)
        pixels = int((classes_of(regions) == class_id).sum())
        if pixels > best_pixels:
            best, best_pixels = batch, pixels
    if best is None:
        raise ValueError(f"no test scene contains class {class_id} ({class_name})")
    label = best["label"].numpy()
    instance = best["instance"].numpy() if "instance" in best else None
    variants, mask = synth.class_variants(label, instance, class_id, seed=seed)
    rendered = []
    for k, image in enumerate(variants):
        colour = np.median(image[mask].reshape(-1, image.shape[-1])[:, :3].astype(np.float32), axis=0)
        mode = _nearest_mode(colour, mode_rgbs) if len(mode_rgbs) else -1
        rendered.append(
            {
                "cluster": k,
                "median_rgb": colour.round().astype(int).tolist(),
                "nearest_mode": mode,
                "nearest_mode_name": mode_names[mode] if mode >= 0 else "",
            }
        )
    cells = [visualize.input_visual(label[0], ClassTable.for_dataset(opts.dataroot, opts.label_nc).palette)]
    if "image" in best:
        cells.append(visualize.tensor_to_uint8(best["image"][0]))
    strip = visualize.image_grid([cells + variants])

    output_dir = output_dir or os.path.join(opts.results_dir, opts.name, "style_report")
    strip_path = os.path.join(output_dir, "variants.png")
    visualize.save_image(strip_path, strip)
    report = {
        "class_id": class_id,
        "class_name": class_name,
        "clusters": int(synth.clusters.counts[class_id]),
        "cluster_file": synth.cluster_file,
        "recovery": recovery.to_dict(),
        "modes_present": len(recovery.modes_present),
        "modes_found": len(recovery.modes_found),
        "purity": recovery.purity,
        "strip_scene": os.path.basename(best["path"][0].numpy().decode()),
        "rendered": rendered,
        "modes_rendered": len({r["nearest_mode"] for r in rendered}),
        "variants_png": strip_path,
        "summary": recovery.summary(),
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command's flags, defined only when it runs: importing the module (tests do) leaves flags alone, so
    tools that define the same names (tools/test.py's --sample_seed) can be run in the same process."""
    define_flags()
    flags.DEFINE_string("meta", "", "The synthetic dataset's meta.json (default {dataroot}/meta.json).")
    flags.DEFINE_integer("class_id", 8, "The class to study (8 = car in the synthetic dataset).")
    flags.DEFINE_integer("sample_seed", 0, "Seed for the styles of the other regions in the strip.")
    flags.DEFINE_string("report_dir", "", "Output folder (default {results_dir}/{name}/style_report).")


def main(argv):
    del argv
    opts = options_from_flags()
    cluster_file = FLAGS.cluster_path if FLAGS["cluster_path"].present else None
    report = style_report(
        opts,
        FLAGS.meta or os.path.join(opts.dataroot, META_FILE),
        class_id=FLAGS.class_id,
        cluster_file=cluster_file,
        output_dir=FLAGS.report_dir or None,
        seed=FLAGS.sample_seed,
    )
    print(report["summary"])
    rendered = ", ".join(r["nearest_mode_name"] for r in report["rendered"])
    print(f"rendered clusters look like: {rendered} ({report['modes_rendered']} distinct)")
    print(f"strip: {report['variants_png']}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
