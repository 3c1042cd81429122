"""Send label (+ instance) PNGs to a pix2pixHD model in TF Serving over REST and save the results.

    python export/client_rest.py --server=http://localhost:8501 --model=pix2pixhd \
        --label=frankfurt_000000_000294_gtFine_labelIds.png \
        --instance=frankfurt_000000_000294_gtFine_instanceIds.png --out=synthesized.png

Uses the `serving_png` signature: the request is TF Serving's row format,
`{"signature_name": "serving_png", "instances": [{"label_png_bytes": {"b64": ...}, "instance_png_bytes":
{"b64": ...}}, ...]}` (binary values travel base64-encoded under "b64"; the server decodes them for string
inputs), and because the output name ends in `_bytes` the server answers `{"predictions": [{"b64": ...},
...]}`. Only the standard library is needed. Labels are single-channel 8-bit (or 16-bit) id PNGs,
instances 16-bit PNGs (Cityscapes `*_instanceIds.png`); RGB-input (label_nc 0) models take
`--label=photo.png` and are sent as `input_image_png_bytes` (`--label_key`).
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

PNG_SIGNATURE = "serving_png"
OUTPUT_KEY = "image_png_bytes"


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def build_png_request(
    label_pngs: Sequence[bytes],
    instance_pngs: Sequence[bytes] | None = None,
    *,
    label_key: str = "label_png_bytes",
    signature_name: str = PNG_SIGNATURE,
) -> dict[str, Any]:
    """The JSON body (as a dict) of a row-format predict request to `serving_png`, one instance per image.

    Args:
        label_pngs: encoded label PNGs (or RGB PNGs for label_nc 0 models, with label_key
            'input_image_png_bytes').
        instance_pngs: encoded instance PNGs, one per label; None for --no_instance models.
    """
    if instance_pngs is not None and len(instance_pngs) != len(label_pngs):
        raise ValueError(f"got {len(label_pngs)} label PNGs but {len(instance_pngs)} instance PNGs")
    instances = []
    for i, label in enumerate(label_pngs):
        row = {label_key: _b64(label)}
        if instance_pngs is not None:
            row["instance_png_bytes"] = _b64(instance_pngs[i])
        instances.append(row)
    return {"signature_name": signature_name, "instances": instances}


def _unb64(value: Any) -> bytes:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    raise ValueError(f"expected a {{'b64': ...}} value for {OUTPUT_KEY}, got {str(value)[:80]}")


def parse_png_response(body: dict[str, Any]) -> list[bytes]:
    """The PNG bytes of each generated image from a TF Serving predict response (row or columnar format).

    Raises:
        RuntimeError: the server answered with an error (e.g. an out-of-range label id or a bad size).
    """
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    if "predictions" in body:  # row format; a single-output signature gives the bare values
        return [_unb64(p[OUTPUT_KEY] if isinstance(p, dict) and OUTPUT_KEY in p else p) for p in body["predictions"]]
    if "outputs" in body:  # columnar format
        outputs = body["outputs"]
        values = outputs[OUTPUT_KEY] if isinstance(outputs, dict) and OUTPUT_KEY in outputs else outputs
        return [_unb64(v) for v in values]
    raise ValueError(f"not a TF Serving predict response: keys {sorted(body)}")


def predict_url(server: str, model: str, version: int | None = None) -> str:
    """http://host:8501/v1/models/NAME[/versions/N]:predict"""
    version_part = f"/versions/{version}" if version is not None else ""
    return f"{server.rstrip('/')}/v1/models/{model}{version_part}:predict"


def post_json(url: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """POST a JSON body and return the decoded JSON answer (TF Serving errors come back as {'error': ...})."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:  # 400 with {"error": "..."} for INVALID_ARGUMENT
        payload = e.read().decode("utf-8", "replace")
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise RuntimeError(f"HTTP {e.code} from {url}: {payload[:500]}") from e


def generate_pngs(
    server: str,
    model: str,
    label_pngs: Sequence[bytes],
    instance_pngs: Sequence[bytes] | None = None,
    *,
    version: int | None = None,
    label_key: str = "label_png_bytes",
    timeout: float = 120.0,
) -> list[bytes]:
    """Send PNGs to `serving_png` and return the generated PNGs."""
    body = build_png_request(label_pngs, instance_pngs, label_key=label_key)
    return parse_png_response(post_json(predict_url(server, model, version), body, timeout))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://localhost:8501", help="TF Serving REST address")
    parser.add_argument("--model", default="pix2pixhd", help="model name in models.config")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the newest)")
    parser.add_argument("--label", required=True, nargs="+", help="label PNG(s) (RGB PNGs for label_nc 0 models)")
    parser.add_argument("--instance", nargs="*", default=None, help="instance PNG(s), one per label")
    parser.add_argument("--label_key", default="label_png_bytes", help="input_image_png_bytes for label_nc 0 models")
    parser.add_argument("--out", nargs="+", required=True, help="output PNG path(s), one per label")
    args = parser.parse_args(argv)
    if len(args.out) != len(args.label):
        parser.error("give one --out per --label")

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    pngs = generate_pngs(
        args.server,
        args.model,
        [read(p) for p in args.label],
        [read(p) for p in args.instance] if args.instance else None,
        version=args.version,
        label_key=args.label_key,
    )
    for path, png in zip(args.out, pngs):
        with open(path, "wb") as f:
            f.write(png)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
