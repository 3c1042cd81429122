"""Pack a dataset in the official folder layout into sharded TFRecords for training on shared storage.

    python tools/make_tfrecords.py --flagfile=configs/cityscapes_512p.cfg --dataroot=datasets/cityscapes \
        --output=gs://bucket/cityscapes/train-*.tfrecord --num_shards=16

Then train with --dataroot=gs://bucket/cityscapes/train-*.tfrecord (or the folder of the shards) and the
same flags. Every sample is checked (and decoded) first, as the folder loader checks it: a bad file fails
here, named. Each shard gets a small index beside it (`{shard}.index.json`); existing shards are kept
unless --overwrite. The format, and why records are read by index: `pix2pixhd_tf/data/tfrecords.py`.
"""

import sys

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.data.files import DatasetLayout
from pix2pixhd_tf.data.tfrecords import write_tfrecords
from pix2pixhd_tf.flags import define_flags, options_from_flags

define_flags()
flags.DEFINE_string("output", None, "Shard paths with one '*' for the shard number, or a folder ({phase}-*.tfrecord).")
flags.DEFINE_integer("num_shards", 8, "Number of shards; a multiple of the number of training workers.")
flags.DEFINE_bool("overwrite", False, "Replace existing shards that match --output.")
flags.mark_flag_as_required("output")
FLAGS = flags.FLAGS


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 100) == 0:
        sys.stdout.write(f"\rpacked {done}/{total} samples")
        sys.stdout.write("\n" if done == total else "")
        sys.stdout.flush()


def main(argv: list[str]) -> None:
    del argv
    opts = options_from_flags()
    paths = write_tfrecords(
        DatasetLayout.of(opts),
        phase=opts.phase,
        output=FLAGS.output,
        num_shards=FLAGS.num_shards,
        overwrite=FLAGS.overwrite,
        progress=_progress,
    )
    print(f"wrote {len(paths)} shards: {paths[0]} ... {paths[-1]}")


if __name__ == "__main__":
    cli.run(main)
