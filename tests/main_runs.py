"""main.py in subprocesses, for the multi-process, kill/resume and failure tests.

Each run gets its own number of virtual CPU devices and writes its log to a
file the test polls. Runs of one test share a JAX compilation cache, so a
restart does not compile again (the executables, hence the numbers, are the
same ones).
"""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

import tests


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def config_flags(**overrides) -> list[str]:
  """--config.key=value flags; tuples as Python literals."""
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]


class MainRun:
  """One `python main.py ...` process with `devices` CPU devices; stop() it in a cleanup."""

  def __init__(self, args, log_path: str, devices: int = 8, cache_dir: str = "", prefix=(),
               threads: int = 0):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": tests.xla_flags(devices)}
    if threads:
      # XLA's CPU thread pool is max(cores, local devices) threads unless PJRT_NPROC says
      # otherwise, and the thread count changes how a convolution's gradient sums are split,
      # hence their last bits. Runs compared bit for bit across layouts need the same count.
      env["PJRT_NPROC"] = str(threads)
    if cache_dir:
      env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    self.log_path = log_path
    with open(log_path, "w") as log:
      self.proc = subprocess.Popen([*prefix, sys.executable, "main.py", *args], cwd=REPO,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)

  def output(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
    """Blocks until the log matches `pattern`; fails if the process ends or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      match = re.search(pattern, self.output())
      if match:
        return match
      if self.proc.poll() is not None:
        raise AssertionError(f"main.py exited ({self.proc.returncode}) before logging "
                             f"{pattern!r}:\n{self.output()[-3000:]}")
      time.sleep(0.05)
    raise AssertionError(f"No {pattern!r} in the log after {timeout}s:\n{self.output()[-3000:]}")

  def wait(self, timeout: float = 300) -> int:
    return self.proc.wait(timeout)

  def signal(self, sig=signal.SIGTERM):
    self.proc.send_signal(sig)

  def stop(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def scalars(workdir: str, tag: str) -> dict[int, list[float]]:
  """Every value written for TensorBoard `tag` in `workdir`, by step (repeats after restarts)."""
  values = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values.setdefault(event.step, []).append(float(np.asarray(
              tf.make_ndarray(value.tensor))))
  return values
