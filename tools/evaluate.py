"""Scores generated images: segmentation score (pix2pixHD Table 1), FID, KID and multi-scale SWD.

Example (Cityscapes results of tools/test.py, PSPNet-like segmenter exported as a SavedModel):

  python tools/evaluate.py --dataroot=datasets/cityscapes --phase=test --label_nc=35 \
      --results_dir=results/label2city_1024p/test_latest/images --segmenter=segmenters/cityscapes \
      --label_mapping=cityscapes --metrics=seg,fid,kid,swd --phase2=train --output=report.json

Writes report.json and report.md (also printed). See pix2pixhd_tf/evaluation/protocol.py for the protocol.
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.evaluation import metrics
from pix2pixhd_tf.evaluation import protocol
from pix2pixhd_tf.flags import parse_size

flags.DEFINE_string("dataroot", "./datasets/cityscapes/", "Data set root ({phase}_label, {phase}_img).")
flags.DEFINE_string("phase", "test", "Split holding the label maps and real images.")
flags.DEFINE_string("results_dir", None, "Folder of generated images, named like their label maps.", required=True)
flags.DEFINE_integer("label_nc", 35, "Number of label classes (0: RGB inputs from {phase}_A/{phase}_B, no seg).")
flags.DEFINE_list("metrics", list(protocol.ALL_METRICS), "Any of seg, fid, kid, swd.")
flags.DEFINE_string("segmenter", None, "SavedModel directory or .keras file of a segmentation network (for seg).")
flags.DEFINE_string("segmenter_output_key", None, "Output of the SavedModel signature to use when it has several.")
flags.DEFINE_enum("segmenter_input_range", "0_255", ["0_255", "0_1", "-1_1"], "Value range of float32 inputs.")
flags.DEFINE_enum(
    "label_mapping",
    "none",
    list(protocol.LABEL_MAPPINGS),
    "cityscapes: score the 19 train ids from Cityscapes label ids.",
)
flags.DEFINE_integer("ignore_index", None, "A ground-truth id (after mapping) left out of the scores.")
flags.DEFINE_string("inception_weights", "imagenet", "imagenet, the path of the notop .h5 file, or none (tests).")
flags.DEFINE_string(
    "generated_suffix", "_synthesized_image", "Optional ending of generated names after the label stem."
)
flags.DEFINE_string("eval_size", "", "HEIGHTxWIDTH to resize labels, real and generated images to ('' = as they are).")
flags.DEFINE_string("real_split_dir", None, "Folder of other real images for the reference SWD.")
flags.DEFINE_string("phase2", None, "Shortcut for --real_split_dir={dataroot}/{phase2}_img (e.g. train).")
flags.DEFINE_integer("swd_patches_per_image", 128, "SWD: descriptors per image and level.")
flags.DEFINE_integer("swd_projections", 128, "SWD: random directions per repeat.")
flags.DEFINE_integer("swd_repeats", 4, "SWD: repeats with fresh directions.")
flags.DEFINE_integer("swd_min_size", 16, "SWD: smallest pyramid level side.")
flags.DEFINE_integer("kid_subsets", 100, "KID: number of subsets.")
flags.DEFINE_integer("kid_subset_size", 1000, "KID: subset size (at most the image count).")
flags.DEFINE_integer("feature_batch", 16, "FID/KID: images per InceptionV3 call.")
flags.DEFINE_integer("seed", 0, "Seed of the SWD patches and directions and the KID subsets.")
flags.DEFINE_string("output", "report.json", "JSON report path; the Markdown goes beside it (.md).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    segmenter = None
    if FLAGS.segmenter:
        segmenter = protocol.load_segmenter(
            FLAGS.segmenter, output_key=FLAGS.segmenter_output_key, input_range=FLAGS.segmenter_input_range
        )
    reference_dir = FLAGS.real_split_dir or (f"{FLAGS.dataroot}/{FLAGS.phase2}_img" if FLAGS.phase2 else None)
    report = protocol.evaluate(
        FLAGS.dataroot,
        FLAGS.results_dir,
        label_nc=FLAGS.label_nc,
        phase=FLAGS.phase,
        metrics=FLAGS.metrics,
        segmenter=segmenter,
        label_mapping=FLAGS.label_mapping,
        ignore_index=FLAGS.ignore_index,
        inception_weights=None if FLAGS.inception_weights == "none" else FLAGS.inception_weights,
        generated_suffix=FLAGS.generated_suffix,
        eval_size=parse_size(FLAGS.eval_size) if FLAGS.eval_size else None,
        reference_dir=reference_dir,
        swd_config=metrics.SWDConfig(
            patches_per_image=FLAGS.swd_patches_per_image,
            min_size=FLAGS.swd_min_size,
            num_projections=FLAGS.swd_projections,
            num_repeats=FLAGS.swd_repeats,
            seed=FLAGS.seed,
        ),
        kid_subsets=FLAGS.kid_subsets,
        kid_subset_size=FLAGS.kid_subset_size,
        feature_batch=FLAGS.feature_batch,
    )
    print(protocol.write_report(report, FLAGS.output))


if __name__ == "__main__":
    cli.run(main)
