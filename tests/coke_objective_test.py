"""CoKe's state handling: the loss of Alg. 2, the global-batch update and the epoch end, and
every variant: per-cluster bounds, the full projection, epoch centers (Eq. 10), multi-crop and
the moving-average second stage (Eqs. 13/14)."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import clustering
from coke_jax import errors
from coke_jax import objectives
from coke_jax import train
from coke_jax.data import sources
from coke_jax.objectives import coke
from tests import testing


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


class CoKeObjectiveTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.obj = coke.CoKe(num_clusters=(3, 5), num_examples=12, embed_dim=4, temperature=0.1,
                         min_size_ratio=0.6, dual_lr=0.5, alpha=0.2, beta=0.5)
    self.heads = self.obj.init(jax.random.PRNGKey(0))[1]
    rng = np.random.default_rng(0)
    self.heads = tuple(h._replace(prev_labels=jnp.asarray(rng.integers(0, k, 12), jnp.int32))
                       for h, k in zip(self.heads, (3, 5)))
    self.proj = _unit(rng.normal(size=(2, 6, 4))).astype(np.float32)
    self.pred = _unit(rng.normal(size=(2, 6, 4))).astype(np.float32)
    self.index = np.array([0, 5, 7, 2, 11, 3], np.int32)

  def test_two_view_loss_matches_algorithm_2(self):
    loss, _ = self.obj.per_example_loss(self.heads, {"proj": jnp.asarray(self.proj),
                                                     "pred": jnp.asarray(self.pred)},
                                        jnp.asarray(self.index))
    expected = 0.0
    for head, k in zip(self.heads, (3, 5)):
      c = np.asarray(head.prev_centers)
      y = np.eye(k)[np.asarray(head.prev_labels)[self.index]]
      proj_logits = self.proj @ c.T / 0.1
      pred_logits = self.pred @ c.T / 0.1
      p = np.exp(_log_softmax(proj_logits))
      targets = [0.2 * y + 0.8 * p[1], 0.2 * y + 0.8 * p[0]]  # the other view's prediction
      l_proj = sum(-(t * _log_softmax(l)).sum(-1) for t, l in zip(targets, proj_logits)) / 2
      l_pred = sum(-(t * _log_softmax(l)).sum(-1) for t, l in zip(targets, pred_logits)) / 2
      expected = expected + (0.5 * l_pred + 0.5 * l_proj) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-5)

  def test_update_writes_labels_and_ignores_padding(self):
    weight = np.array([1, 1, 1, 1, 0, 0], np.float32)  # the last two rows are padding
    heads, _ = self.obj.update_global(self.heads, jnp.asarray(self.proj), jnp.asarray(self.index),
                               jnp.asarray(weight), jnp.int32(3))
    for old, new, k in zip(self.heads, heads, (3, 5)):
      x = self.proj.mean(0)
      expected_labels = np.argmax(x @ np.asarray(old.centers).T + np.asarray(old.dual), -1)
      labels = np.asarray(new.labels)
      np.testing.assert_array_equal(labels[self.index[:4]], expected_labels[:4])
      untouched = np.setdiff1d(np.arange(12), self.index[:4])
      np.testing.assert_array_equal(labels[untouched], np.asarray(old.labels)[untouched])
      counts = np.bincount(expected_labels[:4], minlength=k)
      np.testing.assert_array_equal(new.counts, counts)
      expected_dual = np.maximum(0, np.asarray(old.dual) - 0.5 * (counts / 4 - 0.6 / k))
      np.testing.assert_allclose(new.dual, expected_dual, rtol=1e-6)
      sums = np.zeros((k, 4))
      np.add.at(sums, expected_labels[:4], x[:4])
      np.testing.assert_allclose(new.centers_sum, sums, atol=1e-6)
      # The loss side is untouched by the update (Table 2: previous labels and centers).
      np.testing.assert_array_equal(new.prev_labels, old.prev_labels)
      np.testing.assert_array_equal(new.prev_centers, old.prev_centers)

  def test_end_epoch_rolls_labels_and_centers(self):
    heads, _ = self.obj.update_global(self.heads, jnp.asarray(self.proj), jnp.asarray(self.index),
                               jnp.ones(6), jnp.int32(3))
    rolled, metrics = self.obj.end_epoch({}, heads, jnp.int32(3))
    for before, after in zip(heads, rolled):
      np.testing.assert_array_equal(after.prev_labels, before.labels)
      np.testing.assert_array_equal(after.prev_centers, before.centers)
      np.testing.assert_array_equal(after.centers, before.centers)
      self.assertEqual(float(jnp.abs(after.centers_sum).sum()), 0.0)
      self.assertEqual(float(after.counts.sum()), 0.0)
      np.testing.assert_array_equal(after.dual, before.dual)
    self.assertEqual(float(metrics["max_size/k3_0"]), float(heads[0].counts.max()))

  def test_bad_settings_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, "K=20.*12 training examples"):
      coke.CoKe(num_clusters=(20,), num_examples=12, embed_dim=4)
    with self.assertRaisesRegex(ValueError, "min_size_ratio"):
      coke.CoKe(num_clusters=(2,), num_examples=12, embed_dim=4, min_size_ratio=1.5)


  def test_bad_variant_settings_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, "center_update"):
      coke.CoKe(num_clusters=(2,), num_examples=12, embed_dim=4, center_update="never")
    with self.assertRaisesRegex(ValueError, "min_size_ratios has 1 entries"):
      coke.CoKe(num_clusters=(2, 3), num_examples=12, embed_dim=4, min_size_ratios=((0.5, 0.5),))
    with self.assertRaisesRegex(ValueError, "shape"):
      coke.CoKe(num_clusters=(2,), num_examples=12, embed_dim=4, min_size_ratios=((0.5,),))
    with self.assertRaisesRegex(ValueError, "average_after_epoch"):
      coke.CoKe(num_clusters=(2,), num_examples=12, embed_dim=4, average_after_epoch=-1)
    with self.assertRaisesRegex(ValueError, "multicrop_beta"):
      coke.CoKe(num_clusters=(2,), num_examples=12, embed_dim=4, multicrop_beta=2.0)

  def test_per_cluster_bounds_and_full_projection(self):
    obj = coke.CoKe(num_clusters=(3,), num_examples=12, embed_dim=4,
                    min_size_ratios=((0.3, 1.2, 0.9),), dual_lr=5.0, dual_l1_radius=0.2)
    heads = obj.init(jax.random.PRNGKey(1))[1]
    np.testing.assert_allclose(obj.min_size_fracs(0), [0.1, 0.4, 0.3], rtol=1e-6)
    new, _ = obj.update_global(heads, jnp.asarray(self.proj), jnp.asarray(self.index), jnp.ones(6),
                        jnp.int32(1))
    x = self.proj.mean(0)
    labels = np.argmax(x @ np.asarray(heads[0].centers).T, -1)
    raw = -5.0 * (np.bincount(labels, minlength=3) / 6 - np.array([0.1, 0.4, 0.3]))
    expected = np.asarray(clustering.project_dual(jnp.asarray(raw, jnp.float32), 0.2))
    np.testing.assert_allclose(new[0].dual, expected, atol=1e-6)
    self.assertLessEqual(float(new[0].dual.sum()), 0.2 + 1e-6)
    _, metrics = obj.end_epoch({}, new, jnp.int32(1))
    counts = np.bincount(labels, minlength=3)
    self.assertEqual(int(metrics["num_under_bound/k3_0"]), int(np.sum(counts < [1.2, 4.8, 3.6])))

  def test_epoch_centers_stay_fixed_until_the_epoch_ends(self):  # Eq. 10
    obj = coke.CoKe(num_clusters=(5,), num_examples=12, embed_dim=4, center_update="epoch",
                    dual_lr=0.0)
    heads = obj.init(jax.random.PRNGKey(2))[1]
    start = np.asarray(heads[0].centers)
    x = self.proj.mean(0)
    for rows in (slice(0, 3), slice(3, 6)):
      heads, _ = obj.update_global(heads, jnp.asarray(self.proj[:, rows]),
                            jnp.asarray(self.index[rows]), jnp.ones(3), jnp.int32(2))
      np.testing.assert_array_equal(heads[0].centers, start)
    labels = np.argmax(x @ start.T, -1)
    rolled, _ = obj.end_epoch({}, heads, jnp.int32(2))
    expected = start.copy()
    for k in np.unique(labels):
      c = x[labels == k].sum(0)
      expected[k] = c / np.linalg.norm(c)
    # Eq. 10; the clusters that got no member keep their center.
    np.testing.assert_allclose(rolled[0].prev_centers, expected, atol=1e-6)
    np.testing.assert_allclose(rolled[0].centers, expected, atol=1e-6)

  def test_multi_crop_loss_matches_the_official_formula(self):
    obj = coke.CoKe(num_clusters=(3, 5), num_examples=12, embed_dim=4, temperature=0.1,
                    alpha=0.2, beta=0.5, multicrop_beta=0.7)
    rng = np.random.default_rng(1)
    small_proj = _unit(rng.normal(size=(3, 6, 4))).astype(np.float32)
    small_pred = _unit(rng.normal(size=(3, 6, 4))).astype(np.float32)
    outputs = {"proj": self.proj, "pred": self.pred, "proj_small": small_proj,
               "pred_small": small_pred}
    loss, _ = obj.per_example_loss(self.heads, jax.tree_util.tree_map(jnp.asarray, outputs),
                                   jnp.asarray(self.index))

    def ce(logits, target):
      return -(target * _log_softmax(logits)).sum(-1)

    # The official multi-view loss (main_multi_view.py), written per example: large views
    # against alpha * onehot + (1 - alpha) * the other view's projection softmax; small crops
    # against alpha * onehot + (1 - alpha) * the mean of both large views' projection softmaxes;
    # projection and prediction losses weighted 1/2 each; beta * large + (1 - beta) * small.
    large, small = 0.0, 0.0
    for head, k in zip(self.heads, (3, 5)):
      c = np.asarray(head.prev_centers)
      y = np.eye(k)[np.asarray(head.prev_labels)[self.index]]
      lg = {n: outputs[n] @ c.T / 0.1 for n in outputs}
      p1, p2 = np.exp(_log_softmax(lg["proj"][0])), np.exp(_log_softmax(lg["proj"][1]))
      for v, other in ((0, p2), (1, p1)):
        t = 0.2 * y + 0.8 * other
        large = large + 0.5 * (ce(lg["pred"][v], t) + ce(lg["proj"][v], t)) / (2 * 2)
      t = 0.2 * y + 0.8 * (p1 + p2) / 2
      for s in range(3):
        small = small + 0.5 * (ce(lg["pred_small"][s], t) + ce(lg["proj_small"][s], t)) / (3 * 2)
    np.testing.assert_allclose(loss, 0.7 * large + 0.3 * small, rtol=1e-5)

  def test_moving_average_second_stage(self):  # Eqs. 13/14, supp. 2.2.2
    n, k, t_prime = 12, 3, 1
    obj = coke.CoKe(num_clusters=(k,), num_examples=n, embed_dim=4, average_after_epoch=t_prime,
                    avg_label_size=5, avg_label_temperature=0.5, dual_lr=0.0)
    heads = obj.init(jax.random.PRNGKey(3))[1]
    self.assertEqual(heads[0].avg_label_ids.shape, (n, 5))
    rng = np.random.default_rng(5)
    history, averaged = [], None
    for epoch in range(5):  # 0 is the scan; epochs 2, 3, 4 are the second stage
      x = _unit(rng.normal(size=(1, n, 4))).astype(np.float32)
      centers_before = np.asarray(heads[0].centers)
      heads, _ = obj.update_global(heads, jnp.asarray(x), jnp.arange(n), jnp.ones(n),
                                   jnp.int32(epoch))
      labels = np.argmax(x[0] @ centers_before.T, -1)
      np.testing.assert_array_equal(heads[0].labels, labels)
      if epoch > t_prime:  # the second stage assigns with the fixed averaged centers (Eq. 10)
        np.testing.assert_array_equal(heads[0].centers, centers_before)
      epoch_centers = np.asarray(clustering.epoch_centers(clustering.OnlineState(
          heads[0].centers, heads[0].centers_sum, heads[0].counts, heads[0].dual)))
      heads, _ = obj.end_epoch({}, heads, jnp.int32(epoch))
      history.append(labels)
      f = 1.0 / max(epoch - t_prime, 1)
      averaged = epoch_centers if f == 1.0 else (1 - f) * averaged + f * epoch_centers
      averaged = averaged / np.linalg.norm(averaged, axis=1, keepdims=True)
      np.testing.assert_allclose(heads[0].prev_centers, averaged, atol=1e-5)
      np.testing.assert_allclose(heads[0].centers, averaged, atol=1e-5)
    # y_hat after epoch 4 averages the one-hot labels of epochs 2..4 (at most 3 <= 5 clusters).
    y_hat = np.mean([np.eye(k)[h] for h in history[2:]], axis=0)
    dense = np.zeros((n, k))
    np.add.at(dense, (np.arange(n)[:, None], np.asarray(heads[0].avg_label_ids)),
              np.asarray(heads[0].avg_label_weights))
    np.testing.assert_allclose(dense, y_hat, atol=1e-6)
    # The loss of epoch 5 uses the sharpened averaged label against the averaged centers (Eq. 14).
    proj = _unit(rng.normal(size=(1, n, 4))).astype(np.float32)
    loss, _ = obj.per_example_loss(heads, {"proj": jnp.asarray(proj)}, jnp.arange(n))
    target = np.where(y_hat > 0, np.exp(y_hat / 0.5), 0.0)
    target /= target.sum(-1, keepdims=True)
    expected = -(target * _log_softmax(proj[0] @ averaged.T / 0.1)).sum(-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


  def _assert_one_dual_step_per_head(self, obj, etas):
    """One update from rho = 0: each head's duals move by its own eta (Eq. 9, max(0, .))."""
    heads = obj.init(jax.random.PRNGKey(0))[1]
    new, _ = obj.update_global(heads, jnp.asarray(self.proj), jnp.asarray(self.index), jnp.ones(6),
                        jnp.int32(1))
    for h, (head, k) in enumerate(zip(heads, obj.num_clusters)):
      labels = np.argmax(self.proj.mean(0) @ np.asarray(head.centers).T, -1)
      grad = np.bincount(labels, minlength=k) / 6 - 0.5 / k
      np.testing.assert_allclose(new[h].dual, np.maximum(0, -etas[h] * grad), atol=1e-6)

  def test_dual_lr_rule_per_head_from_the_config(self):
    config = testing.smoke_config(**{"objective.dual_lr": None, "objective.num_clusters": (4, 8),
                                     "model.embed_dim": 4})
    obj = objectives.build(config, num_examples=500)
    epochs = config.num_epochs + 1
    self.assertEqual(obj.dual_lr, tuple(clustering.default_dual_lr(k, config.global_batch_size,
                                                                   500 * epochs) for k in (4, 8)))
    self._assert_one_dual_step_per_head(obj, obj.dual_lr)

  def test_dual_lrs_gives_one_eta_per_head_and_checks_its_length(self):
    config = testing.smoke_config(**{"objective.dual_lrs": (0.5, 2.0),
                                     "objective.num_clusters": (4, 8), "model.embed_dim": 4})
    obj = objectives.build(config, num_examples=500)
    self.assertEqual(obj.dual_lr, (0.5, 2.0))
    self._assert_one_dual_step_per_head(obj, (0.5, 2.0))
    config = testing.smoke_config(**{"objective.dual_lrs": (0.5, 2.0, 4.0),
                                     "objective.num_clusters": (4, 8)})
    with self.assertRaisesRegex(errors.ConfigError, r"dual_lrs has 3 values for 2 heads"):
      objectives.build(config, num_examples=500)


class SecondStageThroughTheTrainerTest(absltest.TestCase):

  def test_second_stage_trains_checkpoints_and_resumes(self):
    # Smoke config: 6 steps per epoch; epoch 0 is the scan, epochs 1 and 2 the second stage
    # (T' = 0), with Eq. 10 centers, per-cluster bounds on the first head and the eta rule.
    config = testing.smoke_config(**{
        "num_epochs": 2, "checkpoint_every_steps": 5, "objective.average_after_epoch": 0,
        "objective.center_update": "epoch", "objective.dual_lr": None,
        "objective.min_size_ratios": ((0.3,) * 5 + (0.7,) * 5, (0.5,) * 16)})
    workdir = self.create_tempdir().full_path
    stopped = train.train_and_evaluate(config, workdir, stop_at_step=13)
    source = sources.get_source(config.dataset)
    restored = testing.restore_latest(workdir, config)
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(restored.objective)),
                    jax.tree_util.tree_leaves(jax.device_get(stopped.objective))):
      np.testing.assert_array_equal(a, b)
    final = train.train_and_evaluate(config, workdir)
    self.assertEqual(int(final.step), 18)
    for head in jax.device_get(final.objective):
      self.assertEqual(head.avg_label_ids.shape, (source.num_train, 5))
      np.testing.assert_allclose(head.avg_label_weights.sum(1), 1.0, atol=1e-5)
      # Epochs 1 and 2 averaged: some examples changed cluster, so some labels are soft.
      self.assertGreater(int(np.sum(head.avg_label_weights.max(1) < 1.0)), 0)

if __name__ == "__main__":
  absltest.main()
