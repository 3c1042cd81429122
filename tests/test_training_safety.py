"""Training never loses work: no silent overwrite of an experiment, data errors save first and name the
file, saves recover from any leftover of an interrupted save, damaged checkpoints and wrong flags are
named, and the progress line shows what is true."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from PIL import Image

from pix2pixhd_tf.data.dataset import sample_order
from pix2pixhd_tf.data.files import DatasetError, DatasetLayout
from pix2pixhd_tf.data.dataset import list_dataset_files
from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf.training.trainer import (
    Trainer,
    TrainingLogger,
    _ResumedProgbar,
    epoch_seed,
    prepare_data,
    train,
)
from tests.test_train import REPO, tiny_train_options


def one_step_options(tmp_path, **overrides):
    """One epoch of one step: the cheapest run that writes a checkpoint."""
    values = {"niter": 1, "niter_decay": 0, "steps_per_epoch": 1, "save_epoch_freq": 0}
    return tiny_train_options(tmp_path, **{**values, **overrides})


def tree_digest(directory: str) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory`."""
    digest = {}
    for path in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def checkpoint_step(directory: str) -> int:
    reader = tf.train.load_checkpoint(ckpt.find(directory))
    return int(reader.get_tensor("position/global_step/.ATTRIBUTES/VARIABLE_VALUE"))


# ------------------------------------------------------------------ item 1: an experiment is never overwritten


def test_a_second_run_is_refused_with_both_commands_and_the_first_run_is_intact(tmp_path):
    opts = one_step_options(tmp_path)
    train(opts)
    base = ckpt.experiment_dir(opts)
    latest = ckpt.checkpoint_dir(base, ckpt.LATEST)
    before = tree_digest(latest)

    with pytest.raises(FileExistsError) as err:
        train(opts, command="python tools/train.py --flagfile=x.cfg")
    message = str(err.value)
    assert base in message and "1 steps trained" in message
    assert "python tools/train.py --flagfile=x.cfg --continue_train" in message
    assert "python tools/train.py --flagfile=x.cfg --overwrite_experiment" in message and "--name" in message
    assert tree_digest(latest) == before  # nothing touched

    # The explicit choice: the old experiment is moved aside intact, the new one starts at step 0.
    result = train(opts.replace(overwrite_experiment=True, steps_per_epoch=2))
    assert result.global_step == 2
    (aside,) = glob.glob(base + ".replaced-*")
    assert tree_digest(os.path.join(aside, ckpt.LATEST)) == before
    assert checkpoint_step(latest) == 2

    with pytest.raises(ValueError, match="contradict"):
        train(opts.replace(overwrite_experiment=True, continue_train=True))


@pytest.mark.slow
def test_tools_train_twice_refuses_the_second_run_in_one_line(tmp_path):
    """The issue's probe: `python tools/train.py <flags>` twice, without --continue_train."""
    opts = one_step_options(tmp_path)
    flags = [f"--{k}={v}" for k, v in opts.__dict__.items() if not isinstance(v, bool)]
    flags += [f"--{k}" if v else f"--no{k}" for k, v in opts.__dict__.items() if isinstance(v, bool)]
    command = [sys.executable, os.path.join(REPO, "tools", "train.py"), *flags]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    latest = ckpt.checkpoint_dir(ckpt.experiment_dir(opts), ckpt.LATEST)
    before = tree_digest(latest)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 1
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("error:")]
    assert "already holds an experiment" in line and "1 steps trained" in line
    assert f"{flags[-1]} --continue_train" in line and f"{flags[-1]} --overwrite_experiment" in line
    assert tree_digest(latest) == before


def test_continue_train_names_the_flag_that_differs_a_missing_checkpoint_and_a_network_size_mismatch(tmp_path):
    opts = one_step_options(tmp_path)
    with pytest.raises(FileNotFoundError, match="drop --continue_train"):
        train(opts.replace(continue_train=True))
    train(opts)
    with pytest.raises(ValueError, match=r"--ngf: trained with 8, given 16") as err:
        train(opts.replace(continue_train=True, ngf=16))
    assert "options.json" in str(err.value) and "--flagfile" in str(err.value)
    # The same flags resume.
    assert train(opts.replace(continue_train=True, niter_decay=1)).global_step == 2

    # Past the options.json check (Trainer directly), the checkpoint's own shapes name the checkpoint and flags.
    trainer = Trainer(opts.replace(continue_train=True, ngf=16))
    with pytest.raises(ValueError) as err:
        trainer.restore_or_initialise()
    message = str(err.value)
    assert ckpt.experiment_dir(opts) in message and "--ngf" in message and "--flagfile" in message


# ------------------------------------------------------------------ item 2: a data error saves first, names the file


def _corrupt_png_data(path: str) -> bytes:
    """Overwrite bytes in the middle of the compressed data: the header and end marker stay valid."""
    with open(path, "rb") as f:
        original = f.read()
    start = original.index(b"IDAT") + 40
    damaged = original[:start] + bytes(200) + original[start + 200 :]
    with open(path, "wb") as f:
        f.write(damaged)
    return original


def _sample_at(opts, position: int):
    files = list_dataset_files(DatasetLayout.of(opts), phase=opts.phase)
    return sample_order(opts, files, epoch_seed(opts.seed, 1))[position], files


def test_a_corrupt_png_mid_training_saves_first_names_the_file_and_the_run_resumes(tmp_path):
    opts = tiny_train_options(tmp_path, niter=1, niter_decay=0, steps_per_epoch=0, save_latest_freq=0)
    prepare_data(opts)
    index, files = _sample_at(opts, 3)
    bad = files.image[index].path
    original = _corrupt_png_data(bad)
    list_dataset_files(DatasetLayout.of(opts), phase=opts.phase)  # the cheap header check cannot see it

    with pytest.raises(DatasetError) as err:
        train(opts)
    message = str(err.value)
    assert f"Cannot read {bad} (DecodeError: Invalid PNG data" in message and "corrupt" in message
    assert "--continue_train" in message and "--check_data" in message and "step 3" in message
    latest = ckpt.checkpoint_dir(ckpt.experiment_dir(opts), ckpt.LATEST)
    assert checkpoint_step(latest) == 3  # the three steps before the bad file are saved

    # --check_data finds it before anything is built.
    with pytest.raises(DatasetError, match=bad):
        train(opts.replace(name="checked", check_data=True))
    assert not os.path.exists(os.path.join(opts.checkpoints_dir, "checked"))

    with open(bad, "wb") as f:
        f.write(original)
    result = train(opts.replace(continue_train=True))
    assert result.global_step == len(files) and not result.interrupted


def test_a_label_id_out_of_range_mid_training_saves_first_and_names_the_file(tmp_path):
    opts = tiny_train_options(tmp_path, niter=1, niter_decay=0, steps_per_epoch=0, save_latest_freq=0)
    prepare_data(opts)
    index, files = _sample_at(opts, 2)
    bad = files.label[index].path
    ids = np.array(Image.open(bad))
    ids[0, 0] = 200
    Image.fromarray(ids).save(bad)

    with pytest.raises(DatasetError) as err:
        train(opts)
    message = str(err.value)
    assert f"Label map {bad} has id 200 >= --label_nc=9" in message
    assert "--continue_train" in message and "--check_data" in message
    assert checkpoint_step(ckpt.checkpoint_dir(ckpt.experiment_dir(opts), ckpt.LATEST)) == 2
    with pytest.raises(DatasetError, match="has id 200"):
        train(opts.replace(name="checked", check_data=True))


# ------------------------------------------------------------------ item 3: saves recover from any leftover


def _value_checkpoint(value: float) -> tuple[tf.train.Checkpoint, tf.Variable]:
    v = tf.Variable(value)
    return tf.train.Checkpoint(v=v), v


def _read_value(directory: str) -> float:
    checkpoint, v = _value_checkpoint(-1.0)
    ckpt.restore(checkpoint, directory)
    return float(v.numpy())


def _leftover_states(tmp_path):
    """Every state an interrupted save (and a partial clean-up) can leave, with the value a reader must see."""
    d = str(tmp_path / "latest")

    def good(path, value):
        ckpt.save(_value_checkpoint(value)[0], path)

    def partial(path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "ckpt.data-00000-of-00001"), "wb") as f:
            f.write(b"half")

    yield "tmp partial", lambda: (good(d, 1.0), partial(d + ".tmp")), 1.0
    yield "old stale, non-empty", lambda: (good(d + ".old", 0.5), good(d, 1.0)), 1.0
    yield "old half removed", lambda: (good(d, 1.0), partial(d + ".old")), 1.0
    yield "killed between renames", lambda: (good(d + ".old", 1.0), good(d + ".tmp", 2.0)), 1.0
    yield "dir partial, old good", lambda: (good(d + ".old", 1.0), partial(d)), 1.0
    yield "old is a file", lambda: (good(d, 1.0), open(d + ".old", "w").close()), 1.0
    yield "tmp is a file", lambda: (good(d, 1.0), open(d + ".tmp", "w").close()), 1.0


def test_save_recovers_from_every_leftover_of_an_interrupted_save(tmp_path):
    for name, make, expected in _leftover_states(tmp_path):
        for p in glob.glob(str(tmp_path / "latest*")):
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        make()
        d = str(tmp_path / "latest")
        assert _read_value(d) == expected, name
        ckpt.save(_value_checkpoint(3.0)[0], d)
        assert _read_value(d) == 3.0, name
        assert sorted(os.listdir(tmp_path)) == ["latest"], name


@pytest.mark.parametrize("state", range(7))
def test_a_save_killed_at_any_point_keeps_a_readable_checkpoint(tmp_path, monkeypatch, state):
    """Kill the save after each of its file operations, from each leftover state: a reader always finds the
    previous value or the new one, never nothing."""
    name, make, expected = list(_leftover_states(tmp_path))[state]
    d = str(tmp_path / "latest")
    real_replace, real_remove = os.replace, ckpt._remove
    for kill_after in range(6):
        for p in glob.glob(str(tmp_path / "latest*")):
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        make()
        calls = []

        def counted(real, calls=calls, kill_after=kill_after):
            def op(*args):
                if len(calls) == kill_after:
                    raise KeyboardInterrupt
                calls.append(args)
                return real(*args)

            return op

        monkeypatch.setattr(ckpt.os, "replace", counted(real_replace))
        monkeypatch.setattr(ckpt, "_remove", counted(real_remove))
        try:
            ckpt.save(_value_checkpoint(3.0)[0], d)
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(ckpt.os, "replace", real_replace)
        monkeypatch.setattr(ckpt, "_remove", real_remove)
        assert _read_value(d) in (expected, 3.0), (name, kill_after)
        ckpt.save(_value_checkpoint(4.0)[0], d)  # and the next save cleans up
        assert _read_value(d) == 4.0 and sorted(os.listdir(tmp_path)) == ["latest"], (name, kill_after)


# ------------------------------------------------------------------ item 4: damaged checkpoints are named


@pytest.mark.parametrize("part", ["data", "index"])
def test_a_truncated_checkpoint_names_its_file_and_the_fix(tmp_path, part):
    d = str(tmp_path / "latest")
    checkpoint, _ = _value_checkpoint(1.0)
    big = tf.Variable(tf.zeros([4096]))
    ckpt.save(tf.train.Checkpoint(v=checkpoint.v, big=big), d)
    (path,) = glob.glob(os.path.join(d, f"ckpt.{part}*"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError) as err:
        ckpt.restore(tf.train.Checkpoint(v=tf.Variable(0.0), big=tf.Variable(tf.zeros([4096]))), d)
    message = str(err.value)
    assert os.path.join(d, "ckpt") in message and "truncated or corrupt" in message and "--which_epoch" in message


# ------------------------------------------------------------------ item 5: the progress line


def test_the_progress_line_shows_active_losses_only_and_saves_log_no_info_line(tmp_path, caplog):
    opts = one_step_options(tmp_path, print_freq=1)
    result = train(opts)
    with open(os.path.join(ckpt.experiment_dir(opts), "loss_log.txt")) as f:
        log = f.read()
    assert "G_GAN:" in log and "G_VGG" not in log  # --no_vgg_loss: off, so not shown
    assert "G_VGG" in result.losses  # still returned
    logger = TrainingLogger(opts, result.model, str(tmp_path), enabled=False)
    assert logger.shown == ["G_GAN", "G_GAN_Feat", "D_real", "D_fake"]
    assert "G_GAN_Feat" not in TrainingLogger(opts.replace(no_ganFeat_loss=True), _model(opts), str(tmp_path)).shown

    # tools/train.py runs under absl at INFO verbosity, where every checkpoint write logs this line.
    trainer = Trainer(opts.replace(continue_train=True))
    trainer.restore_or_initialise()
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        with caplog.at_level(logging.INFO):
            trainer.save()
            assert not [r for r in caplog.records if "Sharding callback" in r.getMessage()]
            ckpt.save(trainer.checkpoint, str(tmp_path / "plain"))  # the control: a plain write logs it
            assert [r for r in caplog.records if "Sharding callback" in r.getMessage()]
    finally:
        absl_logging.set_verbosity(verbosity)


def _model(opts):
    return Trainer(opts.replace(name="other", no_ganFeat_loss=True)).model


def test_a_resumed_progress_bar_counts_its_rate_from_the_resume_point():
    bar = _ResumedProgbar(100, 50, verbose=0)
    bar.update(50)
    start = bar._start
    assert bar._estimate_step_duration(51, start + 10.0) == pytest.approx(10.0)  # not 10 / 51
    assert bar._estimate_step_duration(61, start + 20.0) == pytest.approx(1.0)  # steps 52..61 in 10 s
