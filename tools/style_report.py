"""Does k-means of the encoder's features recover the synthetic dataset's car paints? (issue "Styles and inference")

    python tools/train.py --flagfile=configs/local.cfg
    python tools/encode_features.py --flagfile=configs/local.cfg
    python tools/style_report.py --flagfile=configs/local.cfg

Assigns every training car to its nearest cluster, compares with the ground-truth paint in
{dataroot}/meta.json (purity, NMI, paints found vs present), and renders a strip of one test scene with
every car cluster (`variants.png`). Writes report.json and variants.png to --report_dir (default
{results_dir}/{name}/style_report).
"""

import os

from absl import app, flags

from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.inference import style_report

define_flags()
flags.DEFINE_string("meta", "", "The synthetic dataset's meta.json (default {dataroot}/meta.json).")
flags.DEFINE_integer("class_id", 8, "The class to study (8 = car in the synthetic dataset).")
flags.DEFINE_integer("sample_seed", 0, "Seed for the styles of the other regions in the strip.")
flags.DEFINE_string("report_dir", "", "Output folder (default {results_dir}/{name}/style_report).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    opts = options_from_flags()
    cluster_file = FLAGS.cluster_path if FLAGS["cluster_path"].present else None
    report = style_report(
        opts,
        FLAGS.meta or os.path.join(opts.dataroot, "meta.json"),
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
    app.run(main)
