"""Trains the compact segmentation network on a data set's real images, for the segmentation score.

Example (the built-in synthetic scenes, a few minutes on a CPU):

  python tools/train_segmenter.py --dataroot=datasets/synthetic --label_nc=9 --epochs=10 \
      --output=checkpoints/segmenter

--output ending in .keras saves a Keras file, anything else a SavedModel directory; both are accepted by
tools/evaluate.py --segmenter. See pix2pixhd_tf/evaluation/segmenter.py.
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.evaluation import segmenter
from pix2pixhd_tf.flags import parse_size

flags.DEFINE_string("dataroot", "./datasets/cityscapes/", "Data set root ({phase}_label, {phase}_img).")
flags.DEFINE_string("phase", "train", "Split to train on.")
flags.DEFINE_integer("label_nc", 35, "Number of label classes; ids >= label_nc (e.g. 255) are ignored.")
flags.DEFINE_integer("epochs", 10, "Passes over the training images.")
flags.DEFINE_integer("batchSize", 8, "Batch size.")
flags.DEFINE_float("lr", 2e-3, "Initial Adam learning rate (cosine decay to 0).")
flags.DEFINE_string("image_size", "", "HEIGHTxWIDTH to resize to ('' = as the files are; they must agree).")
flags.DEFINE_integer("base_filters", 16, "Filters of the first level, doubled per level.")
flags.DEFINE_integer("depth", 3, "Downsampling steps.")
flags.DEFINE_integer("seed", 0, "Seed of weights and shuffling.")
flags.DEFINE_string("output", "./checkpoints/segmenter", "SavedModel directory, or a .keras file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    segmenter.train_segmenter(
        FLAGS.dataroot,
        num_classes=FLAGS.label_nc,
        phase=FLAGS.phase,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batchSize,
        learning_rate=FLAGS.lr,
        image_size=parse_size(FLAGS.image_size) if FLAGS.image_size else None,
        base_filters=FLAGS.base_filters,
        depth=FLAGS.depth,
        seed=FLAGS.seed,
        output=FLAGS.output,
    )


if __name__ == "__main__":
    cli.run(main)
