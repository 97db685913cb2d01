"""The clustering math of Sec. 3 on hand-checkable examples, and against the exact LP of Eq. 6."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import cluster as sk_cluster
from sklearn import datasets as sk_datasets

from coke_jax import clustering
from coke_jax import kmeans


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
    # All 3 examples went to cluster 0; each cluster should get gamma/N = 0.4 of them.
    counts = clustering.cluster_counts(jnp.array([0, 0, 0]), jnp.ones(3), 2)
    np.testing.assert_array_equal(counts, [3, 0])
    dual = clustering.dual_update(jnp.zeros(2), counts, 3.0, 0.4, lr=1.0)
    # rho = max(0, 0 - 1 * ([1, 0] - 0.4)) = [0, 0.4]
    np.testing.assert_allclose(dual, [0.0, 0.4])
    # With that dual the next identical batch sends the least-sure example to cluster 1.
    sims = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    np.testing.assert_array_equal(clustering.assign(sims, dual), [0, 0, 1])

  def test_per_cluster_bounds(self):  # Eq. 5 with a gamma_k per cluster
    fracs = clustering.min_size_fractions(3, [0.3, 1.2, 0.9])
    np.testing.assert_allclose(fracs, [0.1, 0.4, 0.3], rtol=1e-6)
    counts = jnp.array([2.0, 2.0, 0.0])
    dual = clustering.dual_update(jnp.zeros(3), counts, 4.0, jnp.asarray(fracs), lr=1.0)
    np.testing.assert_allclose(dual, [0.0, 0.0, 0.3], atol=1e-6)  # cluster 1 got exactly 0.5 >= 0.4

  def test_bad_bounds_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, r"min_size_ratio \(gamma'\) is 1.5"):
      clustering.min_size_fractions(4, 1.5)
    with self.assertRaisesRegex(ValueError, "shape"):
      clustering.min_size_fractions(4, [0.5, 0.5])
    with self.assertRaisesRegex(ValueError, "mean <= 1"):
      clustering.min_size_fractions(2, [1.5, 0.9])

  def test_balanced_duals_are_free(self):
    # gamma' = 1: the bounds add up to N, the constraints are equalities, rho may go below 0.
    counts = jnp.array([4.0, 0.0])
    dual = clustering.dual_update(jnp.zeros(2), counts, 4.0, 0.5, lr=1.0)
    np.testing.assert_allclose(dual, [-0.5, 0.5])
    dual = clustering.dual_update(jnp.zeros(2), counts, 4.0, 0.45, lr=1.0)
    np.testing.assert_allclose(dual, [0.0, 0.45])
    # With an l1 radius tau the full projection of Eq. 9 applies even when balanced.
    dual = clustering.dual_update(jnp.zeros(2), counts, 4.0, 0.5, lr=1.0, tau=0.2)
    np.testing.assert_allclose(dual, [0.0, 0.2])

  def test_padding_rows_do_not_count(self):
    counts = clustering.cluster_counts(jnp.array([0, 1, 1]), jnp.array([1.0, 1.0, 0.0]), 2)
    np.testing.assert_array_equal(counts, [1, 1])
    dual = clustering.dual_update(jnp.zeros(2), counts, 2.0, 0.4, lr=1.0)
    np.testing.assert_allclose(dual, [0.0, 0.0])
    # An all-padding batch leaves the duals alone.
    dual = clustering.dual_update(jnp.array([0.1, 0.2]), jnp.zeros(2), 0.0, 0.4, lr=1.0)
    np.testing.assert_allclose(dual, [0.1, 0.2])

  def test_online_assignment_meets_the_constraint(self):
    # Everyone prefers cluster 0, but each cluster must get at least 45%.
    rng = np.random.default_rng(0)
    sims = jnp.asarray(np.stack([rng.uniform(0.6, 1.0, 400), rng.uniform(0.0, 0.4, 400)], 1))
    dual, sizes = jnp.zeros(2), np.zeros(2)
    for batch in np.split(np.arange(400), 40):
      labels = clustering.assign(sims[batch], dual)
      counts = clustering.cluster_counts(labels, jnp.ones(len(batch)), 2)
      dual = clustering.dual_update(dual, counts, float(len(batch)), 0.45, lr=1.0)
      sizes += np.asarray(counts)
    self.assertGreaterEqual(sizes.min(), 0.43 * 400)  # greedy would give cluster 1 nothing


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

  def test_full_projection_in_the_online_step(self):  # Eq. 9 with tau
    rng = np.random.default_rng(2)
    x = clustering.l2_normalize(jnp.asarray(rng.normal(size=(64, 4)), jnp.float32))
    state = clustering.init_online_state(x[:3])
    for _ in range(20):
      state, _ = clustering.online_step(state, x, jnp.ones(64), min_size_frac=0.3, dual_lr=2.0,
                                        dual_l1_radius=0.05)
      self.assertLessEqual(float(jnp.sum(state.dual)), 0.05 + 1e-6)
      self.assertGreaterEqual(float(jnp.min(state.dual)), 0.0)


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

  def test_batch_and_epoch_centers(self):  # Eq. 11 vs Eq. 10
    centers = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    batches = [jnp.array([[-0.6, 0.8]]), jnp.array([[0.6, 0.8]])]
    kwargs = dict(min_size_frac=0.0, dual_lr=0.0)
    per_batch = per_epoch = clustering.init_online_state(centers)
    labels_b, labels_e = [], []
    for x in batches:
      per_batch, lab = clustering.online_step(per_batch, x, jnp.ones(1), **kwargs)
      labels_b.append(int(lab[0]))
      per_epoch, lab = clustering.online_step(per_epoch, x, jnp.ones(1), batch_centers=False,
                                              **kwargs)
      labels_e.append(int(lab[0]))
      # Eq. 10 assigns every batch with the epoch's starting centers.
      np.testing.assert_array_equal(per_epoch.centers, centers)
    # Eq. 11 moved c_1 to (-0.6, 0.8) after the first example, so the second goes to c_0.
    self.assertEqual(labels_b, [1, 0])
    self.assertEqual(labels_e, [1, 1])
    np.testing.assert_allclose(per_batch.centers, [[0.6, 0.8], [-0.6, 0.8], [-1.0, 0.0]],
                               atol=1e-6)
    # Eq. 10 at the epoch's end; clusters without a member keep their center.
    np.testing.assert_allclose(clustering.epoch_centers(per_epoch),
                               [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(clustering.epoch_centers(per_batch), per_batch.centers, atol=1e-6)
    nxt = clustering.start_epoch(per_epoch, clustering.epoch_centers(per_epoch))
    self.assertEqual(float(jnp.sum(nxt.counts)), 0.0)
    self.assertEqual(float(jnp.abs(nxt.centers_sum).sum()), 0.0)
    np.testing.assert_array_equal(nxt.dual, per_epoch.dual)

  def test_online_epoch_writes_every_label_once(self):
    rng = np.random.default_rng(3)
    x = clustering.l2_normalize(jnp.asarray(rng.normal(size=(50, 3)), jnp.float32))
    index, weight = kmeans.batch_plan(jax.random.PRNGKey(0), 50, 16)
    self.assertEqual(index.shape, (4, 16))
    self.assertEqual(float(weight.sum()), 50.0)
    np.testing.assert_array_equal(np.sort(np.asarray(index).ravel()[:50]), np.arange(50))
    state = clustering.init_online_state(x[:4])
    kwargs = dict(min_size_frac=0.2, dual_lr=0.5)
    out, labels = kmeans.online_epoch(state, x, index, weight, **kwargs)
    # Same as stepping by hand.
    ref, ref_labels = state, np.zeros(50, np.int32)
    for i, w in zip(index, weight):
      ref, lab = clustering.online_step(ref, x[i], w, **kwargs)
      ref_labels[np.asarray(i)[np.asarray(w) > 0]] = np.asarray(lab)[np.asarray(w) > 0]
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(out.dual, ref.dual, atol=1e-6)
    self.assertEqual(float(out.counts.sum()), 50.0)


class LossTest(absltest.TestCase):

  def test_soft_targets_mix_label_and_reference(self):  # Alg. 2
    ref = jnp.array([[0.5, 0.25, 0.25]])
    onehot = jax.nn.one_hot(jnp.array([2]), 3)
    np.testing.assert_allclose(clustering.soft_targets(onehot, ref, alpha=0.2),
                               [[0.4, 0.2, 0.2 + 0.2]])
    np.testing.assert_allclose(clustering.soft_targets(onehot, None, 0.2), [[0, 0, 1]])

  def test_normalized_softmax_loss(self):  # Eq. 12
    logits = jnp.array([[2.0, 0.0, -1.0]])
    onehot = jnp.array([[1.0, 0.0, 0.0]])
    expected = -(2.0 - np.log(np.exp(2.0) + 1.0 + np.exp(-1.0)))
    np.testing.assert_allclose(clustering.normalized_softmax_loss(logits, onehot), [expected],
                               rtol=1e-6)


def _dense_moving_average(label_history, num_clusters, average_after):
  """Eq. 13 on dense vectors: y_hat^t for the epochs in `label_history` (epoch t = index)."""
  avg = None
  for t, labels in enumerate(label_history):
    onehot = np.eye(num_clusters)[labels]
    f = 1.0 / max(t - average_after, 1)
    avg = onehot if avg is None or f == 1.0 else (1 - f) * avg + f * onehot
  return avg


class MovingAverageTest(absltest.TestCase):

  def test_sparse_table_equals_dense_average_when_it_fits(self):  # Eq. 13, supp. 2.2.2
    rng = np.random.default_rng(4)
    n, k, s, average_after = 40, 6, 3, 2
    # Each example moves between at most 3 clusters, so 3 slots hold the exact average.
    choices = np.stack([rng.choice(k, 3, replace=False) for _ in range(n)])
    history = [choices[np.arange(n), rng.integers(0, 3, n)] for _ in range(8)]
    ids = jnp.zeros((n, s), jnp.int32)
    weights = jnp.zeros((n, s), jnp.float32).at[:, 0].set(1.0)
    for t, labels in enumerate(history):
      ids, weights = clustering.average_sparse_labels(
          ids, weights, jnp.asarray(labels, jnp.int32),
          clustering.average_factor(jnp.int32(t), average_after))
    dense = np.zeros((n, k))
    np.add.at(dense, (np.arange(n)[:, None], np.asarray(ids)), np.asarray(weights))
    np.testing.assert_allclose(dense, _dense_moving_average(history, k, average_after), atol=1e-6)

  def test_lightest_entry_is_evicted_and_the_rest_renormalized(self):
    ids, weights = jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.float32)
    for label, f in ((0, 1.0), (1, 0.5), (2, 1 / 3)):
      ids, weights = clustering.average_sparse_labels(ids, weights, jnp.array([label]), f)
    # Dense Eq. 13 would be 1/3 each; with 2 slots cluster 0 (tied lightest, first) is dropped
    # and cluster 1 keeps the surviving mass 1 - 1/3.
    got = dict(zip(np.asarray(ids)[0].tolist(), np.asarray(weights)[0].tolist()))
    self.assertEqual(set(got), {1, 2})
    self.assertAlmostEqual(got[1], 2 / 3, places=6)
    self.assertAlmostEqual(got[2], 1 / 3, places=6)

  def test_sparse_soft_labels(self):  # the softmax of supp. 2.2.2
    ids = jnp.array([[1, 3, 0], [2, 0, 0]])
    weights = jnp.array([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    got = clustering.sparse_soft_labels(ids, weights, 4, temperature=0.5)
    z = np.exp(1.2) + np.exp(0.8)
    np.testing.assert_allclose(got, [[0, np.exp(1.2) / z, 0, np.exp(0.8) / z], [0, 0, 1, 0]],
                               rtol=1e-6)

  def test_average_centers(self):  # Eq. 13
    avg = jnp.array([[1.0, 0.0]])
    new = jnp.array([[0.0, 1.0]])
    np.testing.assert_allclose(clustering.average_centers(avg, new, 0.5),
                               [[np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)
    np.testing.assert_allclose(clustering.average_centers(avg, new, 1.0), new)
    self.assertAlmostEqual(float(clustering.average_factor(jnp.int32(7), 4)), 1 / 3, places=6)
    self.assertEqual(float(clustering.average_factor(jnp.int32(3), 4)), 1.0)
    self.assertEqual(float(clustering.average_factor(jnp.int32(3), None)), 1.0)


class DiagnosticsTest(absltest.TestCase):

  def test_size_diagnostics(self):
    d = clustering.size_diagnostics(jnp.array([5.0, 30.0, 15.0]), 10.0)
    self.assertEqual(float(d["min_size"]), 5)
    self.assertEqual(float(d["max_size"]), 30)
    self.assertEqual(int(d["num_under_bound"]), 1)
    self.assertEqual(float(d["violation"]), 5)
    self.assertAlmostEqual(float(d["relative_violation"]), 0.5)
    self.assertAlmostEqual(float(d["largest_share"]), 0.6)
    self.assertEqual(int(d["num_empty"]), 0)

  def test_size_diagnostics_per_cluster_bounds(self):
    d = clustering.size_diagnostics(jnp.array([5.0, 30.0, 0.0]), jnp.array([4.0, 40.0, 1.0]))
    self.assertEqual(int(d["num_under_bound"]), 2)
    self.assertEqual(float(d["violation"]), 10)
    self.assertAlmostEqual(float(d["relative_violation"]), 1.0)  # the empty cluster
    self.assertEqual(int(d["num_empty"]), 1)
    self.assertEqual(float(d["bound"]), 1.0)


def _shifted_digits_problem(copies=12, k=10, center_seed=1):
  """Digits under random 1-px shifts and noise (N = 21,564) with fixed k-means++ centers."""
  images = sk_datasets.load_digits().images / 16.0
  rng = np.random.default_rng(0)
  out = [images]
  for _ in range(copies - 1):
    dx, dy = rng.integers(-1, 2, size=(2, len(images)))
    shifted = np.stack([np.roll(im, (a, b), axis=(0, 1)) for im, a, b in zip(images, dy, dx)])
    out.append(shifted + 0.1 * rng.normal(size=images.shape))
  x = np.concatenate(out).reshape(-1, 64)
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  centers, _ = sk_cluster.kmeans_plusplus(x, k, random_state=center_seed)
  centers = (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(np.float32)
  return x, centers, x.astype(np.float64) @ centers.T.astype(np.float64)


def _online_labels(x, centers, ratio, batch_size, seed):
  """One random-order pass of Eqs. 8/9 with fixed centers and the default dual step."""
  k = centers.shape[0]
  state = clustering.init_online_state(jnp.asarray(centers))
  index, weight = kmeans.batch_plan(jax.random.PRNGKey(seed), len(x), batch_size)
  _, labels = kmeans.online_epoch(
      state, jnp.asarray(x), index, weight,
      min_size_frac=jnp.asarray(clustering.min_size_fractions(k, ratio)),
      dual_lr=clustering.default_dual_lr(k, batch_size, len(x)), batch_centers=False)
  return np.asarray(labels)


class ExactLPTest(parameterized.TestCase):

  def test_lp_matches_brute_force(self):
    rng = np.random.default_rng(5)
    sims = rng.uniform(size=(7, 3))
    min_size = np.array([3.0, 2.0, 1.0])
    optimum, mu = kmeans.solve_assignment_lp(sims, min_size)
    best = max(sims[np.arange(7), a].sum() for a in itertools.product(range(3), repeat=7)
               if np.all(np.bincount(a, minlength=3) >= min_size))
    # Integer bounds make the LP's vertices integral (a transportation problem).
    self.assertAlmostEqual(optimum, best, places=6)
    np.testing.assert_allclose(mu.sum(1), 1.0, atol=1e-6)
    self.assertTrue(np.all(mu.sum(0) >= min_size - 1e-6))

  @parameterized.parameters(0.4, 0.9, 1.0)
  def test_online_assignment_is_near_the_lp_optimum(self, ratio):
    # Theorem 1 / Table 1 on real data: digits under shifts and noise, fixed centers under
    # which the greedy assignment leaves a cluster at ~0.2 N / K, one random-order pass.
    x, centers, sims = _shifted_digits_problem()
    k = centers.shape[0]
    min_size = ratio * len(x) / k
    optimum, _ = kmeans.solve_assignment_lp(sims, min_size)
    greedy_sizes = np.bincount(sims.argmax(1), minlength=k)
    self.assertLess(greedy_sizes.min(), 0.25 * len(x) / k)  # the constraint binds
    # The targets (objective >= 99% of the optimum; violation <= 1% of gamma, 5% at
    # gamma' = 1) at b = 32 (674 dual steps; measured 0.4 to 0.7%). The violation is O(sqrt N)
    # per pass and b = 256 takes only 84 steps here: measured up to 1.1% (<= 1% at N = 54k,
    # benchmarks/online_vs_lp.py), so it is held to 2%.
    target = 0.05 if ratio == 1.0 else 0.01
    for batch_size, seed, max_violation in ((32, 0, target), (32, 1, target), (256, 0, 0.02)):
      labels = _online_labels(x, centers, ratio, batch_size, seed)
      objective = sims[np.arange(len(x)), labels].sum()
      sizes = np.bincount(labels, minlength=k)
      self.assertGreaterEqual(objective / optimum, 0.99)
      self.assertLessEqual(np.max(min_size - sizes) / min_size, max_violation)


if __name__ == "__main__":
  absltest.main()
