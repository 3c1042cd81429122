"""ONNX export (pix2pixhd_tf/serving/onnx_export.py, onnx_sampling.py, tools/export.py --formats,
export/client_onnx.py).

Three tiny models (a global G, a local G, an instance-feature model) are exported once per module; ONNX
Runtime runs them at two sizes and batch sizes without re-export, against the in-memory Keras generator.
A tiny feature experiment with a cluster bank is exported once (SavedModel, {name}.onnx, {name}_seed.onnx)
for the in-graph style sampling, checked against the SavedModel's generate_with_seed and the numpy twin.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

from pix2pixhd_tf import networks
from pix2pixhd_tf.convert import convert_checkpoint, save_converted
from pix2pixhd_tf.inputs import encode_input, to_uint8
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving import onnx_export, onnx_sampling
from pix2pixhd_tf.serving.saved_model import export_model
from pix2pixhd_tf.styles import ClusterBank, cluster_draw, sample_feature_map
from pix2pixhd_tf.styles.bank import default_cluster_file
from pix2pixhd_tf.training import checkpoint

try:  # PyTorch (the `test` extra) for the official-checkpoint test only
    import torch

    from pix2pixhd_tf.testing import torch_reference as ref
except ImportError:
    torch = None

ROOT = Path(__file__).resolve().parents[1]
TINY = {"label_nc": 5, "ngf": 4, "n_downsample_global": 2, "n_blocks_global": 1, "feat_num": 3}
MODELS = {
    "global": {},
    "local": {"netG": "local", "n_local_enhancers": 1, "n_blocks_local": 1},
    "feat": {"instance_feat": True},
}
SIZES = [(2, 16, 24), (1, 32, 40)]  # multiples of 8 (the local G's size multiple)
# The seed model's bank: class 0 has no clusters (zero features), classes 1-4 have 4, 2, 1 and 3.
CENTERS = np.random.default_rng(5).uniform(-1, 1, (5, 4, 3)).astype(np.float32)
COUNTS = np.array([0, 4, 2, 1, 3], np.int32)


def _maps(n, h, w, seed=0, label_nc=5):
    rng = np.random.default_rng(seed)
    label = np.repeat(np.repeat(rng.integers(0, label_nc, (n, h // 4, w // 4)), 4, 1), 4, 2).astype(np.int32)
    instance = (label * 1000 + rng.integers(0, 2, label.shape)).astype(np.int32)
    return label, instance


def _features(n, h, w, seed=0):
    return np.random.default_rng(seed + 7).uniform(-1, 1, (n, h, w, 3)).astype(np.float32)


def _keras_image(G, opts, label, instance, features=None, one_hot=None):
    x = encode_input(label, instance, label_nc=opts.label_nc) if one_hot is None else one_hot
    if features is not None:
        x = tf.concat([x, features], axis=-1)
    return to_uint8(G(x, training=False)).numpy()


def _levels(a, b) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for kind, extra in MODELS.items():
        tf.keras.utils.set_random_seed(3)
        opts = Options(name=f"tiny_{kind}", **TINY, **extra)
        G = networks.build_generator(opts)
        path = onnx_export.export_onnx(opts, str(tmp_path_factory.mktemp(kind)), generator=G)
        out[kind] = (opts, G, path)
    return out


def _feed(opts, label, instance, features=None):
    feed = {"label": label, "instance": instance}
    if opts.use_features:
        feed["features"] = features
    return feed


@pytest.mark.parametrize("kind", list(MODELS))
def test_onnx_matches_keras_at_two_sizes(exported, kind):
    opts, G, path = exported[kind]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == onnx_export.onnx_input_names(opts)
    for i in session.get_inputs():  # N, H, W are symbolic (dynamic); only channels are fixed
        assert all(isinstance(d, str) for d in i.shape[:3])
    assert [o.name for o in session.get_outputs()] == ["image"]
    for n, h, w in SIZES:
        label, instance = _maps(n, h, w)
        features = _features(n, h, w) if opts.use_features else None
        image = session.run(None, _feed(opts, label, instance, features))[0]
        assert image.dtype == np.uint8 and image.shape == (n, h, w, 3)
        assert _levels(image, _keras_image(G, opts, label, instance, features)) <= 1


@pytest.mark.parametrize("kind", list(MODELS))
def test_float16_weights_within_one_level(exported, kind, tmp_path):
    """float16 weights, float32 compute: every pixel within one uint8 level of Keras (measured on these nets
    and an ngf 32 global G: 1.6-4.4% of pixel values one level off, vs 0.005-0.014% for float32)."""
    opts, G, path = exported[kind]
    path16 = onnx_export.float16_weights(path, str(tmp_path / "half.onnx"))
    assert os.path.getsize(path16) < os.path.getsize(path)
    for n, h, w in SIZES:
        label, instance = _maps(n, h, w)
        features = _features(n, h, w) if opts.use_features else None
        image = onnx_export.run_onnx(path16, _feed(opts, label, instance, features))["image"]
        assert image.shape == (n, h, w, 3)
        assert _levels(image, _keras_image(G, opts, label, instance, features)) <= 1


def test_label_out_of_range_is_not_an_error(exported):
    """ONNX has no INVALID_ARGUMENT: an id >= label_nc gives an all-zero one-hot at that pixel (as TFLite),
    a negative id -k is read as class label_nc - k (ONNX OneHot wraps negative indices)."""
    opts, G, path = exported["global"]
    label, instance = _maps(1, 16, 24)
    too_big = label.copy()
    too_big[:, :8] = opts.label_nc
    image = onnx_export.run_onnx(path, {"label": too_big, "instance": instance})["image"]
    one_hot = encode_input(np.clip(too_big, 0, opts.label_nc - 1), instance, label_nc=opts.label_nc).numpy()
    one_hot[:, :8, :, : opts.label_nc] = 0.0  # the all-zero one-hot
    assert _levels(image, _keras_image(G, opts, None, None, one_hot=one_hot)) <= 1

    negative = label.copy()
    negative[:, :8] = -1
    wrapped = label.copy()
    wrapped[:, :8] = opts.label_nc - 1
    got = onnx_export.run_onnx(path, {"label": negative, "instance": instance})["image"]
    assert _levels(got, _keras_image(G, opts, wrapped, instance)) <= 1


def test_bad_sizes_and_dtypes(exported):
    """A size that is not a multiple of G's size multiple runs on a global G and returns another size, and
    fails in ONNX Runtime on a local G (its skip connection adds mismatched sizes); a wrong dtype, rank or a
    missing input is refused by ONNX Runtime."""
    _, _, path = exported["global"]
    label, instance = _maps(1, 16, 24)
    odd = {"label": label[:, :14, :22], "instance": instance[:, :14, :22]}
    image = onnx_export.run_onnx(path, odd)["image"]
    assert image.shape[1:3] != (14, 22)
    _, _, local_path = exported["local"]
    with pytest.raises(Exception, match="(?i)broadcast|shape|dimension"):  # the skip connection's Add
        onnx_export.run_onnx(local_path, {"label": label[:, :12, :20], "instance": instance[:, :12, :20]})
    with pytest.raises(Exception, match="(?i)type|INVALID_ARGUMENT"):
        onnx_export.run_onnx(path, {"label": label.astype(np.float32), "instance": instance})
    with pytest.raises(Exception, match="(?i)rank"):
        onnx_export.run_onnx(path, {"label": label[0], "instance": instance[0]})
    with pytest.raises(ValueError, match="instance"):
        onnx_export.run_onnx(path, {"label": label})
    _, _, feat_path = exported["feat"]
    with pytest.raises(Exception, match="(?i)dimensions"):  # features with 2 channels instead of feat_num 3
        onnx_export.run_onnx(
            feat_path, {"label": label, "instance": instance, "features": _features(1, 16, 24)[..., :2]}
        )


def test_converted_official_checkpoint_exports_to_onnx_and_matches_pytorch(tmp_path):
    """Official .pth -> convert_checkpoint -> our checkpoint -> export_model(formats=['onnx'])."""
    if torch is None:
        pytest.skip("needs torch")
    torch.manual_seed(1)
    opts = Options(label_nc=5, ngf=8, n_downsample_global=2, n_blocks_global=1, netG="local",
                   n_local_enhancers=1, n_blocks_local=1, name="local",
                   checkpoints_dir=str(tmp_path / "ours"))  # fmt: skip
    torch_G = ref.LocalEnhancer(opts.generator_input_nc, opts.output_nc, opts.ngf, opts.n_downsample_global,
                                opts.n_blocks_global, opts.n_local_enhancers, opts.n_blocks_local)  # fmt: skip
    torch.save(torch_G.state_dict(), tmp_path / "latest_net_G.pth")
    G, D, E = convert_checkpoint(opts, tmp_path)
    save_converted(opts, G, D, E)
    result = export_model(opts, str(tmp_path / "export"), formats=["onnx"])
    path = result["onnx"]
    assert result["saved_model"] is None and result["tflite"] == {} and result["onnx_float16"] is None
    assert path == str(tmp_path / "export" / "onnx" / "1" / "local.onnx")

    label, instance = _maps(2, 32, 48)
    image = onnx_export.run_onnx(path, {"label": label, "instance": instance})["image"]
    x = encode_input(label, instance, label_nc=opts.label_nc).numpy()
    with torch.no_grad():
        expected = torch_G(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    expected_uint8 = np.clip(np.round((expected + 1.0) * 127.5), 0, 255)
    assert image.shape == (2, 32, 48, 3)
    assert _levels(image, expected_uint8) <= 1


def _client_with_maps(label: np.ndarray, instance: np.ndarray, tmp_path):
    """export/client_onnx.py as a module, with label.png / instance.png of the first maps written to tmp_path."""
    Image.fromarray(label[0].astype(np.uint8)).save(tmp_path / "label.png")
    Image.fromarray(instance[0].astype(np.uint16)).save(tmp_path / "instance.png")
    spec = importlib.util.spec_from_file_location("client_onnx", ROOT / "export" / "client_onnx.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client, tmp_path / "out.png"


def test_client_onnx_writes_the_image(exported, tmp_path):
    opts, G, path = exported["global"]
    label, instance = _maps(1, 16, 24)
    client, out = _client_with_maps(label, instance, tmp_path)
    client.main(["--model", path, "--label", str(tmp_path / "label.png"),
                 "--instance", str(tmp_path / "instance.png"), "--out", str(out)])  # fmt: skip
    written = np.asarray(Image.open(out))
    assert written.shape == (16, 24, 3)
    assert _levels(written, _keras_image(G, opts, label, instance)[0]) <= 1
    with pytest.raises(SystemExit, match=r"label ids must be in \[0, 5\)"):
        bad = label.copy()
        bad[0, 0, 0] = 9
        Image.fromarray(bad[0].astype(np.uint8)).save(tmp_path / "bad.png")
        client.main(["--model", path, "--label", str(tmp_path / "bad.png"), "--instance",
                     str(tmp_path / "instance.png"), "--out", str(out), "--label_nc", "5"])  # fmt: skip
    assert os.path.exists(out)


def test_export_cli_formats(tmp_path):
    """tools/export.py --formats=saved_model,onnx: the SavedModel version and onnx/<same version>/<name>.onnx;
    without --formats only the SavedModel (today's default output)."""
    opts = Options(name="tiny", checkpoints_dir=str(tmp_path / "ckpt"), **TINY)
    tf.keras.utils.set_random_seed(3)
    G = networks.build_generator(opts)
    experiment = checkpoint.experiment_dir(opts)
    checkpoint.save(checkpoint.make_checkpoint(G, None, None), checkpoint.checkpoint_dir(experiment, "latest"))
    checkpoint.save_options(opts, experiment)
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text(
        "".join(f"--{k}={v}\n" for k, v in {**TINY, "name": "tiny", "checkpoints_dir": opts.checkpoints_dir}.items())
    )
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    def export(out, *extra) -> tuple[subprocess.Popen, Path]:
        """Start tools/export.py; its stdout and stderr go to files (no pipe stalls while the other runs)."""
        with open(f"{out}.stdout", "w") as stdout, open(f"{out}.stderr", "w") as stderr:
            run = subprocess.Popen(
                [sys.executable, str(ROOT / "tools" / "export.py"), f"--flagfile={flagfile}", f"--export_dir={out}",
                 *extra],
                stdout=stdout, stderr=stderr, text=True, env=env, cwd=tmp_path,
            )  # fmt: skip
        return run, out

    def finish(started: tuple[subprocess.Popen, Path]) -> str:
        run, out = started
        run.wait(timeout=300)
        assert run.returncode == 0, Path(f"{out}.stderr").read_text()[-3000:]
        return Path(f"{out}.stdout").read_text()

    # The two exports run side by side (each mostly imports TensorFlow). `out` already holds version 1, as after
    # an earlier export, so the second checks that the ONNX folder takes the SavedModel's version (2), not 1.
    default_out, out = tmp_path / "default", tmp_path / "exported"
    (out / "1").mkdir(parents=True)
    runs = [export(default_out), export(out, "--formats=saved_model,onnx", "--onnx_float16")]
    default_stdout, stdout = (finish(run) for run in runs)
    assert "ONNX" not in default_stdout and (default_out / "1").is_dir() and not (default_out / "onnx").exists()
    onnx_file = out / "onnx" / "2" / "tiny.onnx"
    assert f"ONNX: {onnx_file}" in stdout and (out / "2").is_dir()
    assert f"ONNX float16 weights: {out / 'onnx' / '2' / 'tiny_float16.onnx'}" in stdout
    label, instance = _maps(1, 16, 24)
    image = onnx_export.run_onnx(str(onnx_file), {"label": label, "instance": instance})["image"]
    assert _levels(image, _keras_image(G, opts, label, instance)) <= 1
    model = tf.saved_model.load(str(out / "2"))
    served = model.signatures["serving_default"](label=tf.constant(label), instance=tf.constant(instance))["image"]
    assert _levels(image, served.numpy()) <= 1


# ------------------------------------------------------------------------- in-graph style sampling


@pytest.mark.parametrize("max_index,rounds", [(2**31 - 1, 4), (2**31 - 1, 8), (1000, 4), (2**20, 6), (2**40 + 5, 4)])
def test_index_shuffle_equals_random_index_shuffle(max_index, rounds):
    """The ONNX-convertible Simon cipher is TensorFlow's RandomIndexShuffle bit for bit: our draw's
    max_index 2^31-1 (32-bit block, cycle walking) and other block sizes, arbitrary int64 key words."""
    rng = np.random.default_rng(max_index % 1000 + rounds)
    index = rng.integers(0, max_index + 1, 4000, dtype=np.int64)
    key = rng.integers(-(2**40), 2**40, (4000, 3), dtype=np.int64)
    expected = tf.raw_ops.RandomIndexShuffle(index=index, seed=key, max_index=np.int64(max_index), rounds=rounds)
    got = tf.function(lambda i, k: onnx_sampling.index_shuffle(i, k, max_index, rounds))(index, key)  # graph: fast walk
    assert got.dtype == tf.int64
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_portable_draw_equals_cluster_draw_in_onnx_runtime(tmp_path):
    """`cluster_draw_portable`, converted by tf2onnx and run by ONNX Runtime, draws exactly `cluster_draw`'s
    clusters (ids negative and above 2^31 included, seeds over the whole int32 range, counts 0..12)."""
    import tf2onnx

    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(-(2**40), 2**40, 3000), rng.integers(0, 40000, 3000)]).astype(np.int64)
    seeds = rng.integers(0, 2**31, ids.size).astype(np.int64)
    seeds[:10] = [0, 1, 2**31 - 1, 65535, 65536, 5, 5, 5, 5, 5]
    counts = rng.integers(0, 13, ids.size).astype(np.int32)
    expected = cluster_draw(ids, seeds, counts).numpy()
    assert np.array_equal(onnx_sampling.cluster_draw_portable(ids, seeds, counts).numpy(), expected)

    specs = [tf.TensorSpec([None], tf.int64, "ids"), tf.TensorSpec([None], tf.int64, "seeds"),
             tf.TensorSpec([None], tf.int32, "counts")]  # fmt: skip
    fn = tf.function(lambda i, s, c: {"cluster": onnx_sampling.cluster_draw_portable(i, s, c)}, input_signature=specs)
    path = str(tmp_path / "draw.onnx")
    tf2onnx.convert.from_function(fn, input_signature=specs, opset=onnx_export.ONNX_OPSET, output_path=path)
    got = onnx_export.run_onnx(path, {"ids": ids, "seeds": seeds, "counts": counts})["cluster"]
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A tiny instance-feature experiment with a cluster bank, exported by export_model (SavedModel + ONNX)."""
    root = tmp_path_factory.mktemp("seeded")
    opts = Options(name="tiny_seed", checkpoints_dir=str(root / "ckpt"), instance_feat=True, **TINY)
    tf.keras.utils.set_random_seed(3)
    G, E = networks.build_generator(opts), networks.build_encoder(opts)
    experiment = checkpoint.experiment_dir(opts)
    checkpoint.save(checkpoint.make_checkpoint(G, None, E), checkpoint.checkpoint_dir(experiment, "latest"))
    checkpoint.save_options(opts, experiment)
    bank = ClusterBank(CENTERS, COUNTS)
    bank.save(default_cluster_file(opts))
    result = export_model(opts, str(root / "export"), formats=["saved_model", "onnx"], onnx_float16=True)
    return opts, G, bank, result, tf.saved_model.load(result["saved_model"])


def _seeded_maps(n, h, w, seed=0):
    """Labels 0-4 in 4x4 blocks; instances of classes 1, 3, 4 are things (id * 1000 + k, k up to 2)."""
    label, _ = _maps(n, h, w, seed)
    rng = np.random.default_rng(seed + 1)
    instance = np.where(np.isin(label, [1, 3, 4]), label * 1000 + rng.integers(0, 3, label.shape), label)
    return label, instance.astype(np.int32)


def test_export_model_writes_the_seed_model_beside_the_features_model(seeded):
    opts, _, _, result, _ = seeded
    folder = os.path.dirname(result["onnx"])
    assert result["onnx"] == os.path.join(folder, "tiny_seed.onnx")
    assert result["onnx_seed"] == os.path.join(folder, "tiny_seed_seed.onnx")
    assert result["onnx_seed_float16"] == os.path.join(folder, "tiny_seed_seed_float16.onnx")
    session = ort.InferenceSession(result["onnx_seed"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == onnx_export.onnx_input_names(opts, seed_input=True)
    assert [i.name for i in session.get_inputs()] == ["label", "instance", "seed"]
    assert [(i.type, len(i.shape)) for i in session.get_inputs()] == [("tensor(int32)", 3)] * 2 + [("tensor(int32)", 1)]
    with pytest.raises(ValueError, match="cluster bank"):
        onnx_export.export_onnx(opts, folder, generator=seeded[1], seed_input=True)
    with pytest.raises(ValueError, match="feature models"):
        onnx_export.export_onnx(Options(**TINY), folder, generator=seeded[1], seed_input=True)


@pytest.mark.parametrize("n,h,w", SIZES)
def test_seed_model_gives_the_saved_model_image_for_the_same_seed(seeded, n, h, w):
    """ONNX Runtime's {name}_seed.onnx vs the SavedModel's generate_with_seed, at two sizes from one file:
    within one uint8 level for default, small, 16-bit-boundary and the largest seeds; and the same styles
    as the numpy twin (the features model fed `sample_feature_map`'s features gives the same image)."""
    _, _, bank, result, model = seeded
    label, instance = _seeded_maps(n, h, w, seed=h)
    for seeds in ([0] * n, [7, 65536][:n], [2**31 - 1, 123456789][:n]):
        seed = np.array(seeds, np.int32)
        image = onnx_export.run_onnx(result["onnx_seed"], {"label": label, "instance": instance, "seed": seed})["image"]
        served = model.signatures["generate_with_seed"](
            label=tf.constant(label), instance=tf.constant(instance), seed=tf.constant(seed)
        )["image"].numpy()
        assert image.dtype == np.uint8 and image.shape == (n, h, w, 3)
        assert _levels(image, served) <= 1, seeds
        features = sample_feature_map(instance, bank, seed=seeds)
        fed = onnx_export.run_onnx(result["onnx"], {"label": label, "instance": instance, "features": features})
        assert _levels(image, fed["image"]) <= 1, seeds
        half = onnx_export.run_onnx(result["onnx_seed_float16"], {"label": label, "instance": instance, "seed": seed})
        assert _levels(half["image"], served) <= 1, seeds


def test_seeds_change_styles(seeded):
    """Not a constant: different seeds give different images where things have several clusters."""
    _, _, _, result, _ = seeded
    label, instance = _seeded_maps(1, 32, 40)
    images = [
        onnx_export.run_onnx(
            result["onnx_seed"], {"label": label, "instance": instance, "seed": np.array([s], np.int32)}
        )
        for s in range(4)
    ]
    assert len({im["image"].tobytes() for im in images}) > 1


def test_weights_are_folded_into_initializers(exported):
    """G's weights enter the conversion as graph inputs (to keep tf2onnx's memory small) and end as
    initializers: no weight input is left, no weight-layout node (Transpose/Reshape/Squeeze of constants)
    remains, and the initializers hold every parameter of G."""
    import onnx

    for kind in ("global", "local"):
        opts, G, path = exported[kind]
        model = onnx.load(path)
        assert [i.name for i in model.graph.input] == onnx_export.onnx_input_names(opts)
        initializers = {i.name: i for i in model.graph.initializer}
        constant_layout = [
            n for n in model.graph.node
            if n.op_type in ("Transpose", "Reshape", "Squeeze", "Unsqueeze") and all(x in initializers for x in n.input)
        ]  # fmt: skip
        assert constant_layout == []
        stored = sum(int(np.prod(i.dims)) for i in initializers.values() if i.data_type == onnx.TensorProto.FLOAT)
        assert G.count_params() <= stored < G.count_params() + 1000


def test_client_onnx_runs_the_seed_model(seeded, tmp_path):
    """export/client_onnx.py --seed on {name}_seed.onnx writes the SavedModel's generate_with_seed image."""
    _, _, _, result, model = seeded
    label, instance = _seeded_maps(1, 16, 24)
    client, out = _client_with_maps(label, instance, tmp_path)
    client.main(["--model", result["onnx_seed"], "--label", str(tmp_path / "label.png"), "--instance",
                 str(tmp_path / "instance.png"), "--seed", "7", "--out", str(out)])  # fmt: skip
    served = model.signatures["generate_with_seed"](
        label=tf.constant(label), instance=tf.constant(instance), seed=tf.constant([7], tf.int32)
    )["image"].numpy()
    assert _levels(np.asarray(Image.open(out))[None], served) <= 1


def test_wide_generator_whose_blocks_run_as_matmuls(tmp_path):
    """512-channel residual blocks run as im2col matmuls (fast_ops.padded_conv2d): their weights reach tf2onnx
    as inputs behind Reshape nodes, which the fold turns into MatMul initializers; the image still matches."""
    import onnx

    opts = Options(name="wide", **{**TINY, "ngf": 32, "n_downsample_global": 4})
    tf.keras.utils.set_random_seed(3)
    G = networks.build_generator(opts)
    path = onnx_export.export_onnx(opts, str(tmp_path), generator=G)
    model = onnx.load(path)
    initializers = {i.name for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(any(x in initializers for x in n.input) for n in matmuls)
    label, instance = _maps(1, 32, 48)
    image = onnx_export.run_onnx(path, {"label": label, "instance": instance})["image"]
    assert _levels(image, _keras_image(G, opts, label, instance)) <= 1
