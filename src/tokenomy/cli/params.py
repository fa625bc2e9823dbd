"""What every subcommand checks on its command line before any work starts: numbers in
their range (`Number`), and output paths that can be written (`writable_dir`,
`writable_file`). A bad value is a TokenomyError naming the option, so the CLI prints one
`Error:` line and exits 1."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tokenomy.errors import InvalidInputError
from tokenomy.numbers import Range


class Number(click.ParamType):
    """A click option type: a finite number (or an integer) in a range."""

    def __init__(self, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None, integer: bool = False):
        self.range = Range(gt, ge, lt, le, integer)
        self.name = "integer" if integer else "number"

    def convert(self, value, param, ctx):
        name = _option(param)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.range.check(value, name)  # a default, already a number
        return self.range.parse(str(value).strip(), name)

    def get_metavar(self, param, ctx=None) -> str:
        return "INT" if self.range.integer else "FLOAT"


def _option(param: click.Parameter | None) -> str:
    if param is None:
        return "value"
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "value").upper()


# The ranges the subcommands share.
COUNT = Number(ge=1, le=10_000_000, integer=True)  # tokens, prompts, windows, requests
SEED = Number(ge=0, le=2**32 - 1, integer=True)
SECONDS = Number(gt=0, le=86_400 * 7)
USD_PER_HOUR = Number(gt=0, le=10_000)
RATE = Number(gt=0, le=1_000_000)  # requests per second
SHARE = Number(gt=0, le=1)  # a fraction in (0, 1]
PORT = Number(ge=1, le=65_535, integer=True)


def writable_dir(path: Path, option: str) -> None:
    """A directory that is (or can be created and is) writable, checked without creating
    it: its nearest existing ancestor must be a writable directory."""
    _writable(path, option, want_dir=True)


def writable_file(path: Path, option: str) -> None:
    """A file that can be written: a directory that exists and is writable, and no
    directory in the way."""
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a directory: give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"{option} {path}: directory {parent} does not exist")
    _writable(path, option, want_dir=False)


def _writable(path: Path, option: str, *, want_dir: bool) -> None:
    probe = path.absolute()
    if want_dir and probe.exists() and not probe.is_dir():
        raise InvalidInputError(f"{option} {path} exists and is not a directory")
    existing = probe if probe.exists() and want_dir else probe.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{option} {path}: {existing} is a file, not a directory: "
                                "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{option} {path}: {existing} is not writable: choose "
                                "another path")


__all__ = ["COUNT", "PORT", "RATE", "SECONDS", "SEED", "SHARE", "USD_PER_HOUR", "Number",
           "writable_dir", "writable_file"]
