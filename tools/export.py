"""Export a trained model for TF Serving (a versioned SavedModel) and, optionally, TFLite and ONNX.

    python tools/export.py --flagfile=configs/local.cfg --export_dir=exported/label2city
    python tools/export.py --flagfile=configs/cityscapes_512p.cfg --export_dir=/models/pix2pixhd \\
        --tflite_size=256x512 --tflite_variants=float32,float16,dynamic_range
    python tools/export.py --flagfile=configs/local.cfg --export_dir=exported/label2city --formats=saved_model,onnx

Pass the flags the experiment was trained with (checked against its options.json). Writes
`{export_dir}/{version}/` (the next free integer version unless --version is given) with the signatures
`serving_default` (label/instance int32 maps -> uint8 image), `serving_png` (PNG bytes in and out) and,
for feature models, `generate_with_seed`, `generate_with_features` and `encode`; `assets.extra/README.md`
in the version lists them. Feature models embed `{checkpoints_dir}/{name}/clusters.npz` (or --cluster_path)
to sample styles in-graph; without one they use zero features and say so. TFLite files (fixed size,
batch 1, generator only) go to `{export_dir}/tflite/{version}/`; the ONNX model (--formats=...,onnx:
dynamic N, H, W, generator only, needs `pip install .[onnx]`) to `{export_dir}/onnx/{version}/{name}.onnx`,
and for feature models with a cluster bank `{name}_seed.onnx` beside it (styles sampled from a seed input,
as generate_with_seed).
See export/README.md for serving.

Every signature refuses requests above --max_pixels per image (default 2048x2048, twice Cityscapes'
1024x2048) and --max_batch_pixels per request (default: the same) with INVALID_ARGUMENT, before any work,
so one request cannot exhaust the server's memory; serving_png reads the size from the PNG header.
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.flags import define_flags, options_from_flags, parse_size
from pix2pixhd_tf.serving.saved_model import EXPORT_FORMATS, export_model
from pix2pixhd_tf.serving.tflite import TFLITE_VARIANTS

define_flags()
flags.DEFINE_string("export_dir", None, "The model's base path for TF Serving: versions go to export_dir/<version>/.")
flags.DEFINE_integer("version", None, "Version number to write (default: the next free one; never overwrites).")
flags.DEFINE_string("tflite_size", "", "Also write TFLite models at this HEIGHTxWIDTH (e.g. 256x512); '' = none.")
flags.DEFINE_list("tflite_variants", list(TFLITE_VARIANTS), f"TFLite variants: any of {', '.join(TFLITE_VARIANTS)}.")
flags.DEFINE_list(
    "formats",
    [],
    f"Formats to write, any of {', '.join(EXPORT_FORMATS)} (tflite needs --tflite_size); default: saved_model, "
    "plus tflite when --tflite_size is given.",
)
flags.DEFINE_bool(
    "onnx_float16",
    False,
    "With --formats=...,onnx, also write {name}_float16.onnx (and {name}_seed_float16.onnx for a feature model "
    "with a cluster bank): float16 weights (half the file), float32 compute.",
)
flags.DEFINE_string(
    "max_pixels",
    "2048x2048",
    "The most pixels one image of a request may have, as a count or HEIGHTxWIDTH (their product); larger "
    "requests get INVALID_ARGUMENT before any work. Raise it only as far as the server's memory allows.",
)
flags.DEFINE_string(
    "max_batch_pixels",
    "",
    "The most pixels one request may hold, all its images together (count or HEIGHTxWIDTH); '' = --max_pixels.",
)
flags.mark_flag_as_required("export_dir")
FLAGS = flags.FLAGS


def pixel_count(value: str, flag: str) -> int:
    """'4194304' or '2048x2048' -> 4194304."""
    try:
        size = int(value) if value.isdigit() else parse_size(value)
    except ValueError as e:
        raise ValueError(f"--{flag}={value!r}: give a pixel count or HEIGHTxWIDTH, e.g. --{flag}=2048x2048") from e
    count = size if isinstance(size, int) else size[0] * size[1]
    if count < 1:
        raise ValueError(f"--{flag}={value!r} must be at least one pixel")
    return count


def main(argv):
    del argv
    opts = options_from_flags()
    result = export_model(
        opts,
        FLAGS.export_dir,
        version=FLAGS.version,
        cluster_file=FLAGS.cluster_path if FLAGS["cluster_path"].present else None,
        tflite_size=parse_size(FLAGS.tflite_size) if FLAGS.tflite_size else None,
        tflite_variants=FLAGS.tflite_variants,
        max_pixels=pixel_count(FLAGS.max_pixels, "max_pixels"),
        max_batch_pixels=pixel_count(FLAGS.max_batch_pixels, "max_batch_pixels") if FLAGS.max_batch_pixels else None,
        formats=FLAGS.formats or None,
        onnx_float16=FLAGS.onnx_float16,
    )
    if result["saved_model"]:
        print(f"SavedModel: {result['saved_model']}")
        if result["cluster_bank"]:
            print(f"cluster bank: {result['cluster_bank']}")
        elif opts.use_features:
            print("no cluster bank: sampled styles use zero features (see assets.extra/README.md in the version)")
    for variant, path in result["tflite"].items():
        print(f"TFLite {variant}: {path}")
    if result["onnx"]:
        print(f"ONNX: {result['onnx']}")
    if result["onnx_float16"]:
        print(f"ONNX float16 weights: {result['onnx_float16']}")
    if result["onnx_seed"]:
        print(f"ONNX with in-graph style sampling (seed input): {result['onnx_seed']}")
    if result["onnx_seed_float16"]:
        print(f"ONNX with in-graph style sampling, float16 weights: {result['onnx_seed_float16']}")


if __name__ == "__main__":
    cli.run(main)
