"""Export a trained pix2pixHD generator for TF Serving: a versioned SavedModel (TFLite: `serving.tflite`).

Everything a client would otherwise re-implement runs in the graph (`serving.endpoints`): one-hot labels,
the instance boundary map, [-1, 1] <-> uint8 conversion, PNG decoding/encoding, cluster-bank style sampling
and the input checks (label range, image size), which fail with INVALID_ARGUMENT instead of silently
producing garbage. The SavedModel needs no project code and no custom objects to load.

Signatures (N = batch, H and W = any multiple of the generator's stride, see `export_info.json`):

| signature              | inputs                                                | outputs                      |
|------------------------|-------------------------------------------------------|------------------------------|
| serving_default        | label int32 [N,H,W], instance int32 [N,H,W]           | image uint8 [N,H,W,output_nc]|
| serving_png            | label_png_bytes string [N], instance_png_bytes [N]    | image_png_bytes string [N]   |
| generate_with_seed     | label, instance, seed int32 [N]       (feature models)| image                        |
| generate_with_features | label, instance, features float32 [N,H,W,feat_num]    | image                        |
| encode                 | image uint8 [N,H,W,output_nc], instance (encoder)     | features float32 [N,H,W,feat]|

`instance` inputs are left out for --no_instance models; label_nc 0 models take `input_image` uint8
[N,H,W,input_nc] (`input_image_png_bytes` in serving_png) instead of `label`; label_feat models pool
and sample per label region, so `encode` takes `label` instead of `instance`.

Style sampling (feature models) is `styles.sample_features_graph`, the in-graph twin of the sampler
`Synthesizer`, `tools/test.py` and the editor use: every instance (label region for label_feat) draws one
of the `counts[c]` cluster centres of its class c (Cityscapes ids: c = id // 1000 for ids >= 1000, else id)
with a counter-based random permutation keyed by (seed, instance id). The draw of an instance depends
only on the seed and its id, not on the other instances or its position in the batch; `serving_default`
and `serving_png` use seed 0 (`DEFAULT_SEED`), `generate_with_seed` takes one seed per example, and
`Synthesizer.generate(..., seed=s)` gives the same styles as `generate_with_seed` with seed s. Classes
without clusters, and every class of a model exported without a bank, get zero features.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from pix2pixhd_tf.experiment import load_experiment, load_networks
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving.endpoints import DEFAULT_MAX_PIXELS, DEFAULT_SEED, Endpoints
from pix2pixhd_tf.serving.onnx_export import export_onnx, float16_weights
from pix2pixhd_tf.serving.tflite import TFLITE_VARIANTS, export_tflite
from pix2pixhd_tf.styles import ClusterBank

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SEED",
    "EXPORT_FORMATS",
    "export_model",
    "export_saved_model",
    "next_version",
    "resolve_cluster_bank",
    "signature_table",
]

logger = logging.getLogger(__name__)

ClusterBankLike = Any  # ClusterBank | (centers, counts) | {"centers", "counts"} | a bank file | None


def resolve_cluster_bank(bank: ClusterBankLike, *, allow_pickle: bool = False) -> ClusterBank | None:
    """The bank to embed: a `styles.ClusterBank` as it is, a (centers, counts) pair or a mapping with those
    keys, a bank file (`ClusterBank.load`; an official pickled .npy only with `allow_pickle`), or None.

    Raises:
        ValueError: centers and counts that do not form a bank; a pickled file without `allow_pickle`.
    """
    if bank is None or isinstance(bank, ClusterBank):
        return bank
    if isinstance(bank, (str, os.PathLike)):
        return ClusterBank.load(os.fspath(bank), allow_pickle=allow_pickle)
    if isinstance(bank, Mapping):
        return ClusterBank(bank["centers"], bank["counts"])
    centers, counts = bank
    return ClusterBank(centers, counts)


# ------------------------------------------------------------------------------------- SavedModel


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named subdirectory of `export_dir` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def signature_table(functions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The signatures as data: name, inputs and outputs with dtype and shape (None = any).

    `functions` maps names to tf.functions with an input signature (traced once, then cached).
    """
    rows = []
    for name, fn in functions.items():
        concrete = fn.get_concrete_function()
        specs = fn.input_signature
        outputs = concrete.structured_outputs
        rows.append(
            {
                "name": name,
                "inputs": {s.name: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for s in specs},
                "outputs": {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in outputs.items()},
            }
        )
    return rows


def _readme(opts: Options, endpoints: Endpoints, table: list[dict[str, Any]], version: int) -> str:
    lines = [
        f"# pix2pixHD SavedModel `{opts.name}`, version {version}",
        "",
        "Generated by `pix2pixhd_tf.serving.saved_model.export_saved_model`; loads with plain `tf.saved_model.load` and TF Serving.",
        f"Height and width must be multiples of {endpoints.g_multiple}"
        + (f" ({endpoints.e_multiple} for `encode`)" if endpoints.encoder is not None else "")
        + "; other sizes and label ids >= label_nc "
        f"({opts.label_nc}) fail with INVALID_ARGUMENT. Images are uint8 0..255.",
        "",
        f"Limits (set by `tools/export.py --max_pixels/--max_batch_pixels`): at most {endpoints.max_pixels} pixels "
        f"(height x width) per image and {endpoints.max_batch_pixels} per request; `serving_png` reads each size "
        "from the PNG header before decoding. Larger requests, a wrong rank or channel count, an empty batch, "
        "inputs with different batch sizes and bytes that are not a PNG fail with INVALID_ARGUMENT naming the "
        "input, the limit and what was received.",
        "",
        "| signature | inputs | outputs |",
        "|---|---|---|",
    ]

    def fmt(specs: dict) -> str:
        return ", ".join(f"`{k}` {v['dtype']} {v['shape']}" for k, v in specs.items())

    lines += [f"| `{row['name']}` | {fmt(row['inputs'])} | {fmt(row['outputs'])} |" for row in table]
    if endpoints.use_features:
        lines += ["", "## Styles (instance features)", ""]
        if endpoints.bank is None:
            lines.append(
                "**This model was exported without a cluster bank: `serving_default`, `serving_png` and "
                "`generate_with_seed` use zero features for every class.** Use `generate_with_features` "
                "(e.g. with `encode` on a reference image) to choose styles, or re-export with a bank."
            )
        else:
            counts = endpoints.bank.counts
            lines.append(
                f"Embedded cluster bank: {counts.shape[0]} classes, up to {endpoints.bank.n_clusters} clusters "
                f"each, {int((counts > 0).sum())} classes with clusters (the others get zero features). Each "
                "instance draws a cluster of its class (class = id // 1000 for ids >= 1000, else id) from a random "
                f"permutation keyed by (seed, instance id): `serving_default` / `serving_png` use seed {DEFAULT_SEED}, "
                "`generate_with_seed` one seed per example. Same seed and id, same style, here and in "
                "`Synthesizer.generate(..., seed=s)` of the pix2pixhd_tf package."
            )
    return "\n".join(lines) + "\n"


def export_saved_model(
    opts: Options,
    export_dir: str,
    version: int | None = None,
    cluster_bank: ClusterBankLike = None,
    generator: keras.Model | None = None,
    encoder: keras.Model | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch_pixels: int | None = None,
) -> str:
    """Write a TF Serving SavedModel to `export_dir/<version>/`.

    Args:
        opts: the model's options (label_nc, no_instance, features, netG, ...).
        export_dir: the model's base path for TF Serving (holds one integer directory per version).
        version: the version number; None takes the next free one. An existing version is never overwritten.
        cluster_bank: styles for feature models (a `styles.ClusterBank`, (centers, counts) arrays or a
            bank file); None gives zero features to every class, and says so.
        generator, encoder: the networks; when `generator` is None both are loaded from the checkpoint
            (`opts.checkpoints_dir/opts.name`, `opts.which_epoch`).
        max_pixels: the most pixels (height x width) of one image in a request; larger ones get
            INVALID_ARGUMENT before any work, so one request cannot exhaust the server's memory.
        max_batch_pixels: the most pixels in one request, all images together (default `max_pixels`).

    Returns:
        The version directory written.

    Raises:
        FileExistsError: `version` already exists.
        ValueError: options or cluster bank inconsistent with the model.
    """
    if generator is None:
        generator, _, encoder = load_networks(opts)
    if opts.use_encoder and encoder is None:
        logger.warning("no encoder given for a feature model: the export has no `encode` signature")
    bank = resolve_cluster_bank(cluster_bank, allow_pickle=opts.allow_pickle)
    if bank is not None and not opts.use_features:
        raise ValueError("a cluster bank was given for a model without features (--instance_feat / --label_feat)")
    if bank is not None and opts.label_nc and bank.label_nc != opts.label_nc:
        raise ValueError(f"the cluster bank has {bank.label_nc} classes but the model label_nc={opts.label_nc}")
    if opts.use_features and bank is None:
        logger.warning(
            "exporting a feature model without a cluster bank: serving_default and serving_png will use zero "
            "features for every class (noted in assets.extra/README.md)"
        )
    endpoints = Endpoints(opts, generator, encoder, bank, max_pixels=max_pixels, max_batch_pixels=max_batch_pixels)

    version = next_version(export_dir) if version is None else int(version)
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists: pick another --version or leave it out to take the next free one")
    os.makedirs(export_dir, exist_ok=True)

    archive = keras.export.ExportArchive()
    archive.track(generator)
    if encoder is not None:
        archive.track(encoder)
    functions = {
        name: archive.add_endpoint(name, fn, input_signature=specs)
        for name, (fn, specs) in endpoints.signatures().items()
    }

    # Write beside the target and rename: TF Serving polls export_dir and must never see a partial version.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        archive.write_out(tmp, verbose=False)
        table = signature_table(functions)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "README.md"), "w") as f:
            f.write(_readme(opts, endpoints, table, version))
        info = {
            "name": opts.name,
            "version": version,
            "size_multiple": endpoints.g_multiple,
            "encode_size_multiple": endpoints.e_multiple if encoder is not None else None,
            "label_nc": opts.label_nc,
            "output_nc": opts.output_nc,
            "feat_num": opts.feat_num if opts.use_features else 0,
            "cluster_bank": None if bank is None else {"classes": bank.label_nc, "clusters": bank.n_clusters},
            "default_seed": DEFAULT_SEED,
            "max_pixels": endpoints.max_pixels,
            "max_batch_pixels": endpoints.max_batch_pixels,
            "signatures": table,
            "options": dataclasses.asdict(opts),
        }
        with open(os.path.join(extra, "export_info.json"), "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (signatures: %s)", target, ", ".join(row["name"] for row in table))
    return target


EXPORT_FORMATS = ("saved_model", "tflite", "onnx")


def export_model(
    opts: Options,
    export_dir: str,
    *,
    version: int | None = None,
    cluster_file: str | None = None,
    tflite_size: tuple[int, int] | None = None,
    tflite_variants: Sequence[str] = TFLITE_VARIANTS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    onnx_float16: bool = False,
) -> dict[str, Any]:
    """What `tools/export.py` does: load G (+E) and the cluster bank of an experiment once and write the
    requested formats: the SavedModel version `export_dir/<version>/`, TFLite files to
    `export_dir/tflite/<version>/` and the ONNX model to `export_dir/onnx/<version>/{name}.onnx` (TF
    Serving ignores non-integer directories). `max_pixels` / `max_batch_pixels`: see `export_saved_model`.

    Args:
        formats: any of EXPORT_FORMATS; None = the SavedModel, plus TFLite when `tflite_size` is given.
            'tflite' needs `tflite_size`; 'onnx' needs the optional extra `.[onnx]` (see `onnx_export`).
            Without 'saved_model', the version is `version` or the next free one under `export_dir/onnx`
            (or `export_dir/tflite`).
        onnx_float16: with 'onnx', also write `{name}_float16.onnx` (`onnx_export.float16_weights`: float16
            weights, float32 compute; within one uint8 level of float32, see export/README.md).

    With 'onnx', a feature model with a cluster bank also gets `{name}_seed.onnx` (styles sampled in the
    graph from a seed, as `generate_with_seed`; and `{name}_seed_float16.onnx` with `onnx_float16`).

    Returns:
        {'saved_model': version dir or None, 'tflite': {variant: path}, 'onnx': path or None,
        'onnx_float16': path or None, 'onnx_seed': path or None, 'onnx_seed_float16': path or None,
        'cluster_bank': path or None}.
    """
    if formats is None:
        formats = ["saved_model"] + (["tflite"] if tflite_size is not None else [])
    unknown = set(formats) - set(EXPORT_FORMATS)
    if unknown or not formats:
        raise ValueError(f"unknown export formats {sorted(unknown)}; choose from {', '.join(EXPORT_FORMATS)}")
    if "tflite" in formats and tflite_size is None:
        raise ValueError("the tflite format is fixed-size: give tflite_size (tools/export.py --tflite_size=HxW)")
    experiment = load_experiment(opts, cluster_file=cluster_file)
    generator, encoder, bank, bank_path = experiment.generator, experiment.encoder, experiment.clusters, None
    saved_model = None
    if "saved_model" in formats:
        if bank is not None:
            bank_path = experiment.cluster_file
            logger.info("embedding the cluster bank %s", bank_path)
        saved_model = export_saved_model(
            opts,
            export_dir,
            version,
            bank,
            generator=generator,
            encoder=encoder,
            max_pixels=max_pixels,
            max_batch_pixels=max_batch_pixels,
        )
        version = int(os.path.basename(saved_model))
    elif version is None:
        sub = "onnx" if "onnx" in formats else "tflite"
        version = next_version(os.path.join(export_dir, sub))
    tflite = {}
    if "tflite" in formats:
        tflite_dir = os.path.join(export_dir, "tflite", str(version))
        tflite = export_tflite(opts, tflite_dir, size=tflite_size, variants=tflite_variants, generator=generator)
    onnx = onnx16 = onnx_seed = onnx_seed16 = None
    if "onnx" in formats:
        onnx_dir = os.path.join(export_dir, "onnx", str(version))
        onnx = export_onnx(opts, onnx_dir, generator=generator)
        if opts.use_features and bank is not None:  # generate_with_seed's twin: styles sampled from the bank
            onnx_seed = export_onnx(opts, onnx_dir, generator=generator, bank=bank, seed_input=True)
        if onnx_float16:
            onnx16 = float16_weights(onnx)
            onnx_seed16 = float16_weights(onnx_seed) if onnx_seed else None
    return {
        "saved_model": saved_model,
        "tflite": tflite,
        "onnx": onnx,
        "onnx_float16": onnx16,
        "onnx_seed": onnx_seed,
        "onnx_seed_float16": onnx_seed16,
        "cluster_bank": bank_path,
    }
