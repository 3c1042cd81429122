"""Train pix2pixHD.

    python tools/train.py --flagfile=configs/local.cfg
    python tools/train.py --flagfile=configs/cityscapes_512p.cfg --dataroot=/data/cityscapes --strategy=mirrored

Flags keep the official pix2pixHD names (see `pix2pixhd_tf/options.py` or `--helpfull`); checkpoints,
TensorBoard logs (`logs/`), `loss_log.txt` and per-epoch samples go to checkpoints_dir/name. Ctrl-C or
SIGTERM saves a checkpoint first; `--continue_train` picks up exactly where it stopped. Under
`--strategy=multi_worker` a SIGTERM to any worker stops all of them after the same step with one checkpoint,
and they exit with status 42 ("restart me with --continue_train"; docs/MULTI_HOST.md).

Nothing is lost by accident: a run over an existing experiment is refused (continue it with
`--continue_train`, or start afresh with another `--name` or `--overwrite_experiment`, which moves the old one
aside); a file the input pipeline cannot read stops training only after a checkpoint is saved, naming the
file. `--check_data` decodes the whole dataset before training, to find every bad file up front.
"""

import shlex
import sys

from pix2pixhd_tf import cli
from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.training.distribute import exit_status
from pix2pixhd_tf.training.trainer import finish_message, train

define_flags()


def main(argv):
    del argv
    opts = options_from_flags()
    command = shlex.join(["python", *sys.argv])
    result = train(opts, command=command)
    print(finish_message(opts, result))
    return exit_status(opts, result.interrupted)


if __name__ == "__main__":
    cli.run(main)
