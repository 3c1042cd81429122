"""Pickles are read only behind --allow_pickle (issue 19): a crafted `--cluster_path=*.npy` whose unpickling
would run code is refused by every road that reads a cluster file (tools/test.py, the editor, tools/export.py,
the converter), the message names the file and both fixes, and the code never runs (no marker file).

Each crafted file, when unpickled, calls `open(marker, "w")`: the marker file existing afterwards is the proof
that code ran.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

from pix2pixhd_tf import networks
from pix2pixhd_tf.convert import convert_clusters, load_official_clusters
from pix2pixhd_tf.editor.backends import make_backend
from pix2pixhd_tf.experiment import load_cluster_bank
from pix2pixhd_tf.inference import Synthesizer
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving.saved_model import export_model
from pix2pixhd_tf.styles import ClusterBank
from pix2pixhd_tf.training import checkpoint as ckpt

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(
    label_nc=9, ngf=4, n_downsample_global=1, n_blocks_global=1, nef=4, n_downsample_E=1, feat_num=3,
    instance_feat=True, no_vgg_loss=True,
)  # fmt: skip
FIXES = r"convert_checkpoint\.py --clusters_file=.*--allow_pickle.*or pass --allow_pickle"


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): any code a pickle names runs the same way."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(tmp_path: pathlib.Path, kind: str) -> tuple[str, str]:
    """(crafted file, marker it would create): an .npy object array, or a bare pickle named .npy."""
    marker = str(tmp_path / f"pwned_{kind}")
    path = tmp_path / f"features_clustered_{kind}.npy"
    if kind == "npy":
        array = np.empty((), dtype=object)
        array[()] = {1: _WritesMarker(marker)}
        np.save(path, array, allow_pickle=True)
    else:
        path.write_bytes(pickle.dumps({1: _WritesMarker(marker)}))
    return str(path), marker


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Options:
    """An untrained tiny instance_feat experiment (latest checkpoint + options.json), no clusters.npz."""
    work = tmp_path_factory.mktemp("exp")
    opts = Options(name="feat", checkpoints_dir=str(work / "ckpt"), **TINY)
    keras.utils.set_random_seed(0)
    G, E = networks.build_generator(opts), networks.build_encoder(opts)
    ckpt.save(ckpt.make_checkpoint(G, None, E), ckpt.checkpoint_dir(ckpt.experiment_dir(opts), "latest"))
    ckpt.save_options(opts, ckpt.experiment_dir(opts))
    return opts


@pytest.mark.parametrize("kind", ["npy", "raw"])
def test_library_readers_refuse_a_pickle_without_opt_in(tmp_path, kind):
    path, marker = _crafted(tmp_path, kind)
    opts = Options(**TINY)
    readers = {
        "ClusterBank.load": lambda: ClusterBank.load(path),
        "load_official_clusters": lambda: load_official_clusters(path, feat_num=3),
        "load_cluster_bank": lambda: load_cluster_bank(opts, path),
        "convert_clusters": lambda: convert_clusters(opts, path, str(tmp_path / "out.npz")),
    }
    for name, read in readers.items():
        with pytest.raises(ValueError, match=FIXES) as err:
            read()
        assert path in str(err.value), name
        assert not os.path.exists(marker), f"{name} ran the pickle's code"
    assert not os.path.exists(tmp_path / "out.npz")


def test_tools_refuse_a_pickle_cluster_path(experiment, tmp_path):
    """The roads of tools/test.py (Synthesizer), the editor (make_backend) and tools/export.py (export_model)."""
    path, marker = _crafted(tmp_path, "npy")
    roads = {
        "tools/test.py": lambda: Synthesizer.from_checkpoint(experiment, cluster_file=path),
        "tools/editor.py": lambda: make_backend(experiment, cluster_file=path),
        "tools/export.py": lambda: export_model(experiment, str(tmp_path / "export"), cluster_file=path),
    }
    for name, road in roads.items():
        with pytest.raises(ValueError, match=FIXES):
            road()
        assert not os.path.exists(marker), f"{name} ran the pickle's code"
    assert not os.path.exists(tmp_path / "export" / "1")  # nothing half-exported


def test_opt_in_reads_a_trusted_official_file_and_converts_it_once(experiment, tmp_path):
    official = tmp_path / "features_clustered_010.npy"
    np.save(official, {8: np.full((2, 3), 0.5)}, allow_pickle=True)
    trusting = experiment.replace(allow_pickle=True)
    assert Synthesizer.from_checkpoint(trusting, cluster_file=str(official)).clusters.counts[8] == 2
    out = convert_clusters(trusting, official, str(tmp_path / "clusters.npz"))
    # The converted bank is pickle-free: read without the flag.
    bank = Synthesizer.from_checkpoint(experiment, cluster_file=out).clusters
    np.testing.assert_array_equal(bank.center(8, 1), [0.5, 0.5, 0.5])
    with pytest.raises(FileExistsError, match="clusters_out"):  # never overwritten
        convert_clusters(trusting, official, out)


@pytest.mark.slow
def test_export_cli_refuses_before_running_code(experiment, tmp_path):
    """The issue's probe, end to end: `tools/export.py --cluster_path=crafted.npy` exits with the message."""
    path, marker = _crafted(tmp_path, "npy")
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "export.py"),
            *flags,
            f"--name={experiment.name}",
            f"--checkpoints_dir={experiment.checkpoints_dir}",
            f"--export_dir={tmp_path / 'export'}",
            f"--cluster_path={path}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "--allow_pickle" in result.stderr and path in result.stderr
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_the_suggested_conversion_command_works(tmp_path):
    """The fix the refusal names: `tools/convert_checkpoint.py --clusters_file=... --allow_pickle` alone
    writes a pickle-free clusters.npz (and without --allow_pickle refuses, running nothing)."""
    path, marker = _crafted(tmp_path, "npy")
    official = tmp_path / "features_clustered_010.npy"
    np.save(official, {8: np.full((2, 3), 0.5)}, allow_pickle=True)
    base = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "--label_nc=9", "--feat_num=3",
            f"--checkpoints_dir={tmp_path / 'ckpt'}", "--name=official"]  # fmt: skip
    refused = subprocess.run([*base, f"--clusters_file={path}"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert refused.returncode != 0 and "--allow_pickle" in refused.stderr and not os.path.exists(marker)
    done = subprocess.run(
        [*base, f"--clusters_file={official}", "--allow_pickle"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    out = tmp_path / "ckpt" / "official" / "clusters.npz"
    assert done.returncode == 0 and str(out) in done.stdout, done.stderr
    np.testing.assert_array_equal(ClusterBank.load(out).center(8, 1), [0.5, 0.5, 0.5])
