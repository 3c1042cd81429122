"""Synthesise images for a folder of label (+ instance) maps, as the official test.py.

    python tools/test.py --flagfile=configs/local.cfg --phase=test --how_many=20
    python tools/test.py --flagfile=configs/local.cfg --style_spec=red_cars.json --sample_seed=3
    python tools/test.py --flagfile=configs/local.cfg --use_encoded_image

--phase defaults to test. Pass the flags the experiment was trained with (they are checked against
its options.json). Writes
`{results_dir}/{name}/{phase}_{which_epoch}/images/NAME_{input_label,synthesized_image,real_image}.png`
and an `index.html` there. Feature models (--instance_feat / --label_feat) sample one cluster per instance
from `{checkpoints_dir}/{name}/clusters.npz` (made by tools/encode_features.py; an official
features_clustered_010.npy, a pickle, is read only with --cluster_path=it --allow_pickle), or encode the real image with
--use_encoded_image; --style_spec (JSON) picks clusters or feature vectors per instance or class:

    {"instances": {"8001": 2, "8002": [0.1, -0.3, 0.5]}, "classes": {"8": 4}}
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.flags import define_flags, options_from_flags
from pix2pixhd_tf.inference import run_test
from pix2pixhd_tf.styles import StyleSpec

define_flags()
flags.DEFINE_string("style_spec", "", "JSON file of chosen styles per instance id / class (feature models).")
flags.DEFINE_integer(
    "sample_seed",
    0,
    "Seed of the sampled styles: the i-th image uses sample_seed + i, as the SavedModel's generate_with_seed does "
    "with that seed.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    style = StyleSpec.load(FLAGS.style_spec) if FLAGS.style_spec else None
    cluster_file = FLAGS.cluster_path if FLAGS["cluster_path"].present else None
    # Like the official test options, the phase defaults to test here.
    opts = options_from_flags(phase=FLAGS.phase if FLAGS["phase"].present else "test")
    result = run_test(opts, style=style, seed=FLAGS.sample_seed, cluster_file=cluster_file)
    print(f"wrote {len(result.rows)} results; open {result.index_html}")


if __name__ == "__main__":
    cli.run(main)
