"""User errors and the command-line programs' way of reporting them.

A `UserError` is a mistake in what the user gave (a flag, a config entry, an image, a class list) or a damaged
file (a checkpoint, a dataset record, a run's config.json). Every program reports one as a single line,

  error: <what, where, what was expected, what to do>

and exits with code 2; `--show_traceback` shows the traceback as well. Any other exception is a bug and keeps its
traceback. `run(main)` is the programs' `app.run`: it also refuses words on the command line that are not flags
(`--workdir runs/a run2` would otherwise train in runs/a) and reports flag and config-override mistakes the same
way.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags

EXIT_USER_ERROR = 2


class UserError(Exception):
  """A mistake in the user's input or a damaged file: one line, exit code 2."""


class ConfigError(UserError, ValueError):
  """A config entry, variant, override or flag value that cannot be used."""


class DivergedError(UserError, FloatingPointError):
  """Training became non-finite; nothing non-finite was saved."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the user named (or that a run should hold) does not exist."""


class DamagedFileError(UserError, ValueError):
  """A file that exists but cannot be read: truncated, corrupt, or not what its name says."""


def one_line(message: str) -> str:
  return " ".join(str(message).split())


def fail(message: str) -> NoReturn:
  print(f"error: {one_line(message)}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _flag_value(argv: list[str], name: str) -> str:
  """The value given to --name (as --name=value or --name value) in argv; '' when absent."""
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _flag_error(error: Exception, argv: list[str]) -> str:
  """A flag-parsing failure as one sentence: a misspelt config field names the flag and the closest field; a config
  file that fails to load or refuses its argument gives its own message, not the traceback around it."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):  # --config.train.stpes=3
    missing = re.search(r"'([\w-]+)\\?'.*Did you mean \"(\w+)\"", text, re.S)
    field = missing.group(1) if missing else one_line(text).strip("'\"\\").split()[0]
    flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{re.escape(field)}(\.|$)", a.split("=")[0])),
                f"--config.<...>.{field}")
    hint = f"; did you mean {missing.group(2)!r}?" if missing else "; see the config file for its fields"
    return f"{flag}: the config has no field {field!r}{hint}"
  config = _flag_value(argv, "config")
  if "Failed loading config file" in text:
    return (f"--config={config}: the config file {config.partition(':')[0]} does not exist or "
            f"cannot be read; run from the repository root or give the file's path")
  if "Traceback" in text:  # an exception inside the config file's get_config: keep its last line
    last = [line for line in text.splitlines() if re.match(r"\s*[\w.]+(Error|Exception): ", line)]
    if last:
      message = re.sub(r"^\s*[\w.]+(Error|Exception): ", "", last[-1])
      return f"--config={config}: {message}"
  text = re.sub(r"^FATAL Flags parsing error: ", "", one_line(text))
  return text.replace(" Pass --helpshort or --helpfull to see help on flags.", "")


def run(main: Callable[[list[str]], None], *, positional: int = 0) -> None:
  """app.run(main) for a program that takes `positional` words besides its flags; see the module docstring."""
  show = flags.DEFINE_bool("show_traceback", False, "show the traceback of a user error (bad input, damaged file)")

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
      for name in flags.FLAGS:  # ml_collections defers a config file's load failure to its first use: use it now
        report = getattr(flags.FLAGS[name].value, "_ReportError", None)
        if callable(report):
          report()
      return rest
    except Exception as e:  # pylint: disable=broad-except  (flags, config files and overrides: the user's input)
      if "--show_traceback" in argv:
        raise
      fail(_flag_error(e, argv))

  def wrapped(argv: list[str]) -> None:
    if len(argv) - 1 > positional:
      extra = " ".join(repr(a) for a in argv[1 + positional:])
      fail(f"unexpected argument(s) {extra}: every option is a flag (--name=value); quote values that contain "
           f"spaces")
    try:
      main(argv)
    except UserError as e:
      if show.value:
        raise
      fail(str(e))

  app.run(wrapped, flags_parser=parse)
