"""The sharded train step on 8 devices equals the same global batch on 1 device."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from coke_jax import models
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import input_pipeline
from tests import testing


def _run(config, source, devices, num_steps):
  """Runs the first `num_steps` steps (scan epoch, its end, learning steps) on `devices`."""
  mesh = sharding.make_mesh(devices)
  trainer = train.Trainer(config, source, mesh)
  state = trainer.init_state()
  spe = trainer.steps_per_epoch
  step, history = 0, []
  for epoch in range(num_steps // spe + 1):
    for host_batch in input_pipeline.train_batches(source, config, epoch):
      if step == num_steps:
        return jax.device_get(state), history
      state, metrics = trainer.step(state, sharding.global_batch_from_host(host_batch, mesh),
                                    epoch)
      history.append(jax.device_get(metrics))
      step += 1
      if step % spe == 0:
        state, _ = trainer.end_epoch(state)
  return jax.device_get(state), history


class ShardedStepTest(parameterized.TestCase):

  @parameterized.named_parameters(("two_views_pred_head", 2, 16), ("one_view", 1, 0))
  def test_eight_devices_match_one(self, num_views, pred_hidden_dim):
    self.assertEqual(jax.device_count(), 8)
    # 40 examples at batch 16: 3 steps per epoch, the last one padded with 8 weight-0 rows.
    config = testing.smoke_config(**{"global_batch_size": 16, "num_views": num_views,
                                     "model.pred_hidden_dim": pred_hidden_dim,
                                     "objective.num_clusters": (4, 6)})
    source = testing.random_source(num_train=40)
    num_steps = 8  # 3 scan steps, epoch end, 3 learning steps, epoch end, 2 more
    one, one_hist = _run(config, source, jax.devices()[:1], num_steps)
    eight, eight_hist = _run(config, source, jax.devices(), num_steps)

    self.assertEqual(int(one.step), num_steps)
    for h1, h8 in zip(one.objective, eight.objective):
      np.testing.assert_array_equal(h1.labels, h8.labels)
      np.testing.assert_array_equal(h1.prev_labels, h8.prev_labels)
      np.testing.assert_allclose(h1.centers, h8.centers, atol=1e-5)
      np.testing.assert_allclose(h1.prev_centers, h8.prev_centers, atol=1e-5)
      np.testing.assert_allclose(h1.centers_sum, h8.centers_sum, atol=1e-4)
      np.testing.assert_array_equal(h1.counts, h8.counts)
      np.testing.assert_allclose(h1.dual, h8.dual, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           one.params, eight.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           one.batch_stats, eight.batch_stats)
    np.testing.assert_allclose([m["loss"] for m in one_hist], [m["loss"] for m in eight_hist],
                               rtol=1e-5)
    # The learning steps really changed the parameters.
    init = jax.device_get(train.Trainer(config, source, sharding.make_mesh()).init_state())
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), init.params,
                                   one.params)
    self.assertGreater(max(jax.tree_util.tree_leaves(moved)), 1e-4)

  def test_views_update_batch_norm_as_separate_passes_in_turn(self):
    # The official code runs a forward pass per view (large views, then small crops); the
    # step runs them in one vmapped pass, which must give the same outputs and statistics.
    config = testing.smoke_config(**{"global_batch_size": 8, "num_views": 2,
                                     "objective.num_clusters": (2, 3)})
    source = testing.random_source(num_train=8)
    mesh = sharding.make_mesh(jax.devices()[:1])
    trainer = train.Trainer(config, source, mesh)
    state = trainer.init_state()
    host_batch = next(input_pipeline.train_batches(source, config, 0))
    rng = np.random.default_rng(0)
    host_batch["small_images"] = rng.uniform(size=(8, 3, 6, 6, 1)).astype(np.float32)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    initial_stats = variables["batch_stats"]
    new_state, _ = trainer.step(state, sharding.global_batch_from_host(host_batch, mesh), 0)

    views = [host_batch["images"][:, v] for v in range(2)]
    views += [host_batch["small_images"][:, s] for s in range(3)]
    model = models.build_model(config.model)  # one device: BatchNorm needs no axis
    for images in views:
      _, mutated = model.apply(variables, images, train=True, mutable=["batch_stats"])
      variables = {"params": variables["params"], "batch_stats": mutated["batch_stats"]}
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           jax.device_get(new_state.batch_stats), variables["batch_stats"])
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))),
                                   initial_stats, variables["batch_stats"])
    self.assertGreater(max(jax.tree_util.tree_leaves(moved)), 1e-3)

  def test_state_stays_replicated(self):
    config = testing.smoke_config(**{"global_batch_size": 16})
    source = testing.random_source(num_train=32)
    mesh = sharding.make_mesh()
    trainer = train.Trainer(config, source, mesh)
    state = trainer.init_state()
    batch = next(input_pipeline.train_batches(source, config, 0))
    old_labels = state.objective[0].labels
    state, _ = trainer.step(state, sharding.global_batch_from_host(batch, mesh), 0)
    for leaf in jax.tree_util.tree_leaves(state):
      self.assertTrue(leaf.sharding.is_fully_replicated)
    # The state was donated: the label table was updated in place, not copied.
    self.assertTrue(old_labels.is_deleted())


if __name__ == "__main__":
  absltest.main()
