"""The command-line programs' way of running: `run(main)` is their `app.run`.

It reports a `UserError` (errors.py) as one line, `error: <what, where, what was expected, what to do>`, with exit
code 2 (`--show_traceback` shows the traceback as well; any other exception is a bug and keeps its traceback). It
also refuses words on the command line that are not flags (`--workdir runs/a run2` would otherwise train in
runs/a), checks a `--config` file before the flags are parsed (config_lib.load_config: a missing file, one that
fails to load, has no get_config or returns no config), and reports flag and config-override mistakes the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from absl import app, flags

from zegot_jax import config_lib
from zegot_jax.errors import UserError, fail, one_line


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
  file that fails to load or refuses its argument was reported before parsing (`run`), by config_lib.load_config."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):  # --config.train.stpes=3
    missing = re.search(r"'([\w-]+)\\?'.*Did you mean \"(\w+)\"", text, re.S)
    field = missing.group(1) if missing else one_line(text).strip("'\"\\").split()[0]
    flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{re.escape(field)}(\.|$)", a.split("=")[0])),
                f"--config.<...>.{field}")
    hint = f"; did you mean {missing.group(2)!r}?" if missing else "; see the config file for its fields"
    return f"{flag}: the config has no field {field!r}{hint}"
  text = re.sub(r"^FATAL Flags parsing error: ", "", one_line(text))
  return text.replace(" Pass --helpshort or --helpfull to see help on flags.", "")


def run(main: Callable[[list[str]], None], *, positional: int = 0) -> None:
  """app.run(main) for a program that takes `positional` words besides its flags; see the module docstring."""
  show = flags.DEFINE_bool("show_traceback", False, "show the traceback of a user error (bad input, damaged file)")

  def parse(argv: list[str]) -> list[str]:
    config = _flag_value(argv, "config")
    if config and "--show_traceback" not in argv:  # a config file that cannot give a config: its own one line,
      try:
        config_lib.load_config(config)
      except UserError as e:  # the file's own message names it; its get_config's (a bad argument) does not
        fail(str(e) if config.partition(":")[0] in str(e) else f"--config={config}: {e}")
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
      fail(str(e), now=True)

  app.run(wrapped, flags_parser=parse)
