"""absl flags generated from `Options`, so flag names, defaults and help texts live in one place; the parser of
size flag values."""

from __future__ import annotations

import dataclasses
import re

from absl import flags

from pix2pixhd_tf.options import Options

_DEFINERS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define one absl flag per `Options` field (idempotent)."""
    for f in dataclasses.fields(Options):
        if f.name in flag_values:
            continue
        choices = f.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(f.name, f.default, list(choices), f.metadata["help"], flag_values=flag_values)
        else:
            kind = type(f.default)
            _DEFINERS[kind](f.name, f.default, f.metadata["help"], flag_values=flag_values)


def options_from_flags(flag_values: flags.FlagValues = flags.FLAGS, **overrides) -> Options:
    """The parsed flags as an `Options`, with `overrides` (e.g. phase='test') applied."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(Options)}
    values.update(overrides)
    return Options(**values)


def options_from_flagfile(path: str, **overrides) -> Options:
    """The `Options` an absl flagfile (e.g. configs/local.cfg) gives, with `overrides` applied; for code that
    is not itself an absl program (tests, benchmarks, notebooks). Nested --flagfile lines are read by absl,
    relative to the working directory, as on the command line."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["options_from_flagfile", f"--flagfile={path}"])
    return options_from_flags(flag_values, **overrides)


def parse_size(text: str) -> tuple[int, int]:
    """A size flag, 'HEIGHTxWIDTH' (e.g. '512x1024'), as (height, width).

    Flags where '' (or 'none') means "no size" check for it before calling this.

    Raises:
      ValueError: anything else, '' included, or a side that is not positive.
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or not all(int(side) > 0 for side in match.groups()):
        raise ValueError(f"size {text!r} must be HEIGHTxWIDTH with positive sides, e.g. 512x1024")
    return int(match.group(1)), int(match.group(2))
