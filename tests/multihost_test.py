"""Two JAX processes (gloo collectives on 127.0.0.1) train exactly like one process.

Process p of 2 has 2 virtual CPU devices and reads only its half of every
batch; the reference is 1 process with 4 devices. Both use gloo's all-reduce
(the reference through jax.distributed with one process): the single-process
CPU all-reduce adds the devices' values in another order. Both also get the same
XLA CPU thread pool (PJRT_NPROC=4): its default size,
max(cores, local devices), is 4 against 2 on a 2-core machine, and the thread
count changes how XLA's kernels split the convolutions' gradient sums (the
first training step's update already differs in the last bits, and training
amplifies it). With the same reductions and threads, the same 4-device program
on the same machine, the two runs may be compared bit for bit; across CPUs only
to a derived tolerance (tests/train_step_test.py).

The two-process run is also preempted (SIGTERM to process 1 only): both
processes must stop at the same step, save, exit with status 75, and resume to
the same end.
"""

import json
import os
import signal

from absl.testing import absltest
from tests import main_runs
from tests import testing

# 24 steps: after the SIGTERM at step 7 the hosts need a few steps to agree on where to stop,
# and a short run (12 steps) could end first when its programs come from the compilation cache.
_OVERRIDES = dict(num_epochs=3, log_every_steps=1, checkpoint_every_steps=4)
_STEPS = 24


class TwoProcessesTest(absltest.TestCase):

  def _start(self, workdir, name, devices, *extra):
    run = main_runs.MainRun(["--config=configs/smoke.py", f"--workdir={workdir}",
                             *main_runs.config_flags(**_OVERRIDES), *extra],
                            os.path.join(self.logs, name), devices=devices, cache_dir=self.cache,
                            threads=4)
    self.addCleanup(run.stop)
    return run

  def _start_processes(self, workdir, name, num_processes, devices):
    port = main_runs.free_port()
    return [self._start(workdir, f"{name}{p}.log", devices,
                        f"--coordinator_address=127.0.0.1:{port}",
                        f"--num_processes={num_processes}", f"--process_id={p}")
            for p in range(num_processes)]

  def test_two_processes_equal_one_process_and_survive_preemption(self):
    self.logs = self.create_tempdir().full_path
    self.cache = self.create_tempdir().full_path
    one_dir, two_dir = self.create_tempdir().full_path, self.create_tempdir().full_path

    one, = self._start_processes(one_dir, "one", 1, devices=4)  # concurrently: 2 cores
    pair = self._start_processes(two_dir, "first", 2, devices=2)
    pair[0].wait_for(rf"step 7/{_STEPS}", timeout=240)
    pair[1].signal(signal.SIGTERM)  # one host is preempted; the other must learn it
    for run in pair:
      self.assertEqual(run.wait(), 75, run.output()[-3000:])
    stopped = [int(run.wait_for(r"Preempted \(SIGTERM\): stopped at step (\d+)").group(1))
               for run in pair]
    self.assertEqual(stopped[0], stopped[1])
    self.assertBetween(stopped[0], 8, _STEPS - 1)

    self.assertEqual(one.wait(), 0, one.output()[-3000:])
    pair = self._start_processes(two_dir, "resumed", 2, devices=2)
    for run in pair:
      self.assertEqual(run.wait(), 0, run.output()[-3000:])
    self.assertIn(f"Resumed from {two_dir}/checkpoints at step {stopped[0]}", pair[0].output())

    config = testing.smoke_config(**_OVERRIDES)
    a, b = testing.restore_latest(one_dir, config), testing.restore_latest(two_dir, config)
    self.assertEqual(int(a.step), _STEPS)
    testing.assert_trees_equal(a, b)
    with open(os.path.join(one_dir, "final_metrics.json")) as f1, \
         open(os.path.join(two_dir, "final_metrics.json")) as f2:
      self.assertEqual(json.load(f1), json.load(f2))
    one_loss = main_runs.scalars(one_dir, "train/loss")
    two_loss = main_runs.scalars(two_dir, "train/loss")
    self.assertEqual(sorted(one_loss), list(range(1, _STEPS + 1)))
    for step, values in two_loss.items():  # steps after the last checkpoint were logged twice
      self.assertEqual(values, one_loss[step] * len(values), f"step {step}")


if __name__ == "__main__":
  absltest.main()
