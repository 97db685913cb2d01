"""LARS masking and the learning-rate schedule (supp. 2.1: LARS, warm-up, cosine)."""

from absl.testing import absltest
import flax
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import models
from coke_jax import train
from tests import testing


class OptimizerTest(absltest.TestCase):

  def test_lars_skips_biases_and_norm_parameters(self):
    config = testing.smoke_config(**{"optimizer.name": "lars", "optimizer.learning_rate": 1.0,
                                     "optimizer.weight_decay": 0.1, "optimizer.momentum": 0.0,
                                     "optimizer.warmup_epochs": 0, "num_epochs": 1000})
    tx, schedule = train.make_optimizer(config, steps_per_epoch=1)
    params = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 3.0),
              "scale": jnp.full((2,), 3.0)}
    grads = {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.full((2,), 0.5),
             "scale": jnp.full((2,), 0.5)}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = float(schedule(0))
    # 1-D parameters: plain gradient step, no weight decay, no trust ratio.
    np.testing.assert_allclose(updates["bias"], -lr * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["scale"], -lr * 0.5, rtol=1e-6)
    # Kernels: (g + wd w) scaled by trust * ||w|| / ||g + wd w||.
    g = 0.5 + 0.1 * 3.0
    trust = 1e-3 * (3.0 * 2) / (g * 2)
    np.testing.assert_allclose(updates["kernel"], -lr * trust * g, rtol=1e-5)

  def test_vit_token_and_position_embedding_are_not_kernels(self):
    variables = jax.eval_shape(
        lambda x: models.BACKBONES["vit_s16"]().init(jax.random.PRNGKey(0), x, train=False),
        jnp.zeros((1, 32, 32, 3)))
    mask = flax.traverse_util.flatten_dict(train.decay_mask(variables["params"]), sep="/")
    self.assertFalse(mask["cls"])
    self.assertFalse(mask["pos_embedding"])
    masked_out = {k for k, v in mask.items() if not v}
    shapes = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    # Everything else left out is a bias or a norm parameter (1-D); every kernel is in.
    self.assertTrue(all(len(shapes[k].shape) == 1 for k in masked_out - {"cls", "pos_embedding"}))
    self.assertTrue(all(mask[k] for k, v in shapes.items() if k.endswith("kernel")))

  def test_schedule_warms_up_then_decays_to_zero(self):
    config = testing.smoke_config(**{"optimizer.learning_rate": 0.4,
                                     "optimizer.scale_by_batch": True, "global_batch_size": 512,
                                     "optimizer.warmup_epochs": 2, "num_epochs": 10})
    schedule = train.learning_rate_schedule(config, steps_per_epoch=100)
    peak = 0.4 * 512 / 256
    self.assertAlmostEqual(float(schedule(0)), 0.0)
    self.assertAlmostEqual(float(schedule(100)), peak / 2, places=5)
    self.assertAlmostEqual(float(schedule(200)), peak, places=5)
    self.assertAlmostEqual(float(schedule(600)), peak / 2, places=5)  # cosine half-way
    self.assertAlmostEqual(float(schedule(1000)), 0.0, places=6)

  def test_warmup_start_end_step_and_constant_schedules(self):
    # SwAV: warm-up from 0.3 to 4.8, cosine to 0.0048.
    config = testing.smoke_config(**{"optimizer.learning_rate": 4.8, "num_epochs": 10,
                                     "optimizer.warmup_epochs": 2,
                                     "optimizer.warmup_start_lr": 0.3, "optimizer.end_lr": 0.0048})
    schedule = train.learning_rate_schedule(config, steps_per_epoch=100)
    self.assertAlmostEqual(float(schedule(0)), 0.3, places=6)
    self.assertAlmostEqual(float(schedule(200)), 4.8, places=5)
    self.assertAlmostEqual(float(schedule(1000)), 0.0048, places=6)
    # C2BIN / Local Aggregation: x 0.1 at epochs 6 and 8, after a 2-epoch warm-up.
    with config.unlocked():
      config.optimizer.schedule = "step"
      config.optimizer.step_epochs = (6, 8)
    schedule = train.learning_rate_schedule(config, steps_per_epoch=100)
    for step, rate in ((100, (0.3 + 4.8) / 2), (599, 4.8), (600, 0.48), (800, 0.048),
                       (999, 0.048)):
      self.assertAlmostEqual(float(schedule(step)), rate, places=5, msg=step)
    with config.unlocked():
      config.optimizer.schedule = "constant"
      config.optimizer.warmup_epochs = 0
    schedule = train.learning_rate_schedule(config, steps_per_epoch=100)
    self.assertEqual({float(schedule(s)) for s in (0, 500, 999)}, {4.8})


if __name__ == "__main__":
  absltest.main()
