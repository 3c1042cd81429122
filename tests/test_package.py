"""The package's shape: its front door, and imports that go one way."""

import ast
import subprocess
import sys
from pathlib import Path

import pix2pixhd_tf

PACKAGE = Path(pix2pixhd_tf.__file__).parent


def test_front_door_names_resolve():
    for name in pix2pixhd_tf.__all__:
        assert getattr(pix2pixhd_tf, name) is not None, name
    assert pix2pixhd_tf.Synthesizer.__module__ == "pix2pixhd_tf.inference"
    assert callable(pix2pixhd_tf.train) and callable(pix2pixhd_tf.export_saved_model)


def test_numpy_only_modules_do_not_load_tensorflow():
    code = "import sys, pix2pixhd_tf, pix2pixhd_tf.data.synthetic; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _own_imports_inside_functions(path: Path) -> list[str]:
    """`import pix2pixhd_tf...` statements nested in a function of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                module = inner.module if isinstance(inner, ast.ImportFrom) else None
                names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else [module or ""]
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and any(
                    n.startswith("pix2pixhd_tf") for n in names
                ):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno}")
    return found


def test_no_function_local_imports_of_the_package():
    # Deferred imports hide import cycles; only optional heavy dependencies (torch, fastapi) may be deferred.
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _own_imports_inside_functions(path)]
    assert found == []
