"""SavedModel / TF Serving / TFLite export (pix2pixhd_tf/serving/, tools/export.py, export/).

Three tiny models are exported once per module: a feature model with encoder and cluster bank, an RGB
input (label_nc 0) local generator without instances, and a load_features model exported without a bank.
One fresh interpreter that imports only TensorFlow (tests/export_client_check.py) loads them and calls
every signature; the tests compare its answers with the in-memory Keras networks.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf import networks
from pix2pixhd_tf.inputs import encode_input
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving import endpoints, tflite
from pix2pixhd_tf.serving import saved_model
from pix2pixhd_tf.styles import ClusterBank, sample_features_graph
from pix2pixhd_tf.visualize import tensor_to_uint8

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "export_client_check.py"
H, W = 16, 24

TINY = dict(
    name="tiny", label_nc=5, ngf=4, n_downsample_global=2, n_blocks_global=1, nef=4, n_downsample_E=2, feat_num=3
)
MODELS = {
    "feat": dict(instance_feat=True),
    "rgb": dict(label_nc=0, input_nc=3, no_instance=True, netG="local", n_local_enhancers=1, n_blocks_local=1),
    "nobank": dict(instance_feat=True, load_features=True),
}
# Class 0 has no clusters (zero features); classes 1-4 have 4, 2, 1 and 3.
CENTERS = np.random.default_rng(5).uniform(-1, 1, (5, 4, 3)).astype(np.float32)
COUNTS = np.array([0, 4, 2, 1, 3], np.int32)
CENTERS[np.arange(4)[None, :] >= COUNTS[:, None]] = 0.0

# TFLite tolerances on the [-1, 1] output of the tiny test generator (measured max: float32 ~1e-6,
# float16 ~6e-4, dynamic range ~2e-2; see test_tflite_variants_match_keras for the reasoning).
TFLITE_MAX_ABS = {"float32": 1e-4, "float16": 5e-3, "dynamic_range": 0.1}
TFLITE_MEAN_ABS = {"float32": 1e-5, "float16": 1e-3, "dynamic_range": 0.02}


def _load_client(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "export" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client_rest = _load_client("client_rest")


def _options(kind: str) -> Options:
    return Options(**{**TINY, **MODELS[kind]})


def _maps(n: int = 2, h: int = H, w: int = W, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocky label maps and Cityscapes-style instance maps (things of classes 1, 3 and 4 get id·1000+k)."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.repeat(rng.integers(0, 5, (n, h // 4, w // 4)), 4, 1), 4, 2).astype(np.int32)
    instance = label.copy()
    instance[:, : h // 2, : w // 3] = 1001
    instance[:, : h // 2, w // 3 : 2 * w // 3] = 1002
    instance[:, h // 2 :, : w // 2] = 3000
    instance[1:, h // 2 :, w // 2 :] = 4005
    label = np.where(instance >= 1000, instance // 1000, label).astype(np.int32)
    return label, instance.astype(np.int32)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _keras_image(G, opts: Options, label, instance=None, features=None) -> np.ndarray:
    """The in-memory path: encode the maps, append features, run G, map [-1, 1] to uint8."""
    if opts.label_nc:
        x = encode_input(
            tf.constant(label), None if instance is None else tf.constant(instance), label_nc=opts.label_nc
        )
    else:
        x = tf.constant(label, tf.float32) / 127.5 - 1.0
    if features is not None:
        x = tf.concat([x, tf.cast(features, tf.float32)], -1)
    return G(x).numpy()


def _close_uint8(a: np.ndarray, b: np.ndarray, levels: int = 1) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= levels


class _LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export the three models, call every signature in one fresh TensorFlow-only interpreter."""
    tmp = tmp_path_factory.mktemp("export")
    ns = SimpleNamespace(nets={}, dirs={}, jobs=[], index={})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # The helper imports TensorFlow while the models are exported here, then reads its jobs from stdin.
    results_path = tmp / "results.json"
    with open(tmp / "helper.stdout", "w") as stdout, open(tmp / "helper.stderr", "w") as stderr:
        helper = subprocess.Popen(
            [sys.executable, str(HELPER), "-", str(results_path)],
            stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, cwd=tmp, env=env, text=True,
        )  # fmt: skip
    cli = None
    handler = _LogRecords()
    saved_model.logger.addHandler(handler)
    try:
        for i, kind in enumerate(MODELS):
            opts = _options(kind)
            keras.utils.set_random_seed(i)
            G, E = networks.build_generator(opts), networks.build_encoder(opts)
            ns.nets[kind] = (opts, G, E)
            base = tmp / kind
            if kind == "feat":  # version numbering: 3 exists, so the export becomes 4
                (base / "3").mkdir(parents=True)
                (base / "notaversion").mkdir()
            bank = (CENTERS, COUNTS) if kind == "feat" else None
            ns.dirs[kind] = saved_model.export_saved_model(opts, str(base), cluster_bank=bank, generator=G, encoder=E)
            if kind == "feat":  # saved_model_cli (installed with TensorFlow) runs beside the other exports
                cli = subprocess.Popen(
                    [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", ns.dirs["feat"],
                     "--all"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp,
                )  # fmt: skip
    except BaseException:
        for proc in (helper, cli):
            if proc is not None:
                proc.kill()
        raise
    finally:
        saved_model.logger.removeHandler(handler)
    ns.warnings = handler.messages

    label, instance = _maps()
    ns.label, ns.instance = label, instance
    rng = np.random.default_rng(1)
    ns.features = rng.uniform(-1, 1, (2, H, W, 3)).astype(np.float32)
    ns.image = rng.integers(0, 256, (2, H, W, 3)).astype(np.uint8)
    ns.rgb = rng.integers(0, 256, (2, H, W, 3)).astype(np.uint8)
    ns.seed = np.array([0, 7], np.int32)
    bad_label = label.copy()
    bad_label[1, 3, 5] = 9
    ns.label_pngs = [_png(label[i].astype(np.uint8)) for i in range(2)]
    ns.instance_pngs = [_png(instance[i].astype(np.uint16)) for i in range(2)]
    ns.rgb_pngs = [_png(ns.rgb[i]) for i in range(2)]

    def call(name, kind, signature, **inputs):
        path = tmp / f"{name}.npz"
        np.savez(path, **{k: v for k, v in inputs.items() if isinstance(v, np.ndarray)})
        strings = {k: [base64.b64encode(b).decode() for b in v] for k, v in inputs.items() if isinstance(v, list)}
        ns.index[name] = len(ns.jobs)
        job = {
            "model": ns.dirs[kind],
            "kind": "call",
            "signature": signature,
            "inputs": str(path),
            "string_inputs": strings,
        }
        ns.jobs.append(job)

    def rest(name, kind, body):
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(body))
        ns.index[name] = len(ns.jobs)
        ns.jobs.append({"model": ns.dirs[kind], "kind": "rest", "request": str(path)})

    for kind in MODELS:
        ns.index[f"describe_{kind}"] = len(ns.jobs)
        ns.jobs.append({"model": ns.dirs[kind], "kind": "describe"})
    strings = list
    call("feat_default", "feat", "serving_default", label=label, instance=instance)
    call("feat_seed", "feat", "generate_with_seed", label=label, instance=instance, seed=ns.seed)
    call("feat_features", "feat", "generate_with_features", label=label, instance=instance, features=ns.features)
    call("feat_encode", "feat", "encode", image=ns.image, instance=instance)
    call(
        "feat_png",
        "feat",
        "serving_png",
        label_png_bytes=strings(ns.label_pngs),
        instance_png_bytes=strings(ns.instance_pngs),
    )
    call("feat_bad_label", "feat", "serving_default", label=bad_label, instance=instance)
    call("feat_bad_size", "feat", "serving_default", label=label[:, :, :22], instance=instance[:, :, :22])
    call("feat_bad_encode_size", "feat", "encode", image=ns.image[:, :14], instance=instance[:, :14])
    rest("feat_rest", "feat", client_rest.build_png_request(ns.label_pngs, ns.instance_pngs))
    bad_pngs = [_png(bad_label[i].astype(np.uint8)) for i in range(2)]
    rest("feat_rest_bad", "feat", client_rest.build_png_request(bad_pngs, ns.instance_pngs))
    call("rgb_default", "rgb", "serving_default", input_image=ns.rgb)
    call("rgb_png", "rgb", "serving_png", input_image_png_bytes=strings(ns.rgb_pngs))
    call("rgb_bad_size", "rgb", "serving_default", input_image=ns.rgb[:, :12])
    call("nobank_default", "nobank", "serving_default", label=label, instance=instance)
    call(
        "nobank_zeros",
        "nobank",
        "generate_with_features",
        label=label,
        instance=instance,
        features=np.zeros_like(ns.features),
    )

    helper.communicate(json.dumps(ns.jobs))
    ns.cli_stdout, cli_stderr = cli.communicate()
    ns.cli_returncode, ns.cli_stderr = cli.returncode, cli_stderr[-2000:]
    assert helper.returncode == 0, (tmp / "helper.stderr").read_text()[-3000:]
    ns.fresh = json.loads(results_path.read_text())
    ns.tmp = tmp
    return ns


def _result(ns, name):
    return ns.fresh["results"][ns.index[name]]


def _output(ns, name, key="image"):
    result = _result(ns, name)
    assert "error" not in result, result
    if key in result["strings"]:
        return [base64.b64decode(s) for s in result["strings"][key]]
    with np.load(ns.jobs[ns.index[name]]["inputs"][: -len(".npz")] + ".out.npz") as data:
        return data[key]


# --------------------------------------------------------------------------------------- signatures

MAP = ["int32", [None, None, None]]
IMAGE = ["uint8", [None, None, None, 3]]
FEATURES = ["float32", [None, None, None, 3]]
PNGS = ["string", [None]]
EXPECTED = {
    "feat": {
        "serving_default": ({"label": MAP, "instance": MAP}, {"image": IMAGE}),
        "serving_png": ({"label_png_bytes": PNGS, "instance_png_bytes": PNGS}, {"image_png_bytes": PNGS}),
        "generate_with_seed": ({"label": MAP, "instance": MAP, "seed": ["int32", [None]]}, {"image": IMAGE}),
        "generate_with_features": ({"label": MAP, "instance": MAP, "features": FEATURES}, {"image": IMAGE}),
        "encode": ({"image": IMAGE, "instance": MAP}, {"features": FEATURES}),
    },
    "rgb": {
        "serving_default": ({"input_image": IMAGE}, {"image": IMAGE}),
        "serving_png": ({"input_image_png_bytes": PNGS}, {"image_png_bytes": PNGS}),
    },
    "nobank": {
        "serving_default": ({"label": MAP, "instance": MAP}, {"image": IMAGE}),
        "serving_png": ({"label_png_bytes": PNGS, "instance_png_bytes": PNGS}, {"image_png_bytes": PNGS}),
        "generate_with_seed": ({"label": MAP, "instance": MAP, "seed": ["int32", [None]]}, {"image": IMAGE}),
        "generate_with_features": ({"label": MAP, "instance": MAP, "features": FEATURES}, {"image": IMAGE}),
    },
}


def test_fresh_interpreter_needs_no_project_code(exported):
    assert not [m for m in exported.fresh["project_modules"] if m.startswith("pix2pixhd_tf")]
    assert exported.fresh["pid"] != os.getpid()


@pytest.mark.parametrize("kind", list(MODELS))
def test_signatures_have_documented_names_and_dtypes(exported, kind):
    described = _result(exported, f"describe_{kind}")
    expected = {name: {"inputs": i, "outputs": o} for name, (i, o) in EXPECTED[kind].items()}
    assert described == expected
    info = json.loads(Path(exported.dirs[kind], "assets.extra", "export_info.json").read_text())
    assert [row["name"] for row in info["signatures"]] == list(EXPECTED[kind])
    assert info["size_multiple"] == (8 if kind == "rgb" else 4)


def test_saved_model_cli_lists_signatures(exported):
    """`saved_model_cli show --dir ... --all` (run as `python -m` so the interpreter's own copy is used)."""
    assert exported.cli_returncode == 0, exported.cli_stderr
    text = exported.cli_stdout
    blocks = {}
    for block in text.split("signature_def['")[1:]:
        name, body = block.split("']", 1)
        blocks[name] = body.split("Method name is")[0]
    assert set(EXPECTED["feat"]) <= set(blocks)
    assert (
        "inputs['label'] tensor_info:\n        dtype: DT_INT32\n        shape: (-1, -1, -1)"
        in blocks["serving_default"]
    )
    assert (
        "outputs['image'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, -1, -1, 3)"
        in blocks["serving_default"]
    )
    assert (
        "inputs['label_png_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in blocks["serving_png"]
    )
    assert "outputs['image_png_bytes'] tensor_info:\n        dtype: DT_STRING" in blocks["serving_png"]
    assert "inputs['seed'] tensor_info:\n        dtype: DT_INT32\n        shape: (-1)" in blocks["generate_with_seed"]
    assert (
        "outputs['features'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, -1, -1, 3)" in blocks["encode"]
    )


# ------------------------------------------------------------------------- outputs vs the Keras path


def _bank():
    return ClusterBank(CENTERS, COUNTS)


def test_serving_default_matches_keras_with_sampled_styles(exported):
    opts, G, _ = exported.nets["feat"]
    seed0 = np.zeros(2, np.int32)
    features = sample_features_graph(exported.instance, seed0, _bank(), feat_num=3).numpy()
    expected = tensor_to_uint8(_keras_image(G, opts, exported.label, exported.instance, features))
    _close_uint8(_output(exported, "feat_default"), expected)


def test_generate_with_seed_uses_one_seed_per_example(exported):
    opts, G, _ = exported.nets["feat"]
    features = sample_features_graph(exported.instance, exported.seed, _bank(), feat_num=3).numpy()
    expected = tensor_to_uint8(_keras_image(G, opts, exported.label, exported.instance, features))
    seeded = _output(exported, "feat_seed")
    _close_uint8(seeded, expected)
    # Example 0 has seed 0, the default seed: the same image as serving_default.
    np.testing.assert_array_equal(seeded[0], _output(exported, "feat_default")[0])


def test_generate_with_features_and_encode_match_keras(exported):
    opts, G, E = exported.nets["feat"]
    expected = tensor_to_uint8(_keras_image(G, opts, exported.label, exported.instance, exported.features))
    _close_uint8(_output(exported, "feat_features"), expected)
    image = exported.image.astype(np.float32) / 127.5 - 1.0
    encoded = E([tf.constant(image), tf.constant(exported.instance)]).numpy()
    np.testing.assert_allclose(_output(exported, "feat_encode", "features"), encoded, atol=1e-5)


def test_png_signature_matches_tensor_signature(exported):
    pngs = _output(exported, "feat_png", "image_png_bytes")
    decoded = np.stack([_unpng(p) for p in pngs])
    _close_uint8(decoded, _output(exported, "feat_default"))


def test_rest_json_round_trip(exported):
    """client_rest's body, decoded as TF Serving decodes JSON, through serving_png and back."""
    body = json.loads((exported.tmp / "feat_rest.json").read_text())
    assert body["signature_name"] == "serving_png"
    assert set(body["instances"][0]) == {"label_png_bytes", "instance_png_bytes"}
    response = _result(exported, "feat_rest")
    assert set(response) == {"predictions"} and set(response["predictions"][0]) == {"b64"}
    pngs = client_rest.parse_png_response(response)
    assert pngs == _output(exported, "feat_png", "image_png_bytes")
    decoded = np.stack([_unpng(p) for p in pngs])
    _close_uint8(decoded, _output(exported, "feat_default"))


def test_rgb_input_local_generator(exported):
    opts, G, _ = exported.nets["rgb"]
    expected = tensor_to_uint8(_keras_image(G, opts, exported.rgb))
    _close_uint8(_output(exported, "rgb_default"), expected)
    decoded = np.stack([_unpng(p) for p in _output(exported, "rgb_png", "image_png_bytes")])
    _close_uint8(decoded, _output(exported, "rgb_default"))


def test_without_bank_every_class_gets_zero_features(exported):
    np.testing.assert_array_equal(_output(exported, "nobank_default"), _output(exported, "nobank_zeros"))
    readme = Path(exported.dirs["nobank"], "assets.extra", "README.md").read_text()
    assert "exported without a cluster bank" in readme and "zero features for every class" in readme
    assert any("without a cluster bank" in m for m in exported.warnings)
    assert "Embedded cluster bank: 5 classes" in Path(exported.dirs["feat"], "assets.extra", "README.md").read_text()


# ------------------------------------------------------------------------------------------- errors


def test_out_of_range_label_is_invalid_argument(exported):
    result = _result(exported, "feat_bad_label")
    assert result["error"] == "InvalidArgumentError"
    assert "label ids must be < label_nc=5" in result["message"]
    assert "label ids must be < label_nc=5" in _result(exported, "feat_rest_bad")["error"]
    with pytest.raises(RuntimeError, match="label_nc=5"):
        client_rest.parse_png_response(_result(exported, "feat_rest_bad"))


def test_bad_size_names_the_multiple(exported):
    for name, multiple in (("feat_bad_size", 4), ("feat_bad_encode_size", 4), ("rgb_bad_size", 8)):
        result = _result(exported, name)
        assert result["error"] == "InvalidArgumentError", result
        assert f"must be multiples of {multiple}" in result["message"]


def test_versions_count_up_and_never_overwrite(exported, tmp_path):
    assert os.path.basename(exported.dirs["feat"]) == "4"
    base = os.path.dirname(exported.dirs["feat"])
    assert saved_model.next_version(base) == 5
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]
    assert saved_model.next_version(str(tmp_path / "missing")) == 1
    opts, G, E = exported.nets["feat"]
    with pytest.raises(FileExistsError, match="4"):
        saved_model.export_saved_model(opts, base, version=4, cluster_bank=(CENTERS, COUNTS), generator=G, encoder=E)


def test_bank_must_fit_the_model(exported):
    opts, G, E = exported.nets["feat"]
    with pytest.raises(ValueError, match="label_nc=5"):
        saved_model.export_saved_model(opts, "unused", cluster_bank=(CENTERS[:3], COUNTS[:3]), generator=G, encoder=E)
    with pytest.raises(ValueError, match="counts"):
        saved_model.resolve_cluster_bank((CENTERS, COUNTS + 3))


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            dict(label_feat=True, no_instance=True),
            {
                "serving_default": ["label"],
                "serving_png": ["label_png_bytes"],
                "generate_with_seed": ["label", "seed"],
                "generate_with_features": ["label", "features"],
                "encode": ["image", "label"],
            },
        ),
        (
            dict(label_nc=0, input_nc=1),
            {
                "serving_default": ["input_image", "instance"],
                "serving_png": ["input_image_png_bytes", "instance_png_bytes"],
            },
        ),
    ],
)
def test_signature_inputs_follow_the_options(extra, expected):
    """The other option combinations, checked on the specs (no export needed)."""
    opts = Options(**{**TINY, **extra})
    graph = endpoints.Endpoints(opts, networks.build_generator(opts), networks.build_encoder(opts), None)
    specs = {name: [s.name for s in spec] for name, (_, spec) in graph.signatures().items()}
    assert specs == expected
    if opts.label_nc == 0:
        assert graph.label_spec().shape.as_list() == [None, None, None, 1]


# ------------------------------------------------------------------------------------ style sampling


def test_sampled_features_come_from_the_bank():
    _, instance = _maps()
    instance[0, 0, 0] = 77  # a class outside the bank: zero features
    feats = sample_features_graph(instance, np.array([3, 3], np.int32), _bank(), feat_num=3).numpy()
    for b in range(2):
        for region in np.unique(instance[b]):
            mask = instance[b] == region
            vectors = feats[b][mask]
            assert np.all(vectors == vectors[0]), "one feature vector per instance"
            cls = region // 1000 if region >= 1000 else region
            if cls >= 5 or COUNTS[cls] == 0:
                np.testing.assert_array_equal(vectors[0], 0.0)
            else:
                assert any(np.array_equal(vectors[0], c) for c in CENTERS[cls, : COUNTS[cls]])
    # Same seed and id -> same style, whatever else is in the image or the batch position.
    np.testing.assert_array_equal(feats[0][instance[0] == 1001][0], feats[1][instance[1] == 1001][0])
    alone = sample_features_graph(np.full((1, 4, 4), 1002, np.int32), np.array([3], np.int32), _bank(), feat_num=3)
    np.testing.assert_array_equal(alone.numpy()[0, 0, 0], feats[0][instance[0] == 1002][0])


def test_sampling_covers_every_cluster_and_depends_on_the_seed():
    ids = (1000 + np.arange(256, dtype=np.int32)).reshape(1, 16, 16)  # 256 instances of class 1 (4 clusters)
    chosen = {}
    for seed in (0, 1):
        feats = sample_features_graph(ids, np.array([seed], np.int32), _bank(), feat_num=3).numpy().reshape(-1, 3)
        chosen[seed] = np.array([int(np.argmin(np.abs(CENTERS[1] - f).sum(1))) for f in feats])
        assert np.all(np.bincount(chosen[seed], minlength=4) > 30)
    assert np.mean(chosen[0] != chosen[1]) > 0.5


def test_cluster_bank_formats():
    bank = saved_model.resolve_cluster_bank((CENTERS, COUNTS))
    assert saved_model.resolve_cluster_bank(bank) is bank
    assert saved_model.resolve_cluster_bank({"centers": CENTERS, "counts": COUNTS}).counts.tolist() == COUNTS.tolist()
    assert saved_model.resolve_cluster_bank(None) is None
    styles = pytest.importorskip("pix2pixhd_tf.styles")
    bank = styles.ClusterBank(CENTERS, COUNTS)
    np.testing.assert_array_equal(saved_model.resolve_cluster_bank(bank).centers, CENTERS)


# ------------------------------------------------------------------------------------- REST / gRPC


def test_rest_client_against_an_http_server(exported):
    """client_rest.generate_pngs over real HTTP against the TF Serving JSON emulation."""
    helper = importlib.util.spec_from_file_location("export_client_check", HELPER)
    check = importlib.util.module_from_spec(helper)
    helper.loader.exec_module(check)
    model = tf.saved_model.load(exported.dirs["feat"])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            assert self.path == "/v1/models/pix2pixhd:predict"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = check.rest_predict(model, body)
            payload = json.dumps(answer).encode()
            self.send_response(400 if "error" in answer else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        pngs = client_rest.generate_pngs(url, "pix2pixhd", exported.label_pngs, exported.instance_pngs)
        assert pngs == _output(exported, "feat_png", "image_png_bytes")
        bad = exported.label.copy()
        bad[0, 0, 0] = 200
        with pytest.raises(RuntimeError, match="label_nc=5"):
            client_rest.generate_pngs(url, "pix2pixhd", [_png(bad[0].astype(np.uint8))], exported.instance_pngs[:1])
    finally:
        server.shutdown()
        server.server_close()


def test_grpc_client_against_a_prediction_service(exported):
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    client_grpc = _load_client("client_grpc")
    model = tf.saved_model.load(exported.dirs["feat"])

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            fn = model.signatures[request.model_spec.signature_name or "serving_default"]
            outputs = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            response = predict_pb2.PredictResponse()
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        pngs = client_grpc.generate_pngs(target, "pix2pixhd", exported.label_pngs, exported.instance_pngs)
        assert pngs == _output(exported, "feat_png", "image_png_bytes")
        request = client_grpc.build_tensor_request(
            "pix2pixhd", {"label": exported.label, "instance": exported.instance}
        )
        image = client_grpc.tensor_to_numpy(client_grpc.predict(target, request).outputs["image"])
        np.testing.assert_array_equal(image, _output(exported, "feat_default"))
    finally:
        server.stop(None)


# ------------------------------------------------------------------------------------------ TFLite


@pytest.fixture(scope="module")
def tflite_files(exported, tmp_path_factory) -> dict[str, str]:
    """The feature model's three TFLite variants at (H, W), converted once for the TFLite tests (read only)."""
    opts, G, _ = exported.nets["feat"]
    return tflite.export_tflite(opts, str(tmp_path_factory.mktemp("tflite")), size=(H, W), generator=G)


def test_tflite_variants_match_keras(exported, tflite_files, tmp_path, capsys):
    """Tolerances on the [-1, 1] output: float32 is the same arithmetic (max < 1e-4, measured ~1e-6);
    float16 rounds every weight to 11 significant bits (relative error <= 2^-11 ~ 4.9e-4, which the
    instance norms keep from growing: max < 5e-3, measured ~6e-4); dynamic range stores weights as int8
    per channel (step = max|w|/127) and quantises activations on the fly, ~1% of each range (max < 0.1,
    mean < 0.02, measured ~2e-2 and ~3e-3). The uint8 image of float32 is within one level."""
    opts, G, _ = exported.nets["feat"]
    paths = tflite_files
    assert set(paths) == set(tflite.TFLITE_VARIANTS)
    label, instance = exported.label[:1], exported.instance[:1]
    features = exported.features[:1]
    reference = _keras_image(G, opts, label, instance, features)
    for variant, path in paths.items():
        out = tflite.run_tflite(path, {"label": label, "instance": instance, "features": features})
        assert out["image_float"].shape == (1, H, W, 3) and out["image"].dtype == np.uint8
        diff = np.abs(out["image_float"] - reference)
        assert diff.max() < TFLITE_MAX_ABS[variant], (variant, diff.max())
        assert diff.mean() < TFLITE_MEAN_ABS[variant], (variant, diff.mean())
        if variant == "float32":
            _close_uint8(out["image"], tensor_to_uint8(reference))
        stats = tflite.benchmark_tflite(path, runs=2)
        assert stats["size_mb"] > 0 and stats["median_ms"] > 0
    assert "CPU latency" in capsys.readouterr().out
    with pytest.raises(ValueError, match="multiples of 4"):
        tflite.export_tflite(opts, str(tmp_path), size=(H, 22), generator=G)


def test_tflite_runs_through_litert_when_installed(exported, tflite_files, monkeypatch, capsys):
    """Every .tflite run (run_tflite, benchmark_tflite; the benchmark harness and tools use these) goes through
    `tflite.interpreter_class`: LiteRT's ai_edge_litert when installed (the `test` extra installs it), else
    tf.lite.Interpreter, and both give the same image."""
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed (pip install .[tflite])")
    from ai_edge_litert.interpreter import Interpreter as LiteRT

    path = tflite_files["float32"]
    feed = {"label": exported.label[:1], "instance": exported.instance[:1], "features": exported.features[:1]}

    assert tflite.interpreter_class() is LiteRT and tflite.interpreter_runtime() == "ai_edge_litert"
    assert isinstance(tflite._interpreter(path), LiteRT)
    litert = tflite.run_tflite(path, feed)
    tflite.benchmark_tflite(path, runs=1)
    assert "ai_edge_litert)" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if LiteRT were not installed
    assert tflite.interpreter_class() is tf.lite.Interpreter and tflite.interpreter_runtime() == "tf.lite"
    fallback = tflite.run_tflite(path, feed)
    assert np.abs(litert["image_float"] - fallback["image_float"]).max() < 1e-6
    assert np.array_equal(litert["image"], fallback["image"])


def test_tflite_of_a_wide_generator_whose_blocks_run_as_matmuls(tmp_path):
    """512-channel residual blocks take the im2col matmul path (fast_ops.padded_conv2d): it converts,
    quantises (dynamic range covers the matmul's weights) and gives Keras' image. Four downsamplings and
    wider layers add more int8 rounding than the tiny generator: dynamic range is held to the bounds the
    full G1 meets in benchmarks/results_cpu.md (max 0.34, mean 0.043; measured here ~0.17 and ~0.028)."""
    bounds = {"float32": (TFLITE_MAX_ABS["float32"], TFLITE_MEAN_ABS["float32"]), "dynamic_range": (0.4, 0.05)}
    opts = Options(**{**TINY, "ngf": 32, "n_downsample_global": 4})
    keras.utils.set_random_seed(3)
    G = networks.build_generator(opts)
    label, instance = _maps(1, 32, 48)
    reference = _keras_image(G, opts, label, instance)
    paths = tflite.export_tflite(opts, str(tmp_path), size=(32, 48), generator=G, variants=("float32", "dynamic_range"))
    float_size, quantised_size = (os.path.getsize(paths[v]) for v in ("float32", "dynamic_range"))
    assert quantised_size < 0.3 * float_size  # the block weights (most of the model) are stored as int8
    for variant, path in paths.items():
        diff = np.abs(tflite.run_tflite(path, {"label": label, "instance": instance})["image_float"] - reference)
        assert diff.max() < bounds[variant][0], (variant, diff.max())
        assert diff.mean() < bounds[variant][1], (variant, diff.mean())


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_exports_a_checkpoint(tmp_path):
    """tools/export.py: checkpoint + clusters.npz in, SavedModel version 1 and a float32 TFLite file out."""
    from pix2pixhd_tf.training import checkpoint

    opts = _options("feat").replace(checkpoints_dir=str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(3)
    G, E = networks.build_generator(opts), networks.build_encoder(opts)
    experiment = checkpoint.experiment_dir(opts)
    checkpoint.save(checkpoint.make_checkpoint(G, None, E), checkpoint.checkpoint_dir(experiment, "latest"))
    checkpoint.save_options(opts, experiment)
    styles = pytest.importorskip("pix2pixhd_tf.styles")
    styles.ClusterBank(CENTERS, COUNTS).save(styles.default_cluster_file(opts))

    flagfile = tmp_path / "tiny.cfg"
    flags = {**TINY, **MODELS["feat"], "checkpoints_dir": opts.checkpoints_dir}
    flagfile.write_text("".join(f"--{k}={v}\n" if v is not True else f"--{k}\n" for k, v in flags.items()))
    out = tmp_path / "exported"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), f"--flagfile={flagfile}", f"--export_dir={out}",
         f"--tflite_size={H}x{W}", "--tflite_variants=float32"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cluster bank:" in run.stdout
    model = tf.saved_model.load(str(out / "1"))
    label, instance = _maps()
    image = model.signatures["serving_default"](label=tf.constant(label), instance=tf.constant(instance))[
        "image"
    ].numpy()
    features = sample_features_graph(instance, np.zeros(2, np.int32), _bank(), feat_num=3).numpy()
    _close_uint8(image, tensor_to_uint8(_keras_image(G, opts, label, instance, features)))

    tflite_file = out / "tflite" / "1" / f"tiny_{H}x{W}_float32.tflite"
    result = tflite.run_tflite(
        str(tflite_file), {"label": label[:1], "instance": instance[:1], "features": features[:1]}
    )
    reference = _keras_image(G, opts, label[:1], instance[:1], features[:1])
    assert np.abs(result["image_float"] - reference).max() < TFLITE_MAX_ABS["float32"]
