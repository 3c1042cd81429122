"""The interactive editor of the paper (§3.3-3.4) in the browser: paint labels, add, delete and relabel
objects, and pick each object's style from its class's clusters.

    python tools/editor.py --flagfile=configs/local.cfg  # a training checkpoint
    python tools/editor.py --flagfile=configs/local.cfg --saved_model=exported/label2city
    python tools/editor.py --flagfile=configs/local.cfg --serving_url=http://localhost:8501/v1/models/pix2pixhd

Modules: `scene` (the edit model: maps, edits, styles, undo/redo, upload checks; numpy only), `backends`
(checkpoint / SavedModel / TF Serving REST generation), `app` (the FastAPI app and its server; needs the
`editor` extra: fastapi, uvicorn, python-multipart), `benchmark` (regenerate-after-edit latency), `static/`
(the page: plain HTML, CSS and JavaScript, no build step).
"""

from pix2pixhd_tf.editor.scene import ClassTable, EditResult, Limits, Scene, SceneError

__all__ = ["ClassTable", "EditResult", "Limits", "Scene", "SceneError"]
