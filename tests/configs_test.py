"""Every config builds; the ImageNet config initializes its model and fails clearly without data."""

import glob
import importlib
import os
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp

from coke_jax import models
from coke_jax import train
from coke_jax.data import sources

_CONFIGS = sorted(os.path.basename(p)[:-3]
                  for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                  if not p.endswith("__init__.py"))


class ConfigsTest(parameterized.TestCase):

  @parameterized.parameters(*_CONFIGS)
  def test_builds_with_known_keys(self, name):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.lock()
    with self.assertRaises(AttributeError):
      config.objective.num_clusterz = (3,)
    self.assertLen(set(config.objective.num_clusters), len(config.objective.num_clusters))

  def test_two_view_config_matches_paper(self):
    c = importlib.import_module("configs.coke_two_view").get_config()
    self.assertEqual(c.model.backbone, "resnet50")
    self.assertEqual(tuple(c.objective.num_clusters), (3000, 4000, 5000))
    self.assertEqual((c.global_batch_size, c.objective.temperature, c.objective.alpha,
                      c.objective.dual_lr, c.objective.min_size_ratio),
                     (1024, 0.05, 0.2, 20.0, 0.4))
    self.assertEqual((c.optimizer.name, c.optimizer.learning_rate, c.optimizer.warmup_epochs),
                     ("lars", 1.6, 10))

  def test_two_view_model_initializes(self):
    c = importlib.import_module("configs.coke_two_view").get_config()
    model = models.build_model(c.model)
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
        jnp.zeros((2, 32, 32, 3)))
    out = model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False)
    self.assertEqual(out["features"].shape, (2, 2048))
    self.assertEqual(out["proj"].shape, (2, 128))
    self.assertEqual(out["pred"].shape, (2, 128))
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    self.assertBetween(num_params, 25e6, 40e6)  # ResNet-50 (23.5M) + 3-layer MLP + predictor

  def test_two_view_without_imagenet_fails_at_once(self):
    c = importlib.import_module("configs.coke_two_view").get_config()
    data_dir = self.create_tempdir().full_path
    c.dataset.data_dir = data_dir
    start = time.time()
    with self.assertRaises(sources.MissingDataError) as ctx:
      train.train_and_evaluate(c, self.create_tempdir().full_path)
    self.assertLess(time.time() - start, 60)
    message = str(ctx.exception)
    for needed in ("imagenet2012", data_dir, "tfds build imagenet2012", "--config.dataset.data_dir"):
      self.assertIn(needed, message)


if __name__ == "__main__":
  absltest.main()
