"""One run per workdir: a live holder refuses the next, a SIGKILLed one does not block it.

(main.py refusing a held workdir with one line: failures_test.)
"""

import errno
import os
import subprocess
import sys

from absl.testing import absltest

from coke_jax import workdir_lock
from tests import main_runs

_HOLD = """
import sys, time
from coke_jax import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


class WorkdirLockTest(absltest.TestCase):

  def test_a_live_holder_refuses_and_a_killed_one_does_not_block(self):
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], cwd=main_runs.REPO,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline().strip(), "held")
    with self.assertRaisesRegex(workdir_lock.WorkdirInUseError,
                                rf"^The workdir {workdir} is in use by another run \(process "
                                rf"{holder.pid} on .*, started .*: -c {workdir}\)\. Wait for"):
      with workdir_lock.hold(workdir):
        pass
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the lock
    holder.wait()
    with workdir_lock.hold(workdir):
      with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
        self.assertIn(f'"pid": {os.getpid()}', f.read())
    with workdir_lock.hold(workdir):  # released at the end of the block
      pass

  def test_an_unwritable_workdir_is_one_error(self):
    parent = self.create_tempdir().full_path
    blocker = os.path.join(parent, "file")
    open(blocker, "w").close()
    with self.assertRaisesRegex(workdir_lock.WorkdirNotWritableError,
                                rf"^Cannot write to the workdir {blocker}/w \(NotADirectoryError: Not a directory"):
      with workdir_lock.hold(os.path.join(blocker, "w")):
        pass

  def test_write_failures_are_recognized_as_the_libraries_raise_them(self):
    # As a 400 KB tmpfs filled up under a smoke run (2026-12-03): TensorStore's error for the
    # arrays, TensorFlow's gfile error for a picture, each possibly wrapped by Orbax.
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "w/checkpoints/8.orbax-checkpoint-tmp/'
        'state/_sharding": Failed to write 16176 bytes to file 9: No space left on device')
    wrapped = RuntimeError("Save Finalize thread failed.")
    wrapped.__cause__ = tensorstore
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "w/events")
    for error, described in (
        (wrapped, "ValueError: No space left on device"),
        (disk_full, "OSError: No space left on device: w/events"),
        (PermissionError(errno.EACCES, "Permission denied", "w/.lock"),
         "PermissionError: Permission denied: w/.lock")):
      with self.subTest(error=error):
        self.assertEqual(workdir_lock.describe(workdir_lock.write_failure(error)), described)
    for other in (ValueError("shapes do not match"), FileNotFoundError(errno.ENOENT, "gone"),
                  KeyError("No space left on device")):
      self.assertIsNone(workdir_lock.write_failure(other))


if __name__ == "__main__":
  absltest.main()
