"""One switch for tf.distribute: the same `Pix2PixHD.train_step` runs on one device, many GPUs or many hosts."""

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
