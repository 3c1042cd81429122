"""The one loader of a trained experiment: G (+ E, + D) and the cluster bank, checked against its flags.

`tools/test.py`, `tools/export.py`, `tools/encode_features.py` and the editor all read an experiment through
this module (`load_experiment`, or `load_networks` / `load_encoder` for networks alone), so a flag that
differs from the trained ones, a missing checkpoint or a missing cluster file gives the same message
everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf

from pix2pixhd_tf import networks
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles.bank import ClusterBank, default_cluster_file
from pix2pixhd_tf.training import checkpoint as ckpt

# Settings that change the networks' shapes: they must match the ones the checkpoint was trained with.
_ARCH_FIELDS = (
    "label_nc",
    "input_nc",
    "output_nc",
    "netG",
    "ngf",
    "n_downsample_global",
    "n_blocks_global",
    "no_instance",
    "instance_feat",
    "label_feat",
    "load_features",
)
_LOCAL_FIELDS = ("n_local_enhancers", "n_blocks_local")
_FEATURE_FIELDS = ("feat_num",)
_ENCODER_FIELDS = ("nef", "n_downsample_E")


@dataclasses.dataclass
class Experiment:
    """A trained experiment's networks and styles. `cluster_file` is where the bank was (or would have been)
    read, for messages; `clusters` is None when that file does not exist."""

    opts: Options
    generator: keras.Model
    encoder: keras.Model | None = None
    clusters: ClusterBank | None = None
    cluster_file: str | None = None


def check_experiment_options(opts: Options) -> None:
    """Compare the architecture flags with the experiment's saved `options.json` (if there is one).

    Raises:
        ValueError: listing every flag that differs, e.g. "--ngf: trained with 32, given 64".
    """
    path = os.path.join(ckpt.experiment_dir(opts), "options.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    fields = list(_ARCH_FIELDS)
    if opts.netG == "local":
        fields += _LOCAL_FIELDS
    if opts.use_features:
        fields += _FEATURE_FIELDS
    if opts.use_encoder:
        fields += _ENCODER_FIELDS
    diffs = [
        f"--{name}: trained with {saved[name]!r}, given {getattr(opts, name)!r}"
        for name in fields
        if name in saved and saved[name] != getattr(opts, name)
    ]
    if diffs:
        raise ValueError(
            f"the flags differ from those {ckpt.experiment_dir(opts)} was trained with ({path}):\n  "
            + "\n  ".join(diffs)
            + "\nPass the training flags (e.g. the same --flagfile)."
        )


def restore_parts(opts: Options, which_epoch: str | None = None, **parts: keras.Model | None) -> str:
    """Restore exactly `parts` (generator=, encoder=, discriminator=) from the experiment's checkpoint;
    what else it holds (optimizers, position) is skipped. Returns the checkpoint path.

    G and E get the moving average of their weights when the checkpoint holds one (trained with --ema_decay),
    unless `opts.raw_weights`; a line says which weights were used, as the two give different images.
    """
    directory = ckpt.checkpoint_dir(ckpt.experiment_dir(opts), which_epoch or opts.which_epoch)
    generator, encoder = parts.pop("generator", None), parts.pop("encoder", None)
    if generator is None and encoder is None:
        return ckpt.restore(ckpt.make_checkpoint(**parts), directory)
    has_average = ckpt.holds_average(directory)
    if has_average and not opts.raw_weights:
        # The same object path as training's WeightAverage: average/generator, average/encoder.
        average = tf.train.Checkpoint(
            **{k: v for k, v in {"generator": generator, "encoder": encoder}.items() if v is not None}
        )
        path = ckpt.restore(ckpt.make_checkpoint(average=average, **parts), directory)
        print(
            f"Using the averaged weights of G{' and E' if encoder is not None else ''} from {path} (--raw_weights: the trained ones)"
        )
        return path
    path = ckpt.restore(ckpt.make_checkpoint(generator=generator, encoder=encoder, **parts), directory)
    if has_average:
        print(
            f"Using the trained (raw) weights of G{' and E' if encoder is not None else ''} from {path}, as --raw_weights asks"
        )
    return path


def load_networks(
    opts: Options, *, which_epoch: str | None = None, discriminator: bool = False
) -> tuple[keras.Model, keras.Model | None, keras.Model | None]:
    """(G, D or None, E or None) built from `opts` with the experiment's trained weights.

    They are built without --recompute, a training-memory setting: what runs or is exported from here is
    never differentiated, and the weights are the same either way.
    """
    check_experiment_options(opts)
    built = opts.replace(recompute="none")
    G = networks.build_generator(built)
    E = networks.build_encoder(built)
    D = networks.build_discriminator(built) if discriminator else None
    restore_parts(opts, which_epoch, generator=G, discriminator=D, encoder=E)
    return G, D, E


def load_encoder(opts: Options, *, which_epoch: str | None = None) -> keras.Model:
    """The trained encoder E of the experiment.

    Raises:
        ValueError: the options build no encoder (no --instance_feat/--label_feat, or --load_features).
        FileNotFoundError: no checkpoint.
    """
    encoder = networks.build_encoder(opts)
    if encoder is None:
        raise ValueError(
            "these options build no encoder: it exists for --instance_feat or --label_feat models trained without "
            "--load_features"
        )
    check_experiment_options(opts)
    restore_parts(opts, which_epoch, encoder=encoder)
    return encoder


def resolve_cluster_file(opts: Options, cluster_file: str | None = None) -> tuple[str, bool]:
    """(path, explicit): `cluster_file` if given, else `{checkpoints_dir}/{name}/clusters.npz`.

    A relative `cluster_file` that does not exist as given is looked up in the experiment directory, as the
    official code does with --cluster_path.
    """
    if not cluster_file:
        return default_cluster_file(opts), False
    if not os.path.isabs(cluster_file) and not os.path.exists(cluster_file):
        beside = os.path.join(ckpt.experiment_dir(opts), cluster_file)
        if os.path.exists(beside):
            return beside, True
    return cluster_file, True


def load_cluster_bank(opts: Options, cluster_file: str | None = None) -> tuple[ClusterBank | None, str]:
    """(bank or None, path): the bank of a feature model, None when the default file does not exist.

    An official pickled .npy is read only with `opts.allow_pickle` (unpickling runs code).

    Raises:
        FileNotFoundError: `cluster_file` was named but does not exist.
        ValueError: a pickled .npy without --allow_pickle, or a bank that does not fit the model.
    """
    path, explicit = resolve_cluster_file(opts, cluster_file)
    if os.path.isfile(path):
        bank = ClusterBank.load(
            path, label_nc=opts.label_nc or None, feat_num=opts.feat_num, allow_pickle=opts.allow_pickle
        )
        return bank, path
    if explicit:
        raise FileNotFoundError(
            f"no cluster file {path} (nor in {ckpt.experiment_dir(opts)}): create one with "
            "tools/encode_features.py, or fix --cluster_path"
        )
    return None, path


def load_experiment(opts: Options, *, which_epoch: str | None = None, cluster_file: str | None = None) -> Experiment:
    """G (and E) from `{checkpoints_dir}/{name}/{which_epoch}` and, for feature models, the cluster bank.

    Args:
        opts: the flags the experiment was trained with (checked against its options.json).
        which_epoch: 'latest' or an epoch; default `opts.which_epoch`.
        cluster_file: a cluster bank to use (our .npz, or the official pickled .npy with --allow_pickle); by default
            `clusters.npz` beside the checkpoint, if it exists.

    Raises:
        FileNotFoundError: no checkpoint, or an explicitly named cluster file is missing.
        ValueError: flags differ from the trained ones; the bank does not fit the model.
    """
    generator, _, encoder = load_networks(opts, which_epoch=which_epoch)
    bank, path = load_cluster_bank(opts, cluster_file) if opts.use_features else (None, None)
    return Experiment(opts, generator, encoder, bank, path)
