"""Every objective's checkpoint, written on 8 devices, evaluates on 1 device: `--mode=eval`
(kNN, clustering per head, pictures) and `--mode=linear_eval` (the probe) with the same
final_metrics keys, TensorBoard tags and pictures whatever the objective."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import jax

from coke_jax import objectives
from coke_jax import train
from coke_jax.evaluation import checkpoint_eval
from coke_jax.evaluation import linear_probe
import tests
from tests import testing

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process on ONE device evaluates every objective's checkpoint.
_ONE_DEVICE = textwrap.dedent("""
    import json, sys
    import jax
    from coke_jax.evaluation import checkpoint_eval, linear_probe
    from tests import evaluation_objectives_test as t
    assert jax.device_count() == 1, jax.devices()
    out = {}
    for objective, pretrain_dir in json.loads(sys.argv[1]).items():
      config = t.probe_config(objective)
      work = sys.argv[2] + "/" + objective
      out[objective] = {
          "eval": checkpoint_eval.evaluate_checkpoint(config, work + "_eval", pretrain_dir),
          "linear": linear_probe.train_and_evaluate(config, work + "_linear", pretrain_dir)}
    with open(sys.argv[2] + "/results.json", "w") as f:
      json.dump(out, f)
""")


def probe_config(objective):
  config = testing.smoke_config(objective, num_epochs=2)
  with config.unlocked():
    config.linear_eval = linear_probe.default_config()
    config.linear_eval.num_epochs = 1
    config.linear_eval.batch_size = 256
    config.linear_eval.augment = config.augment.copy_and_resolve_references()
  return config


class EveryObjectiveEvaluatesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pretrain = {}
    for objective in objectives.NAMES:
      cls.pretrain[objective] = tempfile.mkdtemp(prefix=f"eval_{objective}_")
      train.train_and_evaluate(probe_config(objective), cls.pretrain[objective], stop_at_step=7)
    assert jax.device_count() == 8

  def test_eval_and_linear_eval_on_one_device_of_a_checkpoint_from_eight(self):
    out_dir = self.create_tempdir().full_path
    env = {**os.environ, "XLA_FLAGS": tests.xla_flags(1),
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": _REPO}
    result = subprocess.run([sys.executable, "-c", _ONE_DEVICE, json.dumps(self.pretrain),
                             out_dir], cwd=_REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(out_dir, "results.json")) as f:
      results = json.load(f)
    keys = None
    for objective, pretrain_dir in self.pretrain.items():
      one = results[objective]
      self.assertEqual(one["eval"]["step"], 7)
      self.assertEqual(one["linear"]["pretrain_step"], 7)
      self.assertBetween(one["linear"]["top1"], 0.0, 1.0)
      # The same evaluation on 8 devices; embeddings on another device count may differ in
      # the last bits, which moves at most a few of the 359 held-out images.
      eight = checkpoint_eval.evaluate_checkpoint(
          probe_config(objective), self.create_tempdir().full_path, pretrain_dir)
      self.assertEqual(set(one["eval"]["heads"]), set(eight["heads"]), objective)
      for head, values in eight["heads"].items():
        for key, value in values.items():
          self.assertAlmostEqual(one["eval"]["heads"][head][key], value, delta=0.02,
                                 msg=(objective, head, key))
      self.assertAlmostEqual(one["eval"]["knn_top1"], eight["knn_top1"], delta=0.01)
      # Every objective reports the same keys (CoKe adds its size bound).
      head_keys = set(one["eval"]["heads"]["k10_0"]) - {"train_size_bound",
                                                         "train_num_under_bound"}
      keys = keys or head_keys
      self.assertEqual(head_keys, keys, objective)
      pictures = sorted(os.listdir(os.path.join(out_dir, f"{objective}_eval", "pictures")))
      self.assertIn("exemplars_k10_0_step7.png", pictures, objective)
      self.assertIn("cluster_sizes_k10_0_step7.png", pictures, objective)
    self.assertTrue({"acc", "nmi", "ari", "ami", "train_min_size"} <= keys)


if __name__ == "__main__":
  absltest.main()
