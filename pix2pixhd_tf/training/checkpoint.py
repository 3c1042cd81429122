"""Checkpoints of an experiment: `{checkpoints_dir}/{name}/` holds

- `latest/`: the rolling checkpoint written every save_latest_freq steps, at interruption and epoch ends;
- `epoch_{N}/`: a numbered checkpoint every save_epoch_freq epochs (`--which_epoch N` loads it);
- `options.json` and `opt.txt`: the settings the experiment was trained with.

A checkpoint holds G, D, E, both optimizers, the training position (epoch, step in epoch, global step) and,
with --ema_decay, the moving average of G's and E's weights, so `--continue_train` resumes exactly. Tools that only need G and E read it partially.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil

import keras
import tensorflow as tf

from pix2pixhd_tf import networks
from pix2pixhd_tf.options import Options

LATEST = "latest"


class TrainingPosition(tf.Module):
    """Where training stands: epoch (1-based, as the official code counts) and steps already done in it."""

    def __init__(self):
        super().__init__(name="position")
        self.epoch = tf.Variable(1, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")


def experiment_dir(opts: Options) -> str:
    return os.path.join(opts.checkpoints_dir, opts.name)


def checkpoint_dir(base: str, which_epoch: str) -> str:
    return os.path.join(base, LATEST if str(which_epoch) == LATEST else f"epoch_{which_epoch}")


def make_checkpoint(
    generator: keras.Model | None = None,
    discriminator: keras.Model | None = None,
    encoder: keras.Model | None = None,
    g_optimizer=None,
    d_optimizer=None,
    position: TrainingPosition | None = None,
    average: tf.Module | None = None,
) -> tf.train.Checkpoint:
    """The experiment's checkpoint object, or the part of it that `parts` name (absent parts are skipped).

    `average` (a `training.averaging.WeightAverage`) is saved under `average/generator` and `average/encoder`:
    restoring a `WeightAverage` wrapped around fresh networks loads the averaged weights into them.
    """
    parts = dict(
        generator=generator,
        discriminator=discriminator,
        encoder=encoder,
        g_optimizer=g_optimizer,
        d_optimizer=d_optimizer,
        position=position,
        average=average,
    )
    return tf.train.Checkpoint(**{k: v for k, v in parts.items() if v is not None})


def holds_average(directory: str) -> bool:
    """Whether the checkpoint in `directory` holds a moving average of G's weights (trained with --ema_decay)."""
    path = find(directory)
    return path is not None and any(name.startswith("average/") for name, _ in tf.train.list_variables(path))


def save(checkpoint: tf.train.Checkpoint, directory: str) -> str:
    """Write atomically: into a sibling `.tmp` dir, then swap it in, so a kill mid-save never loses the old one.

    Any leftover of an interrupted save is cleared on the way, in an order that keeps a readable copy
    (`directory`, or `directory.old` when a save was killed between its renames, see `find`) at every moment:
    `.old` is removed only while `directory` is complete, or once the new copy has taken its place. A `.tmp`
    is never read: it is a partial write, or (a save killed between its renames) a copy whose completeness
    cannot be told, newer than `.old` by at most one save interval.
    """
    directory = directory.rstrip("/")
    tmp, old = directory + ".tmp", directory + ".old"
    _remove(tmp)
    path = checkpoint.write(os.path.join(tmp, "ckpt"))
    if _is_complete(directory):
        _remove(old)  # a stale copy: `directory` is the good one
        os.replace(directory, old)
    else:
        _remove(directory)  # missing or partial: the good copy, if any, is `old`, kept until the swap
    os.replace(tmp, directory)
    _remove(old)
    return path.replace(tmp, directory)


def _is_complete(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "ckpt.index"))


def _remove(path: str) -> None:
    """Delete a leftover file or folder; fail naming it when that is impossible (e.g. permissions)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)
    if os.path.lexists(path):
        raise OSError(
            f"cannot remove {path}, a leftover of an interrupted checkpoint save: delete it by hand (check its "
            "permissions), then run again"
        )


def find(directory: str) -> str | None:
    """The checkpoint prefix in `directory`, or None (also recovers from a save killed between its renames)."""
    for candidate in (directory, directory.rstrip("/") + ".old"):
        if os.path.exists(os.path.join(candidate, "ckpt.index")):
            return os.path.join(candidate, "ckpt")
    return None


def restore(checkpoint: tf.train.Checkpoint, directory: str) -> str:
    """Restore every object of `checkpoint` from `directory`; extra saved objects (e.g. optimizers when
    only G is wanted) are ignored, missing ones are an error rather than silently random weights."""
    path = find(directory)
    if path is None:
        raise FileNotFoundError(
            f"no checkpoint in {directory}: check --checkpoints_dir, --name and --which_epoch "
            f"(available: {_available_text(directory)})"
        )
    try:
        status = checkpoint.read(path)
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError) as err:
        # Truncated or overwritten files: "Read less bytes than requested" (an IndexError from the reader),
        # "not an sstable (bad magic number)".
        detail = " ".join(str(getattr(err, "message", None) or err).split())[:200]
        raise ValueError(
            f"the checkpoint {path} cannot be read ({detail}): its files "
            f"({path}.index, {path}.data-*) are truncated or corrupt, e.g. an unfinished copy. Copy it again, "
            f"or use another one with --which_epoch (available: {_available_text(directory)})"
        ) from None
    except ValueError as err:
        if "incompatible tensor with shape" not in str(err):
            raise
        raise ValueError(
            f"the checkpoint {path} holds networks of other sizes than these flags build "
            f"({' '.join(str(err).split())[:300]}): pass the flags it was trained with (its options.json, e.g. "
            "the same --flagfile); --ngf, --ndf, --n_downsample_global, --n_blocks_global, --label_nc, "
            "--feat_num and --nef decide the shapes"
        ) from None
    except AssertionError as err:
        missing = sorted({m.group(1) for m in re.finditer(r"path=([\w/]+)", str(err))})
        raise ValueError(
            f"the checkpoint {path} does not hold everything these options build (missing: "
            f"{', '.join(missing[:8]) or str(err)[:300]}); check that --netG, --instance_feat/--label_feat and "
            "the network sizes match the ones it was trained with. A checkpoint written by an earlier development "
            "version of pix2pixhd_tf may have another layer layout (retrain, or convert the official .pth files "
            "again with tools/convert_checkpoint.py)"
        ) from None
    status.expect_partial()
    return path


def _available_text(directory: str) -> str:
    return ", ".join(available_checkpoints(os.path.dirname(directory.rstrip("/")))) or "none"


def available_checkpoints(base: str) -> list[str]:
    if not os.path.isdir(base):
        return []
    names = [n for n in os.listdir(base) if n == LATEST or n.startswith("epoch_")]
    return sorted(n for n in names if find(os.path.join(base, n)))


def save_options(opts: Options, directory: str) -> None:
    """options.json (read back by the tools) and opt.txt (the official human-readable listing)."""
    os.makedirs(directory, exist_ok=True)
    values = dataclasses.asdict(opts)
    with open(os.path.join(directory, "options.json"), "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    with open(os.path.join(directory, "opt.txt"), "w") as f:
        f.write("------------ Options -------------\n")
        f.writelines(f"{k}: {v}\n" for k, v in sorted(values.items()))
        f.write("-------------- End ----------------\n")


def load_pretrained_global(generator: keras.Model, opts: Options) -> None:
    """`--load_pretrain DIR`: copy a trained global G1 into this generator (coarse-to-fine, paper §3.2).

    For a local G, the checkpoint is a GlobalGenerator at ngf·2^n_local_enhancers; its layers share
    their official names (`model_i`) with the local G's embedded G1, minus the output head.
    """
    source_opts = opts
    if opts.netG == "local":
        source_opts = opts.replace(netG="global", ngf=opts.ngf * 2**opts.n_local_enhancers)
    source = networks.build_generator(source_opts)
    path = restore(make_checkpoint(source), checkpoint_dir(opts.load_pretrain, opts.which_epoch))
    target_layers = {layer.name: layer for layer in generator.layers if layer.weights}
    copied = 0
    for layer in source.layers:
        if layer.weights and layer.name in target_layers:
            target = target_layers[layer.name]
            for t, s in zip(target.weights, layer.weights):
                if tuple(t.shape) != tuple(s.shape):
                    raise ValueError(
                        f"--load_pretrain {path}: layer {layer.name} has shape {tuple(s.shape)} there but "
                        f"{tuple(t.shape)} here; train the global G with --ngf {source_opts.ngf} and the same "
                        "label_nc / n_downsample_global / n_blocks_global"
                    )
                t.assign(s)
            copied += 1
    if copied == 0:
        raise ValueError(f"--load_pretrain {path}: no generator layer matched; is it a pix2pixhd_tf checkpoint?")
