"""Device prefetch: batches placed on the mesh ahead of the loop, in order, stopped cleanly."""

import os
import subprocess
import sys
import textwrap
import threading
import time

from absl.testing import absltest
import jax
import numpy as np

from coke_jax import sharding
from coke_jax.data import prefetch
import tests
from tests import testing


class _Counting:
  """A host-batch generator that records how far it was read and whether it was closed."""

  def __init__(self, count, rows=8, fail_at=None):
    self.count, self.rows, self.fail_at = count, rows, fail_at
    self.produced, self.closed, self.thread = 0, False, None

  def __iter__(self):
    try:
      for i in range(self.count):
        if i == self.fail_at:
          raise RuntimeError(f"host batch {i} is broken")
        self.produced += 1
        self.thread = threading.current_thread()
        yield {"images": np.full((self.rows, 2, 4, 4, 3), i, np.uint8),
               "index": np.arange(i * self.rows, (i + 1) * self.rows, dtype=np.int32)}
    finally:
      self.closed = True


def _wait_for(condition, timeout=10.0):
  end = time.time() + timeout
  while not condition() and time.time() < end:
    time.sleep(0.01)
  return condition()


class DevicePrefetchTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mesh = sharding.make_mesh()  # 8 virtual CPU devices

  def test_batches_in_order_on_the_mesh(self):
    host = _Counting(5)
    with prefetch.DevicePrefetch(iter(host), self.mesh) as batches:
      got = list(batches)
    self.assertLen(got, 5)
    for i, batch in enumerate(got):
      self.assertIsInstance(batch["images"], jax.Array)
      self.assertEqual(batch["images"].sharding, sharding.batch_sharded(self.mesh))
      self.assertLen(batch["index"].addressable_shards, 8)  # one row per device
      np.testing.assert_array_equal(batch["images"], np.full((8, 2, 4, 4, 3), i, np.uint8))
      np.testing.assert_array_equal(batch["index"], np.arange(8 * i, 8 * i + 8))
    self.assertTrue(host.closed)
    self.assertIsNot(host.thread, threading.current_thread())  # read on the prefetch thread

  def test_stays_at_most_size_batches_ahead(self):
    host = _Counting(20)
    with prefetch.DevicePrefetch(iter(host), self.mesh, size=3) as batches:
      self.assertTrue(_wait_for(lambda: host.produced == 3))
      time.sleep(0.2)
      self.assertEqual(host.produced, 3)  # nothing taken yet: 3 on the devices, no more
      next(batches)
      next(batches)
      self.assertTrue(_wait_for(lambda: host.produced == 5))
      time.sleep(0.2)
      self.assertEqual(host.produced, 5)

  def test_leaving_the_loop_early_stops_the_thread_and_closes_the_host(self):
    host = _Counting(100)
    with prefetch.DevicePrefetch(iter(host), self.mesh) as batches:
      for step, _ in enumerate(batches):
        if step == 2:
          break
    self.assertTrue(host.closed)
    self.assertLessEqual(host.produced, 3 + 2)
    self.assertFalse(any(t.name == "device_prefetch" and t.is_alive()
                         for t in threading.enumerate()))
    with self.assertRaises(StopIteration):
      next(batches)

  def test_a_host_error_reaches_the_loop(self):
    host = _Counting(10, fail_at=2)
    with prefetch.DevicePrefetch(iter(host), self.mesh) as batches:
      next(batches)
      next(batches)
      with self.assertRaisesRegex(RuntimeError, "host batch 2 is broken"):
        next(batches)
    self.assertTrue(host.closed)
    with self.assertRaisesRegex(ValueError, "size is 0"):
      prefetch.DevicePrefetch(iter(host), self.mesh, size=0)

  def test_feeds_a_run_from_the_input_pipeline(self):
    from coke_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    source = testing.random_source(num_train=20)
    config = testing.smoke_config(global_batch_size=8)
    expected = list(input_pipeline.train_stream(source, config, 1, 5))
    stream = input_pipeline.train_stream(source, config, 1, 5)
    with prefetch.DevicePrefetch(stream, self.mesh) as batches:
      got = list(batches)
    self.assertLen(got, 4)
    for x, y in zip(got, expected):
      for key in y:
        np.testing.assert_array_equal(x[key], y[key])


_TWO_PROCESSES = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    port, p = sys.argv[1], int(sys.argv[2])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=p)
    from coke_jax import sharding
    from coke_jax.data import prefetch
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 4, mesh
    rows = lambda step: {"index": np.arange(2 * p, 2 * p + 2, dtype=np.int32) + 10 * step}
    with prefetch.DevicePrefetch((rows(s) for s in range(3)), mesh) as batches:
      for step, batch in enumerate(batches):
        assert batch["index"].shape == (4,), batch["index"].shape
        local = np.concatenate([np.asarray(s.data) for s in sorted(
            batch["index"].addressable_shards, key=lambda s: s.index[0].start)])
        np.testing.assert_array_equal(local, rows(step)["index"])
    print("ok", p, step)
""")


class TwoProcessesTest(absltest.TestCase):

  def test_each_process_places_its_own_rows(self):
    import socket  # pylint: disable=g-import-not-at-top
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": tests.xla_flags(2),
           "JAX_PLATFORMS": "cpu"}
    runs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, str(port), str(p)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for p in range(2)]
    for run in runs:
      self.addCleanup(run.kill)  # a process left waiting for its peer must not outlive the test
    for p, run in enumerate(runs):
      output, _ = run.communicate(timeout=120)
      self.assertEqual(run.returncode, 0, output[-3000:])
      self.assertIn(f"ok {p} 2", output)


if __name__ == "__main__":
  absltest.main()
