"""The clustering math of Sec. 3 on hand-checkable examples."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from coke_jax import clustering


class AssignmentTest(absltest.TestCase):

  def test_assign_is_argmax_of_similarity_plus_dual(self):  # Eq. 8
    sims = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    np.testing.assert_array_equal(clustering.assign(sims, jnp.zeros(2)), [0, 0, 0])
    # rho_1 = 0.5 moves only the example whose margin is below 0.5.
    np.testing.assert_array_equal(clustering.assign(sims, jnp.array([0.0, 0.5])), [0, 0, 1])

  def test_two_views_use_mean_similarity(self):  # Eq. 15
    centers = jnp.eye(2)
    views = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]]) * jnp.array([[[0.9]], [[1.0]]])  # [V, B, D]
    sims = clustering.similarities(jnp.mean(views, 0), centers)
    np.testing.assert_allclose(sims, [[0.45, 0.5]])
    np.testing.assert_array_equal(clustering.assign(sims, jnp.zeros(2)), [1])

  def test_dual_update_hand_example(self):  # Eq. 9 with the max(0, .) of Sec. 4
    # All 3 examples went to cluster 0; each cluster should get gamma/N = 1/2 of them.
    counts = clustering.cluster_counts(jnp.array([0, 0, 0]), jnp.ones(3), 2)
    np.testing.assert_array_equal(counts, [3, 0])
    dual = clustering.dual_update(jnp.zeros(2), counts, 3.0, 0.5, lr=1.0)
    # rho = max(0, 0 - 1 * ([1, 0] - 0.5)) = [0, 0.5]
    np.testing.assert_allclose(dual, [0.0, 0.5])
    # With that dual the next identical batch sends the least-sure example to cluster 1.
    sims = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    np.testing.assert_array_equal(clustering.assign(sims, dual), [0, 0, 1])

  def test_padding_rows_do_not_count(self):
    counts = clustering.cluster_counts(jnp.array([0, 1, 1]), jnp.array([1.0, 1.0, 0.0]), 2)
    np.testing.assert_array_equal(counts, [1, 1])
    dual = clustering.dual_update(jnp.zeros(2), counts, 2.0, 0.5, lr=1.0)
    np.testing.assert_allclose(dual, [0.0, 0.0])

  def test_online_assignment_meets_the_constraint(self):
    # Everyone prefers cluster 0, but each cluster must get at least half (gamma' = 1).
    rng = np.random.default_rng(0)
    sims = jnp.asarray(np.stack([rng.uniform(0.6, 1.0, 400), rng.uniform(0.0, 0.4, 400)], 1))
    dual, sizes = jnp.zeros(2), np.zeros(2)
    for batch in np.split(np.arange(400), 40):
      labels = clustering.assign(sims[batch], dual)
      counts = clustering.cluster_counts(labels, jnp.ones(len(batch)), 2)
      dual = clustering.dual_update(dual, counts, float(len(batch)), 0.5, lr=1.0)
      sizes += np.asarray(counts)
    self.assertGreaterEqual(sizes.min(), 0.45 * 400)  # greedy would give cluster 1 nothing


class ProjectionTest(absltest.TestCase):

  def test_simplified_projection_is_positive_part(self):
    np.testing.assert_allclose(clustering.project_dual(jnp.array([-1.0, 0.5, 2.0])),
                               [0.0, 0.5, 2.0])

  def test_l1_ball_projection_matches_bisection(self):
    rng = np.random.default_rng(1)
    for _ in range(20):
      v = rng.normal(size=7) * 3
      tau = rng.uniform(0.5, 4.0)
      p = np.asarray(clustering.project_dual(jnp.asarray(v, jnp.float32), tau))
      # Reference: the projection is max(v - theta, 0) with the smallest theta >= 0
      # giving sum <= tau, found by bisection.
      lo, hi = 0.0, max(float(np.abs(v).max()), 1.0)
      if np.maximum(v, 0).sum() <= tau:
        ref = np.maximum(v, 0)
      else:
        for _ in range(100):
          mid = (lo + hi) / 2
          lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > tau else (lo, mid)
        ref = np.maximum(v - hi, 0)
      np.testing.assert_allclose(p, ref, atol=1e-5)
      self.assertTrue(np.all(p >= 0))
      self.assertLessEqual(p.sum(), tau + 1e-5)


class CentersTest(absltest.TestCase):

  def test_running_mean_and_empty_clusters(self):  # Eq. 11
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    fallback = jnp.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    sums, counts = clustering.accumulate_centers(jnp.zeros((3, 2)), jnp.zeros(3), x,
                                                 jnp.array([0, 0, 1]), jnp.array([1., 1., 1.]))
    np.testing.assert_allclose(sums, [[1, 1], [1, 0], [0, 0]])
    np.testing.assert_allclose(counts, [2, 1, 0])
    centers = clustering.centers_from_sums(sums, counts, fallback)
    np.testing.assert_allclose(centers, [[0.70710677, 0.70710677], [1, 0], [-1, 0]], atol=1e-6)


class LossTest(absltest.TestCase):

  def test_soft_targets_mix_label_and_reference(self):  # Alg. 2
    ref = jnp.array([[0.5, 0.25, 0.25]])
    t = clustering.soft_targets(jnp.array([2]), 3, ref, alpha=0.2)
    np.testing.assert_allclose(t, [[0.4, 0.2, 0.2 + 0.2]])
    np.testing.assert_allclose(clustering.soft_targets(jnp.array([1]), 3, None, 0.2), [[0, 1, 0]])

  def test_normalized_softmax_loss(self):  # Eq. 12
    logits = jnp.array([[2.0, 0.0, -1.0]])
    onehot = jnp.array([[1.0, 0.0, 0.0]])
    expected = -(2.0 - np.log(np.exp(2.0) + 1.0 + np.exp(-1.0)))
    np.testing.assert_allclose(clustering.normalized_softmax_loss(logits, onehot), [expected],
                               rtol=1e-6)


class DiagnosticsTest(absltest.TestCase):

  def test_size_diagnostics(self):
    d = clustering.size_diagnostics(jnp.array([5.0, 30.0, 15.0]), 10.0)
    self.assertEqual(float(d["min_size"]), 5)
    self.assertEqual(float(d["max_size"]), 30)
    self.assertEqual(int(d["num_under_bound"]), 1)
    self.assertEqual(float(d["violation"]), 5)
    self.assertAlmostEqual(float(d["largest_share"]), 0.6)


if __name__ == "__main__":
  absltest.main()
