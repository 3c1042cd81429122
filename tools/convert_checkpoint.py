"""Convert official pix2pixHD (PyTorch) checkpoints into this project's networks.

Pass the same flags the official model was trained with (same names and meanings), plus the folder
that holds its `.pth` files:

  python tools/convert_checkpoint.py --name label2city_1024p --netG local --ngf 32 \
      --torch_checkpoint_dir ./pix2pixHD/checkpoints/label2city_1024p --checkpoints_dir ./checkpoints

Reads `{which_epoch}_net_G.pth` and, where present, `_net_D.pth` and `_net_E.pth`; with
`--clusters_file`, also the official `features_clustered_010.npy` for feature sampling at test time.
Needs PyTorch: `pip install -e .[convert]`.
"""

from __future__ import annotations

from absl import app, flags, logging

from pix2pixhd_tf.convert import convert_checkpoint, load_official_clusters, save_converted
from pix2pixhd_tf.flags import define_flags, options_from_flags

define_flags()
flags.DEFINE_string(
    "torch_checkpoint_dir", None, "Folder with the official {which_epoch}_net_G.pth (and _net_D.pth, _net_E.pth)."
)
flags.DEFINE_string(
    "clusters_file",
    None,
    "Optional official features_clustered_*.npy (label -> k-means centres) to convert too. It is a pickle: "
    "pass only files you trust.",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.torch_checkpoint_dir:
        raise app.UsageError("--torch_checkpoint_dir is required: the folder with the official .pth files.")
    opts = options_from_flags()
    clusters = load_official_clusters(FLAGS.clusters_file, feat_num=opts.feat_num) if FLAGS.clusters_file else None
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
    app.run(main)
