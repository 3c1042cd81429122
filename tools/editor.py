"""The interactive editor (paper §3.3-3.4) in the browser: paint labels, add/delete/relabel objects, pick styles.

    python tools/editor.py --flagfile=configs/local.cfg  # the latest checkpoint
    python tools/editor.py --flagfile=configs/local.cfg --which_epoch=8 --port=0
    python tools/editor.py --flagfile=configs/local.cfg --saved_model=exported/local_synthetic
    python tools/editor.py --flagfile=configs/local.cfg \\
        --serving_url=http://localhost:8501/v1/models/pix2pixhd

Pass the flags the experiment was trained with. The model is the checkpoint `{checkpoints_dir}/{name}/
{which_epoch}` with its clusters.npz (or --cluster_path), a SavedModel of tools/export.py (--saved_model:
an export directory or one version), or a TF Serving model over REST (--serving_url; the flags give
label_nc and the generator's size multiple). Scenes of `{dataroot}/{phase}_label` (+ `{phase}_inst`;
--phase defaults to test) can be opened by name, and label (8-bit) / instance (16-bit) PNGs uploaded.
The server binds 127.0.0.1 unless --host says otherwise; --port=0 picks a free port. It answers only
requests addressed to 127.0.0.1, localhost, [::1] or the --host value (a DNS-rebinding page cannot reach it);
--trusted_hosts adds names (e.g. the machine's name when --host=0.0.0.0). Needs the `editor` extra
(fastapi, uvicorn, python-multipart): `pip install -e ".[editor]"`.
"""

from absl import flags

from pix2pixhd_tf import cli
from pix2pixhd_tf.editor.scene import Limits
from pix2pixhd_tf.flags import define_flags, options_from_flags

try:  # the web server is an optional extra: say how to install it rather than fail on import
    from pix2pixhd_tf.editor.app import build_editor
except ImportError as e:
    if (e.name or "").split(".")[0] not in cli.EXTRAS:
        raise
    build_editor, _MISSING = None, cli.missing_extra(e, "editor", "the editor")

define_flags()
flags.DEFINE_string("saved_model", "", "Generate with this SavedModel (export directory or version directory).")
flags.DEFINE_string("serving_url", "", "Generate with TF Serving over REST: http://HOST:8501/v1/models/NAME.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 exposes the editor to the network).")
flags.DEFINE_integer("port", 8000, "Port to listen on; 0 picks a free one.")
flags.DEFINE_list("thing_classes", None, "Class ids that have instances (default: from the dataset/known classes).")
flags.DEFINE_integer("max_upload_side", 2048, "Largest accepted upload height and width, in pixels.")
flags.DEFINE_integer("max_upload_mb", 8, "Largest accepted upload file, in MB.")
flags.DEFINE_list(
    "trusted_hosts",
    [],
    "Host names besides 127.0.0.1, localhost, [::1] and --host that requests may address (the Host header), "
    "e.g. the machine's name when --host=0.0.0.0; '*' turns the check off.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if build_editor is None:
        raise _MISSING
    opts = options_from_flags()
    server = build_editor(
        opts,
        phase=FLAGS.phase if FLAGS["phase"].present else "test",
        saved_model=FLAGS.saved_model or None,
        serving_url=FLAGS.serving_url or None,
        cluster_file=FLAGS.cluster_path if FLAGS["cluster_path"].present else None,
        thing_classes=[int(c) for c in FLAGS.thing_classes] if FLAGS.thing_classes is not None else None,
        limits=Limits(FLAGS.max_upload_side, FLAGS.max_upload_side, FLAGS.max_upload_mb * 2**20),
        host=FLAGS.host,
        port=FLAGS.port,
        trusted_hosts=FLAGS.trusted_hosts,
    )
    print(f"pix2pixHD editor: {server.url}  (model: {server.app.state.backend.description})", flush=True)
    server.run()


if __name__ == "__main__":
    cli.run(main)
