"""One request never takes the server down (issue 19): every SavedModel signature checks sizes, ranks,
channels, batches and PNG headers before any work and answers INVALID_ARGUMENT naming the input, the limit
and what it got.

Nothing huge is allocated: the 20000x20000 probe is a ~100-byte PNG whose IHDR header declares that size,
and the tensor limits are exercised on an export with a low limit (16x24 pixels per image, two per request).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf import networks
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving import saved_model
from pix2pixhd_tf.serving.endpoints import DEFAULT_MAX_PIXELS, PNG_SIGNATURE

H, W = 16, 24
LOW = H * W  # the low export's per-image limit; its per-request limit is 2 * LOW
TINY = dict(name="tiny", label_nc=5, ngf=4, n_downsample_global=2, n_blocks_global=1, nef=4, n_downsample_E=2)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_declaring(height: int, width: int) -> bytes:
    """A small but well-formed PNG (valid CRCs) whose IHDR declares height x width: decoding it would need
    height * width bytes, which is what must never be attempted."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """`plain`: a label+instance model at the default limits; `low`: a feature model with an encoder,
    exported with --max_pixels=16x24 and --max_batch_pixels twice that."""
    tmp = tmp_path_factory.mktemp("limits")
    ns = SimpleNamespace(dirs={})
    for name, extra, limits in (
        ("plain", {}, {}),
        ("low", dict(instance_feat=True, feat_num=3), dict(max_pixels=LOW, max_batch_pixels=2 * LOW)),
    ):
        opts = Options(**TINY, **extra)
        keras.utils.set_random_seed(0)
        G = networks.build_generator(opts)
        E = networks.build_encoder(opts) if opts.use_encoder else None
        ns.dirs[name] = saved_model.export_saved_model(opts, str(tmp / name), generator=G, encoder=E, **limits)
    ns.plain = tf.saved_model.load(ns.dirs["plain"]).signatures
    ns.low = tf.saved_model.load(ns.dirs["low"]).signatures
    rng = np.random.default_rng(0)
    ns.label = rng.integers(0, 5, (1, H, W)).astype(np.int32)
    ns.label_png = _png(ns.label[0].astype(np.uint8))
    return ns


def _refused(signature, match: str, **inputs) -> str:
    """Call `signature`, expect INVALID_ARGUMENT whose message matches `match`; return the message."""
    with pytest.raises(tf.errors.InvalidArgumentError, match=match) as err:
        signature(**{k: v if isinstance(v, tf.Tensor) else tf.constant(v) for k, v in inputs.items()})
    return err.value.message


def _serves(models) -> None:
    """The model still answers a good request (nothing crashed, nothing left in a bad state)."""
    out = models.plain["serving_png"](
        label_png_bytes=tf.constant([models.label_png]), instance_png_bytes=tf.constant([models.label_png])
    )
    assert np.asarray(Image.open(io.BytesIO(out["image_png_bytes"].numpy()[0]))).shape == (H, W, 3)


def test_png_declaring_20000x20000_is_refused_before_decoding(models):
    """The issue's probe: a PNG declaring 20000x20000 aborted the process (std::bad_alloc, exit 134)."""
    huge = _png_declaring(20000, 20000)
    assert len(huge) < 1000
    message = _refused(
        models.plain["serving_png"],
        r"\[20000 20000\] \(height, width\) is 400000000 pixels",
        label_png_bytes=[huge],
        instance_png_bytes=[huge],
    )
    assert f"at most {DEFAULT_MAX_PIXELS} pixels per image" in message and "--max_pixels" in message
    # Among good ones, and as the instance map only: refused all the same, before anything is decoded.
    _refused(
        models.plain["serving_png"],
        r"instance_png_bytes: .*is 400000000 pixels",
        label_png_bytes=[models.label_png, models.label_png],
        instance_png_bytes=[models.label_png, huge],
    )
    # Sides of 2^32 - 1: their product wraps int64 around; the check must still refuse it.
    _refused(
        models.plain["serving_png"],
        r"\[4294967295 4294967295\] \(height, width\) is 18446744065119617024 pixels",
        label_png_bytes=[_png_declaring(2**32 - 1, 2**32 - 1)],
        instance_png_bytes=[models.label_png],
    )
    _serves(models)


def test_png_limits_per_image_and_per_request(models):
    sig = models.low["serving_png"]
    one = [models.label_png]
    two = sig(label_png_bytes=tf.constant(one * 2), instance_png_bytes=tf.constant(one * 2))
    assert two["image_png_bytes"].shape == [2]  # at both limits exactly: served
    message = _refused(sig, r"3 images, 1152 pixels in all", label_png_bytes=one * 3, instance_png_bytes=one * 3)
    assert f"at most {2 * LOW} pixels per request" in message and "--max_batch_pixels" in message
    big = _png(np.zeros((H, 2 * W), np.uint8))
    _refused(sig, rf"\[16 48\] \(height, width\) is 768 pixels.*at most {LOW} pixels per image", label_png_bytes=[big],
             instance_png_bytes=[big])  # fmt: skip


@pytest.mark.parametrize(
    "label_png, match",
    [
        ([b"hello"], r"label_png_bytes\[0\] is not a PNG: 5 bytes"),
        ([b"x" * 40], r"label_png_bytes\[0\] is not a PNG: it does not start with the PNG signature"),
        ([_png(np.zeros((4, 4), np.uint8)), b"GIF89a" + b"\0" * 40], r"label_png_bytes\[1\] is not a PNG"),
        ([], "label_png_bytes is an empty batch"),
        (b"scalar", r"label_png_bytes must be a 1-D batch \[N\] of PNG-encoded strings; got shape \[\]"),
        ([[b"a"], [b"b"]], r"must be a 1-D batch \[N\].*got shape \[2 1\]"),
    ],
)
def test_png_bad_requests_get_clear_messages(models, label_png, match):
    """Before: `pos 24 out of range` (short bytes), `Index bust be a scalar or vector.` (wrong rank)."""
    if not label_png:
        label_png = tf.zeros([0], tf.string)  # tf.constant([]) would be float32
    instance = label_png if not isinstance(label_png, list) else [models.label_png] * len(label_png)
    _refused(models.plain["serving_png"], match, label_png_bytes=label_png, instance_png_bytes=instance)
    _serves(models)


def test_png_counts_must_agree(models):
    _refused(
        models.plain["serving_png"],
        "label_png_bytes has 2 PNGs but instance_png_bytes has 1",
        label_png_bytes=[models.label_png] * 2,
        instance_png_bytes=[models.label_png],
    )


def test_tensor_limits_in_every_signature(models):
    sigs = models.low
    label = np.zeros((1, 32, 32), np.int32)  # 1024 pixels > 384
    features = np.zeros((1, 32, 32, 3), np.float32)
    for name, inputs in {
        "serving_default": dict(label=label, instance=label),
        "generate_with_seed": dict(label=label, instance=label, seed=np.zeros(1, np.int32)),
        "generate_with_features": dict(label=label, instance=label, features=features),
    }.items():
        message = _refused(sigs[name], r"label: an image of \[32 32\] \(height, width\) is 1024 pixels", **inputs)
        assert f"at most {LOW} pixels per image" in message, name
    _refused(sigs["encode"], r"image: an image of \[32 32\]", image=np.zeros((1, 32, 32, 3), np.uint8), instance=label)
    three = np.zeros((3, H, W), np.int32)
    _refused(sigs["serving_default"], rf"3 images, 1152 pixels in all; .*at most {2 * LOW} pixels per request",
             label=three, instance=three)  # fmt: skip
    two = np.zeros((2, H, W), np.int32)
    assert sigs["serving_default"](label=tf.constant(two), instance=tf.constant(two))["image"].shape == [2, H, W, 3]


def test_tensor_bad_requests_get_clear_messages(models):
    sigs = models.low
    label = np.zeros((1, H, W), np.int32)
    _refused(sigs["serving_default"], r"label must be int32 \[N,H,W\].*got shape \[16 24\]: add the batch axis",
             label=label[0], instance=label)  # fmt: skip
    _refused(sigs["serving_default"], r"instance must be int32 \[N,H,W\].*got shape \[1 16 24 1\]",
             label=label, instance=label[..., None])  # fmt: skip
    empty = np.zeros((0, H, W), np.int32)
    _refused(sigs["serving_default"], "label is an empty batch: send at least one example", label=empty, instance=empty)
    _refused(sigs["generate_with_features"], r"features must be float32 \[N,H,W,3\]; got 5 channels",
             label=label, instance=label, features=np.zeros((1, H, W, 5), np.float32))  # fmt: skip
    _refused(sigs["generate_with_seed"], "seed has 2 examples but label has 1",
             label=label, instance=label, seed=np.zeros(2, np.int32))  # fmt: skip
    _refused(sigs["generate_with_seed"], r"seed must be int32 \[N\]", label=label, instance=label, seed=np.int32(0))
    _refused(sigs["encode"], r"image must be uint8 \[N,H,W,3\]; got 1 channels",
             image=np.zeros((1, H, W, 1), np.uint8), instance=label)  # fmt: skip
    # A wrong dtype never reaches the graph: TensorFlow names the expected one (TF Serving's REST API
    # converts JSON numbers to the signature's dtype, or answers an error naming it).
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a int32 tensor but is a float tensor"):
        sigs["serving_default"](label=tf.constant(label, tf.float32), instance=tf.constant(label))


def test_limits_are_recorded(models):
    for name, (per_image, per_request) in {
        "plain": (DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS),
        "low": (LOW, 2 * LOW),
    }.items():
        info = json.loads(Path(models.dirs[name], "assets.extra", "export_info.json").read_text())
        assert (info["max_pixels"], info["max_batch_pixels"]) == (per_image, per_request)
        readme = Path(models.dirs[name], "assets.extra", "README.md").read_text()
        assert f"at most {per_image} pixels (height x width) per image and {per_request} per request" in readme
    with pytest.raises(ValueError, match="max_pixels"):
        saved_model.export_saved_model(Options(**TINY), "unused", generator=object(), max_pixels=0)
