"""The editor's HTTP API (FastAPI TestClient) on a tiny random-weight instance_feat checkpoint.

The dataset is the synthetic one at 64x128. Locality of edits is asserted as a ratio: with an untrained
generator the change of an edit is largest where the edit was, but instance normalisation (its statistics
are over the whole image) and the receptive field spread a smaller change everywhere. Measured on this
model: the mean change inside the edited pixels is about 5-9x the mean change farther than 8 pixels away
(paint 36 vs 6, restyle 29 vs 3.4, delete 34 vs 6 grey levels); the tests ask for 3x.
"""

import asyncio
import http.client
import http.server
import io
import itertools
import json
import os
import threading
import warnings

import keras
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pix2pixhd_tf import networks
from pix2pixhd_tf.data.synthetic import CAR, PERSON, SIDEWALK, SKY, write_synthetic_dataset
from pix2pixhd_tf.editor.app import (
    BodyLimit,
    DatasetScenes,
    EditorServer,
    TrustedHosts,
    create_app,
    trusted_hosts_for,
)
from pix2pixhd_tf.editor.backends import CheckpointBackend
from pix2pixhd_tf.editor.scene import Limits
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles import ClusterBank, default_cluster_file
from pix2pixhd_tf.training import checkpoint as ckpt

with warnings.catch_warnings():  # Starlette >= 1.0 asks for httpx2 instead of httpx; both work
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TINY = {
    "label_nc": 9,
    "ngf": 8,
    "n_downsample_global": 2,
    "n_blocks_global": 1,
    "instance_feat": True,
    "feat_num": 3,
    "nef": 4,
    "n_downsample_E": 2,
    "n_clusters": 3,
    "no_vgg_loss": True,
}
LIMITS = Limits(max_height=128, max_width=256, max_bytes=50_000)


def make_experiment(root) -> Options:
    """An untrained G and E saved as the latest checkpoint, a 3-cluster bank per class, the dataset."""
    write_synthetic_dataset(str(root / "data"), n_train=2, n_test=2, height=64, width=128, progress=False)
    opts = Options(name="editor", checkpoints_dir=str(root / "ckpt"), dataroot=str(root / "data"), **TINY)
    keras.utils.set_random_seed(0)
    G, E = networks.build_generator(opts), networks.build_encoder(opts)
    ckpt.save(ckpt.make_checkpoint(G, None, E), ckpt.checkpoint_dir(ckpt.experiment_dir(opts), "latest"))
    ckpt.save_options(opts, ckpt.experiment_dir(opts))
    centers = np.random.default_rng(0).uniform(-1, 1, (9, 3, 3)).astype(np.float32)
    ClusterBank(centers, np.full(9, 3)).save(default_cluster_file(opts))
    return opts


@pytest.fixture(scope="module")
def opts(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("editor"))


@pytest.fixture(scope="module")
def client(opts):
    backend = CheckpointBackend.from_options(opts)
    app = create_app(backend, scenes=DatasetScenes.from_options(opts, "test"), limits=LIMITS)
    return TestClient(app)


# ---------------------------------------------------------------------------------------- helpers


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def open_scene(client, name="scene_00000.png") -> dict:
    response = client.post("/api/sessions", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()


def get(client, state, what) -> np.ndarray:
    response = client.get(f"/api/sessions/{state['session']}/{what}")
    assert response.status_code == 200, response.text
    return decode(response.content)


def edit(client, state, **body) -> dict:
    response = client.post(f"/api/sessions/{state['session']}/edit", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def largest(state, class_id) -> dict:
    return max((r for r in state["regions"] if r["class_id"] == class_id), key=lambda r: r["pixels"])


def change_inside_and_far(before: np.ndarray, after: np.ndarray, edited: np.ndarray, margin: int = 8):
    """Mean absolute change (max over RGB) inside the edited pixels, and farther than `margin` from them."""
    diff = np.abs(after.astype(np.float64) - before).max(-1)
    near = ndimage.binary_dilation(edited, iterations=margin)
    return diff[edited].mean(), diff[~near].mean()


# ---------------------------------------------------------------------------------------- opening scenes


def test_config_lists_classes_clusters_and_limits(client):
    config = client.get("/api/config").json()
    classes = config["classes"]
    assert [c["name"] for c in classes][:3] == ["unlabeled", "sky", "road"]
    assert classes[CAR]["thing"] and classes[PERSON]["thing"] and not classes[SKY]["thing"]
    assert all(c["clusters"] == 3 for c in classes) and config["eraser"] == 0
    assert config["backend"]["styles"] and config["backend"]["size_multiple"] == 4
    assert config["limits"] == {"max_height": 128, "max_width": 256, "max_bytes": 50_000}
    assert client.get("/api/scenes").json() == {"phase": "test", "names": ["scene_00000.png", "scene_00001.png"]}


def test_open_a_scene_by_name(client, opts):
    state = open_scene(client)
    assert (state["width"], state["height"], state["revision"]) == (128, 64, 0)
    label = np.asarray(Image.open(f"{opts.dataroot}/test_label/scene_00000.png"))
    np.testing.assert_array_equal(get(client, state, "label.png"), label)
    ids = {r["id"] for r in state["regions"]}
    assert {SKY, 8000, 8001, 8002} <= ids
    page = client.get("/")
    assert page.status_code == 200 and "editor.js" in page.text
    assert client.get("/static/editor.js").status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "../train_label/scene_00000.png",
        "../../../../etc/passwd",
        "/etc/passwd",
        "..",
        "scene_00000.png/../scene_00001.png",
        "./scene_00000.png",
        "test_label/scene_00000.png",
        "%2e%2e%2fmeta.json",
        "",
        None,
        5,
    ],
)
def test_names_outside_the_listing_are_refused(client, name):
    response = client.post("/api/sessions", json={"name": name})
    assert response.status_code == 404
    assert "no scene named" in response.json()["error"]


# ---------------------------------------------------------------------------------------- uploads


def _upload_cases(opts):
    label = np.asarray(Image.open(f"{opts.dataroot}/test_label/scene_00001.png"))
    instance = np.asarray(Image.open(f"{opts.dataroot}/test_inst/scene_00001.png")).astype(np.uint16)
    noise = np.random.default_rng(0).integers(0, 2**16, (64, 256)).astype(np.uint16)  # 32 KB + 32 KB
    return {
        "good": ({"label": png(label), "instance": png(instance)}, 201, None),
        "label only": ({"label": png(label)}, 201, None),
        "not a PNG": ({"label": b"\xff\xd8\xff\xe0 a JPEG", "instance": png(instance)}, 415, "not a PNG"),
        "too many pixels": ({"label": png(np.zeros((64, 512), np.uint8))}, 413, "limit is 256x128"),
        "too many bytes": ({"label": png(label), "instance": png(np.concatenate([noise, noise]))}, 413, "48.8 KB"),
        "mismatched": ({"label": png(label), "instance": png(instance[:, :64])}, 422, "same size"),
        "label id 9": ({"label": png(np.full((64, 128), 9, np.uint8))}, 422, "label_nc=9"),
        "not a multiple": ({"label": png(label[:, :126])}, 422, "multiples of 4"),
        "RGB label": ({"label": png(np.zeros((64, 128, 3), np.uint8))}, 422, "single-channel"),
        "no label": ({"instance": png(instance)}, 422, "label"),
    }


@pytest.mark.parametrize(
    "case",
    ["good", "label only", "not a PNG", "too many pixels", "too many bytes", "mismatched", "label id 9",
     "not a multiple", "RGB label", "no label"],
)  # fmt: skip
def test_uploads_give_the_right_status(client, opts, case):
    files, status, message = _upload_cases(opts)[case]
    response = client.post("/api/sessions/upload", files={k: (f"{k}.png", v, "image/png") for k, v in files.items()})
    assert response.status_code == status, response.text
    if message is None:
        state = response.json()
        label = np.asarray(Image.open(f"{opts.dataroot}/test_label/scene_00001.png"))
        np.testing.assert_array_equal(get(client, state, "label.png"), label)
        instance = get(client, state, "instance.png").astype(np.int64)
        if "instance" in files:
            np.testing.assert_array_equal(
                instance, np.asarray(Image.open(f"{opts.dataroot}/test_inst/scene_00001.png"))
            )
        else:  # derived: stuff keeps its class id, each connected car/person region becomes an object
            np.testing.assert_array_equal(np.where(instance >= 1000, instance // 1000, instance), label)
            assert {8000, 7000} <= set(np.unique(instance).tolist())
    else:
        assert message in response.json()["error"]


def test_bad_edits_and_unknown_sessions(client):
    state = open_scene(client)
    sid = state["session"]
    cases = [
        ({"op": "explode"}, 400, "unknown edit op"),
        ({"op": "paint", "points": [[1, 1]]}, 400, "missing class_id"),
        ({"op": "paint", "points": [[1, 1]], "class_id": 2, "colour": 1}, 400, "unknown colour"),
        ({"op": "paint", "points": [[1, 1]], "class_id": 12}, 422, "outside 0..8"),
        ({"op": "paint", "points": "here", "class_id": 2}, 422, "[x, y]"),
        ({"op": "delete", "region": 8999}, 404, "no region 8999"),
        ({"op": "restyle", "region": 8000, "style": 7}, 422, "has 3 style clusters"),
        ({"op": "add_object", "points": [[1, 1]], "class_id": SKY}, 422, "is stuff"),
    ]
    for body, status, message in cases:
        response = client.post(f"/api/sessions/{sid}/edit", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"]
    assert client.post(f"/api/sessions/{sid}/edit", content=b"not json").status_code == 422
    missing = client.get("/api/sessions/nope/image.png")
    assert missing.status_code == 404 and "no session" in missing.json()["error"]
    assert client.get(f"/api/sessions/{sid}/region", params={"x": 500, "y": 1}).status_code == 422


# ---------------------------------------------------------------------------------------- edits and images


def test_paint_changes_the_image_where_the_stroke_was(client):
    state = open_scene(client)
    before, label0 = get(client, state, "image.png"), get(client, state, "label.png")
    after_state = edit(client, state, op="paint", points=[[20, 10], [35, 12]], class_id=SIDEWALK, radius=4)
    assert after_state["changed"] and after_state["revision"] == 1 and after_state["can_undo"]
    after, label1 = get(client, state, "image.png"), get(client, state, "label.png")
    painted = label0 != label1
    assert painted.sum() > 100 and (label1[painted] == SIDEWALK).all()
    inside, far = change_inside_and_far(before, after, painted)
    assert inside > 10 and inside > 3 * far, (inside, far)
    undone = client.post(f"/api/sessions/{state['session']}/undo").json()
    assert undone["revision"] == 2 and undone["can_redo"]
    np.testing.assert_array_equal(get(client, state, "image.png"), before)  # same maps, same image


def test_restyle_changes_the_object_and_its_style_persists(client):
    state = open_scene(client)
    car = largest(state, CAR)
    edit(client, state, op="restyle", region=car["id"], style=0)
    before = get(client, state, "image.png")
    restyled = edit(client, state, op="restyle", region=car["id"], style=2)
    after = get(client, state, "image.png")
    assert restyled["styles"]["instances"] == {str(car["id"]): 2}
    mask = get(client, state, "instance.png") == car["id"]
    inside, far = change_inside_and_far(before, after, mask)
    assert inside > 10 and inside > 3 * far, (inside, far)
    # An edit elsewhere keeps the chosen style, and regenerating is deterministic.
    painted = edit(client, state, op="paint", points=[[5, 5]], class_id=SIDEWALK, radius=2)
    assert next(r for r in painted["regions"] if r["id"] == car["id"])["style"] == 2
    random = edit(client, state, op="restyle", region=car["id"], style="random")
    assert random["styles"]["instances"][str(car["id"])] in (0, 1, 2)


def test_delete_changes_where_the_object_was(client):
    state = open_scene(client)
    car = largest(state, CAR)
    before, instance0 = get(client, state, "image.png"), get(client, state, "instance.png")
    after_state = edit(client, state, op="delete", region=car["id"])
    assert car["id"] not in {r["id"] for r in after_state["regions"]}
    after = get(client, state, "image.png")
    inside, far = change_inside_and_far(before, after, instance0 == car["id"])
    assert inside > 10 and inside > 3 * far, (inside, far)


def test_add_object_and_relabel_return_the_new_object(client):
    state = open_scene(client)
    added = edit(client, state, op="add_object", points=[[10, 5], [20, 5]], class_id=CAR, radius=3)
    assert added["selected"] == 8003  # 8000..8002 exist
    relabelled = edit(client, state, op="relabel", region=8003, class_id=PERSON)
    assert relabelled["selected"] == 7004  # 7000..7003 exist
    region = client.get(f"/api/sessions/{state['session']}/region", params={"x": 15, "y": 5}).json()
    assert region["id"] == 7004 and region["class_name"] == "person"
    mask = get(client, state, "regions/7004/mask.png")
    assert mask.shape == (64, 128, 4) and mask[5, 15, 3] > 0 and mask[60, 120, 3] == 0


def test_downloads_round_trip_into_a_new_session(client):
    state = open_scene(client, "scene_00001.png")
    edit(client, state, op="paint", points=[[30, 20], [60, 25]], class_id=SIDEWALK, radius=3)
    car = largest(state, CAR)
    edit(client, state, op="restyle", region=car["id"], style=1)
    final = edit(client, state, op="reseed", seed=11)
    image = client.get(f"/api/sessions/{state['session']}/image.png", params={"download": True})
    assert "attachment" in image.headers["content-disposition"] and image.headers["x-revision"] == "3"
    label = client.get(f"/api/sessions/{state['session']}/label.png")
    instance = client.get(f"/api/sessions/{state['session']}/instance.png")
    styles = client.get(f"/api/sessions/{state['session']}/styles.json")
    assert Image.open(io.BytesIO(label.content)).mode == "L"
    assert Image.open(io.BytesIO(instance.content)).mode.startswith("I;16")
    assert styles.json() == {"instances": {str(car["id"]): 1}, "classes": {}} and styles.headers["x-seed"] == "11"
    restored = client.post(
        "/api/sessions/upload",
        files={"label": ("l.png", label.content, "image/png"), "instance": ("i.png", instance.content, "image/png")},
        data={"name": "scene_00001.png", "styles": styles.text, "seed": "11"},
    )
    assert restored.status_code == 201, restored.text
    copy = restored.json()
    assert copy["regions"] == final["regions"] and copy["seed"] == 11
    np.testing.assert_array_equal(get(client, copy, "image.png"), decode(image.content))


def test_style_swatches_render_the_region_in_each_cluster(client):
    state = open_scene(client)
    car = largest(state, CAR)  # 32x12 pixels at x 86..118, y 49..61
    swatch = f"/api/sessions/{state['session']}/regions/{car['id']}/styles"
    a, b = client.get(f"{swatch}/0.png"), client.get(f"{swatch}/1.png")
    assert a.status_code == b.status_code == 200, a.text
    patch_a, patch_b = decode(a.content), decode(b.content)
    assert patch_a.shape == (32, 64, 3)  # the car with half its size around it, in multiples of 4
    assert np.abs(patch_a.astype(int) - patch_b).mean() > 1
    assert client.get(f"{swatch}/3.png").status_code == 422
    assert client.get(f"/api/sessions/{state['session']}/regions/8999/styles/0.png").status_code == 404


# ---------------------------------------------------------------------------------------- other backends


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """The part of TF Serving's REST API the editor uses (metadata, columnar predict), over a SavedModel."""

    model = None
    prefix = "/v1/models/tiny"

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != self.prefix + "/metadata":
            return self._reply(404, {"error": "not found"})
        defs = {}
        for name, fn in self.model.signatures.items():
            inputs = {
                key: {"dtype": "DT_" + spec.dtype.name.upper(), "tensor_shape": {"dim": [
                    {"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]}}
                for key, spec in fn.structured_input_signature[1].items()
            }  # fmt: skip
            defs[name] = {"inputs": inputs, "outputs": {}, "method_name": "tensorflow/serving/predict"}
        self._reply(200, {"metadata": {"signature_def": {"signature_def": defs}}})

    def do_POST(self):
        import tensorflow as tf

        if self.path != self.prefix + ":predict":
            return self._reply(404, {"error": "not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fn = self.model.signatures[body["signature_name"]]
        specs = fn.structured_input_signature[1]
        try:
            outputs = fn(**{k: tf.constant(v, specs[k].dtype) for k, v in body["inputs"].items()})
        except Exception as e:  # noqa: BLE001 - TF Serving answers INVALID_ARGUMENT and the like with 400
            return self._reply(400, {"error": str(e)})
        (value,) = outputs.values()
        self._reply(200, {"outputs": value.numpy().tolist()})


@pytest.mark.slow
def test_saved_model_and_rest_backends_match_the_checkpoint(opts, tmp_path):
    """Same weights, seed and styles: the three backends give the same image (features computed in the app)."""
    from pix2pixhd_tf.editor.backends import RestBackend, SavedModelBackend, make_backend
    from pix2pixhd_tf.serving.saved_model import export_model

    export_dir = export_model(opts, str(tmp_path / "export"))["saved_model"]
    label = np.asarray(Image.open(f"{opts.dataroot}/test_label/scene_00000.png")).astype(np.int32)
    instance = np.asarray(Image.open(f"{opts.dataroot}/test_inst/scene_00000.png")).astype(np.int32)
    styles = {8002: 1, 8000: (0.5, -0.5, 0.25)}
    reference = CheckpointBackend.from_options(opts).generate(label, instance, styles=styles, seed=4)

    saved = make_backend(opts, saved_model=str(tmp_path / "export"))  # the export dir: its newest version
    assert isinstance(saved, SavedModelBackend) and saved.path == export_dir
    assert saved.clusters is not None and saved.size_multiple == 4 and saved.can_choose_styles
    assert np.abs(saved.generate(label, instance, styles=styles, seed=4).astype(int) - reference).max() <= 1

    _FakeServing.model = saved.model
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/tiny"
        rest = make_backend(opts, serving_url=url)
        assert isinstance(rest, RestBackend) and rest.feat_num == 3 and rest.clusters is not None
        image = rest.generate(label, instance, styles=styles, seed=4)
        assert np.abs(image.astype(int) - reference).max() <= 1  # features travel as 6-decimal JSON
        with pytest.raises(RuntimeError, match="HTTP 400"):
            rest.generate(label[:, :126], instance[:, :126])  # the export refuses sizes off the multiple
        # Through the app too.
        client = TestClient(create_app(rest, scenes=DatasetScenes.from_options(opts, "test")))
        state = open_scene(client)
        assert get(client, state, "image.png").shape == (64, 128, 3)
    finally:
        server.shutdown()


def test_latency_benchmark_runs(opts):
    from benchmarks.editor_latency import DEFAULT_FLAGFILE, REPO_ROOT, measure_edit_latency
    from pix2pixhd_tf.flags import options_from_flagfile

    result = measure_edit_latency(opts, height=64, width=128, runs=3, warmup=1)
    assert result["runs"] == 3 and 0 < result["min_s"] <= result["median_s"] <= result["max_s"]
    assert 0 < result["generate_median_s"] < result["max_s"] and result["nproc"] >= 1 and result["cpu"]
    local = options_from_flagfile(DEFAULT_FLAGFILE)  # configs/local.cfg
    assert (local.name, local.ngf, local.instance_feat, local.n_clusters) == ("local_synthetic", 32, True, 10)
    # A nested, repository-relative --flagfile line: the 512p flags, then 1024p's own over them.
    hd = options_from_flagfile(os.path.join(REPO_ROOT, "configs", "cityscapes_1024p.cfg"))
    assert (hd.name, hd.netG, hd.ngf, hd.label_nc, hd.fineSize) == ("label2city_1024p", "local", 32, 35, 1024)


# ---------------------------------------------------------------------------------------- hostile requests (issue 19)


def test_an_absurd_style_vector_is_refused_and_changes_nothing(client, opts):
    """Issue 19: [1e300, 1, 1] was accepted and turned the image black."""
    state = open_scene(client)
    url = f"/api/sessions/{state['session']}/edit"
    car = largest(state, CAR)["id"]
    response = client.post(url, json={"op": "restyle", "region": car, "style": [1e300, 1, 1]})
    assert response.status_code == 422 and "-10..10" in response.json()["error"]
    after = client.get(f"/api/sessions/{state['session']}").json()
    assert str(car) not in after["styles"]["instances"] and after["revision"] == state["revision"]
    styles = json.dumps({"instances": {str(car): [1e300, 1, 1]}})
    label = png(np.asarray(Image.open(f"{opts.dataroot}/test_label/scene_00000.png")))
    instance = png(np.asarray(Image.open(f"{opts.dataroot}/test_inst/scene_00000.png")).astype(np.uint16))
    files = {"label": ("l.png", label, "image/png"), "instance": ("i.png", instance, "image/png")}
    response = client.post("/api/sessions/upload", files=files, data={"styles": styles})
    assert response.status_code == 422 and "-10..10" in response.json()["error"]


def test_a_huge_stroke_on_a_large_scene_is_a_422(opts):
    backend = CheckpointBackend.from_options(opts)
    big = TestClient(create_app(backend, limits=Limits(2048, 2048, 2**20)))
    response = big.post(
        "/api/sessions/upload", files={"label": ("label.png", png(np.full((2048, 2048), SKY, np.uint8)), "image/png")}
    )
    assert response.status_code == 201, response.text
    state = response.json()
    points = (np.random.default_rng(0).normal(0, 10, (10_000, 2)).cumsum(0) + 1024).tolist()
    body = {"op": "paint", "points": points, "class_id": SIDEWALK, "radius": 512}
    response = big.post(f"/api/sessions/{state['session']}/edit", json=body)
    assert response.status_code == 422 and "shorter strokes" in response.json()["error"]
    assert big.get(f"/api/sessions/{state['session']}").json()["revision"] == 0


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413(client, opts):
    """No Content-Length: the body is counted as it arrives (issue 19: it used to be read whole)."""

    def body(chunks: int):
        yield b'--b\r\nContent-Disposition: form-data; name="label"; filename="l.png"\r\n\r\n'
        for _ in range(chunks):
            yield b"x" * 10_000

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    response = client.post("/api/sessions/upload", content=body(1000), headers=headers)
    assert response.status_code == 413 and "limit is 256x128 pixels and 48.8 KB" in response.json()["error"]
    # Chunked uploads within the limit still work.
    label = png(np.asarray(Image.open(f"{opts.dataroot}/test_label/scene_00001.png")))
    form = b'--b\r\nContent-Disposition: form-data; name="label"; filename="l.png"\r\n'
    form += b"Content-Type: image/png\r\n\r\n" + label + b"\r\n--b--\r\n"
    response = client.post("/api/sessions/upload", content=iter([form[:100], form[100:]]), headers=headers)
    assert response.status_code == 201, response.text


def test_the_body_limit_stops_the_app_reading_at_the_limit():
    """The app behind BodyLimit sees at most the limit (plus one chunk) of a stream without Content-Length."""
    seen, sent = [], []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            seen.append(len(message["body"]))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    chunks = iter([{"type": "http.request", "body": b"x" * 1000, "more_body": True}] * 100)

    async def receive():
        return next(chunks)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, max_bytes=2500, message="too large: at most 2500 bytes")(scope, receive, send))
    assert sum(seen) <= 2500 and sent[0]["status"] == 413 and b"at most 2500 bytes" in sent[1]["body"]
    assert len(list(chunks)) == 97  # the rest was never read


def test_requests_for_other_hosts_are_refused(client):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 still sends Host: evil.example."""
    guarded = TrustedHosts(client.app, trusted_hosts_for("127.0.0.1"))
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://LOCALHOST"):
        assert TestClient(guarded, base_url=base).get("/api/config").status_code == 200, base
    response = TestClient(guarded, base_url="http://evil.example:8000").get("/api/config")
    assert response.status_code == 400
    assert (
        "'evil.example:8000'" in response.json()["error"] and "--trusted_hosts=evil.example" in response.json()["error"]
    )
    assert TestClient(TrustedHosts(client.app, ["*"]), base_url="http://evil.example").get("/").status_code == 200
    named = TrustedHosts(client.app, trusted_hosts_for("0.0.0.0", ["editor.lan"]))
    assert TestClient(named, base_url="http://editor.lan:8000").get("/api/config").status_code == 200


def test_the_served_editor_checks_hosts_and_a_taken_port_is_named(client):
    server = EditorServer(client.app, host="127.0.0.1", port=0).start()
    try:
        for host, status in ((f"127.0.0.1:{server.port}", 200), ("evil.example", 400)):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/api/config", headers={"Host": host})
            assert connection.getresponse().status == status, host
            connection.close()
        # A chunked upload (no Content-Length) through uvicorn: the app stops reading at the limit; 413.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        part = b'--b\r\nContent-Disposition: form-data; name="label"; filename="l.png"\r\n\r\n'
        chunks = itertools.chain([part], (b"x" * 10_000 for _ in range(1000)))
        headers = {"Host": "localhost", "Content-Type": "multipart/form-data; boundary=b"}
        try:
            connection.request("POST", "/api/sessions/upload", body=chunks, headers=headers, encode_chunked=True)
            status = connection.getresponse().status
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed while we still sent
            status = 413
        assert status == 413
        connection.close()
        with pytest.raises(OSError, match=f"port {server.port} on 127.0.0.1 is taken .*--port=0"):
            EditorServer(client.app, host="127.0.0.1", port=server.port)
    finally:
        server.stop()
