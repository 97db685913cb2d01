"""Evaluation metrics against hand-computed cases and a brute-force numpy kNN."""

import itertools
import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from coke_jax.evaluation import metrics


class ClusteringMetricsTest(absltest.TestCase):

  def test_acc_is_invariant_to_every_label_permutation(self):
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    for perm in itertools.permutations(range(3)):
      pred = np.asarray(perm)[labels]
      self.assertEqual(metrics.clustering_accuracy(pred, labels), 1.0)
      self.assertAlmostEqual(metrics.clustering_metrics(pred, labels)["nmi"], 1.0)
      self.assertAlmostEqual(metrics.clustering_metrics(pred, labels)["ari"], 1.0)

  def test_acc_picks_the_best_match_not_the_identity(self):
    labels = np.array([0, 0, 1, 1, 2, 2])
    # Cluster 2 = {0, 0}, cluster 1 = {1, 1, 2}, cluster 0 = {2}: the best match
    # 2->0, 1->1, 0->2 gets 5 of 6; the identity match would get 2 of 6.
    pred = np.array([2, 2, 1, 1, 0, 1])
    self.assertAlmostEqual(metrics.clustering_accuracy(pred, labels), 5 / 6)

  def test_acc_where_greedy_matching_fails(self):
    # Greedy takes the largest cell (cluster 0 -> class 0, 3 examples) and then can only
    # match cluster 1 -> class 1 (0 examples): 3/7. Hungarian: 0 -> 1 (2) and 1 -> 0 (2): 4/7.
    labels = np.array([0, 0, 0, 1, 1, 0, 0])
    pred = np.array([0, 0, 0, 0, 0, 1, 1])
    self.assertAlmostEqual(metrics.clustering_accuracy(pred, labels), 4 / 7)

  def test_acc_and_majority_with_more_clusters_than_classes(self):
    labels = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 3, 1, 1, 2])  # pure clusters, but 4 of them for 2 classes
    self.assertAlmostEqual(metrics.clustering_accuracy(pred, labels), 4 / 6)
    self.assertAlmostEqual(metrics.majority_accuracy(pred, labels), 1.0)

  def test_majority_with_mixed_clusters(self):
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    pred = np.array([5, 5, 5, 3, 3, 3, 0, 0])
    # cluster 5: {0, 0, 1} -> 2; cluster 3: {1, 1, 2} -> 2; cluster 0: {2, 0} -> 1.
    self.assertAlmostEqual(metrics.majority_accuracy(pred, labels), 5 / 8)

  def test_fewer_clusters_than_classes(self):
    labels = np.array([0, 1, 2, 3])
    pred = np.array([0, 0, 1, 1])
    self.assertAlmostEqual(metrics.clustering_accuracy(pred, labels), 2 / 4)
    self.assertAlmostEqual(metrics.majority_accuracy(pred, labels), 2 / 4)

  def test_nmi_by_hand(self):
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1])
    # Joint: (0,0) 1/2, (0,1) 1/4, (1,1) 1/4; marginals pred 3/4, 1/4 and labels 1/2, 1/2.
    mi = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(2.0)
    h_labels = math.log(2.0)
    h_pred = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = mi / ((h_labels + h_pred) / 2)  # arithmetic normalization (SCAN, sklearn)
    self.assertAlmostEqual(metrics.clustering_metrics(pred, labels)["nmi"], expected)
    permuted = metrics.clustering_metrics(1 - pred, labels)["nmi"]
    self.assertAlmostEqual(permuted, expected)

  def test_nmi_ari_independent(self):
    labels = np.array([0, 0, 1, 1])
    m = metrics.clustering_metrics(np.array([0, 1, 0, 1]), labels)
    self.assertAlmostEqual(m["nmi"], 0.0, places=6)
    # Pair counts: sum C(n_ij, 2) = 0, rows 2, cols 2, C(4, 2) = 6: (0 - 4/6) / (2 - 4/6).
    self.assertAlmostEqual(m["ari"], -0.5)

  def test_ari_by_hand(self):
    labels = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2])
    # sum C(n_ij,2) = 2; rows: 1 + 1 + 1 = 3; cols: 3 + 3 = 6; expected 3 * 6 / 15 = 1.2.
    expected = (2 - 1.2) / ((3 + 6) / 2 - 1.2)
    self.assertAlmostEqual(metrics.clustering_metrics(pred, labels)["ari"], expected)
    self.assertAlmostEqual(metrics.clustering_metrics(2 - pred, labels)["ari"], expected)

  def test_bad_input_is_explained(self):
    with self.assertRaisesRegex(ValueError, "equal length"):
      metrics.clustering_accuracy(np.array([0, 1]), np.array([0, 1, 2]))
    with self.assertRaisesRegex(ValueError, "non-negative"):
      metrics.clustering_accuracy(np.array([0, -1]), np.array([0, 1]))


def _brute_force_knn(train, train_labels, test, num_classes, k, temperature):
  """Class scores of the weighted kNN, the plainest way: full similarity matrix, argsort."""
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  ts = test / np.linalg.norm(test, axis=1, keepdims=True)
  scores = np.zeros((len(test), num_classes))
  for i, row in enumerate(ts @ tn.T):
    top = np.argsort(-row)[:k]
    np.add.at(scores[i], train_labels[top], np.exp(row[top] / temperature))
  return scores


class KnnTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(chunk_size=65536, batch_size=256),  # one chunk, one batch
      dict(chunk_size=37, batch_size=16),      # chunks smaller than k, ragged last chunk/batch
  )
  def test_matches_brute_force(self, chunk_size, batch_size):
    rng = np.random.default_rng(0)
    num_classes = 7
    train, test = rng.normal(size=(300, 16)), rng.normal(size=(50, 16))
    train_labels = rng.integers(0, num_classes, 300)
    ranked = metrics.knn_rank(train, train_labels, test, num_classes, ks=(20, 200),
                              temperature=0.07, num_ranked=5, batch_size=batch_size,
                              chunk_size=chunk_size)
    self.assertEqual(set(ranked), {20, 200})
    for k in (20, 200):
      scores = _brute_force_knn(train, train_labels, test, num_classes, k, 0.07)
      np.testing.assert_array_equal(ranked[k], np.argsort(-scores, axis=1)[:, :5])
    got = metrics.knn_predict(train, train_labels, test, num_classes, k=20,
                              chunk_size=chunk_size, batch_size=batch_size)
    np.testing.assert_array_equal(got, ranked[20][:, 0])

  def test_accuracy_top1_top5(self):
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(120, 8)), rng.normal(size=(40, 8))
    train_labels, test_labels = rng.integers(0, 10, 120), rng.integers(0, 10, 40)
    result = metrics.knn_accuracy(train, train_labels, test, test_labels, 10, ks=(20,),
                                  chunk_size=50)
    scores = _brute_force_knn(train, train_labels, test, 10, 20, 0.07)
    order = np.argsort(-scores, axis=1)
    self.assertAlmostEqual(result["k20"]["top1"], np.mean(order[:, 0] == test_labels))
    self.assertAlmostEqual(result["k20"]["top5"],
                           np.mean([y in row[:5] for y, row in zip(test_labels, order)]))

  def test_clustered_features_are_classified_exactly(self):
    # Three tight, well separated groups: every test point's neighbours share its class.
    rng = np.random.default_rng(2)
    centers = np.eye(3, 6) * 10
    labels = np.repeat(np.arange(3), 30)
    train = centers[labels] + rng.normal(scale=0.1, size=(90, 6))
    test_labels = np.array([2, 0, 1, 1])
    test = centers[test_labels] + rng.normal(scale=0.1, size=(4, 6))
    got = metrics.knn_predict(train, labels, test, 3, k=20, chunk_size=7)
    np.testing.assert_array_equal(got, test_labels)

  def test_k_larger_than_the_bank_uses_the_whole_bank(self):
    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(30, 4)), rng.normal(size=(5, 4))
    train_labels = rng.integers(0, 3, 30)
    ranked = metrics.knn_rank(train, train_labels, test, 3, ks=(200,), num_ranked=3,
                              chunk_size=8)
    scores = _brute_force_knn(train, train_labels, test, 3, 30, 0.07)
    np.testing.assert_array_equal(ranked[30], np.argsort(-scores, axis=1))


if __name__ == "__main__":
  absltest.main()
