"""The training loop: schedule, checkpoints, exact resume after interruption, and multi-worker training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pix2pixhd_tf.experiment import load_networks
from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf import networks
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.training.trainer import Trainer, TrainResult, finish_message, learning_rate, prepare_data, train
from tests.helpers import sgd_pair

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_SCRIPT = os.path.join(REPO, "tests", "train_worker.py")


def tiny_train_options(tmp_path, **overrides) -> Options:
    values = dict(
        name="tiny",
        checkpoints_dir=str(tmp_path / "checkpoints"),
        dataroot=str(tmp_path / "synthetic"),
        synthetic=True,
        synthetic_size=8,
        label_nc=9,
        loadSize=64,
        fineSize=64,
        resize_or_crop="none",
        batchSize=1,
        ngf=8,
        n_downsample_global=2,
        n_blocks_global=1,
        ndf=8,
        num_D=1,
        n_layers_D=2,
        no_vgg_loss=True,
        niter=1,
        niter_decay=1,
        print_freq=2,
        display_freq=3,
        save_latest_freq=0,
        save_epoch_freq=1,
        steps_per_epoch=3,
    )
    values.update(overrides)
    return Options(**values)


def generator_weights(model) -> list[np.ndarray]:
    return [np.array(v) for v in model.generator.weights]


def test_learning_rate_is_constant_then_linear_to_zero():
    opts = Options(lr=2e-4, niter=100, niter_decay=100)
    assert learning_rate(opts, 1) == pytest.approx(2e-4)
    assert learning_rate(opts, 101) == pytest.approx(2e-4)  # the official decay starts after epoch niter+1
    assert learning_rate(opts, 102) == pytest.approx(2e-4 - 2e-6)
    # The last epoch (200) runs at lr/niter_decay; the official schedule reaches 0 only after it.
    assert learning_rate(opts, 200) == pytest.approx(2e-4 / 100)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Options, TrainResult]:
    """One uninterrupted run of the default tiny schedule (2 epochs of 3 steps), shared: tests only read it."""
    opts = tiny_train_options(tmp_path_factory.mktemp("straight"))
    return opts, train(opts)


def test_training_writes_checkpoints_logs_and_samples(straight):
    opts, result = straight
    base = os.path.join(opts.checkpoints_dir, opts.name)
    assert not result.interrupted and result.global_step == 6 and result.epoch == 3
    assert ckpt.available_checkpoints(base) == ["epoch_1", "epoch_2", "latest"]
    assert os.listdir(os.path.join(base, "logs"))
    assert sorted(os.listdir(os.path.join(base, "samples"))) == ["epoch001.png", "epoch002.png"]
    with open(os.path.join(base, "loss_log.txt")) as f:
        log = f.read()
    assert "G_GAN" in log and "D_fake" in log
    assert json.load(open(os.path.join(base, "options.json")))["ngf"] == 8
    assert set(result.losses) == {"G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake"}
    assert all(np.isfinite(v) for v in result.losses.values())

    # Inference tools read G back from the checkpoint.
    G, _, _ = load_networks(opts)
    for loaded, trained in zip(G.weights, result.model.generator.weights):
        np.testing.assert_array_equal(np.array(loaded), np.array(trained))


def test_interrupted_run_resumes_to_the_same_weights(straight, tmp_path):
    """Stopping mid-epoch (as SIGINT does: after the current step) and resuming equals never stopping."""
    straight_opts, reference = straight

    opts = tiny_train_options(tmp_path, name="resumed", dataroot=straight_opts.dataroot)  # the same scenes
    first = train(opts, max_steps=4)  # epoch 2, after its first step
    assert first.interrupted and first.epoch == 2 and first.global_step == 4
    second = train(opts.replace(continue_train=True))
    assert second.global_step == 6 and not second.interrupted

    for a, b in zip(generator_weights(reference.model), generator_weights(second.model)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    d_ref = [np.array(v) for v in reference.model.discriminator.weights]
    d_res = [np.array(v) for v in second.model.discriminator.weights]
    for a, b in zip(d_ref, d_res):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert int(second.model.g_optimizer.iterations) == int(reference.model.g_optimizer.iterations) == 6


def test_local_generator_holds_the_global_part_for_niter_fix_global(tmp_path):
    global_opts = tiny_train_options(tmp_path, name="global", ngf=16, niter=1, niter_decay=0)
    train(global_opts)
    opts = tiny_train_options(
        tmp_path,
        name="local",
        netG="local",
        ngf=8,
        n_local_enhancers=1,
        n_blocks_local=1,
        load_pretrain=os.path.join(global_opts.checkpoints_dir, "global"),
        niter=2,
        niter_decay=0,
        niter_fix_global=1,
        steps_per_epoch=2,
    )
    prepare_data(opts)
    trainer = Trainer(opts)
    trainer.restore_or_initialise()
    pretrained, _, _ = load_networks(global_opts)
    g = trainer.model.generator
    for layer in g.global_layers():
        for v, w in zip(layer.weights, pretrained.get_layer(layer.name).weights):
            np.testing.assert_array_equal(np.array(v), np.array(w))
    before_global = [np.array(v) for v in g.global_variables()]
    trainer.train(max_steps=2)  # epoch 1: only the enhancer learns
    after_epoch1 = [np.array(v) for v in g.global_variables()]
    for a, b in zip(before_global, after_epoch1):
        np.testing.assert_array_equal(a, b)
    trainer.train(max_steps=2)  # epoch 2: everything is fine-tuned
    after_epoch2 = [np.array(v) for v in g.global_variables()]
    assert max(np.abs(a - b).max() for a, b in zip(after_epoch1, after_epoch2)) > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_workers(tmp_path, opts: Options, n: int, out_prefix: str, *worker_args: str) -> list[tuple]:
    """Launch `n` tests/train_worker.py processes on loopback; output goes to files (no pipe stalls while the
    caller does other work), read by `_finish_workers`."""
    ports = [_free_port() for _ in range(n)]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(n):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        env["CUDA_VISIBLE_DEVICES"] = ""
        out, log_path = str(tmp_path / f"{out_prefix}{i}.npz"), str(tmp_path / f"{out_prefix}{i}.log")
        cmd = [sys.executable, WORKER_SCRIPT, json.dumps(opts.__dict__), out, *worker_args]
        with open(log_path, "wb") as log:
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), out, log_path))
    return procs


def _kill(procs: list[tuple]) -> None:
    for proc, _, _ in procs:
        proc.kill()


def _finish_workers(procs: list[tuple], timeout: float = 240) -> list[dict]:
    """Wait for `_start_workers`' processes; each must exit 0. Their G weights, by worker."""
    results = []
    for proc, out, log_path in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(procs)
            raise
        assert proc.returncode == 0, open(log_path).read()[-3000:]
        results.append(dict(np.load(out)))
    return results


@pytest.mark.slow
def test_multi_worker_training_matches_a_single_process(tmp_path):
    """Two MultiWorkerMirroredStrategy workers on loopback, one sample each, equal one process with batch 2.

    Plain SGD, not Adam: an SGD update is lr x gradient, so a wrongly scaled or missing all-reduce shows, and
    float rounding stays rounding. Adam normalises each update: the rounding noise in gradients that are
    exactly zero in theory (conv biases before instance norm) becomes +-lr steps that differ between one-
    and two-sample kernels, and those perturbations grow over the steps into differences in every weight.
    """
    common = dict(batchSize=2, serial_batches=True, no_flip=True, niter=1, niter_decay=0, steps_per_epoch=3, lr=0.01)
    opts = tiny_train_options(tmp_path, strategy="multi_worker", **common)
    prepare_data(opts)
    procs = _start_workers(tmp_path, opts, 2, "worker", "sgd")
    try:  # the one-process run trains while the workers start (most of their time is importing and tracing)
        single = train(tiny_train_options(tmp_path, name="single", **common), optimizers=lambda _: sgd_pair())
        initial = [np.array(v) for v in Trainer(tiny_train_options(tmp_path, name="fresh")).model.generator.weights]
    except BaseException:
        _kill(procs)
        raise
    workers = _finish_workers(procs)
    for name in workers[0]:
        np.testing.assert_array_equal(workers[0][name], workers[1][name])  # replicas stay in sync exactly
    G = networks.build_generator(opts)
    G.set_weights([workers[0][f"g{i}"] for i in range(len(G.weights))])
    largest_step = 0.0
    for i, (v, start) in enumerate(zip(single.model.generator.weights, initial)):
        if not (v.path.endswith("kernel") or i == len(initial) - 1):
            continue  # conv biases before instance norm: true gradient 0, only rounding noise moves them
        step = np.abs(np.array(v) - start).max()
        largest_step = max(largest_step, step)
        # The all-reduce sums two one-sample gradients instead of one two-sample batch: float32 rounding only,
        # i.e. tiny next to how far the weights moved (a halved or unreduced gradient would be off by ~step).
        np.testing.assert_allclose(workers[0][f"g{i}"], np.array(v), rtol=0, atol=1e-6 + 1e-4 * step, err_msg=v.path)
    assert largest_step > 0.01  # three SGD steps really trained G
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, opts.generator_input_nc)).astype("float32")
    expected = np.asarray(single.model.generator(x))
    G0 = networks.build_generator(opts)
    G0.set_weights(initial)
    output_change = np.abs(expected - np.asarray(G0(x))).max()
    assert output_change > 0.1
    np.testing.assert_allclose(G(x), expected, rtol=0, atol=1e-3 * output_change)

    # The chief (worker 0) alone wrote the checkpoint; it resumes in a single process.
    base = os.path.join(opts.checkpoints_dir, opts.name)
    assert ckpt.available_checkpoints(base) == ["epoch_1", "latest"]
    assert not any(n.startswith(".worker") for n in os.listdir(base))
    resumed = Trainer(
        opts.replace(strategy="default", continue_train=True, niter_decay=1), optimizers=lambda _: sgd_pair()
    )
    resumed.restore_or_initialise()
    assert int(resumed.position.epoch) == 2 and int(resumed.position.global_step) == 3
    for i, v in enumerate(resumed.model.generator.weights):
        np.testing.assert_array_equal(np.array(v), workers[0][f"g{i}"])


def test_finish_message_names_the_encoding_step_only_a_finished_encoder_model_needs(tmp_path):
    def message(interrupted: bool, **overrides) -> str:
        result = TrainResult(None, 2, 16, interrupted, {}, "/ck/tiny")
        return finish_message(tiny_train_options(tmp_path, **overrides), result)

    assert message(False) == "Training finished after 16 steps; checkpoints in /ck/tiny."
    assert message(True, instance_feat=True) == "Training interrupted after 16 steps; checkpoints in /ck/tiny."
    assert message(False, instance_feat=True).splitlines()[1].startswith("Next, with the same flags: tools/encode_")
    assert "encode_features" in message(False, label_feat=True)
    assert "encode_features" not in message(False, instance_feat=True, load_features=True)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_training_resumes_from_it(tmp_path):
    """A real signal to tools/train.py: the run stops after the current step with a checkpoint."""
    opts = tiny_train_options(tmp_path, steps_per_epoch=0, niter=2, niter_decay=0, print_freq=1)
    prepare_data(opts)
    flags = [f"--{k}={v}" for k, v in opts.__dict__.items() if not isinstance(v, bool)]
    flags += [f"--{k}" if v else f"--no{k}" for k, v in opts.__dict__.items() if isinstance(v, bool)]
    log_path = os.path.join(opts.checkpoints_dir, opts.name, "loss_log.txt")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "train.py"), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:  # wait until a few steps are logged
        if os.path.exists(log_path) and open(log_path).read().count("step:") >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"Training interrupted" in out

    trainer = Trainer(opts.replace(continue_train=True))
    trainer.restore_or_initialise()
    stopped_at = int(trainer.position.global_step)
    assert 3 <= stopped_at < 16
    result = trainer.train()
    assert result.global_step == 16 and not result.interrupted
