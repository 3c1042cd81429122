"""Train pix2pixHD.

    python tools/train.py --flagfile=configs/local.cfg
    python tools/train.py --flagfile=configs/cityscapes_512p.cfg --dataroot=/data/cityscapes --strategy=mirrored

Flags keep the official pix2pixHD names (see `pix2pixhd_tf/options.py` or `--helpfull`); checkpoints,
TensorBoard logs (`logs/`), `loss_log.txt` and per-epoch samples go to checkpoints_dir/name. Ctrl-C or
SIGTERM saves a checkpoint first; `--continue_train` picks up exactly where it stopped.
"""

from absl import app

from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.training.trainer import finish_message, train

define_flags()


def main(argv):
    del argv
    opts = options_from_flags()
    print(finish_message(opts, train(opts)))


if __name__ == "__main__":
    app.run(main)
