"""CoKe as a clustering method: `CoKeKMeans`, a scikit-learn estimator, and the exact LP.

Alg. 1 of Qian et al. (CVPR 2022) run over a fixed data set: k-means++ seeds,
then passes in random order of the online assignment (Eq. 8), the dual step
(Eq. 9) and the center update (Eq. 11 or 10), all built from the pure
functions of `coke_jax.clustering` that the trainer uses. `CoKeKMeans`
inherits scikit-learn's `BaseEstimator` and `ClusterMixin`, validates its
input with scikit-learn's helpers and passes `check_estimator`, so `clone`,
`Pipeline`, `GridSearchCV` and `set_params` work with it.

Last, `solve_assignment_lp` solves Eq. 6 exactly: the optimum the online
assignment is measured against (Theorem 1; tests and benchmarks).
"""

import functools
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from sklearn import base as sk_base
from sklearn.utils import validation as sk_validation

from coke_jax import clustering

# --- Alg. 1 over a fixed data set: one epoch -------------------------------------------------


def batch_plan(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A random order cut into mini-batches: (index, weight), each [ceil(N / b), b].

  The last batch is filled up with examples from the start of the order with
  weight 0, like the trainer's input pipeline.
  """
  steps = -(-num_examples // batch_size)
  order = jax.random.permutation(key, num_examples).astype(jnp.int32)
  index = jnp.resize(order, (steps * batch_size,)).reshape(steps, batch_size)
  weight = (jnp.arange(steps * batch_size) < num_examples).astype(jnp.float32)
  return index, weight.reshape(steps, batch_size)


def online_epoch(state: clustering.OnlineState, x: jax.Array, index: jax.Array,
                 weight: jax.Array, **step_kwargs) -> tuple[clustering.OnlineState, jax.Array]:
  """One pass of Alg. 1 over unit-norm `x` [N, D] in the order `index` [T, b] (`batch_plan`).

  Returns the state after the last mini-batch (call `clustering.epoch_centers`
  and `clustering.start_epoch` before the next pass) and the labels [N] of
  this epoch. `step_kwargs` go to `clustering.online_step`.
  """

  def body(state, batch):
    batch_index, batch_weight = batch
    state, labels = clustering.online_step(state, x[batch_index], batch_weight, **step_kwargs)
    return state, labels

  state, labels = lax.scan(body, state, (index, weight))
  num_examples = x.shape[0]
  write = jnp.where(weight > 0, index, num_examples).reshape(-1)  # padding is dropped
  table = jnp.zeros((num_examples,), jnp.int32).at[write].set(labels.reshape(-1), mode="drop")
  return state, table


# --- The standalone estimator ------------------------------------------------------------------


def kmeans_plus_plus(key: jax.Array, x: jax.Array, num_clusters: int,
                     local_trials: Optional[int] = None) -> jax.Array:
  """Greedy k-means++ seeding on unit-norm rows, [K, D] (Arthur and Vassilvitskii, 2007).

  Each next center is the best of `local_trials` rows (default 2 + log K, as
  scikit-learn) drawn with probability proportional to the squared distance
  2 - 2 x^T c to the nearest center so far: the one that lowers the total
  squared distance most.
  """
  trials = local_trials or 2 + int(np.log(num_clusters))
  keys = jax.random.split(key, num_clusters)
  first = x[jax.random.randint(keys[0], (), 0, x.shape[0])]
  centers = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
  dist = jnp.maximum(2.0 - 2.0 * x @ first, 0.0)

  def body(k, carry):
    centers, dist = carry
    logits = jnp.where(dist > 0, jnp.log(jnp.maximum(dist, 1e-30)), -jnp.inf)
    # If every row coincides with a chosen center, any row will do.
    logits = jnp.where(jnp.any(dist > 0), logits, jnp.zeros_like(dist))
    candidates = jax.random.categorical(keys[k], logits, shape=(trials,))
    cand_dist = jnp.minimum(dist[:, None], jnp.maximum(2.0 - 2.0 * x @ x[candidates].T, 0.0))
    best = jnp.argmin(jnp.sum(cand_dist, axis=0))
    return centers.at[k].set(x[candidates[best]]), cand_dist[:, best]

  centers, _ = lax.fori_loop(1, num_clusters, body, (centers, dist))
  return centers


@functools.partial(jax.jit, static_argnames=("num_clusters", "batch_size", "n_epochs",
                                             "batch_centers", "init", "dual_l1_radius"))
def _fit(x, key, min_size_frac, dual_lr, *, num_clusters, batch_size, n_epochs, batch_centers,
         init, dual_l1_radius):
  """Alg. 1 over `n_epochs` random-order passes, compiled as one program."""
  x = clustering.l2_normalize(x.astype(jnp.float32))
  init_key, order_key = jax.random.split(key)
  if init == "k-means++":
    centers = kmeans_plus_plus(init_key, x, num_clusters)
  else:  # "random": K distinct rows (Alg. 1 initializes C^0 at random)
    centers = x[jax.random.choice(init_key, x.shape[0], (num_clusters,), replace=False)]
  step_kwargs = dict(min_size_frac=min_size_frac, dual_lr=dual_lr,
                     dual_l1_radius=dual_l1_radius, batch_centers=batch_centers)

  def epoch(carry, epoch_key):
    state, _ = carry
    index, weight = batch_plan(epoch_key, x.shape[0], batch_size)
    state, labels = online_epoch(state, x, index, weight, **step_kwargs)
    return (clustering.start_epoch(state, clustering.epoch_centers(state)), labels), None

  labels = jnp.zeros((x.shape[0],), jnp.int32)
  (state, labels), _ = lax.scan(epoch, (clustering.init_online_state(centers), labels),
                                jax.random.split(order_key, n_epochs))
  return state.centers, state.dual, labels


@jax.jit
def _nearest_center(x, centers):
  return jnp.argmax(clustering.similarities(clustering.l2_normalize(x.astype(jnp.float32)),
                                            centers), axis=-1)


class CoKeKMeans(sk_base.ClusterMixin, sk_base.BaseEstimator):
  """Online constrained k-means (CoKe, Alg. 1) as a scikit-learn estimator.

  Clusters rows by cosine similarity with a lower bound on every cluster's
  size: at least gamma_k = min_size_ratio * N / K examples per cluster (Eq. 5),
  met by the online dual updates of Eq. 9 up to a small violation. Rows are
  L2-normalized inside (x / ||x||; an all-zero row stays zero and joins the
  cluster with the largest dual), so this is spherical k-means: the data's
  scale is ignored, only directions count.

  `fit` runs `n_epochs` passes over the data, each in a fresh random order in
  mini-batches of `batch_size` (None: min(256, N // 64), so that an epoch
  has at least 64 dual steps): assign (Eq. 8), update the duals (Eq. 9) and
  the centers (Eq. 11 after every mini-batch, or with `center_update="epoch"`
  Eq. 10 once per epoch: a Lloyd step under the size constraint, better on
  digits, worse on a 100-cluster mixture; docs/clustering.md). Centers start
  from k-means++ seeds. The whole run is one compiled XLA program (a
  `lax.scan` over epochs and mini-batches) built from the same functions the
  trainer uses; it is compiled once per input shape and setting.

  The run is fixed by `seed` (a JAX PRNG seed; scikit-learn's `random_state`
  convention does not apply, since JAX does not draw from numpy's generator).

  Attributes after `fit`:
    labels_: [N] int, the assignments of the last epoch (they satisfy the
      size constraint up to the online violation).
    cluster_centers_: [K, D] unit-norm centers after the last epoch.
    cluster_sizes_: [K] int, the number of rows in each cluster of `labels_`.
    dual_: [K] the final dual variables rho.
    dual_lr_: the eta used (`default_dual_lr(K, b, N * n_epochs)` when dual_lr is None).
    batch_size_: the mini-batch size used.
    n_features_in_, feature_names_in_: as every scikit-learn estimator (the
      latter only for a DataFrame with string column names).

  `predict(X)` returns the nearest center of each row (cosine similarity,
  without duals), as the paper evaluates held-out data; it is not bound by
  the size constraint, so `predict(X)` on the training rows may differ from
  `labels_`.
  """

  def __init__(self, n_clusters: int, min_size_ratio=0.4, dual_lr: Optional[float] = None,
               batch_size: Optional[int] = None, n_epochs: int = 20, center_update: str = "batch",
               init: str = "k-means++", seed: int = 0):
    self.n_clusters = n_clusters
    self.min_size_ratio = min_size_ratio
    self.dual_lr = dual_lr
    self.batch_size = batch_size
    self.n_epochs = n_epochs
    self.center_update = center_update
    self.init = init
    self.seed = seed

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.input_tags.sparse = False       # rows are L2-normalized densely on the device
    tags.input_tags.allow_nan = False    # a NaN row has no direction
    tags.non_deterministic = False       # one `seed` fixes the whole run
    return tags

  def _check_params(self, num_examples: int):
    k = self.n_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"n_clusters must be a positive integer; got {k!r}.")
    if k > num_examples:
      raise ValueError(f"n_clusters={k} is larger than the number of rows in X "
                       f"(n_samples={num_examples}); use at most {num_examples} clusters.")
    for name in ("batch_size", "n_epochs"):
      value = getattr(self, name)
      if name == "batch_size" and value is None:
        continue
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if self.dual_lr is not None and not (np.isfinite(self.dual_lr) and self.dual_lr > 0):
      raise ValueError(f"dual_lr must be a positive number or None (the default rule "
                       f"default_dual_lr); got {self.dual_lr!r}.")
    if self.center_update not in ("batch", "epoch"):
      raise ValueError(f"center_update is {self.center_update!r}; use 'batch' (Eq. 11, "
                       "after every mini-batch) or 'epoch' (Eq. 10, once per epoch).")
    if self.init not in ("k-means++", "random"):
      raise ValueError(f"init is {self.init!r}; use 'k-means++' or 'random'.")
    return clustering.min_size_fractions(k, self.min_size_ratio)

  def _validate(self, X, reset: bool) -> np.ndarray:
    """X as a finite float32 [N, D] array (scikit-learn's checks, then one for NaN/inf).

    scikit-learn's `validate_data` rejects sparse, complex, 1-D, empty and
    non-numeric input with its own messages and keeps `n_features_in_`; the
    NaN/inf check is ours so that the message names the offending rows.
    """
    x = sk_validation.validate_data(self, X, reset=reset, dtype=np.float32,
                                    ensure_all_finite=False)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
      rows = np.flatnonzero(~finite)
      raise ValueError(f"X contains NaN or infinite values in {rows.size} rows (first: "
                       f"{rows[:5].tolist()}); remove or impute them before clustering "
                       "(e.g. sklearn.impute.SimpleImputer in a Pipeline).")
    return x

  def fit(self, X, y=None) -> "CoKeKMeans":
    """Clusters the rows of X [N, D]; `y` is ignored (scikit-learn convention)."""
    del y
    x = self._validate(X, reset=True)
    min_size_frac = self._check_params(x.shape[0])
    if self.batch_size is None:  # at least 64 dual steps per epoch
      batch_size = min(256, max(1, x.shape[0] // 64))
    else:
      batch_size = min(int(self.batch_size), x.shape[0])
    self.batch_size_ = batch_size
    # The rule treats the whole run as one stream of N * n_epochs examples (Theorem 1).
    self.dual_lr_ = (float(self.dual_lr) if self.dual_lr is not None else
                     clustering.default_dual_lr(self.n_clusters, batch_size,
                                                x.shape[0] * self.n_epochs))
    centers, dual, labels = _fit(
        x, jax.random.PRNGKey(self.seed), jnp.asarray(min_size_frac), jnp.float32(self.dual_lr_),
        num_clusters=int(self.n_clusters), batch_size=batch_size, n_epochs=int(self.n_epochs),
        batch_centers=self.center_update == "batch", init=self.init, dual_l1_radius=None)
    self.cluster_centers_ = np.asarray(centers)
    self.dual_ = np.asarray(dual)
    self.labels_ = np.asarray(labels)
    self.cluster_sizes_ = np.bincount(self.labels_, minlength=self.n_clusters)
    return self

  def fit_predict(self, X, y=None) -> np.ndarray:
    """`fit(X)` and return `labels_` (the constrained assignment of the last epoch)."""
    return self.fit(X, y).labels_

  def predict(self, X) -> np.ndarray:
    """The nearest center (cosine similarity) of each row of X [M, D]."""
    sk_validation.check_is_fitted(self, "cluster_centers_")
    x = self._validate(X, reset=False)
    return np.asarray(_nearest_center(x, self.cluster_centers_))


# --- The exact reference: Eq. 6 as a linear program ------------------------------------------


def solve_assignment_lp(sims: np.ndarray, min_size: np.ndarray) -> tuple[float, np.ndarray]:
  """Eq. 6 solved exactly, the optimum the online assignment is measured against (Theorem 1):

    max_mu sum_ik s_ik mu_ik  s.t.  sum_k mu_ik = 1,  sum_i mu_ik >= gamma_k,  mu_ik >= 0.

  `sims` is s [N, K], `min_size` gamma_k (in examples) [K] or a scalar. Solved
  by HiGHS (interior point with crossover, which is much faster here than its
  dual simplex) on sparse constraint matrices; N K variables, so for N up to
  ~1e5 and K up to ~100. Returns (optimum, mu [N, K]). Host-side numpy/scipy.
  """
  import scipy.optimize  # pylint: disable=g-import-not-at-top
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  sims = np.asarray(sims, np.float64)
  n, k = sims.shape
  min_size = np.broadcast_to(np.asarray(min_size, np.float64), (k,))
  if min_size.sum() > n + 1e-6:
    raise ValueError(f"The lower bounds add up to {min_size.sum()} > N = {n}: infeasible.")
  var = np.arange(n * k)
  ones = np.ones(n * k)
  one_cluster_each = scipy.sparse.csr_matrix((ones, (var // k, var)), shape=(n, n * k))
  cluster_sizes = scipy.sparse.csr_matrix((-ones, (var % k, var)), shape=(k, n * k))
  result = scipy.optimize.linprog(
      -sims.ravel(), A_ub=cluster_sizes, b_ub=-min_size, A_eq=one_cluster_each,
      b_eq=np.ones(n), bounds=(0, None), method="highs-ipm")
  if result.status != 0:
    raise RuntimeError(f"HiGHS did not solve the assignment LP: {result.message}")
  return -result.fun, result.x.reshape(n, k)
