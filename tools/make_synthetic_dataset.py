"""Write the built-in synthetic street-scene dataset in the pix2pixHD layout.

Example:
  python tools/make_synthetic_dataset.py --dataroot=datasets/synthetic \
      --n_train=200 --n_test=20 --height=256 --width=512 --seed=0

Creates {dataroot}/{train,test}_{label,inst,img}/scene_NNNNN.png and {dataroot}/meta.json (classes,
palette, appearance modes and the ground-truth mode of every instance). Existing scene files there
are replaced.
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.data.synthetic import write_synthetic_dataset

flags.DEFINE_string("dataroot", "./datasets/synthetic", "Where to write the dataset.")
flags.DEFINE_integer("n_train", 200, "Number of training scenes.")
flags.DEFINE_integer("n_test", 20, "Number of test scenes.")
flags.DEFINE_integer("height", 256, "Scene height in pixels.")
flags.DEFINE_integer("width", 512, "Scene width in pixels.")
flags.DEFINE_integer("seed", 0, "Dataset seed; scene i of a phase depends only on (seed, phase, i).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    meta = write_synthetic_dataset(
        FLAGS.dataroot,
        n_train=FLAGS.n_train,
        n_test=FLAGS.n_test,
        height=FLAGS.height,
        width=FLAGS.width,
        seed=FLAGS.seed,
    )
    print(f"wrote {meta['counts']} scenes of {meta['height']}x{meta['width']} to {FLAGS.dataroot}")


if __name__ == "__main__":
    cli.run(main)
