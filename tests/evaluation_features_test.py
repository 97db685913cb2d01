"""Sharded embedding of a split equals the plain forward pass, in order, without padding."""

from absl.testing import absltest
import jax
import numpy as np

from coke_jax import models
from coke_jax import sharding
from coke_jax.evaluation import features
from tests import testing


class EmbedTest(absltest.TestCase):

  def test_eight_devices_equal_plain_apply(self):
    config = testing.smoke_config()
    model = models.build_model(config.model, axis_name=sharding.DATA_AXIS)
    source = testing.random_source(num_train=40, num_heldout=21)  # 21: a padded last batch
    variables = model.init(jax.random.PRNGKey(0), source.heldout_images[:2], train=False)
    variables = jax.tree_util.tree_map(  # BN statistics away from their init
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), variables)
    expected = model.apply(variables, source.heldout_images, train=False)
    for devices in (8, 1):
      mesh = sharding.make_mesh(jax.devices()[:devices])
      got = features.embed(features.ModelOutputs(model),
                           jax.device_put(variables, sharding.replicated(mesh)), source,
                           "heldout", 16, mesh)
      self.assertEqual(set(got), {"features", "proj", "pred", "label"})
      np.testing.assert_array_equal(got["label"], source.heldout_labels)
      for key in ("features", "proj", "pred"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)

  def test_batch_must_divide_over_devices(self):
    config = testing.smoke_config()
    model = models.build_model(config.model)
    source = testing.random_source()
    with self.assertRaisesRegex(ValueError, "does not divide over 8 devices"):
      features.embed(features.ModelOutputs(model), {}, source, "heldout", 12,
                     sharding.make_mesh())


if __name__ == "__main__":
  absltest.main()
