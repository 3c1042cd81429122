"""Write the trained encoder's instance-pooled feature maps to {dataroot}/{phase}_feat, for --load_features.

    python tools/precompute_feature_maps.py --flagfile=configs/local.cfg
    python tools/precompute_feature_maps.py --flagfile=... --feat_format=png   # the official 8-bit RGB maps

Each `{phase}_label/NAME.png` gets `{phase}_feat/NAME.npy` (float32 [H, W, feat_num], the default) or
`NAME.png` ((feat + 1) / 2 * 255, feat_num 3), at the label map's size; data/dataset.py reads both. Then
train with --load_features (e.g. a local generator on top of the global model's features).
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.styles.encoding import precompute_feature_maps

define_flags()
flags.DEFINE_enum("feat_format", "npy", ["npy", "png"], "npy: exact float32 maps; png: the official 8-bit format.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    opts = options_from_flags()
    written = precompute_feature_maps(opts, phase=opts.phase, feat_format=FLAGS.feat_format)
    print(f"wrote {len(written)} feature maps to {opts.dataroot}/{opts.phase}_feat")


if __name__ == "__main__":
    cli.run(main)
