"""Calls exported SavedModels the way a deployment would: TensorFlow only, no project code.

Run as a script in a fresh interpreter by tests/test_export.py:

    python tests/export_client_check.py JOBS.json RESULTS.json

JOBS.json is `-` to read the jobs from stdin once TensorFlow is imported (the caller can start the helper
before the models exist and send the jobs when they do). It is a list of jobs, each {"model": dir, "kind": ..., ...}:

  * {"kind": "describe"}: the signature names with their inputs and outputs (dtype, shape).
  * {"kind": "call", "signature": name, "inputs": file.npz, "string_inputs": {name: [base64, ...]}}: call
    the signature (numeric inputs from the .npz, string inputs base64-encoded); numeric outputs go to
    "<inputs>.out.npz", string outputs come back base64-encoded in the results; an error is recorded
    as {"error": class name, "message": text}.
  * {"kind": "rest", "request": file.json}: answer a TF Serving REST predict body (`rest_predict`).

`rest_predict` reproduces TF Serving's JSON mapping (tensorflow_serving/util/json_tensor.cc): row
("instances") or columnar ("inputs") requests, {"b64": ...} values decoded to bytes for string inputs,
string outputs whose name ends in `_bytes` returned as {"b64": ...}, a single-output signature's values
returned bare, errors as {"error": message}. The in-process REST test serves it over HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import numpy as np
import tensorflow as tf


def _decode_json_value(value, dtype: tf.DType):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"unexpected object {sorted(value)}: only {{'b64': ...}} is allowed")
        if dtype != tf.string:
            raise ValueError("'b64' values are only allowed for string inputs")
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_json_value(v, dtype) for v in value]
    if dtype == tf.string and isinstance(value, str):
        return value.encode("utf-8")
    return value


def _encode_json_value(value, name: str):
    value = np.asarray(value, dtype=object if isinstance(value, bytes) else None)
    if value.dtype == object or value.dtype.kind == "S":
        if value.ndim:
            return [_encode_json_value(v, name) for v in value]
        raw = value.item()
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(raw).decode("ascii")}
        return raw.decode("utf-8")
    return value.tolist()


def rest_predict(model, body: dict) -> dict:
    """The JSON answer TF Serving gives for a predict `body` (already parsed) on a loaded SavedModel."""
    try:
        name = body.get("signature_name", "serving_default")
        if name not in model.signatures:
            return {"error": f'Serving signature name: "{name}" not found in signature def'}
        signature = model.signatures[name]
        specs = signature.structured_input_signature[1]
        if "instances" in body:
            rows = body["instances"]
            if all(isinstance(r, dict) and not set(r) <= {"b64"} for r in rows):
                columns = {k: [r[k] for r in rows] for k in specs}
            else:
                (only,) = specs
                columns = {only: rows}
        elif "inputs" in body:
            inputs = body["inputs"]
            named = isinstance(inputs, dict) and not set(inputs) <= {"b64"}
            columns = inputs if named else {next(iter(specs)): inputs}
        else:
            return {"error": "Missing 'inputs' or 'instances' key"}
        missing = set(specs) - set(columns)
        if missing:
            return {"error": f"Missing input(s): {sorted(missing)}"}
        feed = {k: tf.constant(_decode_json_value(columns[k], specs[k].dtype), dtype=specs[k].dtype) for k in specs}
        outputs = {k: v.numpy() for k, v in signature(**feed).items()}
    except (tf.errors.InvalidArgumentError, ValueError, KeyError, TypeError) as e:
        message = getattr(e, "message", None) or str(e)
        return {"error": message}
    if "instances" in body:
        n = len(next(iter(outputs.values())))
        if len(outputs) == 1:
            ((key, value),) = outputs.items()
            return {"predictions": [_encode_json_value(value[i], key) for i in range(n)]}
        return {"predictions": [{k: _encode_json_value(v[i], k) for k, v in outputs.items()} for i in range(n)]}
    if len(outputs) == 1:
        ((key, value),) = outputs.items()
        return {"outputs": _encode_json_value(value, key)}
    return {"outputs": {k: _encode_json_value(v, k) for k, v in outputs.items()}}


def describe(model) -> dict:
    out = {}
    for name, fn in model.signatures.items():
        out[name] = {
            "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_input_signature[1].items()},
            "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_outputs.items()},
        }
    return out


def call(model, signature: str, inputs_path: str, string_inputs: dict) -> dict:
    with np.load(inputs_path) as data:
        feed = {k: tf.constant(data[k]) for k in data.files}
    feed.update({k: tf.constant([base64.b64decode(s) for s in v]) for k, v in string_inputs.items()})
    try:
        outputs = model.signatures[signature](**feed)
    except tf.errors.OpError as e:
        return {"error": type(e).__name__, "message": e.message}
    numeric = {k: v.numpy() for k, v in outputs.items() if v.dtype != tf.string}
    strings = {
        k: [base64.b64encode(s).decode("ascii") for s in v.numpy().tolist()]
        for k, v in outputs.items()
        if v.dtype == tf.string
    }
    np.savez(inputs_path[: -len(".npz")] + ".out.npz", **numeric)
    return {"strings": strings}


def main(jobs_path: str, results_path: str) -> None:
    if jobs_path == "-":
        jobs = json.load(sys.stdin)
    else:
        with open(jobs_path) as f:
            jobs = json.load(f)
    models = {}
    results = []
    for job in jobs:
        if job["model"] not in models:
            models[job["model"]] = tf.saved_model.load(job["model"])
        model = models[job["model"]]
        if job["kind"] == "describe":
            results.append(describe(model))
        elif job["kind"] == "call":
            results.append(call(model, job["signature"], job["inputs"], job.get("string_inputs", {})))
        elif job["kind"] == "rest":
            with open(job["request"]) as f:
                results.append(rest_predict(model, json.load(f)))
        else:
            raise ValueError(f"unknown job kind {job['kind']!r}")
    project = sorted(m for m in sys.modules if m.split(".")[0] in ("pix2pixhd_tf", "keras"))
    with open(results_path, "w") as f:
        json.dump({"results": results, "project_modules": project, "pid": os.getpid()}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
