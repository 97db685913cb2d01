"""Local Aggregation against a brute-force set computation over a tiny bank (Eq. 3 with
background and close neighbours), the warm-up's own row, the bank update, and the JAX
k-means against separated blobs and scikit-learn's objective from the same start."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import cluster as sk_cluster
from sklearn import metrics as sk_metrics

from coke_jax import objectives
from coke_jax.objectives import local_aggregation as la
from tests import testing


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _brute_force(v, index, bank, labels, tau, k, include_self=False):
  """-log(sum_{C and B} exp / sum_B exp + 1e-7) with the sets built one by one (float64)."""
  losses = []
  for vi, i in zip(v, index):
    s = bank @ vi / tau
    background = set(np.argsort(-s, kind="stable")[:k].tolist())
    if include_self:
      background.add(int(i))
    close = {j for j in range(len(bank)) if any(labels[h, j] == labels[h, i]
                                                for h in range(len(labels)))}
    num = sum(np.exp(s[j]) for j in background & close)
    den = sum(np.exp(s[j]) for j in background)
    losses.append(-np.log(num / den + 1e-7))
  return np.array(losses)


class AggregationLossTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.bank = _unit(rng.normal(size=(40, 6)))
    self.labels = rng.integers(0, 5, size=(3, 40))
    self.index = np.array([3, 17, 25, 39, 0, 8])
    self.v = _unit(self.bank[self.index] + 0.3 * rng.normal(size=(6, 6)))

  def test_value_and_gradient_equal_the_brute_force_sets(self):
    with jax.enable_x64(True):
      for include_self in (False, True):
        expected = _brute_force(self.v, self.index, self.bank, self.labels, 0.07, 10,
                                include_self)
        f = lambda v: la.aggregation_loss(v, self.index, self.bank, self.labels, 0.07, 10,
                                          jnp.bool_(include_self))
        np.testing.assert_allclose(f(self.v), expected, rtol=1e-12)
        grad = jax.grad(lambda v: jnp.sum(f(v)))(self.v)
        eps, numeric = 1e-7, np.zeros_like(self.v)
        for idx in np.ndindex(self.v.shape):
          step = np.zeros_like(self.v)
          step[idx] = eps
          numeric[idx] = (_brute_force(self.v + step, self.index, self.bank, self.labels, 0.07,
                                       10, include_self).sum()
                          - _brute_force(self.v - step, self.index, self.bank, self.labels, 0.07,
                                         10, include_self).sum()) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)

  def test_equal_bank_rows_give_the_close_share(self):
    bank = np.tile(self.bank[:1], (40, 1))
    loss = la.aggregation_loss(jnp.asarray(self.v[:1]), self.index[:1], bank, self.labels,
                               0.07, 10)
    top = set(range(10))  # equal scores: the top k are the first rows
    close = {j for j in top if any(self.labels[h, j] == self.labels[h, 3] for h in range(3))}
    self.assertAlmostEqual(float(loss[0]), -np.log(len(close) / 10 + 1e-7), places=5)


class BankAndWarmupTest(absltest.TestCase):

  def test_bank_moves_towards_the_global_batch_and_padding_writes_nothing(self):
    obj = la.LocalAggregation(num_clusters=(3,), num_examples=20, embed_dim=4, warmup_epochs=1)
    _, state = obj.init(jax.random.PRNGKey(0))
    self.assertFalse(bool(state.clustered))
    np.testing.assert_array_equal(state.labels, np.tile(np.arange(20), (1, 1)))
    rng = np.random.default_rng(1)
    rows = {"proj": _unit(rng.normal(size=(16, 2, 4))).astype(np.float32),
            "index": rng.permutation(20)[:16].astype(np.int32),
            "weight": np.array([1.0] * 13 + [0.0] * 3, np.float32)}
    ctx = objectives.StepContext(step=0, epoch=0, train_step=0, rng=None, forward=None)
    new = testing.on_devices(
        lambda r, s: obj.update({}, s, {"proj": jnp.swapaxes(r["proj"], 0, 1)},
                                {"index": r["index"], "weight": r["weight"]}, ctx)[1],
        8, rows, state)
    bank, new_bank = np.asarray(state.bank), np.asarray(new.bank)
    np.testing.assert_allclose(np.linalg.norm(new_bank, axis=1), 1.0, rtol=1e-5)
    for i, row, w in zip(rows["index"], rows["proj"], rows["weight"]):
      if w:
        expected = _unit(0.5 * bank[i] + 0.5 * _unit(row.mean(0)))
        np.testing.assert_allclose(new_bank[i], expected, atol=1e-6)
    untouched = np.setdiff1d(np.arange(20), rows["index"][:13])
    np.testing.assert_array_equal(new_bank[untouched], bank[untouched])
    # The first clustering comes at the end of the warm-up, then every epoch.
    clustered, metrics = obj.end_epoch({}, new, jnp.int32(0), jax.random.PRNGKey(2))
    self.assertTrue(bool(clustered.clustered))
    self.assertLen(np.unique(clustered.labels[0]), 3)
    self.assertEqual(float(metrics["max_size/k3_0"]) + 0, np.bincount(clustered.labels[0]).max())
    self.assertLen(obj.eval_heads({}, clustered), 1)
    self.assertEqual(obj.eval_heads({}, new), [])  # nothing to evaluate before it


class KMeansTest(absltest.TestCase):

  def test_separated_blobs_are_recovered(self):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 8)) * 10
    truth = rng.integers(0, 5, 600)
    x = centers[truth] + rng.normal(size=(600, 8))
    labels, _ = la.lloyd_kmeans(jax.random.PRNGKey(3), jnp.asarray(x, jnp.float32), 5,
                                chunk_rows=128)
    # Random starts can merge two blobs; a few seeds find the partition.
    best = max(sk_metrics.adjusted_rand_score(truth, np.asarray(la.lloyd_kmeans(
        jax.random.PRNGKey(s), jnp.asarray(x, jnp.float32), 5, chunk_rows=128)[0]))
               for s in range(3))
    self.assertEqual(best, 1.0)
    self.assertEqual(labels.shape, (600,))

  def test_objective_matches_scikit_learn_from_the_same_start(self):
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(500, 6))).astype(np.float32)
    key = jax.random.PRNGKey(0)
    start = x[np.asarray(jax.random.choice(key, 500, (12,), replace=False))]
    labels, centroids = la.lloyd_kmeans(key, jnp.asarray(x), 12, iterations=20, chunk_rows=64)
    ours = float(np.sum((x - np.asarray(centroids)[np.asarray(labels)]) ** 2))
    reference = sk_cluster.KMeans(12, init=start, n_init=1, max_iter=20, tol=0.0,
                                  algorithm="lloyd").fit(x)
    self.assertLess(abs(ours - reference.inertia_) / reference.inertia_, 0.01)


if __name__ == "__main__":
  absltest.main()
