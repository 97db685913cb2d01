"""One run per workdir: process 0 holds an advisory lock on `<workdir>/.lock` while it runs.

Two runs writing one workdir would interleave checkpoints and metrics; the second
`main.py` is refused at once with one line naming the process that holds it. The
lock is `flock`, which the kernel releases when the holder dies, SIGKILL
included, so a killed run never blocks the next start (a PID file would need a
liveness check that cannot see other hosts). It works on local disks and on
NFS (Linux emulates it with POSIX locks there); object stores (gs://) have no
locks, and such workdirs are not locked. Creating the lock file is also the
first write to the workdir, so a read-only or missing-permission workdir stops
here with one line, before anything is computed.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from coke_jax import errors

LOCK_NAME = ".lock"


class WorkdirInUseError(errors.ConfigError):
  """Another live run holds the workdir."""


class WorkdirNotWritableError(errors.ConfigError):
  """The workdir cannot be created or written (permissions, read-only or full filesystem)."""


# A full, read-only or permission-less filesystem, and a vanished network mount.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ESTALE)
# The same as TensorStore (Orbax's arrays) and TensorFlow's gfile (events, pictures) report it:
# not OSErrors, but their status code or the strerror text in the message.
_WRITE_REASONS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "Permission denied")
_WRITE_MARKERS = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED") + _WRITE_REASONS


def write_failure(error: BaseException):
  """The exception in `error`'s cause/context chain that says a write to disk failed (full,
  read-only, no permission), or None: what Orbax, TensorStore and TensorFlow raise for it."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError):
      if error.errno in _WRITE_ERRNOS:
        return error
    elif (isinstance(error, (ValueError, RuntimeError)) or
          type(error).__module__.startswith("tensorflow")):
      if write_failure_text(str(error)):
        return error
    error = error.__cause__ or error.__context__
  return None


def write_failure_text(text: str) -> bool:
  """Whether a library's log message reports a failed write."""
  return any(marker in text for marker in _WRITE_MARKERS)


def describe(error: BaseException) -> str:
  """A write failure as one short line: its type and reason (and file, for an OSError)."""
  if isinstance(error, OSError) and error.errno:
    where = f": {error.filename}" if error.filename else ""
    return f"{type(error).__name__}: {os.strerror(error.errno)}{where}"
  text = " ".join(str(error).split())
  reason = next((m for m in _WRITE_REASONS if m in text), None)
  return f"{type(error).__name__}: {reason or text[:200]}"


def not_writable(workdir: str, error: BaseException) -> WorkdirNotWritableError:
  return WorkdirNotWritableError(
      f"Cannot write to the workdir {workdir} ({describe(error)}). Give a --workdir on a "
      "writable filesystem with free space (the checkpoints already there are kept).")


def _acquire(workdir: str):
  """The open, locked lock file; raises WorkdirInUseError or WorkdirNotWritableError."""
  path = os.path.join(workdir, LOCK_NAME)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise not_writable(workdir, e) from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      os.close(fd)
      raise not_writable(workdir, e) from None
    with os.fdopen(fd) as f:
      holder = f.read().strip()
    try:
      holder = "process {pid} on {host}, started {started}: {command}".format(
          **json.loads(holder))
    except (ValueError, KeyError, TypeError):
      holder = "a process whose lock file could not be read"
    raise WorkdirInUseError(
        f"The workdir {workdir} is in use by another run ({holder}). Wait for it to end or "
        "stop it, or give another --workdir.") from None
  try:
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)}).encode())
  except OSError as e:
    os.close(fd)
    raise not_writable(workdir, e) from None
  return fd


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir` for the duration of the block (process 0 locks; every process learns
  whether it could, so that all of a refused job's processes stop)."""
  if "://" in workdir:
    logging.info("The workdir %s is an object store: it is not locked against a second run.",
                 workdir)
    yield
    return
  fd, error = None, None
  if jax.process_index() == 0:
    try:
      fd = _acquire(workdir)
    except errors.ConfigError as e:
      error = e
  if jax.process_count() > 1:
    held = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not held and error is None:
      error = WorkdirInUseError(f"Process 0 could not take the workdir {workdir}; its log "
                                "says why.")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if fd is not None:  # the file stays: removing it would race with a run that opened it
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
