"""Evaluation metrics against hand-computed cases and a brute-force kNN."""

from absl.testing import absltest
import numpy as np

from coke_jax.evaluation import metrics


class ClusteringMetricsTest(absltest.TestCase):

  def test_acc_is_invariant_to_label_permutation(self):
    labels = np.array([0, 0, 1, 1, 2, 2])
    self.assertEqual(metrics.clustering_accuracy(np.array([2, 2, 0, 0, 1, 1]), labels), 1.0)
    # One mistake: cluster 1 holds a 0 and both 1s... best match gets 5/6.
    self.assertAlmostEqual(metrics.clustering_accuracy(np.array([2, 1, 1, 1, 0, 0]), labels),
                           5 / 6)

  def test_acc_with_more_clusters_than_classes(self):
    labels = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 3, 1, 1, 2])
    self.assertAlmostEqual(metrics.clustering_accuracy(pred, labels), 4 / 6)
    self.assertAlmostEqual(metrics.majority_accuracy(pred, labels), 1.0)

  def test_nmi_ari_perfect_and_independent(self):
    labels = np.array([0, 0, 1, 1])
    m = metrics.clustering_metrics(np.array([1, 1, 0, 0]), labels)
    self.assertAlmostEqual(m["nmi"], 1.0)
    self.assertAlmostEqual(m["ari"], 1.0)
    m = metrics.clustering_metrics(np.array([0, 1, 0, 1]), labels)
    self.assertAlmostEqual(m["nmi"], 0.0, places=6)
    self.assertAlmostEqual(m["ari"], -0.5)  # hand-computed from the pair counts


class KnnTest(absltest.TestCase):

  def test_matches_brute_force(self):
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 16)), rng.normal(size=(50, 16))
    train_labels = rng.integers(0, 5, 300)
    got = metrics.knn_predict(train, train_labels, test, 5, k=20, temperature=0.07, batch_size=16)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    ts = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = ts @ tn.T
    expected = []
    for row in sims:
      top = np.argsort(-row)[:20]
      scores = np.zeros(5)
      np.add.at(scores, train_labels[top], np.exp(row[top] / 0.07))
      expected.append(np.argmax(scores))
    np.testing.assert_array_equal(got, expected)


if __name__ == "__main__":
  absltest.main()
