"""Online constrained k-means: the clustering half of CoKe (Qian et al., CVPR 2022, Sec. 3).

Pure functions of arrays, written to be read beside the paper. Notation:

  x_i        unit-norm embedding of example i                       [B, D]
  c_k        unit-norm center of cluster k                          [K, D]
  s_ik       similarity x_i^T c_k (Sec. 3.2.1)                      [B, K]
  mu_i       assignment of example i, one-hot over clusters (Eq. 8)
  rho_k      dual variable of the constraint sum_i mu_ik >= gamma_k  [K]
  gamma_k/N  lower bound on cluster k's share of the data (Eq. 5); the
             paper's common choice is gamma' / K for every k (Sec. 4).

Every function works on one mini-batch (or one global batch assembled from all
devices); none knows about devices, epochs or the training loop. Weights of 0
mark padding rows that must not count anywhere.
"""

from typing import Optional

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Projection onto the unit sphere, the Pi_{||c||=1} of Eqs. 10 and 11."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def similarities(x: jax.Array, centers: jax.Array) -> jax.Array:
  """s_ik = x_i^T c_k in float32 whatever the compute dtype: [..., D] x [K, D] -> [..., K].

  For two views, Eq. 15 averages the views' similarities, which equals the
  similarity of the mean vector: pass `x.mean(0)` (Alg. 2's `x_mean`).
  """
  return jnp.einsum("...d,kd->...k", x.astype(jnp.float32), centers.astype(jnp.float32))


def assign(sims: jax.Array, dual: jax.Array) -> jax.Array:
  """Eq. 8 (Eq. 16 in the appendix): mu_i = one-hot of argmax_k s_ik + rho_k.

  Returns the labels [B] (int32); the one-hot vectors are never materialized.
  """
  return jnp.argmax(sims + dual[None, :], axis=-1).astype(jnp.int32)


def cluster_counts(labels: jax.Array, weights: jax.Array, num_clusters: int) -> jax.Array:
  """n_k = sum_i w_i mu_ik: the weighted size of each cluster in a batch, [K]."""
  return jax.ops.segment_sum(weights, labels, num_segments=num_clusters)


def project_dual(rho: jax.Array, tau: Optional[float] = None) -> jax.Array:
  """Pi_{Delta_tau} of Eq. 9: the Euclidean projection onto {rho >= 0, ||rho||_1 <= tau}.

  With tau=None the l1 ball is dropped, which is the simplified update the
  paper runs in all experiments, rho = max(0, rho) (Sec. 4).
  """
  rho = jnp.maximum(rho, 0.0)
  if tau is None:
    return rho
  # If the positive part is already inside the l1 ball it is the projection;
  # otherwise the projection lies on the simplex {rho >= 0, sum rho = tau},
  # found by the sort-and-threshold method (Duchi et al., ICML 2008).
  u = jnp.sort(rho)[::-1]
  cssv = jnp.cumsum(u) - tau
  ind = jnp.arange(1, rho.shape[0] + 1, dtype=rho.dtype)
  cond = u - cssv / ind > 0
  r = jnp.max(jnp.where(cond, ind, 0.0))
  theta = jnp.sum(jnp.where(ind <= r, u, 0.0)) / jnp.maximum(r, 1.0) - tau / jnp.maximum(r, 1.0)
  on_simplex = jnp.maximum(rho - theta, 0.0)
  return jnp.where(jnp.sum(rho) <= tau, rho, on_simplex)


def dual_update(dual: jax.Array, counts: jax.Array, batch_weight: jax.Array,
                min_size_frac: jax.Array, lr: float, tau: Optional[float] = None) -> jax.Array:
  """Eq. 9 with the mini-batch gradient of Sec. 3.2.1:

    rho <- Pi(rho - eta * (1/b sum_s mu_s - gamma / N)).

  A cluster that received fewer than its share gamma_k/N of the batch gets a
  larger rho_k, which pulls the next examples towards it.

  Args:
    dual: rho, [K].
    counts: n_k of this batch (`cluster_counts`), [K].
    batch_weight: b, the number of real (non-padding) examples in the batch.
    min_size_frac: gamma_k / N, scalar or [K].
    lr: eta, the dual step size.
    tau: radius of the l1 ball of Eq. 9; None for the paper's max(0, .).
  """
  grad = counts / jnp.maximum(batch_weight, 1.0) - min_size_frac
  return project_dual(dual - lr * grad, tau)


def accumulate_centers(centers_sum: jax.Array, counts: jax.Array, x: jax.Array,
                       labels: jax.Array, weights: jax.Array):
  """Adds one batch's members to the running sums of Eq. 11 (and Eq. 10 at epoch end).

  Returns (centers_sum [K, D], counts [K]) with the batch added; `x` is [B, D]
  (the mean over views for two views, as in Alg. 2).
  """
  num_clusters = centers_sum.shape[0]
  x = x.astype(jnp.float32)
  centers_sum = centers_sum + jax.ops.segment_sum(
      x * weights[:, None], labels, num_segments=num_clusters)
  counts = counts + cluster_counts(labels, weights, num_clusters)
  return centers_sum, counts


def centers_from_sums(centers_sum: jax.Array, counts: jax.Array, fallback: jax.Array) -> jax.Array:
  """Eqs. 10/11: c_k = Pi_{||c||=1}(sum_i mu_ik x_i / sum_i mu_ik).

  Clusters with no member yet keep `fallback` (their previous center).
  The division by the count is dropped since the projection removes it.
  """
  return jnp.where((counts > 0)[:, None], l2_normalize(centers_sum), fallback)


def soft_targets(labels: jax.Array, num_clusters: int, reference_probs: Optional[jax.Array],
                 alpha: float) -> jax.Array:
  """The two-view soft label of Sec. 3.4 and Alg. 2, [B, K]:

    y_hat_{i:1} = alpha * onehot(y_i^{t-1}) + (1 - alpha) * p_{i:2}^{t-1},

  where p_{i:2} = softmax(x_i^{2T} C^{t-1} / lambda) is the other view's
  prediction (`reference_probs`), under stop-gradient. With more than two views
  the caller passes the mean of the other views' predictions. With no
  reference (one view) the target is the one-hot label of Eq. 12.
  """
  onehot = jax.nn.one_hot(labels, num_clusters, dtype=jnp.float32)
  if reference_probs is None:
    return onehot
  return alpha * onehot + (1.0 - alpha) * jax.lax.stop_gradient(reference_probs)


def normalized_softmax_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Eq. 12 (one-hot targets) and Eq. 14 (soft targets), per example [B].

  `logits` are x_i^T c_k^{t-1} / lambda with unit-norm x and c.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets * log_probs, axis=-1)


def size_diagnostics(counts: jax.Array, min_size: jax.Array) -> dict[str, jax.Array]:
  """Collapse diagnostics of one epoch's clustering (the columns of Table 1).

  Args:
    counts: n_k, the number of examples assigned to each cluster, [K].
    min_size: gamma_k, the lower bound in examples, scalar or [K].
  """
  counts = counts.astype(jnp.float32)
  min_size = jnp.broadcast_to(jnp.asarray(min_size, jnp.float32), counts.shape)
  total = jnp.maximum(jnp.sum(counts), 1.0)
  return {
      "min_size": jnp.min(counts),
      "max_size": jnp.max(counts),
      "bound": jnp.min(min_size),
      "num_under_bound": jnp.sum(counts < min_size),
      "violation": jnp.max(min_size - counts),  # V of Sec. 3.2.1
      "largest_share": jnp.max(counts) / total,
      "num_empty": jnp.sum(counts == 0),
  }
