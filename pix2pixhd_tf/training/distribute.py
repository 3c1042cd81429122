"""One switch for tf.distribute: the same `Pix2PixHD.train_step` runs on one device, many GPUs or many hosts.

Also how a multi-host run stops together (`StopAgreement`) and the exit status that tells a cluster manager
to start it again (`exit_status`); docs/MULTI_HOST.md is the recipe built on them.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from pix2pixhd_tf.options import Options


def select_gpus(gpu_ids: str) -> list[str]:
    """Make only the GPUs in `gpu_ids` ('0,1'; '' = all; '-1' = none) visible; returns their device names."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpu_ids.strip() == "-1":
        tf.config.set_visible_devices([], "GPU")
        return []
    if gpu_ids.strip():
        wanted = [int(i) for i in gpu_ids.split(",")]
        missing = [i for i in wanted if i >= len(gpus)]
        if missing:
            raise ValueError(f"--gpu_ids={gpu_ids} names GPU(s) {missing}, but only {len(gpus)} are visible")
        gpus = [gpus[i] for i in wanted]
        tf.config.set_visible_devices(gpus, "GPU")
    return [f"/gpu:{i}" for i in range(len(gpus))]


def make_strategy(opts: Options) -> tf.distribute.Strategy:
    """default: one device. mirrored: all selected local GPUs (or the CPU). multi_worker: hosts from TF_CONFIG."""
    if opts.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker reads the cluster from the TF_CONFIG environment variable; set it"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = select_gpus(opts.gpu_ids)
    if opts.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    if devices:
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, summaries and images (worker 0 when TF_CONFIG has no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def worker_scratch_dir(base: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes: `base` on the chief, a private scratch dir elsewhere.

    Every MultiWorkerMirroredStrategy worker must take part in a checkpoint save (the variables' values
    are read collectively); non-chief workers write to scratch and delete it.
    """
    if is_chief(strategy):
        return base
    resolver = strategy.cluster_resolver
    return os.path.join(base, f".worker_{resolver.task_type}_{resolver.task_id}")


# A multi-worker run that stopped before the end of its schedule, after saving `latest`: start it again with
# --continue_train. Non-zero so that a cluster manager counts the worker as failed and restarts it (a
# Kubernetes Job would take status 0 as "this index is done"); 42 is the restart status TensorFlow's own
# preemption handler uses by default on Borg. Single-host runs keep status 0 for Ctrl-C / SIGTERM.
EXIT_RESUMABLE = 42


def exit_status(opts: Options, interrupted: bool) -> int:
    """The process exit status of a training run: EXIT_RESUMABLE for an interrupted multi-worker run, else 0."""
    return EXIT_RESUMABLE if interrupted and opts.strategy == "multi_worker" else 0


class StopAgreement:
    """After each step, whether any worker was asked to stop (SIGTERM / Ctrl-C), the same answer on all workers.

    Under MultiWorkerMirroredStrategy every worker calls this after every step with its own flag; one all-reduce
    (a sum of 0/1 flags) gives all of them the same answer after the same global step, so they all run the
    normal, collective `Trainer.save()` of that step and stop: one checkpoint (`latest`, written atomically by
    the chief, holding the TrainingPosition), no half-done step, and `--continue_train` resumes from it as from
    any other save. On one host (no, mirrored or one-device strategy) the local flag is the answer: nothing to
    agree on, and Ctrl-C / SIGTERM behave as they always did.

    Why not `tf.distribute.experimental.PreemptionCheckpointHandler`: it saves through a
    `tf.train.CheckpointManager` in its own `ckpt-N` layout and restores from it when it is created, and it adds
    its own run counter to the checkpoint object (so checkpoints written without it no longer restore with
    `assert_existing_objects_matched`); it installs its own SIGTERM handler, counts steps by calls to its
    `run()`, agrees on the step through coordination-service keys and watcher threads, and exits from inside
    `run()`. Using it would give this project a second checkpoint format and a second resume path. The price
    of the all-reduce instead: one 4-byte collective per step (a network round trip, beside the step's
    gradient all-reduce of the whole model), and only signals are watched, not GCE maintenance events from
    the metadata server (the cluster manager's SIGTERM before a node goes away is what this handles).
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.collective = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._any = None

    def __call__(self, local: bool) -> bool:
        """Whether any worker's flag is set; under MultiWorkerMirroredStrategy every worker must call it."""
        if not self.collective:
            return local
        if self._any is None:
            strategy = self.strategy

            @tf.function
            def any_flag(flag: tf.Tensor) -> tf.Tensor:
                def replica_sum() -> tf.Tensor:
                    local = tf.identity(flag)  # placed on this replica's device (an all-reduce needs one)
                    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)

                return strategy.experimental_local_results(strategy.run(replica_sum))[0]

            self._any = any_flag
        return float(self._any(tf.constant(1.0 if local else 0.0))) > 0
