"""Encode the training set with the trained feature encoder and cluster the features per class (paper §3.4).

    python tools/encode_features.py --flagfile=configs/local.cfg

Writes `{checkpoints_dir}/{name}/clusters.npz` (or --clusters_out), which tools/test.py, the editor and
the exporter sample styles from. Instances larger than h*w/64 pixels are clustered by k-means per class,
--n_clusters per class at most (`pix2pixhd_tf/styles/encoding.py`; the file format is in `styles/bank.py`).
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.styles import default_cluster_file
from pix2pixhd_tf.styles.encoding import encode_features

define_flags()
flags.DEFINE_string(
    "clusters_out", "", "Where to write the cluster bank (default {checkpoints_dir}/{name}/clusters.npz)."
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    opts = options_from_flags()
    bank = encode_features(opts)
    path = bank.save(FLAGS.clusters_out or default_cluster_file(opts))
    print(f"{bank.describe()}\nsaved to {path}")


if __name__ == "__main__":
    cli.run(main)
