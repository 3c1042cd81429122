"""Preemption of a multi-host run: a SIGTERM to one MultiWorkerMirroredStrategy worker stops every worker after
the same step with one checkpoint, and `--continue_train` from it ends exactly where an uninterrupted run ends.

The single-host case (SIGTERM to tools/train.py saves `latest` and exits 0) is tests/test_train.py's
`test_sigterm_saves_a_checkpoint_and_training_resumes_from_it`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf.options import Options
from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf.training import distribute
from pix2pixhd_tf.training.trainer import prepare_data
from tests.test_train import tiny_train_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "tools", "train.py")
WORKERS = 2
STEPS = 8  # one epoch: 16 synthetic samples, a global batch of 2 (one sample per worker)


def test_only_an_interrupted_multi_worker_run_exits_with_the_restart_status():
    multi, single = Options(strategy="multi_worker"), Options(strategy="default")
    assert distribute.exit_status(multi, interrupted=True) == distribute.EXIT_RESUMABLE == 42
    assert distribute.exit_status(multi, interrupted=False) == 0
    assert distribute.exit_status(single, interrupted=True) == 0  # Ctrl-C / SIGTERM on one host: unchanged
    assert distribute.exit_status(Options(strategy="mirrored"), interrupted=True) == 0


def test_stop_agreement_on_one_host_is_the_local_flag():
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        agreement = distribute.StopAgreement(strategy)
        assert not agreement.collective
        assert agreement(True) is True and agreement(False) is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command_line(opts: Options) -> list[str]:
    flags = [f"--{k}={v}" for k, v in opts.__dict__.items() if not isinstance(v, bool)]
    flags += [f"--{k}" if v else f"--no{k}" for k, v in opts.__dict__.items() if isinstance(v, bool)]
    return [sys.executable, TRAIN, *flags]


class _Cluster:
    """WORKERS tools/train.py processes on loopback, each with its TF_CONFIG; output to files (no pipe stalls)."""

    def __init__(self, opts: Options, logs: str):
        ports = [_free_port() for _ in range(WORKERS)]
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        self.log_paths = [f"{logs}-worker{i}.txt" for i in range(WORKERS)]
        self.procs = []
        for i, path in enumerate(self.log_paths):
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
            # This checkout's package, whatever `pip install -e` pointed at.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
            with open(path, "wb") as log:
                self.procs.append(subprocess.Popen(_command_line(opts), env=env, stdout=log, stderr=subprocess.STDOUT))

    def wait(self, timeout: float = 300) -> list[tuple[int, str]]:
        """(exit status, output) of every worker; kills them all if one overruns `timeout`."""
        deadline = time.time() + timeout
        try:
            for proc in self.procs:
                proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for proc in self.procs:
                proc.kill()
            raise
        return [(proc.returncode, open(path).read()) for proc, path in zip(self.procs, self.log_paths)]


def _steps_logged(opts: Options) -> int:
    path = os.path.join(ckpt.experiment_dir(opts), "loss_log.txt")
    return open(path).read().count("step:") if os.path.exists(path) else 0


def _reported_steps(output: str, state: str) -> int:
    found = re.findall(rf"Training {state} after (\d+) steps", output)
    assert len(found) == 1, output[-3000:]
    return int(found[0])


def _checkpoint_tensors(opts: Options) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(ckpt.find(ckpt.checkpoint_dir(ckpt.experiment_dir(opts), ckpt.LATEST)))
    names = [name for name in reader.get_variable_to_shape_map() if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return {name: np.asarray(reader.get_tensor(name)) for name in names}


@pytest.mark.slow
def test_sigterm_to_one_worker_saves_one_checkpoint_that_all_resume_to_the_uninterrupted_weights(tmp_path):
    common = {"strategy": "multi_worker", "synthetic_size": 2 * STEPS, "batchSize": 2, "niter": 1, "niter_decay": 0}
    common.update(steps_per_epoch=0, print_freq=1, display_freq=1000, save_epoch_freq=0)
    straight = tiny_train_options(tmp_path, name="straight", **common)
    opts = tiny_train_options(tmp_path, name="preempted", **common)
    prepare_data(opts)

    # The uninterrupted reference runs beside the run that is stopped (two clusters at once: half the waiting).
    reference = _Cluster(straight, str(tmp_path / "straight"))
    # SIGTERM to worker 1 (not the chief, which writes the checkpoint) once a few steps are done.
    run = _Cluster(opts, str(tmp_path / "preempted"))
    deadline = time.time() + 240
    while _steps_logged(opts) < 2 and time.time() < deadline and all(p.poll() is None for p in run.procs):
        time.sleep(0.05)
    run.procs[1].send_signal(signal.SIGTERM)
    results = run.wait()
    for status, output in reference.wait():
        assert status == 0, output[-3000:]
        assert _reported_steps(output, "finished") == STEPS
    for status, output in results:
        assert status == distribute.EXIT_RESUMABLE, output[-3000:]
    stopped = [_reported_steps(output, "interrupted") for _, output in results]
    assert stopped[0] == stopped[1] and 2 <= stopped[0] < STEPS  # both stopped after the same step
    assert f"Signal {int(signal.SIGTERM)} received" in results[1][1]
    assert "Another worker was asked to stop" in results[0][1]

    # One checkpoint, the chief's, at that step; no scratch or half-written copies left.
    base = ckpt.experiment_dir(opts)
    assert ckpt.available_checkpoints(base) == [ckpt.LATEST]
    assert not [n for n in os.listdir(base) if n.startswith(".worker") or n.endswith((".tmp", ".old"))]
    saved = _checkpoint_tensors(opts)
    assert int(saved["position/global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == stopped[0]

    # Both restart with --continue_train and finish the schedule.
    for status, output in _Cluster(opts.replace(continue_train=True), str(tmp_path / "resumed")).wait():
        assert status == 0, output[-3000:]
        assert f"at epoch 1, step {stopped[0]}" in output  # mid-epoch: the rest of its batches, none twice
        assert _reported_steps(output, "finished") == STEPS

    # Every tensor of the final checkpoint (G, D, both Adams, the position) equals the uninterrupted run's.
    expected, resumed = _checkpoint_tensors(straight), _checkpoint_tensors(opts)
    assert sorted(resumed) == sorted(expected)
    assert int(resumed["position/global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    assert int(resumed["g_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    # G's weights (the checkpoint names each variable by its first path: here, through G's optimizer).
    g_weights = [k for k in resumed if k.startswith("g_optimizer/_trainable_variables/")]
    assert len(g_weights) >= 10
    moved = max(np.abs(resumed[k] - saved[k]).max() for k in g_weights)
    assert moved > 1e-4  # the resumed run really trained after the restart
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
