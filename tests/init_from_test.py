"""`model.init_from`: torchvision-layout weights start pretraining, or are evaluated by
`--mode=eval` and `--mode=linear_eval` without any pretraining checkpoint."""

import os

from absl.testing import absltest
import jax
import numpy as np

from coke_jax import interop
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import sources
from coke_jax.evaluation import checkpoint_eval
from coke_jax.evaluation import linear_probe
from tests import testing


def _config(init_from=""):
  config = testing.smoke_config(**{"model.backbone": "resnet18",
                                   "model.backbone_kwargs": {"cifar_stem": True, "width": 8},
                                   "model.init_from": init_from, "num_epochs": 1})
  with config.unlocked():
    config.linear_eval = linear_probe.default_config()
    config.linear_eval.num_epochs = 1
    config.linear_eval.batch_size = 256
    config.linear_eval.augment = config.augment.copy_and_resolve_references()
  return config


class InitFromTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Published weights stand-in: a random backbone written in torchvision's layout.
    cls.dir = absltest.get_default_test_tmpdir()
    trainer = train.Trainer(_config(), sources.get_source(_config().dataset), sharding.make_mesh())
    state = jax.device_get(trainer.init_state())
    cls.backbone = {"params": state.params["model"]["backbone"],
                    "batch_stats": state.batch_stats["backbone"]}
    cls.weights = os.path.join(cls.dir, "published.safetensors")
    interop.save_backbone(cls.weights, cls.backbone)

  def test_pretraining_starts_from_the_file(self):
    config = _config(self.weights)
    workdir = self.create_tempdir().full_path
    state = train.train_and_evaluate(config, workdir, stop_at_step=1)
    # After one forward-only scan step the parameters are the file's; BN statistics moved.
    testing.assert_trees_equal(state.params["model"]["backbone"], self.backbone["params"])
    # A resumed run takes its backbone from its checkpoint, even if the file is gone.
    resumed = train.train_and_evaluate(_config("/nonexistent.safetensors"), workdir,
                                       stop_at_step=2)
    self.assertEqual(int(resumed.step), 2)

  def test_eval_and_linear_eval_without_a_checkpoint(self):
    config = _config(self.weights)
    results = checkpoint_eval.evaluate_checkpoint(config, self.create_tempdir().full_path, None)
    self.assertEqual(results["init_from"], self.weights)
    self.assertEqual(results["heads"], {})
    self.assertBetween(results["knn_top1"], 0.1, 1.0)
    probe = linear_probe.train_and_evaluate(config, self.create_tempdir().full_path, None)
    self.assertEqual(probe["pretrain_checkpoint"], self.weights)
    self.assertBetween(probe["top1"], 0.0, 1.0)

  def test_a_wrong_file_is_one_clear_error(self):
    config = _config(os.path.join(self.dir, "missing.safetensors"))
    with self.assertRaisesRegex(ValueError, "missing.safetensors"):
      checkpoint_eval.evaluate_checkpoint(config, self.create_tempdir().full_path, None)
    np.testing.assert_array_equal(  # and the fixture file is untouched
        interop.read_state_dict(self.weights)["conv1.weight"].shape, (8, 1, 3, 3))


if __name__ == "__main__":
  absltest.main()
