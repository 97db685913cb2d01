"""Clustering and retrieval metrics on predicted clusters and backbone features."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from sklearn import metrics as sk_metrics


def contingency(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[num_clusters, num_classes] co-occurrence counts."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  table = np.zeros((pred.max() + 1, labels.max() + 1), np.int64)
  np.add.at(table, (pred, labels), 1)
  return table


def clustering_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """ACC: accuracy under the best one-to-one match of clusters to classes (Hungarian).

  Clusters left unmatched (when there are more clusters than classes) count as errors.
  """
  table = contingency(pred, labels)
  rows, cols = optimize.linear_sum_assignment(table, maximize=True)
  return float(table[rows, cols].sum() / len(labels))


def majority_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy when each cluster predicts its most frequent class (for over-clustering)."""
  table = contingency(pred, labels)
  return float(table.max(axis=1).sum() / len(labels))


def clustering_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  return {
      "acc": clustering_accuracy(pred, labels),
      "nmi": float(sk_metrics.normalized_mutual_info_score(labels, pred)),
      "ari": float(sk_metrics.adjusted_rand_score(labels, pred)),
      "majority_acc": majority_accuracy(pred, labels),
  }


def knn_predict(train_features, train_labels, test_features, num_classes: int, k: int = 20,
                temperature: float = 0.07, batch_size: int = 1024) -> np.ndarray:
  """Weighted kNN on cosine similarity (NPID/DINO protocol): class scores sum exp(s / T).

  Works through the test set in batches, so the train bank can be large.
  """
  train = jnp.asarray(train_features, jnp.float32)
  train = train / jnp.maximum(jnp.linalg.norm(train, axis=1, keepdims=True), 1e-12)
  onehot = jax.nn.one_hot(jnp.asarray(train_labels), num_classes)
  k = min(k, train.shape[0])

  @jax.jit
  def predict(test):
    test = test / jnp.maximum(jnp.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    sims, idx = jax.lax.top_k(test @ train.T, k)           # [b, k]
    votes = jnp.exp(sims / temperature)[..., None] * onehot[idx]  # [b, k, C]
    return jnp.argmax(jnp.sum(votes, axis=1), axis=-1)

  test_features = np.asarray(test_features, np.float32)
  out = [np.asarray(predict(jnp.asarray(test_features[s:s + batch_size])))
         for s in range(0, len(test_features), batch_size)]
  return np.concatenate(out)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> float:
  pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
  return float(np.mean(pred == np.asarray(test_labels)))
