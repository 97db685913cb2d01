"""CoKe's state handling: the loss of Alg. 2, the global-batch update and the epoch end."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax.objectives import coke


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
    self.heads = self.obj.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    self.heads = tuple(h._replace(prev_labels=jnp.asarray(rng.integers(0, k, 12), jnp.int32))
                       for h, k in zip(self.heads, (3, 5)))
    self.proj = _unit(rng.normal(size=(2, 6, 4))).astype(np.float32)
    self.pred = _unit(rng.normal(size=(2, 6, 4))).astype(np.float32)
    self.index = np.array([0, 5, 7, 2, 11, 3], np.int32)

  def test_two_view_loss_matches_algorithm_2(self):
    loss, _ = self.obj.loss(self.heads, {"proj": jnp.asarray(self.proj),
                                         "pred": jnp.asarray(self.pred)}, jnp.asarray(self.index),
                            jnp.int32(3))
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
    heads, _ = self.obj.update(self.heads, jnp.asarray(self.proj), jnp.asarray(self.index),
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
    heads, _ = self.obj.update(self.heads, jnp.asarray(self.proj), jnp.asarray(self.index),
                               jnp.ones(6), jnp.int32(3))
    rolled, metrics = self.obj.end_epoch(heads, jnp.int32(3))
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


if __name__ == "__main__":
  absltest.main()
