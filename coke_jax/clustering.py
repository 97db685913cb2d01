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
devices); none knows about devices or the training loop. Weights of 0 mark
padding rows that must not count anywhere.

The file reads top to bottom like Sec. 3: the assignment and its dual (3.2.1),
the centers (3.2.2), the losses (3.3), the moving average of the second stage
(3.4, supp. 2.2.2), one mini-batch of Alg. 1 and the collapse diagnostics.
The standalone estimator `CoKeKMeans` (built from these same functions), the
epoch over a fixed data set and the exact LP of Eq. 6 are in `coke_jax.kmeans`.
"""

from typing import NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Projection onto the unit sphere, the Pi_{||c||=1} of Eqs. 10 and 11."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def full_precision(x: jax.Array) -> jax.Array:
  """`x` in the precision the clustering math runs in: float32 for a bfloat16 (or float32)
  network, float64 when the whole step runs in float64 (the device-count equivalence tests)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def similarities(x: jax.Array, centers: jax.Array) -> jax.Array:
  """s_ik = x_i^T c_k in full precision whatever the compute dtype: [..., D] x [K, D] -> [..., K].

  For two views, Eq. 15 averages the views' similarities, which equals the
  similarity of the mean vector: pass `x.mean(0)` (Alg. 2's `x_mean`).
  """
  return jnp.einsum("...d,kd->...k", full_precision(x), full_precision(centers))


# --- Sec. 3.2.1: online assignment and its dual variables -----------------------------------


def min_size_fractions(num_clusters: int, min_size_ratio) -> np.ndarray:
  """gamma_k / N for every cluster, [K] float32, from gamma' (Sec. 4: gamma_k = gamma' N / K).

  `min_size_ratio` is gamma', a scalar in [0, 1] (1 is balanced clustering),
  or one gamma'_k per cluster (Eq. 5 allows a different bound per cluster),
  each >= 0 with mean <= 1 so that sum_k gamma_k <= N (the constraints of
  Eq. 5 can only all hold if the bounds add up to at most N).
  """
  ratio = np.asarray(min_size_ratio, np.float64)
  if ratio.ndim == 0:
    if not 0.0 <= float(ratio) <= 1.0:
      raise ValueError(f"min_size_ratio (gamma') is {float(ratio)}; it must be in [0, 1]: "
                       "gamma_k = gamma' N / K, 1 is balanced clustering, the paper uses 0.4.")
    ratio = np.full((num_clusters,), float(ratio))
  elif ratio.shape != (num_clusters,):
    raise ValueError(f"per-cluster min_size_ratio has shape {ratio.shape}; it must be a scalar "
                     f"or hold one gamma'_k per cluster, shape ({num_clusters},).")
  if not np.all(np.isfinite(ratio)) or np.any(ratio < 0) or ratio.mean() > 1.0 + 1e-9:
    raise ValueError(f"per-cluster min_size_ratio must be finite and >= 0 with mean <= 1 "
                     f"(sum_k gamma_k <= N); got min {ratio.min()}, mean {ratio.mean()}.")
  return (ratio / num_clusters).astype(np.float32)


def default_dual_lr(num_clusters: int, batch_size: int, num_examples: int,
                    scale: float = 0.1, max_step: float = 0.1) -> float:
  """A rule for the dual step eta of Eq. 9: eta = K * min(scale * b / sqrt(N), max_step).

  Why each factor (measured in benchmarks/online_vs_lp.py, docs/clustering.md):
    K        the gradient n_k / b - gamma_k / N of one dual is O(1 / K), so eta
             must grow with K for rho to move the same distance in similarity
             units (the paper: eta = 20 at K = 3000, 0.1 at K <= 200).
    b        the mini-batch gradient is the mean of b per-example gradients:
             eta / b is the per-example step, which is what matters once the
             duals have warmed up from 0 (the eta table collapses in c = eta
             sqrt(N) / (K b) at small c for b = 32 and 256).
    sqrt(N)  Theorem 1's step, eta = tau / sqrt(2 N) per example: the regret
             and the violation are then O(sqrt N). N is the number of examples
             the duals see: the data size times the number of passes.
    max_step a safety cap for few, large batches (N < 100 b^2): every example
             of a batch sees the same rho, and a step much above 0.1 K makes the
             duals overshoot (89% of the LP optimum at eta = 3.3, K = 10, b = 256).
  With scale 0.1 one pass over 54k digits (K = 10, gamma' = 0.9) reaches
  99.9% (b = 32) and 99.3% (b = 256) of the exact LP optimum with a violation
  below 1% of gamma. Larger scales trade objective for violation.
  Counting all examples of a run, the paper's settings come out in the same
  range: K = 3000, b = 1024, N = 1.28M x 200 epochs gives 19 (the paper: 20).
  """
  return num_clusters * min(scale * batch_size / float(np.sqrt(num_examples)), max_step)


def assign(sims: jax.Array, dual: jax.Array) -> jax.Array:
  """Eq. 8 (Eq. 16 in the appendix): mu_i = one-hot of argmax_k s_ik + rho_k.

  Returns the labels [B] (int32); the one-hot vectors are never materialized.
  """
  return jnp.argmax(sims + dual[None, :], axis=-1).astype(jnp.int32)


def cluster_counts(labels: jax.Array, weights: jax.Array, num_clusters: int) -> jax.Array:
  """n_k = sum_i w_i mu_ik: the weighted size of each cluster in a batch, [K]."""
  return jax.ops.segment_sum(full_precision(weights), labels, num_segments=num_clusters)


def project_dual(rho: jax.Array, tau: Optional[float] = None) -> jax.Array:
  """Pi_{Delta_tau} of Eq. 9: the Euclidean projection onto {rho >= 0, ||rho||_1 <= tau}.

  With tau=None the l1 ball is dropped, which is the simplified update the
  paper runs in all experiments, rho = max(0, rho) (Sec. 4). Otherwise it is
  the projection of max(0, rho) onto the l1 ball (optax's, by Duchi et al.'s
  sort-and-threshold method): for a nonnegative point the two sets' projections agree.
  """
  rho = jnp.maximum(rho, 0.0)
  if tau is None:
    return rho
  return optax.projections.projection_l1_ball(rho, tau)


def dual_update(dual: jax.Array, counts: jax.Array, batch_weight: jax.Array,
                min_size_frac: jax.Array, lr: float, tau: Optional[float] = None) -> jax.Array:
  """Eq. 9 with the mini-batch gradient of Sec. 3.2.1:

    rho <- Pi(rho - eta * (1/b sum_s mu_s - gamma / N)).

  A cluster that received fewer than its share gamma_k/N of the batch gets a
  larger rho_k, which pulls the next examples towards it.

  When the bounds add up to N (gamma' = 1, balanced clustering) every
  constraint of Eq. 5 must hold with equality, and the dual of an equality
  constraint is free: rho is then not projected, as in the official code at
  ratio 1. This lets an over-full cluster's rho fall below 0 and roughly
  halves the violation at gamma' = 1 (docs/clustering.md). With an l1 radius
  `tau` the full projection of Eq. 9 is always applied.

  Args:
    dual: rho, [K].
    counts: n_k of this batch (`cluster_counts`), [K].
    batch_weight: b, the number of real (non-padding) examples in the batch.
    min_size_frac: gamma_k / N, scalar or [K] (`min_size_fractions`).
    lr: eta, the dual step size (`default_dual_lr` gives a rule for it).
    tau: radius of the l1 ball of Eq. 9; None for the paper's max(0, .).
  """
  grad = counts / jnp.maximum(batch_weight, 1.0) - min_size_frac
  rho = dual - lr * grad
  if tau is None:  # the simplified update; with an l1 ball (tau) Eq. 9 always projects
    balanced = jnp.sum(jnp.broadcast_to(min_size_frac, dual.shape)) >= 1.0 - 1e-4
    rho = jnp.where(balanced, rho, project_dual(rho))
  else:
    rho = project_dual(rho, tau)
  # An all-padding batch (b = 0) carries no information and leaves rho as is.
  return jnp.where(batch_weight > 0, rho, dual)


# --- Sec. 3.2.2: centers ----------------------------------------------------------------------


def accumulate_centers(centers_sum: jax.Array, counts: jax.Array, x: jax.Array,
                       labels: jax.Array, weights: jax.Array):
  """Adds one batch's members to the running sums of Eq. 11 (and Eq. 10 at epoch end).

  Returns (centers_sum [K, D], counts [K]) with the batch added; `x` is [B, D]
  (the mean over views for two views, as in Alg. 2).
  """
  num_clusters = centers_sum.shape[0]
  x = full_precision(x)
  weights = full_precision(weights)
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


# --- Sec. 3.3: the discrimination loss --------------------------------------------------------


def soft_targets(label_dist: jax.Array, reference_probs: Optional[jax.Array],
                 alpha: float) -> jax.Array:
  """The two-view soft label of Sec. 3.4 and Alg. 2, [B, K]:

    y_hat_{i:1} = alpha * y_i^{t-1} + (1 - alpha) * p_{i:2}^{t-1},

  where y_i^{t-1} is the one-hot label of the last epoch (`label_dist`, or the
  averaged label of the second stage, Eq. 14) and p_{i:2} = softmax(x_i^{2T}
  C^{t-1} / lambda) is the other view's projection-head prediction
  (`reference_probs`), under stop-gradient. With more views, or for the small
  crops of multi-crop, the caller passes the mean of the other (large) views'
  predictions. With no reference (one view) the target is `label_dist` (Eq. 12).
  """
  if reference_probs is None:
    return label_dist
  return alpha * label_dist + (1.0 - alpha) * lax.stop_gradient(reference_probs)


def normalized_softmax_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Eq. 12 (one-hot targets) and Eq. 14 (soft targets), per example [B].

  `logits` are x_i^T c_k^{t-1} / lambda with unit-norm x and c.
  """
  log_probs = jax.nn.log_softmax(full_precision(logits), axis=-1)
  return -jnp.sum(targets * log_probs, axis=-1)


# --- Sec. 3.4 and supp. 2.2.2: the moving average of the second stage -----------------------


def average_factor(epoch: jax.Array, average_after: Optional[int]) -> jax.Array:
  """1 / (t - T') of Eq. 13 for epoch t > T'; 1 (no averaging: keep epoch t) for t <= T'."""
  if average_after is None:
    return jnp.float32(1.0)
  return 1.0 / jnp.maximum(epoch - average_after, 1).astype(jnp.float32)


def average_centers(averaged: jax.Array, centers: jax.Array, factor: jax.Array) -> jax.Array:
  """Eq. 13 for the centers, C_hat^t = (1 - f) C_hat^{t-1} + f C^t, back on the sphere.

  Each center is renormalized as the classifier of Eq. 14 needs unit norm (the
  official code does the same).
  """
  return l2_normalize((1.0 - factor) * averaged + factor * centers)


def average_sparse_labels(ids: jax.Array, weights: jax.Array, labels: jax.Array,
                          factor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eq. 13 for the labels, y_hat^t = (1 - f) y_hat^{t-1} + f onehot(y^t), kept to S entries.

  Supp. 2.2.2 keeps S = 5 non-zero entries per example, so the table is
  `ids` [N, S] int32 (cluster of each entry) and `weights` [N, S] (its weight;
  0 marks an unused slot), O(N S) memory. If y^t is already an entry it gains
  f; otherwise it replaces the lightest entry, whose weight is dropped, and
  the remaining entries are rescaled so the weights keep summing to 1 (the
  bookkeeping of the official single-view code). With f = 1 the table becomes
  the one-hot y^t.
  """
  present = (ids == labels[:, None]) & (weights > 0)                          # [N, S]
  found = jnp.any(present, axis=1)
  slot = jnp.where(found, jnp.argmax(present, axis=1), jnp.argmin(weights, axis=1))
  slot_mask = jax.nn.one_hot(slot, ids.shape[1], dtype=jnp.bool_)
  evicted = jnp.where(found, 0.0, jnp.sum(jnp.where(slot_mask, weights, 0.0), axis=1))
  kept = jnp.where(slot_mask & ~found[:, None], 0.0, weights)
  # Rescale the surviving mass 1 - evicted to 1 - f; a fully evicted row has nothing to rescale.
  scale = jnp.where(evicted < 1.0, (1.0 - factor) / jnp.maximum(1.0 - evicted, 1e-12), 0.0)
  weights = kept * scale[:, None] + jnp.where(slot_mask, factor, 0.0)
  ids = jnp.where(slot_mask, labels[:, None], ids)
  return ids, weights


def sparse_soft_labels(ids: jax.Array, weights: jax.Array, num_clusters: int,
                       temperature: float) -> jax.Array:
  """The dense [B, K] target of Eq. 14 from a sparse averaged label (supp. 2.2.2):

    y_ik = exp(y_hat_ik / lambda') / Z over the non-zero entries, 0 elsewhere.

  `temperature` is lambda' (0.5 in the paper). A one-hot row stays one-hot.
  """
  weights = full_precision(weights)
  dense = jnp.zeros((ids.shape[0], num_clusters), weights.dtype)
  dense = dense.at[jnp.arange(ids.shape[0])[:, None], ids].add(weights)
  logits = jnp.where(dense > 0, dense / temperature, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


# --- Alg. 1: one mini-batch and one epoch ----------------------------------------------------


class OnlineState(NamedTuple):
  """What Alg. 1 carries from one mini-batch to the next, for one clustering."""
  centers: jax.Array      # [K, D] the centers the assignment uses
  centers_sum: jax.Array  # [K, D] sum of this epoch's members (Eqs. 10/11)
  counts: jax.Array       # [K] float32, this epoch's cluster sizes so far
  dual: jax.Array         # [K] rho, kept across epochs


def init_online_state(centers: jax.Array) -> OnlineState:
  centers = centers.astype(jnp.float32)
  return OnlineState(centers=centers, centers_sum=jnp.zeros_like(centers),
                     counts=jnp.zeros(centers.shape[:1], jnp.float32),
                     dual=jnp.zeros(centers.shape[:1], jnp.float32))


def online_step(state: OnlineState, x: jax.Array, weights: jax.Array, *,
                min_size_frac: jax.Array, dual_lr: float, dual_l1_radius: Optional[float] = None,
                batch_centers: Union[bool, jax.Array] = True) -> tuple[OnlineState, jax.Array]:
  """One mini-batch of Alg. 1: assignment (Eq. 8), duals (Eq. 9), centers (Eq. 11 or 10).

  Args:
    state: the clustering carried over from the previous mini-batch.
    x: [B, D] unit-norm embeddings (for two views, their mean: Eq. 15).
    weights: [B], 0 for padding rows.
    min_size_frac: gamma_k / N, scalar or [K].
    dual_lr, dual_l1_radius: eta and tau of Eq. 9.
    batch_centers: True (or a traced bool) for the per-mini-batch running
      centers of Eq. 11; False keeps the centers fixed for the epoch and only
      accumulates the sums for Eq. 10 (`epoch_centers` at the epoch's end).

  Returns the new state and the labels [B] of this batch.
  """
  num_clusters = state.centers.shape[0]
  labels = assign(similarities(x, state.centers), state.dual)
  batch_counts = cluster_counts(labels, weights, num_clusters)
  dual = dual_update(state.dual, batch_counts, jnp.sum(full_precision(weights)),
                     min_size_frac, dual_lr, dual_l1_radius)
  centers_sum, counts = accumulate_centers(state.centers_sum, state.counts, x, labels, weights)
  centers = jnp.where(batch_centers, centers_from_sums(centers_sum, counts, state.centers),
                      state.centers)
  return OnlineState(centers, centers_sum, counts, dual), labels


def epoch_centers(state: OnlineState) -> jax.Array:
  """C^t at the end of an epoch: Eq. 10 from the epoch's sums (which equals the last
  running center of Eq. 11); a cluster with no member this epoch keeps its center."""
  return centers_from_sums(state.centers_sum, state.counts, state.centers)


def start_epoch(state: OnlineState, centers: jax.Array) -> OnlineState:
  """The next epoch starts from `centers` with empty sums; the duals carry over (Alg. 1)."""
  return state._replace(centers=centers, centers_sum=jnp.zeros_like(state.centers_sum),
                        counts=jnp.zeros_like(state.counts))


# --- Diagnostics --------------------------------------------------------------------------------


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
      "violation": jnp.max(min_size - counts),  # V of Sec. 3.2.1 (negative: all bounds met)
      # max_k (gamma_k - n_k)+ / gamma_k: the violation as a fraction of the bound
      "relative_violation": jnp.max(jnp.maximum(min_size - counts, 0.0)
                                    / jnp.maximum(min_size, 1e-12)),
      "largest_share": jnp.max(counts) / total,
      "num_empty": jnp.sum(counts == 0),
  }
