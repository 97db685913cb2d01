"""CoKeKMeans (coke_jax/kmeans.py), the standalone estimator: Alg. 1 from the trainer's code."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as sk_metrics

from coke_jax import clustering
from coke_jax import kmeans


def _blobs(sizes, dim=8, noise=0.05, seed=0):
  """Well-separated directions (one per blob) with a little noise, and the blob of each row."""
  rng = np.random.default_rng(seed)
  directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:len(sizes)]
  truth = np.repeat(np.arange(len(sizes)), sizes)
  x = directions[truth] + noise * rng.normal(size=(len(truth), dim))
  return (x * rng.uniform(0.5, 3.0, size=(len(truth), 1))).astype(np.float32), truth


class CoKeKMeansTest(parameterized.TestCase):

  @parameterized.parameters("batch", "epoch")
  def test_recovers_separated_clusters(self, center_update):
    x, truth = _blobs([60, 50, 40, 30])
    model = kmeans.CoKeKMeans(4, min_size_ratio=0.4, batch_size=16, n_epochs=5,
                                  center_update=center_update, seed=0)
    labels = model.fit_predict(x)
    np.testing.assert_array_equal(labels, model.labels_)
    self.assertEqual(sk_metrics.adjusted_rand_score(truth, labels), 1.0)
    np.testing.assert_array_equal(model.cluster_sizes_, np.bincount(labels, minlength=4))
    self.assertEqual(model.cluster_centers_.shape, (4, 8))
    np.testing.assert_allclose(np.linalg.norm(model.cluster_centers_, axis=1), 1.0, atol=1e-5)
    # Rows are L2-normalized inside: the scale of a row does not matter.
    np.testing.assert_array_equal(model.predict(x * 7.0), labels)

  def test_lower_bound_holds_where_greedy_would_collapse(self):
    # One dominant blob (85%) and three small ones; gamma' = 1 asks for 25% each.
    x, _ = _blobs([340, 20, 20, 20], noise=0.3, seed=1)
    model = kmeans.CoKeKMeans(4, min_size_ratio=1.0, batch_size=8, n_epochs=10, seed=0)
    model.fit(x)
    # Up to the online violation, O(sqrt N) = O(20) examples at N = 400.
    self.assertGreaterEqual(model.cluster_sizes_.min(), 0.85 * 100)
    self.assertLessEqual(model.cluster_sizes_.max(), 1.3 * 100)
    # Without the bound (gamma' = 0) the sizes follow the data: far from balanced.
    free = kmeans.CoKeKMeans(4, min_size_ratio=0.0, batch_size=8, n_epochs=10, seed=0).fit(x)
    self.assertGreater(free.cluster_sizes_.max(), 150)

  def test_fit_is_algorithm_1_from_the_shared_functions(self):
    x, _ = _blobs([30, 30, 30], noise=0.4, seed=2)
    model = kmeans.CoKeKMeans(3, min_size_ratio=0.8, dual_lr=0.5, batch_size=10, n_epochs=2,
                                  seed=3).fit(x)
    # The same run stepped by hand: k-means++ seeds, then two random-order passes.
    xn = clustering.l2_normalize(jnp.asarray(x))
    init_key, order_key = jax.random.split(jax.random.PRNGKey(3))
    state = clustering.init_online_state(kmeans.kmeans_plus_plus(init_key, xn, 3))
    kwargs = dict(min_size_frac=jnp.asarray(clustering.min_size_fractions(3, 0.8)), dual_lr=0.5)
    for key in jax.random.split(order_key, 2):
      index, weight = kmeans.batch_plan(key, 90, 10)
      state, labels = kmeans.online_epoch(state, xn, index, weight, **kwargs)
      state = clustering.start_epoch(state, clustering.epoch_centers(state))
    np.testing.assert_array_equal(model.labels_, labels)
    np.testing.assert_allclose(model.cluster_centers_, state.centers, atol=1e-5)
    np.testing.assert_allclose(model.dual_, state.dual, atol=1e-5)

  def test_defaults(self):
    x, _ = _blobs([400, 400], seed=4)
    model = kmeans.CoKeKMeans(2).fit(x.astype(np.float64).tolist())
    self.assertEqual(model.batch_size_, 800 // 64)
    self.assertAlmostEqual(model.dual_lr_,
                           clustering.default_dual_lr(2, 800 // 64, 800 * model.n_epochs))
    # batch_size larger than N is clipped to N.
    self.assertEqual(kmeans.CoKeKMeans(2, batch_size=5000, n_epochs=1).fit(x).batch_size_, 800)

  def test_kmeans_plus_plus_picks_distinct_rows(self):
    x = clustering.l2_normalize(jnp.asarray(np.random.default_rng(5).normal(size=(50, 3))))
    centers = np.asarray(kmeans.kmeans_plus_plus(jax.random.PRNGKey(0), x, 10))
    self.assertLen({tuple(np.round(c, 6)) for c in centers}, 10)
    for c in centers:
      self.assertLess(np.min(np.abs(np.asarray(x) - c).sum(1)), 1e-6)

  def test_bad_input_is_a_clear_error(self):
    x, _ = _blobs([10, 10])
    cases = [
        (dict(), x[:, 0], "(?s)Expected 2D array, got 1D array.*reshape\\(-1, 1\\)"),
        (dict(), x[None], "dim 3, while dim <= 2 is required"),
        (dict(), np.where(np.arange(20)[:, None] == 3, np.nan, x), "NaN or infinite.*\\[3\\]"),
        (dict(), np.where(np.arange(20)[:, None] == 5, np.inf, x), "NaN or infinite.*\\[5\\]"),
        (dict(n_clusters=21), x, "n_clusters=21 is larger than the number of rows in X "
                                 "\\(n_samples=20\\)"),
        (dict(n_clusters=0), x, "n_clusters must be a positive integer"),
        (dict(min_size_ratio=1.5), x, "min_size_ratio.*1.5.*\\[0, 1\\]"),
        (dict(min_size_ratio=-0.1), x, "min_size_ratio.*-0.1.*\\[0, 1\\]"),
        (dict(batch_size=0), x, "batch_size must be a positive integer"),
        (dict(n_epochs=0), x, "n_epochs must be a positive integer"),
        (dict(dual_lr=-1.0), x, "dual_lr must be a positive number"),
        (dict(center_update="sometimes"), x, "center_update"),
        (dict(), np.zeros((0, 3)), "0 sample\\(s\\) \\(shape=\\(0, 3\\)\\)"),
        (dict(), np.zeros((5, 0)), "0 feature\\(s\\) \\(shape=\\(5, 0\\)\\)"),
        (dict(), [["a", "b"]], "could not convert string to float"),
    ]
    for kwargs, data, message in cases:
      params = {"n_clusters": 2, **kwargs}
      with self.subTest(message), self.assertRaisesRegex(ValueError, message):
        kmeans.CoKeKMeans(**params).fit(data)
    with self.assertRaisesRegex(ValueError, "not fitted"):
      kmeans.CoKeKMeans(2).predict(x)
    model = kmeans.CoKeKMeans(2, n_epochs=1).fit(x)
    with self.assertRaisesRegex(ValueError, "X has 3 features, but CoKeKMeans is expecting 8"):
      model.predict(x[:, :3])


if __name__ == "__main__":
  absltest.main()
