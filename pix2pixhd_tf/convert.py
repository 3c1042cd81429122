"""Import official pix2pixHD (NVIDIA, PyTorch) checkpoints into our Keras networks.

Our layers are named after the official `nn.Sequential` positions, so conversion is a lookup: the Keras
conv `model_13` (a ResnetBlock) takes `model.13.conv_block.1.*` and `model.13.conv_block.5.*`, the
discriminator `D.scale(i)`'s conv `layer{j}` takes `scale{i}_layer{j}.0.*` (feature matching on, the
official default) or `layer{i}.{k}.*` (trained with --no_ganFeat_loss: one flat Sequential per scale).

Layouts: a conv weight (out, in, kh, kw) and a transposed-conv weight (in, out, kh, kw) both become Keras
kernels by the same transpose (2, 3, 1, 0): (kh, kw, in, out) and (kh, kw, out, in). No spatial flip: both
frameworks' transposed convs are the gradient of the same cross-correlation.

Every conversion is checked both ways before anything is assigned: each Keras weight gets exactly one
tensor and each tensor is used, except the running statistics that PyTorch < 0.4 stored for instance
norms (PyTorch itself drops those when loading). Anything else raises `CheckpointMismatchError` naming
the keys, their shapes and the flag that probably differs.

Example:
    G, D, E = convert_checkpoint(opts, "checkpoints/label2city_1024p")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping

import keras
import numpy as np

from pix2pixhd_tf.networks import (
    Encoder,
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    build_discriminator,
    build_encoder,
    build_generator,
)
from pix2pixhd_tf.networks.layers import InstanceNormalization, ResnetBlock, TorchConvTranspose2D
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles.bank import ClusterBank, default_cluster_file, load_official_clusters
from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf.training.model import make_optimizers

__all__ = [
    "CheckpointMismatchError",
    "convert_checkpoint",
    "convert_clusters",
    "convert_state_dict",
    "load_official_clusters",  # defined beside the ClusterBank that reads it (styles.bank)
    "load_torch_state_dict",
]

_LOG = logging.getLogger(__name__)
_KINDS = ("G", "D", "E")
# Buffers that PyTorch < 0.4 saved for InstanceNorm2d; PyTorch >= 0.4 ignores them for affine=False norms.
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_MAX_LISTED = 25  # keys listed per section of an error message


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the network built from the options.

    Attributes:
        missing: keys the network needs that the checkpoint lacks, with the shapes the network expects.
        unexpected: keys in the checkpoint that the network has no place for, with their shapes.
        mismatched: keys in both with different shapes: (checkpoint shape, network shape).
        hints: the flags that probably differ, one line each.
    """

    def __init__(
        self,
        message: str,
        missing: Mapping[str, tuple] | None = None,
        unexpected: Mapping[str, tuple] | None = None,
        mismatched: Mapping[str, tuple[tuple, tuple]] | None = None,
        hints: list[str] | None = None,
    ):
        super().__init__(message)
        self.missing = dict(missing or {})
        self.unexpected = dict(unexpected or {})
        self.mismatched = dict(mismatched or {})
        self.hints = list(hints or [])


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One official module position and the Keras layer that plays it."""

    prefix: str  # torch module path, e.g. "model.13.conv_block.1"
    kind: str  # "conv", "conv_transpose" or "norm"
    layer: keras.layers.Layer


# ----------------------------------------------------------------------------------------------- loading


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.pth` state dict (as saved by the official `save_network`) into numpy arrays.

    Uses `torch.load(..., weights_only=True)`: only tensors and plain containers are unpickled, never
    arbitrary objects. Floating tensors come back as float32.

    Raises:
        ImportError: PyTorch is not installed (`pip install -e .[convert]`).
        ValueError: the file does not hold a mapping of names to tensors.
    """
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "Reading PyTorch checkpoints needs PyTorch (CPU is enough): pip install -e .[convert]"
        ) from err
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds more than plain tensors, and only weights_only loading is allowed here. "
            "Re-save it in PyTorch with torch.save(net.state_dict(), path)."
        ) from err
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (names -> tensors) but a {type(obj).__name__}.")
    arrays = {}
    for key, tensor in obj.items():
        tensor = tensor.detach().cpu()
        arrays[key] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return arrays


# ----------------------------------------------------------------------------------------------- mapping


def _generator_slots(network: keras.Model) -> Iterator[_Slot]:
    """G and E: Keras `model_13` is official `model.13`, `model1_2_3` is `model1_2.3`."""
    for layer in network.layers:
        match = re.fullmatch(r"(model(?:\d+_[12])?)_(\d+)", layer.name)
        if not match:
            continue
        prefix = f"{match[1]}.{match[2]}"
        if isinstance(layer, ResnetBlock):
            yield _Slot(f"{prefix}.conv_block.1", "conv", layer.conv1)
            yield _Slot(f"{prefix}.conv_block.2", "norm", layer.norm1)
            yield _Slot(f"{prefix}.conv_block.5", "conv", layer.conv2)
            yield _Slot(f"{prefix}.conv_block.6", "norm", layer.norm2)
        elif isinstance(layer, TorchConvTranspose2D):
            yield _Slot(prefix, "conv_transpose", layer.conv)
        elif isinstance(layer, keras.layers.Conv2D):
            yield _Slot(prefix, "conv", layer)
        elif isinstance(layer, InstanceNormalization):
            yield _Slot(prefix, "norm", layer)


def _discriminator_slots(network: MultiscaleDiscriminator, flat: bool) -> Iterator[_Slot]:
    """`scale{i}_layer{j}.0` (conv) / `.1` (norm), or, flat, `layer{i}.{k}` with k counting every module."""
    n_layers = network.n_layers_D
    for i in range(network.num_D):
        scale = network.scale(i)
        for j in range(n_layers + 2):
            # Flat Sequential: block 0 is [conv, lrelu], blocks 1..n_layers [conv, norm, lrelu], then [conv].
            start = 0 if j == 0 else 2 + 3 * (j - 1)
            conv_prefix = f"layer{i}.{start}" if flat else f"scale{i}_layer{j}.0"
            yield _Slot(conv_prefix, "conv", scale.get_layer(f"layer{j}"))
            if 1 <= j <= n_layers:
                norm_prefix = f"layer{i}.{start + 1}" if flat else f"scale{i}_layer{j}.1"
                yield _Slot(norm_prefix, "norm", scale.get_layer(f"layer{j}_norm"))


def _infer_kind(network: keras.Model) -> str:
    if isinstance(network, MultiscaleDiscriminator):
        return "D"
    if isinstance(network, Encoder):
        return "E"
    if isinstance(network, (GlobalGenerator, LocalEnhancer)):
        return "G"
    raise TypeError(f"Cannot convert into a {type(network).__name__}: expected a generator, discriminator or encoder.")


def _is_flat_discriminator(keys) -> bool:
    """Official D without feature matching (getIntermFeat=False): `layer{i}.{k}.*` instead of `scale{i}_layer{j}.*`."""
    return not any(k.startswith("scale") for k in keys) and any(re.match(r"layer\d+\.\d+\.", k) for k in keys)


def _strip_module_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop nn.DataParallel's `module.` prefix (one level)."""
    stripped: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in stripped:
            raise CheckpointMismatchError(f"State dict has both {name!r} and 'module.{name}'.")
        stripped[name] = value
    return stripped


def _torch_shape(kernel_shape) -> tuple[int, ...]:
    """Keras (kh, kw, a, b) -> torch (b, a, kh, kw); the inverse of transpose (2, 3, 1, 0)."""
    kh, kw, a, b = kernel_shape
    return (b, a, kh, kw)


# ----------------------------------------------------------------------------------------------- diagnosis


def _generator_summary(shapes: Mapping[str, tuple]) -> dict[str, object]:
    """Architecture read off G/E state-dict shapes (works the same on the checkpoint and on our network)."""
    enhancers = sorted({int(m[1]) for k in shapes if (m := re.match(r"model(\d+)_[12]\.", k))})
    trunk = sorted(
        (int(m[1]), tuple(s))
        for k, s in shapes.items()
        if (m := re.fullmatch(r"model\.(\d+)\.weight", k)) and len(s) == 4
    )
    summary: dict[str, object] = {"netG": "local" if enhancers else "global", "n_local_enhancers": len(enhancers)}
    if trunk:
        first = trunk[0][1]
        summary["input_nc"] = first[1]
        summary["ngf"] = first[0] // 2 ** len(enhancers)
        summary["n_downsample"] = sum(1 for _, s in trunk if s[2:] == (3, 3)) // 2
    summary["n_blocks_global"] = len({m[1] for k in shapes if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
    if enhancers:
        summary["n_blocks_local"] = len({m[1] for k in shapes if (m := re.match(r"model1_2\.(\d+)\.conv_block\.", k))})
        last = f"model{enhancers[-1]}_2"
        head = sorted(
            (int(m[1]), tuple(s))
            for k, s in shapes.items()
            if (m := re.fullmatch(rf"{last}\.(\d+)\.weight", k)) and len(s) == 4 and s[2:] == (7, 7)
        )
    else:
        head = [t for t in trunk[1:] if t[1][2:] == (7, 7)]
    if head:
        summary["output_nc"] = head[-1][1][0]
    return summary


def _discriminator_summary(shapes: Mapping[str, tuple]) -> dict[str, object]:
    # (scale, position, shape) of every conv weight.
    pattern = r"layer(\d+)\.(\d+)\.weight" if _is_flat_discriminator(shapes) else r"scale(\d+)_layer(\d+)\.0\.weight"
    convs = [
        (int(m[1]), int(m[2]), tuple(s)) for k, s in shapes.items() if (m := re.fullmatch(pattern, k)) and len(s) == 4
    ]
    summary: dict[str, object] = {}
    if convs:
        summary["num_D"] = len({c[0] for c in convs})
        scale0 = sorted((c[1], c[2]) for c in convs if c[0] == 0)
        if scale0:
            summary["n_layers_D"] = len(scale0) - 2
            summary["ndf"] = scale0[0][1][0]
            summary["input_nc"] = scale0[0][1][1]
    return summary


_FLAGS = {
    "G": {
        "netG": "--netG",
        "n_local_enhancers": "--n_local_enhancers",
        "ngf": "--ngf",
        "input_nc": "--label_nc / --input_nc / --no_instance / --instance_feat / --label_feat / --feat_num "
        "(generator input channels = label_nc or input_nc, +1 with instance maps, +feat_num with features)",
        "output_nc": "--output_nc",
        "n_downsample": "--n_downsample_global",
        "n_blocks_global": "--n_blocks_global",
        "n_blocks_local": "--n_blocks_local",
    },
    "E": {
        "ngf": "--nef",
        "input_nc": "--output_nc (the encoder reads the real image)",
        "output_nc": "--feat_num",
        "n_downsample": "--n_downsample_E",
        "n_blocks_global": "(an encoder has no residual blocks: is this a net_G file?)",
        "netG": "(an encoder has no local enhancers: is this a net_G file?)",
    },
    "D": {
        "num_D": "--num_D",
        "n_layers_D": "--n_layers_D",
        "ndf": "--ndf",
        "input_nc": "--label_nc / --input_nc / --no_instance / --output_nc "
        "(discriminator input channels = label_nc or input_nc, +1 with instance maps, +output_nc)",
    },
}


def _hints(kind: str, checkpoint: Mapping[str, tuple], network: Mapping[str, tuple]) -> list[str]:
    if kind == "D":
        if checkpoint and all(k.startswith("model") for k in checkpoint):
            return ["the checkpoint holds `model.*` keys: it looks like a net_G/net_E file, not net_D"]
        ours, theirs = _discriminator_summary(network), _discriminator_summary(checkpoint)
    else:
        if checkpoint and all(k.startswith(("scale", "layer")) for k in checkpoint):
            return ["the checkpoint holds discriminator keys (`scale*`/`layer*`): it looks like a net_D file"]
        ours, theirs = _generator_summary(network), _generator_summary(checkpoint)
    hints = []
    for field, flag in _FLAGS[kind].items():
        if field in ours and field in theirs and ours[field] != theirs[field]:
            if field == "n_local_enhancers" and not ours["netG"] == theirs["netG"] == "local":
                continue  # --netG already says it
            hints.append(f"{flag}: the checkpoint looks like {theirs[field]}, these options give {ours[field]}")
    norm_params = sorted(k for k, s in checkpoint.items() if k.endswith(".weight") and len(s) == 1)
    if norm_params:
        hints.append(
            f"the checkpoint has normalisation weights ({norm_params[0]} ...): it was trained with --norm batch, "
            "but only instance norm (the official default) is supported"
        )
    return hints


def _format_keys(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"  {title} ({len(items)}):"] + [f"    {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
    return lines


def _shape_str(shape) -> str:
    return str(list(shape))


def _natural(key: str) -> list:
    """Sort `model.4` before `model.10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _mismatch_error(
    kind: str, network_type: str, given: Mapping[str, tuple], expected: Mapping[str, tuple]
) -> CheckpointMismatchError:
    """Name every differing key with both shapes, then the flags that probably explain the difference."""
    missing = {k: s for k, s in expected.items() if k not in given}
    unexpected = {k: s for k, s in given.items() if k not in expected}
    mismatched = {k: (given[k], s) for k, s in expected.items() if k in given and given[k] != s}
    hints = _hints(kind, given, expected)
    by_key = lambda items: sorted(items, key=lambda kv: _natural(kv[0]))  # noqa: E731
    lines = [
        f"The checkpoint does not fit the {kind} network ({network_type}) built from these options "
        "(shapes in PyTorch layout):"
    ]
    lines += _format_keys(
        "shape mismatches, checkpoint vs network",
        [f"{k}: {_shape_str(a)} vs {_shape_str(b)}" for k, (a, b) in by_key(mismatched.items())],
    )
    for title, keys in (("missing from the checkpoint", missing), ("unexpected in the checkpoint", unexpected)):
        lines += _format_keys(title, [f"{k} {_shape_str(s)}" for k, s in by_key(keys.items())])
    lines.append("Probably different flags:" if hints else "No single flag explains this difference.")
    lines += [f"  {h}" for h in hints]
    return CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched, hints)


# ----------------------------------------------------------------------------------------------- converting


def convert_state_dict(state_dict: Mapping[str, np.ndarray], network: keras.Model, kind: str | None = None) -> None:
    """Assign an official state dict to one of our networks, in place, after checking it fits completely.

    Args:
        state_dict: official key -> array (torch layout), e.g. from `load_torch_state_dict`. A
            DataParallel `module.` prefix is dropped.
        network: a GlobalGenerator / LocalEnhancer ('G'), MultiscaleDiscriminator ('D') or Encoder ('E')
            built from the options the checkpoint was trained with.
        kind: 'G', 'D' or 'E'; inferred from the network when omitted, checked against it when given.

    Raises:
        CheckpointMismatchError: keys missing, unexpected or of other shapes; nothing is assigned then.
    """
    inferred = _infer_kind(network)
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    if kind is not None and kind != inferred:
        raise ValueError(f"kind={kind!r} but the network is a {type(network).__name__} ({inferred!r}).")
    kind = inferred
    state_dict = _strip_module_prefix(state_dict)

    if kind == "D":
        slots = list(_discriminator_slots(network, flat=_is_flat_discriminator(state_dict)))
    else:
        slots = list(_generator_slots(network))

    # Where each torch key goes: (variable, is_kernel).
    targets: dict[str, tuple[keras.Variable, bool]] = {}
    ignorable: set[str] = set()
    for slot in slots:
        if slot.kind == "norm":
            ignorable.update(f"{slot.prefix}.{buffer}" for buffer in _NORM_BUFFERS)
            continue
        targets[f"{slot.prefix}.weight"] = (slot.layer.kernel, True)
        targets[f"{slot.prefix}.bias"] = (slot.layer.bias, False)
    assigned = [id(variable) for variable, _ in targets.values()]
    if sorted(assigned) != sorted({id(v) for v in network.weights}) or len(assigned) != len(network.weights):
        raise RuntimeError(
            f"Internal error: the {kind} mapping covers {len(assigned)} variables but {network.name} has "
            f"{len(network.weights)}; the converter does not know some layer of this network."
        )

    expected = {
        key: (_torch_shape(var.shape) if is_kernel else tuple(var.shape)) for key, (var, is_kernel) in targets.items()
    }
    given = {key: tuple(np.shape(value)) for key, value in state_dict.items() if key not in ignorable}
    if given != expected:
        raise _mismatch_error(kind, type(network).__name__, given, expected)

    ignored = sorted(set(state_dict) - set(expected))
    if ignored:
        _LOG.info("Ignored %d instance-norm running-stat buffers (saved by PyTorch < 0.4).", len(ignored))
    for key, (variable, is_kernel) in targets.items():
        value = np.asarray(state_dict[key])
        if is_kernel:
            value = np.transpose(value, (2, 3, 1, 0))
        variable.assign(value.astype(variable.dtype))


def convert_checkpoint(
    opts: Options, torch_checkpoint_dir: str | os.PathLike, which_epoch: str | None = None
) -> tuple[keras.Model, MultiscaleDiscriminator | None, Encoder | None]:
    """Build our networks from `opts` and fill them from an official checkpoint directory.

    Reads `{which_epoch}_net_G.pth` (required) and, where present, `_net_D.pth` and `_net_E.pth`, as the
    official `save_network` writes them into `checkpoints_dir/name`.

    Args:
        opts: the options the official model was trained with (same flag names and meanings).
        torch_checkpoint_dir: the folder holding the .pth files.
        which_epoch: 'latest' or an epoch number; defaults to `opts.which_epoch`.

    Returns:
        (G, D or None, E or None).

    Raises:
        FileNotFoundError: no net_G file.
        CheckpointMismatchError: a file does not fit the networks built from `opts`.
        ImportError: PyTorch is not installed.
    """
    epoch = which_epoch or opts.which_epoch
    path = lambda net: os.path.join(os.fspath(torch_checkpoint_dir), f"{epoch}_net_{net}.pth")  # noqa: E731
    if not os.path.isfile(path("G")):
        folder = os.fspath(torch_checkpoint_dir)
        found = sorted(f for f in os.listdir(folder) if f.endswith(".pth")) if os.path.isdir(folder) else []
        raise FileNotFoundError(f"No {path('G')} (--which_epoch={epoch}); .pth files there: {found or 'none'}.")

    generator = build_generator(opts)
    convert_state_dict(load_torch_state_dict(path("G")), generator, "G")

    discriminator = None
    if os.path.isfile(path("D")):
        discriminator = build_discriminator(opts)
        convert_state_dict(load_torch_state_dict(path("D")), discriminator, "D")

    encoder = None
    if os.path.isfile(path("E")):
        encoder = build_encoder(opts)
        if encoder is None:
            raise CheckpointMismatchError(
                f"{path('E')} holds an encoder but these options build none: pass --instance_feat or --label_feat "
                "(and not --load_features)."
            )
        convert_state_dict(load_torch_state_dict(path("E")), encoder, "E")
    elif opts.use_encoder:
        _LOG.warning("No %s: the encoder is not converted (feature sampling from clusters still works).", path("E"))
    return generator, discriminator, encoder


def save_converted(
    opts: Options,
    generator: keras.Model,
    discriminator: keras.Model | None,
    encoder: keras.Model | None,
    clusters: Mapping[int, np.ndarray] | None = None,
) -> str:
    """Write converted networks as a checkpoint of ours under checkpoints_dir/name (+ clusters.npz).

    The checkpoint has the full training layout (fresh optimizers, epoch 1), so `tools/train.py
    --continue_train` fine-tunes it and `tools/test.py` / `tools/export.py` read it with the same flags.
    A missing D starts from random weights. Refuses to overwrite an existing experiment, and writes
    atomically, so a failure leaves nothing half-written.

    Returns:
        The experiment directory.
    """
    base = ckpt.experiment_dir(opts)
    if ckpt.available_checkpoints(base):
        raise FileExistsError(f"{base} already holds checkpoints; choose another --name or remove it")
    bank = None
    if clusters is not None:
        bank = ClusterBank.from_clusters(dict(clusters), label_nc=opts.label_nc, feat_num=opts.feat_num)
    if discriminator is None:
        _LOG.warning("No net_D: the discriminator starts from random weights if you fine-tune.")
        discriminator = build_discriminator(opts)
    g_optimizer, d_optimizer = make_optimizers(opts)
    g_variables = list(generator.trainable_variables) + (list(encoder.trainable_variables) if encoder else [])
    g_optimizer.build(g_variables)  # same variable order as Pix2PixHD.all_generator_variables
    d_optimizer.build(discriminator.trainable_variables)
    checkpoint = ckpt.make_checkpoint(
        generator, discriminator, encoder, g_optimizer, d_optimizer, ckpt.TrainingPosition()
    )
    ckpt.save(checkpoint, ckpt.checkpoint_dir(base, ckpt.LATEST))
    ckpt.save_options(opts, base)
    if bank is not None:
        bank.save(default_cluster_file(opts))
    return base


def convert_clusters(opts: Options, path: str | os.PathLike, out: str | None = None) -> str:
    """Convert an official pickled `features_clustered_*.npy` once into our pickle-free `clusters.npz`, so
    tools/test.py, the editor and tools/export.py never need `--allow_pickle` for it.

    Args:
        opts: label_nc and feat_num of the model; `opts.allow_pickle` must be set (unpickling runs code).
        path: the official file.
        out: where to write (default `{checkpoints_dir}/{name}/clusters.npz`); never overwritten.

    Returns:
        The written .npz.

    Raises:
        ValueError: `opts.allow_pickle` is off, or the file is not an official cluster file.
        FileExistsError: `out` exists.
    """
    out = out or default_cluster_file(opts)
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists: remove it or pass --clusters_out=ANOTHER.npz")
    clusters = load_official_clusters(path, feat_num=opts.feat_num, allow_pickle=opts.allow_pickle)
    return ClusterBank.from_clusters(clusters, label_nc=opts.label_nc, feat_num=opts.feat_num).save(out)
