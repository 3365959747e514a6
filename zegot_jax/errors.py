"""User errors, the storage layer's failures as user errors, and the one line that reports them.

A `UserError` is a mistake in what the user gave (a flag, a config entry, an image, a class list), a damaged file
(a checkpoint, a dataset record, a run's config.json) or a storage failure (a full disk, a read-only folder:
`storage`). Every program reports one as a single line,

  error: <what, where, what was expected, what to do>

and exits with code 2 (`fail`; cli.run is the programs' runner). Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import NoReturn

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


class StorageError(UserError, OSError):
  """Writing or reading files failed in the storage layer (a full disk, a read-only or missing folder, no
  permission): not a bug, and nothing half-written is left where it counts."""


# The storage layer's failures as tensorstore (under orbax) reports them: a ValueError whose text holds an absl
# status and the operating system's reason, not an OSError.
_STORAGE_REASONS = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
                    "Permission denied": errno.EACCES, "Disk quota exceeded": errno.EDQUOT,
                    "RESOURCE_EXHAUSTED": errno.ENOSPC, "PERMISSION_DENIED": errno.EACCES}


def storage_cause(error: BaseException | None) -> tuple[int | None, str] | None:
  """(errno, reason) when `error`, or an exception it wraps, is a failure of the storage layer: an OSError with an
  errno (not a missing module or a bad image), or tensorstore's ValueError naming one; else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno, error.strerror or os.strerror(error.errno)
    if isinstance(error, ValueError):
      for reason, code in _STORAGE_REASONS.items():
        if reason in str(error):
          return code, os.strerror(code)
    error = error.__cause__ or error.__context__
  return None


ADVICE = {errno.ENOSPC: "free space on that disk or write elsewhere", errno.EDQUOT: "free space or write elsewhere",
          errno.EROFS: "the file system is read-only: write elsewhere",
          errno.EACCES: "you may not write there: fix its permissions or write elsewhere",
          errno.EPERM: "you may not write there: fix its permissions or write elsewhere",
          errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
          errno.EISDIR: "that path is a folder: give a file's path",
          errno.EEXIST: "a file is in the way: give another path"}


@contextlib.contextmanager
def storage(action: str, advice: str | None = None) -> Iterator[None]:
  """Turns a storage failure inside the block into one StorageError line: '<action>: <reason>; <advice>' (the
  advice defaults to what the reason calls for). Anything else passes through unchanged."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore wrap the OSError)
    cause = storage_cause(e)
    if cause is None:
      raise
    code, reason = cause
    error = StorageError(f"{action}: {reason}; {advice or ADVICE.get(code, 'check the path and the disk')}")
    error.errno = code
    raise error from e


def path_flag(value: str | None, flag: str, example: str) -> pathlib.Path:
  """The path a flag names, with ~ expanded; ConfigError when it is empty (pathlib would read '' as the current
  directory)."""
  if value is None or not str(value).strip():
    raise ConfigError(f"{flag} is empty; give a path, e.g. {flag}={example}")
  return pathlib.Path(str(value)).expanduser()


def one_line(message: str) -> str:
  return " ".join(str(message).split())


def fail(message: str, *, now: bool = False) -> NoReturn:
  """Prints `error: <message>` on one line and exits with code 2; `now`: at once (os._exit, after flushing), for
  an error raised while the storage layer's threads may still hold work (a damaged checkpoint's other reads),
  whose callbacks would print tracebacks into a closed event loop at interpreter shutdown."""
  line = f"error: {one_line(message)}"
  if now:
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stderr = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with  (threads still printing)
    os.write(2, (line + "\n").encode())  # one write: nothing lands inside the line
    os._exit(EXIT_USER_ERROR)  # pylint: disable=protected-access
  print(line, file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)
