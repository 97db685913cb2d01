"""A tiny run through main.py's code path: metrics, checkpoints and exact resume."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

from coke_jax import checkpointing
from coke_jax import train
import tests
from tests import testing

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TrainAndEvaluateTest(absltest.TestCase):

  def test_run_writes_metrics_and_resume_is_exact(self):
    # Smoke config: 1438 digits at batch 256 = 6 steps per epoch; scan + 2 epochs = 18 steps.
    config = testing.smoke_config(num_epochs=2, checkpoint_every_steps=5)
    full_dir = self.create_tempdir().full_path
    full = train.train_and_evaluate(config, full_dir)
    self.assertEqual(int(full.step), 18)

    with open(os.path.join(full_dir, "final_metrics.json")) as f:
      results = json.load(f)
    self.assertBetween(results["knn_top1"], 0.0, 1.0)
    self.assertEqual(set(results["heads"]), {"k10_0", "k16_1"})
    for head in results["heads"].values():
      for key in ("acc", "nmi", "ari", "train_min_size", "train_max_size", "train_size_bound"):
        self.assertIn(key, head)
    self.assertTrue(any(name.startswith("events.out.tfevents") for name in os.listdir(full_dir)))

    # Interrupted twice (mid-epoch and at an epoch end), then resumed to the end.
    resumed_dir = self.create_tempdir().full_path
    for stop in (8, 12):
      stopped = train.train_and_evaluate(config, resumed_dir, stop_at_step=stop)
      self.assertEqual(int(stopped.step), stop)
      # The checkpoint holds exactly the state the run stopped with.
      restored = testing.restore_latest(resumed_dir, config)
      testing.assert_trees_equal(restored, stopped)
    resumed = train.train_and_evaluate(config, resumed_dir)
    testing.assert_trees_equal(resumed, full)
    with open(os.path.join(resumed_dir, "final_metrics.json")) as f:
      self.assertEqual(json.load(f), results)

  def test_incompatible_checkpoint_is_refused_and_kept(self):
    workdir = self.create_tempdir().full_path
    config = testing.smoke_config(num_epochs=1)
    train.train_and_evaluate(config, workdir, stop_at_step=2)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    other = testing.smoke_config(num_epochs=1, **{"objective.num_clusters": (10, 20)})
    with self.assertRaisesRegex(checkpointing.IncompatibleCheckpointError,
                                "objective.*num_clusters.*neither loaded nor overwritten"):
      train.train_and_evaluate(other, workdir)
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "checkpoints"))), before)


class MainTest(absltest.TestCase):

  def _main(self, *args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=_REPO, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": tests.xla_flags(), "JAX_PLATFORMS": "cpu"})

  def test_unknown_config_key_is_an_error(self):
    out = self._main("--config=configs/smoke.py", "--workdir=" + self.create_tempdir().full_path,
                     "--config.objective.num_clusterz=(3,)")
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("num_clusterz", out.stderr)

  def test_main_trains_smoke_config(self):
    workdir = self.create_tempdir().full_path
    out = self._main("--config=configs/smoke.py", f"--workdir={workdir}",
                     "--config.num_epochs=1", "--config.log_every_steps=3")
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertRegex(out.stderr, r"step 12/12 +epoch 1.00/1 +loss [0-9.]+ +[0-9,]+ img/s")
    self.assertRegex(out.stderr, r"Progress: [0-9.]+ steps/s, 100.0% \(12/12\), ETA: ")
    # The console is for people: no echo of scalars (they go to TensorBoard and metrics.jsonl).
    self.assertNotIn("clusters/", out.stderr)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      tags = set().union(*(json.loads(line) for line in f))
    self.assertTrue({"train/loss", "clusters/min_size/k10_0", "eval/heads/k10_0/ami"} <= tags)
    self.assertTrue(os.path.exists(os.path.join(workdir, "final_metrics.json")))


if __name__ == "__main__":
  absltest.main()
