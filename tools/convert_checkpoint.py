"""Convert official pix2pixHD (PyTorch) checkpoints into this project's networks.

Pass the same flags the official model was trained with (same names and meanings), plus the folder
that holds its `.pth` files:

  python tools/convert_checkpoint.py --name label2city_1024p --netG local --ngf 32 \
      --torch_checkpoint_dir ./pix2pixHD/checkpoints/label2city_1024p --checkpoints_dir ./checkpoints

Reads `{which_epoch}_net_G.pth` and, where present, `_net_D.pth` and `_net_E.pth`; with
`--clusters_file --allow_pickle`, also the official `features_clustered_010.npy` for feature sampling at
test time (a pickle: unpickling runs code, so it is read only with --allow_pickle). Needs PyTorch:
`pip install -e .[convert]`.

Only the cluster file, once, into a pickle-free bank (no PyTorch needed; then use it without --allow_pickle):

  python tools/convert_checkpoint.py --clusters_file=features_clustered_010.npy --allow_pickle \
      --name label2city_1024p --checkpoints_dir ./checkpoints   # or --clusters_out=clusters.npz
"""

from __future__ import annotations

from absl import app, flags, logging

from pix2pixhd_tf import cli
from pix2pixhd_tf.convert import convert_checkpoint, convert_clusters, load_official_clusters, save_converted
from pix2pixhd_tf.flags import define_flags, options_from_flags

define_flags()
flags.DEFINE_string(
    "torch_checkpoint_dir", None, "Folder with the official {which_epoch}_net_G.pth (and _net_D.pth, _net_E.pth)."
)
flags.DEFINE_string(
    "clusters_file",
    None,
    "Optional official features_clustered_*.npy (label -> k-means centres) to convert too. It is a pickle: "
    "read only with --allow_pickle; pass only files you trust.",
)
flags.DEFINE_string(
    "clusters_out",
    "",
    "Without --torch_checkpoint_dir: where to write the clusters.npz (default beside the checkpoint).",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    opts = options_from_flags()
    if not FLAGS.torch_checkpoint_dir and FLAGS.clusters_file:
        print(f"Wrote {convert_clusters(opts, FLAGS.clusters_file, FLAGS.clusters_out or None)}")
        return
    if not FLAGS.torch_checkpoint_dir:
        raise app.UsageError(
            "--torch_checkpoint_dir is required: the folder with the official .pth files "
            "(or --clusters_file alone, to convert only a cluster file)."
        )
    clusters = None
    if FLAGS.clusters_file:
        clusters = load_official_clusters(FLAGS.clusters_file, feat_num=opts.feat_num, allow_pickle=opts.allow_pickle)
    G, D, E = convert_checkpoint(opts, FLAGS.torch_checkpoint_dir)
    logging.info(
        "Converted G (%s)%s%s%s.",
        type(G).__name__,
        ", D" if D is not None else "",
        ", E" if E is not None else "",
        f", clusters for {len(clusters)} labels" if clusters is not None else "",
    )
    print(f"Wrote {save_converted(opts, G, D, E, clusters)}")


if __name__ == "__main__":
    cli.run(main)
