"""The shared CLI runner (`pix2pixhd_tf/cli.py`): known errors as one `error: ...` line and exit status 1, the
traceback only with --traceback, unknown errors with their traceback; and the editor's two start-up failures
of issue 19 (its extra not installed, its port taken) as one line that names the fix."""

import errno
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pix2pixhd_tf import cli
from pix2pixhd_tf.data.files import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def start_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=ENV,
    )


RAISER = """
    import errno, sys
    from pix2pixhd_tf import cli
    from pix2pixhd_tf.data.files import DatasetError

    def main(argv):
        kind = argv[1]
        if kind == "dataset":
            raise DatasetError("no label files in /data/train_label: point --dataroot at the dataset")
        if kind == "port":
            raise OSError(errno.EADDRINUSE, "Address already in use")
        if kind == "extra":
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        raise RuntimeError("a bug")

    cli.run(main)
"""


HIDDEN_EDITOR_EXTRA = """
    import runpy, sys

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "fastapi":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Hide())
    sys.argv = ["tools/editor.py", "--port=0"]
    runpy.run_path("tools/editor.py", run_name="__main__")
"""
RUNS = {
    "dataset": (RAISER, "dataset"),
    "port": (RAISER, "port"),
    "extra": (RAISER, "extra"),
    "dataset --traceback": (RAISER, "dataset", "--traceback"),
    "bug": (RAISER, "bug"),
    "editor without fastapi": (HIDDEN_EDITOR_EXTRA,),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """Every run of RUNS, by name; one per CPU at a time, since each spends its time importing TensorFlow."""
    pending, running, done = list(RUNS.items()), {}, {}
    while pending or running:
        while pending and len(running) < max(2, os.cpu_count() or 1):
            name, (code, *args) = pending.pop(0)
            running[name] = start_python(code, *args)
        name = next(iter(running))
        proc = running.pop(name)
        stdout, stderr = proc.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("dataset", "error: no label files in /data/train_label: point --dataroot at the dataset"),
        ("port", "pass --port=0"),
        ("extra", 'pip install -e ".[editor]"'),
    ],
)
def test_known_errors_are_one_line_and_exit_1(runs, kind, expected):
    result = runs[kind]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "--traceback" in result.stderr  # the way to the full stack is named


def test_traceback_flag_shows_the_stack_and_unknown_errors_keep_it(runs):
    shown = runs["dataset --traceback"]
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "DatasetError" in shown.stderr
    bug = runs["bug"]
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr
    assert "error: a bug" not in bug.stderr


def test_error_classification():
    assert cli.is_known_error(DatasetError("x")) and cli.is_known_error(FileNotFoundError("x"))
    assert cli.is_known_error(FileExistsError("x")) and cli.is_known_error(OSError(errno.EADDRINUSE, "in use"))
    assert cli.is_known_error(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"))
    assert not cli.is_known_error(RuntimeError("x")) and not cli.is_known_error(KeyError("x"))
    assert not cli.is_known_error(ModuleNotFoundError("No module named 'numpyy'", name="numpyy"))
    assert cli.describe_error(ValueError("two\n  lines")) == "two lines"
    message = cli.describe_error(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"))
    assert "'uvicorn' is not installed" in message and 'pip install -e ".[editor]"' in message


def test_tensorflow_errors_are_known_once_tensorflow_is_loaded():
    import tensorflow as tf

    error = tf.errors.InvalidArgumentError(None, None, "Input to reshape is a tensor with 3 values")
    assert cli.is_known_error(error) and cli.describe_error(error) == "Input to reshape is a tensor with 3 values"
    assert cli.is_known_error(tf.errors.NotFoundError(None, None, "x"))
    assert not cli.is_known_error(tf.errors.InternalError(None, None, "x"))


def test_every_tool_uses_the_runner():
    tools = os.path.join(REPO, "tools")
    for name in sorted(os.listdir(tools)):
        if name.endswith(".py"):
            with open(os.path.join(tools, name)) as f:
                source = f.read()
            assert "cli.run(main)" in source and "app.run(main)" not in source, name


def test_editor_without_its_extra_names_the_install_command(runs):
    """fastapi hidden from the import system (HIDDEN_EDITOR_EXTRA), as on an install without the `editor` extra."""
    result = runs["editor without fastapi"]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "the editor needs the 'editor' extra" in result.stderr and 'pip install -e ".[editor]"' in result.stderr


def test_editor_on_a_taken_port_says_so_and_suggests_port_0(tmp_path):
    from tests.test_editor_api import TINY, make_experiment

    opts = make_experiment(tmp_path)
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    model_flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in TINY.items()]
    try:
        result = subprocess.run(
            [
                sys.executable,
                "tools/editor.py",
                f"--name={opts.name}",
                f"--checkpoints_dir={opts.checkpoints_dir}",
                f"--dataroot={opts.dataroot}",
                f"--port={port}",
                *model_flags,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=ENV,
            timeout=300,
            check=False,
        )
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: port {port} on 127.0.0.1 is taken" in result.stderr and "--port=0" in result.stderr
