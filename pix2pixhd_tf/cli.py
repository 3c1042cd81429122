"""The runner every `tools/*.py` shares: known errors as one line, the traceback only with --traceback.

    from pix2pixhd_tf import cli
    ...
    if __name__ == "__main__":
        cli.run(main)        # instead of absl.app.run(main)

A user who passes a wrong folder, a taken port or a bad flag value needs the message, not forty lines of
stack above it. Errors whose message already says what went wrong and what to do (ValueError and its
subclasses such as DatasetError, FileNotFoundError, FileExistsError, TensorFlow's InvalidArgumentError and
NotFoundError, a taken port, a missing optional extra) print one line, `error: MESSAGE`, on stderr and exit
with status 1; `--traceback` shows the full stack instead. Anything else is a bug or an unexpected failure and
keeps its traceback. Flag errors are absl's own (a one-line message and exit status 1).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags

__all__ = ["EXTRAS", "MissingExtraError", "describe_error", "is_known_error", "run"]

flags.DEFINE_boolean("traceback", False, "Show the full Python traceback of an error, not only its message.")

EXIT_ERROR = 1

# Optional dependencies -> the extra of setup.cfg that installs them.
EXTRAS = {
    "fastapi": "editor",
    "uvicorn": "editor",
    "multipart": "editor",
    "python_multipart": "editor",
    "starlette": "editor",
    "torch": "convert",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip command that installs it."""


def missing_extra(exc: ImportError, extra: str, what: str) -> MissingExtraError:
    """A MissingExtraError for `exc` (raised importing `what`'s dependencies), naming `extra`'s install command."""
    module = getattr(exc, "name", None) or str(exc)
    return MissingExtraError(
        f"{what} needs the {extra!r} extra, but {module!r} is not installed: "
        f'pip install -e ".[{extra}]" (from the repository root)'
    )


def _tf_error_types() -> tuple[type, ...]:
    """TensorFlow's clear errors, only when TensorFlow is already loaded (the runner never imports it)."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    if errors is None:
        return ()
    return tuple(getattr(errors, name) for name in ("InvalidArgumentError", "NotFoundError") if hasattr(errors, name))


def is_known_error(exc: BaseException) -> bool:
    """Whether `exc` is an error whose message is enough (see the module docstring)."""
    if isinstance(exc, ImportError):
        return isinstance(exc, MissingExtraError) or (getattr(exc, "name", None) or "").split(".")[0] in EXTRAS
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        return True
    return isinstance(exc, _tf_error_types())


def describe_error(exc: BaseException) -> str:
    """The one line printed for a known error: its message, plus the fix where the exception type implies one."""
    if isinstance(exc, ImportError) and not isinstance(exc, MissingExtraError):
        name = (getattr(exc, "name", None) or "").split(".")[0]
        if name in EXTRAS:
            return str(missing_extra(exc, EXTRAS[name], "this tool"))
    message = None
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:  # not "[Errno 98] ..."
        message = exc.strerror + (f": {exc.filename!r}" if exc.filename else "")
        if exc.errno == errno.EADDRINUSE and "--port" not in message:
            message += ": the port is taken (another server?); pass --port=0 for a free one, or another --port"
    if _tf_error_types() and isinstance(exc, _tf_error_types()):
        message = getattr(exc, "message", None)
    message = " ".join(str(message or exc).split())  # one line, even for multi-line messages
    return message or type(exc).__name__


def _print_error(exc: BaseException) -> NoReturn:
    print(f"error: {describe_error(exc)}  [--traceback shows where]", file=sys.stderr, flush=True)
    sys.exit(EXIT_ERROR)


def guarded(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` with known errors turned into one line and exit status 1 (unless --traceback)."""

    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except Exception as e:  # sorted into known (one line) and unknown (re-raised) below
            if not is_known_error(e) or flags.FLAGS.traceback:
                raise
            _print_error(e)

    wrapped.__doc__ = main.__doc__
    return wrapped


def run(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
    """`absl.app.run(main)` with the error handling of this module."""
    app.run(guarded(main), argv=argv)
