"""Clustering and retrieval metrics on predicted clusters and backbone features.

Clustering (the SCAN protocol of supp. Tables 9/10: the model's own cluster
predictions on the held-out split, no fine-tuning): ACC under the best
one-to-one cluster-to-class match (Hungarian), NMI, ARI, and for heads with
more clusters than classes the majority-vote accuracy.

Retrieval: the weighted kNN classifier of NPID/DINO (cosine similarity, votes
exp(s / T)), computed in chunks of the train bank so that ImageNet's 1.28M
train features need neither a [test, train] similarity matrix nor the whole
bank on the device at once.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from sklearn import metrics as sk_metrics


def contingency(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[num_clusters, num_classes] co-occurrence counts."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape or pred.ndim != 1:
    raise ValueError(f"pred and labels must be 1-D and of equal length; got shapes {pred.shape} "
                     f"and {labels.shape}.")
  if len(pred) == 0 or pred.min() < 0 or labels.min() < 0:
    raise ValueError("pred and labels must be non-empty arrays of non-negative ids.")
  table = np.zeros((pred.max() + 1, labels.max() + 1), np.int64)
  np.add.at(table, (pred, labels), 1)
  return table


def clustering_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """ACC: accuracy under the best one-to-one match of clusters to classes (Hungarian).

  With more clusters than classes the unmatched clusters count as errors, so
  ACC of an over-clustered head is at most (matched examples) / N; see
  `majority_accuracy` for such heads.
  """
  table = contingency(pred, labels)
  rows, cols = optimize.linear_sum_assignment(table, maximize=True)
  return float(table[rows, cols].sum() / len(labels))


def majority_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy when each cluster predicts its most frequent class (for over-clustering)."""
  table = contingency(pred, labels)
  return float(table.max(axis=1).sum() / len(labels))


def clustering_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """ACC, NMI (arithmetic normalization, as SCAN reports it), ARI, AMI (Self-Classifier's
  Table 2 reports it) and majority-vote accuracy."""
  return {
      "acc": clustering_accuracy(pred, labels),
      "nmi": float(sk_metrics.normalized_mutual_info_score(labels, pred)),
      "ari": float(sk_metrics.adjusted_rand_score(labels, pred)),
      "ami": float(sk_metrics.adjusted_mutual_info_score(labels, pred)),
      "majority_acc": majority_accuracy(pred, labels),
  }


def _l2_normalize(x):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _merge_chunk(best_sims, best_labels, test, bank, bank_labels):
  """Running top-k of every test row against one chunk of the bank.

  best_*: [nb, b, k]; test: [nb, b, D] (unit-norm); bank: [c, D] (unit-norm);
  bank_labels: [c] with -1 marking padding rows, which can never be chosen.
  """
  k = best_sims.shape[-1]

  def one_batch(args):
    sims0, labels0, t = args
    sims = t @ bank.T                                            # [b, c]
    sims = jnp.where(bank_labels[None] >= 0, sims, -jnp.inf)
    s, idx = jax.lax.top_k(sims, min(k, sims.shape[-1]))
    sims = jnp.concatenate([sims0, s], axis=-1)
    labels = jnp.concatenate([labels0, bank_labels[idx]], axis=-1)
    s, idx = jax.lax.top_k(sims, k)
    return s, jnp.take_along_axis(labels, idx, axis=-1)

  return jax.lax.map(one_batch, (best_sims, best_labels, test))


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "num_ranked"))
def _vote(best_sims, best_labels, *, k, num_classes, temperature, num_ranked):
  """Classes ranked by the summed weights exp(s / T) of the k nearest, [nb, b, num_ranked]."""

  def one_batch(args):
    sims, labels = args                                          # [b, k]
    weights = jnp.where(labels >= 0, jnp.exp(sims / temperature), 0.0)
    rows = jnp.broadcast_to(jnp.arange(sims.shape[0])[:, None], labels.shape)
    scores = jnp.zeros((sims.shape[0], num_classes), jnp.float32).at[
        rows, jnp.maximum(labels, 0)].add(weights)
    return jax.lax.top_k(scores, num_ranked)[1]

  return jax.lax.map(one_batch, (best_sims[..., :k], best_labels[..., :k]))


def knn_rank(train_features, train_labels, test_features, num_classes: int,
             ks: Sequence[int] = (20, 200), temperature: float = 0.07, num_ranked: int = 5,
             batch_size: int = 256, chunk_size: int = 65536) -> dict[int, np.ndarray]:
  """Weighted kNN on cosine similarity (NPID/DINO): for each k, the classes ranked by

    score_c(x) = sum over the k train features f_j most similar to x with label c
                 of exp(cos(x, f_j) / T),

  as [num_test, num_ranked] class ids, best first (column 0 is the prediction).

  The train bank streams through the device in chunks of `chunk_size` rows
  while a running top-max(ks) of every test row stays on the device, so memory
  is O(chunk * D + num_test * (D + max(ks))) whatever the bank size; each
  chunk is moved to the device once.
  """
  test_features = np.asarray(test_features, np.float32)
  train_labels = np.asarray(train_labels, np.int32)
  num_train, num_test = len(train_labels), len(test_features)
  if num_train == 0 or num_test == 0:
    raise ValueError(f"kNN needs train and test features; got {num_train} and {num_test}.")
  ks = sorted({min(int(k), num_train) for k in ks})
  k_max, num_ranked = ks[-1], min(num_ranked, num_classes)
  chunk_size = min(chunk_size, num_train)

  num_batches = -(-num_test // batch_size)
  padded = np.zeros((num_batches * batch_size, test_features.shape[1]), np.float32)
  padded[:num_test] = test_features
  test = _l2_normalize(jnp.asarray(padded)).reshape(num_batches, batch_size, -1)
  best_sims = jnp.full((num_batches, batch_size, k_max), -jnp.inf, jnp.float32)
  best_labels = jnp.full((num_batches, batch_size, k_max), -1, jnp.int32)
  for start in range(0, num_train, chunk_size):
    bank = np.zeros((chunk_size, test_features.shape[1]), np.float32)
    bank_labels = np.full((chunk_size,), -1, np.int32)  # the last chunk is padded
    rows = slice(start, min(start + chunk_size, num_train))
    bank[:rows.stop - start] = np.asarray(train_features[rows], np.float32)
    bank_labels[:rows.stop - start] = train_labels[rows]
    best_sims, best_labels = _merge_chunk(best_sims, best_labels, test,
                                          _l2_normalize(jnp.asarray(bank)),
                                          jnp.asarray(bank_labels))
  return {k: np.asarray(_vote(best_sims, best_labels, k=k, num_classes=num_classes,
                              temperature=temperature, num_ranked=num_ranked)
                        ).reshape(-1, num_ranked)[:num_test]
          for k in ks}


def knn_predict(train_features, train_labels, test_features, num_classes: int, k: int = 20,
                temperature: float = 0.07, batch_size: int = 256,
                chunk_size: int = 65536) -> np.ndarray:
  """The weighted-kNN class of every test feature, [num_test]."""
  ranked = knn_rank(train_features, train_labels, test_features, num_classes, (k,), temperature,
                    1, batch_size, chunk_size)
  return next(iter(ranked.values()))[:, 0]


def topk_accuracy(ranked: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Share of rows whose label is among the first k columns of `ranked` [N, >= k]."""
  return float(np.mean(np.any(ranked[:, :k] == np.asarray(labels)[:, None], axis=1)))


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 ks: Sequence[int] = (20, 200), temperature: float = 0.07,
                 chunk_size: int = 65536) -> dict[str, dict[str, float]]:
  """{"k20": {"top1": ..., "top5": ...}, ...} of the weighted kNN classifier."""
  ranked = knn_rank(train_features, train_labels, test_features, num_classes, ks, temperature,
                    5, chunk_size=chunk_size)
  return {f"k{k}": {"top1": topk_accuracy(r, test_labels, 1),
                    "top5": topk_accuracy(r, test_labels, 5)} for k, r in ranked.items()}
