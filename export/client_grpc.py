"""Send label (+ instance) PNGs to a pix2pixHD model in TF Serving over gRPC and save the results.

    pip install --no-deps tensorflow-serving-api   # its protos need only grpcio and protobuf (DESIGN.md §6)
    python export/client_grpc.py --server=localhost:8500 --model=pix2pixhd \
        --label=labelIds.png --instance=instanceIds.png --out=synthesized.png

gRPC carries the PNGs as raw bytes (no base64) in a DT_STRING tensor of shape [N] per input of the
`serving_png` signature; the answer's `image_png_bytes` holds one PNG per image. `build_tensor_request`
calls the tensor signatures (`serving_default`, ...) with numpy arrays instead. tensorflow-serving-api is
imported only when a request is built, so this file can be read and imported without it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PNG_SIGNATURE = "serving_png"
OUTPUT_KEY = "image_png_bytes"
MAX_MESSAGE_BYTES = 256 * 2**20  # 2048x1024 uint8 tensors and PNGs exceed gRPC's 4 MiB default


def _apis():
    """(predict_pb2, prediction_service_pb2_grpc, tensor_pb2, types_pb2), imported on first use."""
    try:
        from tensorflow.core.framework import tensor_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError(
            "the gRPC client needs tensorflow-serving-api: `pip install --no-deps tensorflow-serving-api` "
            "(with --no-deps it does not pull the full tensorflow wheel over tensorflow-cpu; it needs grpcio "
            "and protobuf, which TensorFlow already installs)"
        ) from e
    return predict_pb2, prediction_service_pb2_grpc, tensor_pb2, types_pb2


_DTYPES = {np.dtype(np.int32): "DT_INT32", np.dtype(np.uint8): "DT_UINT8", np.dtype(np.float32): "DT_FLOAT"}


def tensor_proto(value: np.ndarray | Sequence[bytes]) -> Any:
    """A TensorProto from a numeric numpy array (int32, uint8, float32) or a list of bytes (DT_STRING [N])."""
    _, _, tensor_pb2, types_pb2 = _apis()
    proto = tensor_pb2.TensorProto()
    if isinstance(value, (list, tuple)):
        proto.dtype = types_pb2.DT_STRING
        proto.tensor_shape.dim.add().size = len(value)
        proto.string_val.extend(bytes(v) for v in value)
        return proto
    array = np.ascontiguousarray(value)
    if array.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {array.dtype}: use int32 maps, uint8 images or float32 features")
    proto.dtype = types_pb2.DataType.Value(_DTYPES[array.dtype])
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    proto.tensor_content = array.tobytes()
    return proto


def tensor_to_numpy(proto: Any) -> np.ndarray | list[bytes]:
    """A TensorProto from a PredictResponse back to numpy (or a list of bytes for DT_STRING)."""
    _, _, _, types_pb2 = _apis()
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING:
        return list(proto.string_val)
    names = {v: k for k, v in _DTYPES.items()}
    dtype = names[types_pb2.DataType.Name(proto.dtype)]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    field = {np.dtype(np.float32): proto.float_val}.get(dtype, proto.int_val)
    return np.asarray(field, dtype).reshape(shape)


def _request(model: str, signature_name: str, version: int | None) -> Any:
    predict_pb2, _, _, _ = _apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    return request


def build_png_request(
    model: str,
    label_pngs: Sequence[bytes],
    instance_pngs: Sequence[bytes] | None = None,
    *,
    version: int | None = None,
    label_key: str = "label_png_bytes",
) -> Any:
    """A PredictRequest for `serving_png` (label_key 'input_image_png_bytes' for label_nc 0 models)."""
    request = _request(model, PNG_SIGNATURE, version)
    request.inputs[label_key].CopyFrom(tensor_proto(list(label_pngs)))
    if instance_pngs is not None:
        if len(instance_pngs) != len(label_pngs):
            raise ValueError(f"got {len(label_pngs)} label PNGs but {len(instance_pngs)} instance PNGs")
        request.inputs["instance_png_bytes"].CopyFrom(tensor_proto(list(instance_pngs)))
    return request


def build_tensor_request(
    model: str, inputs: Mapping[str, np.ndarray], *, signature_name: str = "serving_default", version: int | None = None
) -> Any:
    """A PredictRequest for a tensor signature, e.g. {'label': int32 [N,H,W], 'instance': int32 [N,H,W]}."""
    request = _request(model, signature_name, version)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tensor_proto(np.asarray(value)))
    return request


def predict(target: str, request: Any, timeout: float = 120.0) -> Any:
    """Send a PredictRequest to host:port (TF Serving's gRPC port, 8500 by default)."""
    import grpc

    _, prediction_service_pb2_grpc, _, _ = _apis()
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def generate_pngs(
    target: str,
    model: str,
    label_pngs: Sequence[bytes],
    instance_pngs: Sequence[bytes] | None = None,
    *,
    version: int | None = None,
    label_key: str = "label_png_bytes",
    timeout: float = 120.0,
) -> list[bytes]:
    """Send PNGs to `serving_png` and return the generated PNGs."""
    request = build_png_request(model, label_pngs, instance_pngs, version=version, label_key=label_key)
    return list(predict(target, request, timeout).outputs[OUTPUT_KEY].string_val)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:8500", help="TF Serving gRPC address")
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
