"""CoKe's online assignment against the exact LP of Eq. 6 on real embeddings (Theorem 1, Table 1).

  nice -n 10 python -m benchmarks.online_vs_lp --tables=main,eta,sqrt_n,small

Centers are fixed (k-means++ seeds, so some clusters are too small without the
constraint); the LP of Eq. 6 is solved exactly with HiGHS
(`kmeans.solve_assignment_lp`), and the online assignment (Eqs. 8 and 9,
the package's `kmeans.online_epoch` with the centers held fixed) runs over
the same points in random order in mini-batches. Reported, as means over
--orders random orders (violation: the worst order):

  obj %     sum_i s_{i,y_i} of the online labels / the LP optimum
  regret/N  (LP optimum - online objective) / N (negative: the online labels
            are better than the optimum because they violate a bound)
  viol %    max_k (gamma_k - n_k)+ / gamma_k with gamma_k = gamma' N / K
  greedy    the same violation for mu = argmax_k s_ik (no duals): how much
            the constraint binds

Tables:
  main    gamma' in {0.4, 0.9, 1.0} x batch {32, 256}, one pass, eta from
          `clustering.default_dual_lr`, on digits pixels (N = 1,797) and on
          digits under random shifts and noise (N = 53,910)
  eta     the dual step: eta = c K b / sqrt(N) over c, for K in {10, 50} and
          batch {32, 256}, one pass at N = 53,910, gamma' = 0.9
  sqrt_n  violation and regret against N with Theorem 1's eta ~ 1/sqrt(N) (both
          are O(sqrt N), so per example they fall like 1/sqrt N)
  small   N = 1,797: what several passes (duals carried over, the last pass's
          labels scored) and the step size buy
  balanced  gamma' = 1: free duals (`dual_update` at balanced bounds) against duals
          projected on rho >= 0
  features  the main and eta tables on --features (an .npy of [N, D] embeddings,
          e.g. a trained model's: benchmarks/digits_features.py)

Data: sklearn's digits (8x8 pixels, flattened to 64-d and L2-normalized);
--copies - 1 extra copies of each image shifted by up to one pixel in x and y
(np.roll) with Gaussian pixel noise of std --noise (pixels are in [0, 1]).
"""

import functools
import os
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from sklearn import cluster as sk_cluster

from benchmarks.digits_data import digits_pixels
from benchmarks.digits_data import shifted_digits
from coke_jax import clustering
from coke_jax import kmeans

_TABLES = flags.DEFINE_list("tables", ["main", "eta", "sqrt_n", "small"], "Tables to print.")
_COPIES = flags.DEFINE_integer("copies", 30, "Copies of digits (shifted, noisy) for the large N.")
_NOISE = flags.DEFINE_float("noise", 0.1, "Std of the pixel noise of the copies.")
_K = flags.DEFINE_integer("num_clusters", 10, "K of the main, sqrt_n and small tables.")
_ORDERS = flags.DEFINE_integer("orders", 5, "Random orders per online setting.")
_CENTER_SEED = flags.DEFINE_integer(
    "center_seed", 3, "k-means++ seed of the fixed centers; 3 leaves the smallest greedy cluster "
    "at ~0.3 N / K on both data sets, so every gamma' in {0.4, 0.9, 1} binds.")
_FEATURES = flags.DEFINE_string("features", "", ".npy file of [N, D] embeddings for 'features'.")
_CACHE = flags.DEFINE_string("cache_dir", "/tmp/coke_lp_cache", "Where LP optima are cached "
                             "('' to disable).")


def kmeans_pp_centers(x: np.ndarray, k: int, seed: int = None) -> np.ndarray:
  seed = _CENTER_SEED.value if seed is None else seed
  centers, _ = sk_cluster.kmeans_plusplus(x, k, random_state=seed)
  return (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(np.float32)


def lp_optimum(name: str, sims: np.ndarray, min_size: float) -> tuple[float, float]:
  """(optimum, seconds) of Eq. 6, cached on disk by name and bound."""
  path = os.path.join(_CACHE.value, f"{name}_{min_size:.4f}.npy") if _CACHE.value else ""
  if path and os.path.exists(path):
    return tuple(np.load(path))
  start = time.perf_counter()
  optimum, _ = kmeans.solve_assignment_lp(sims, min_size)
  result = (optimum, time.perf_counter() - start)
  if path:
    os.makedirs(_CACHE.value, exist_ok=True)
    np.save(path, np.asarray(result))
  return result


@functools.partial(jax.jit, static_argnames=("batch_size", "epochs"))
def online_labels(x, centers, min_size_frac, dual_lr, key, *, batch_size, epochs):
  """`epochs` passes of Eqs. 8/9 with fixed centers; the labels of the last pass, [N]."""
  step_kwargs = dict(min_size_frac=min_size_frac, dual_lr=dual_lr, batch_centers=False)

  def epoch(carry, epoch_key):
    state, _ = carry
    index, weight = kmeans.batch_plan(epoch_key, x.shape[0], batch_size)
    state, labels = kmeans.online_epoch(state, x, index, weight, **step_kwargs)
    return (clustering.start_epoch(state, centers), labels), None

  init = (clustering.init_online_state(centers), jnp.zeros((x.shape[0],), jnp.int32))
  (_, labels), _ = lax.scan(epoch, init, jax.random.split(key, epochs))
  return labels


@functools.partial(jax.jit, static_argnames=("batch_size",))
def projected_labels(x, centers, min_size_frac, dual_lr, key, *, batch_size):
  """One pass like `online_labels`, but the duals always projected on rho >= 0 (Sec. 4's
  max(0, .)), also at gamma' = 1 where `clustering.dual_update` leaves them free."""
  index, weight = kmeans.batch_plan(key, x.shape[0], batch_size)

  def body(dual, batch):
    batch_index, batch_weight = batch
    labels = clustering.assign(clustering.similarities(x[batch_index], centers), dual)
    counts = clustering.cluster_counts(labels, batch_weight, centers.shape[0])
    grad = counts / jnp.sum(batch_weight) - min_size_frac
    return clustering.project_dual(dual - dual_lr * grad), labels

  _, labels = lax.scan(body, jnp.zeros(centers.shape[0]), (index, weight))
  write = jnp.where(weight > 0, index, x.shape[0]).reshape(-1)
  return jnp.zeros(x.shape[0], jnp.int32).at[write].set(labels.reshape(-1), mode="drop")


def balanced_table(x, name):
  k = _K.value
  centers = kmeans_pp_centers(x, k)
  sims = x.astype(np.float64) @ centers.T.astype(np.float64)
  min_size = len(x) / k
  optimum, _ = lp_optimum(f"{name}_k{k}_c{_CENTER_SEED.value}", sims, min_size)
  header(f"gamma' = 1 on {name} (N = {len(x)}, K = {k}): free duals (the equality constraints' "
         "duals, as the official code at ratio 1) against duals projected on rho >= 0; one pass, "
         "eta = default_dual_lr", ["batch", "duals", "obj % of LP", "viol % (mean / worst)"])
  frac = jnp.asarray(clustering.min_size_fractions(k, 1.0))
  for b in (32, 256):
    eta = jnp.float32(clustering.default_dual_lr(k, b, len(x)))
    for duals, fn in (("free", functools.partial(online_labels, epochs=1)),
                      ("projected", projected_labels)):
      results = [score(sims, np.asarray(fn(jnp.asarray(x), jnp.asarray(centers), frac, eta,
                                           jax.random.PRNGKey(order), batch_size=b)), min_size)
                 for order in range(_ORDERS.value)]
      objective = np.mean([r[0] for r in results])
      violations = [r[1] for r in results]
      row(b, duals, f"{100 * objective / optimum:.3f}",
          pct((float(np.mean(violations)), float(np.max(violations)))))


def score(sims, labels, min_size):
  """(objective, violation as a fraction of gamma) of a hard assignment."""
  sizes = np.bincount(labels, minlength=sims.shape[1])
  objective = float(sims[np.arange(len(labels)), labels].sum())
  return objective, float(np.max(np.maximum(min_size - sizes, 0.0)) / min_size)


def run_online(x, centers, sims, ratio, batch_size, dual_lr, epochs=1):
  """Over random orders: mean objective, (mean, worst) violation, median seconds."""
  k = centers.shape[0]
  min_size = ratio * len(x) / k
  frac = jnp.asarray(clustering.min_size_fractions(k, ratio))
  objectives, violations, seconds = [], [], []
  for order in range(_ORDERS.value):
    args = (jnp.asarray(x), jnp.asarray(centers), frac, jnp.float32(dual_lr),
            jax.random.PRNGKey(order))
    kwargs = dict(batch_size=batch_size, epochs=epochs)
    online_labels(*args, **kwargs).block_until_ready()  # compile
    start = time.perf_counter()
    labels = np.asarray(online_labels(*args, **kwargs).block_until_ready())
    seconds.append(time.perf_counter() - start)
    objective, violation = score(sims, labels, min_size)
    objectives.append(objective)
    violations.append(violation)
  return (float(np.mean(objectives)), (float(np.mean(violations)), float(np.max(violations))),
          float(np.median(seconds)))


def pct(violation):
  return f"{100 * violation[0]:.2f} / {100 * violation[1]:.2f}"


def header(title, columns):
  print(f"\n{title}\n" + " | ".join(columns) + "\n" + "|".join("---" for _ in columns))


def row(*cells):
  print(" | ".join(str(c) for c in cells), flush=True)


def main_table(datasets, batch_sizes=(32, 256), ratios=(0.4, 0.9, 1.0)):
  header(f"Online assignment vs the exact LP of Eq. 6, one pass, eta = default_dual_lr, "
         f"K = {_K.value}, {_ORDERS.value} random orders",
         ["data", "N", "gamma'", "batch", "eta", "obj % of LP", "regret/N",
          "viol % of gamma (mean / worst)",
          "greedy viol %", "LP s", "online s"])
  for name, x in datasets:
    k = _K.value
    centers = kmeans_pp_centers(x, k)
    sims = x.astype(np.float64) @ centers.T.astype(np.float64)
    greedy = sims.argmax(1)
    for ratio in ratios:
      min_size = ratio * len(x) / k
      optimum, lp_seconds = lp_optimum(f"{name}_k{k}_c{_CENTER_SEED.value}", sims, min_size)
      _, greedy_violation = score(sims, greedy, min_size)
      for b in batch_sizes:
        eta = clustering.default_dual_lr(k, b, len(x))
        objective, violation, seconds = run_online(x, centers, sims, ratio, b, eta)
        row(name, len(x), ratio, b, f"{eta:.3g}", f"{100 * objective / optimum:.3f}",
            f"{(optimum - objective) / len(x):+.2e}", pct(violation),
            f"{100 * greedy_violation:.1f}", f"{lp_seconds:.1f}", f"{seconds:.3f}")


def eta_table(name, x, ratio=0.9, constants=(0.01, 0.03, 0.1, 0.3, 1.0), ks=(10, 50)):
  header(f"The dual step on {name}: eta = c K b / sqrt(N), one pass, N = {len(x)}, "
         f"gamma' = {ratio}", ["K", "batch", "c", "eta", "obj % of LP",
                               "viol % of gamma (mean / worst)"])
  for k in ks:
    centers = kmeans_pp_centers(x, k)
    sims = x.astype(np.float64) @ centers.T.astype(np.float64)
    optimum, _ = lp_optimum(f"{name}_k{k}_c{_CENTER_SEED.value}", sims, ratio * len(x) / k)
    for b in (32, 256):
      for c in constants:
        eta = c * k * b / np.sqrt(len(x))
        objective, violation, _ = run_online(x, centers, sims, ratio, b, eta)
        row(k, b, c, f"{eta:.3g}", f"{100 * objective / optimum:.3f}", pct(violation))


def sqrt_n_table(x, ratio=0.9, batch_size=32, c=0.1):
  k = _K.value
  header(f"Violation and regret against N (nested random subsets of the shifted digits), "
         f"K = {k}, gamma' = {ratio}, batch {batch_size}, one pass, Theorem 1's step "
         f"eta = {c} K b / sqrt(N)",
         ["N", "eta", "V (examples, mean / worst)", "V / gamma % (mean / worst)",
          "worst V / sqrt(N)", "regret/N", "obj % of LP"])
  subset = np.random.default_rng(0).permutation(len(x))
  centers = kmeans_pp_centers(x, k)  # the same centers for every N
  for n in (2_000, 5_000, 10_000, 20_000, len(x)):
    xs = x[subset[:n]]
    sims = xs.astype(np.float64) @ centers.T.astype(np.float64)
    min_size = ratio * n / k
    optimum, _ = lp_optimum(f"shifted{len(x)}_sub{n}_k{k}_c{_CENTER_SEED.value}", sims, min_size)
    eta = c * k * batch_size / np.sqrt(n)
    objective, violation, _ = run_online(xs, centers, sims, ratio, batch_size, eta)
    v = np.asarray(violation) * min_size
    row(n, f"{eta:.3g}", f"{v[0]:.1f} / {v[1]:.0f}", pct(violation), f"{v[1] / np.sqrt(n):.2f}",
        f"{(optimum - objective) / n:+.2e}", f"{100 * objective / optimum:.3f}")


def small_table(x, ratio=0.9):
  k = _K.value
  centers = kmeans_pp_centers(x, k)
  sims = x.astype(np.float64) @ centers.T.astype(np.float64)
  optimum, _ = lp_optimum(f"pixels_k{k}_c{_CENTER_SEED.value}", sims, ratio * len(x) / k)
  header(f"Few points (N = {len(x)}, K = {k}, gamma' = {ratio}): passes over the data with the "
         "duals carried over, the last pass scored; eta = c K b / sqrt(N passes)",
         ["batch", "passes", "c", "eta", "obj % of LP", "viol % of gamma (mean / worst)"])
  for b in (32, 256):
    for passes in (1, 3, 10, 30):
      for c in (0.01, 0.03, 0.1, 0.3):
        eta = c * k * b / np.sqrt(len(x) * passes)
        objective, violation, _ = run_online(x, centers, sims, ratio, b, eta, epochs=passes)
        row(b, passes, c, f"{eta:.3g}", f"{100 * objective / optimum:.3f}", pct(violation))


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  pixels = digits_pixels()
  shifted = shifted_digits(_COPIES.value, _NOISE.value)
  tables = set(_TABLES.value)
  if "main" in tables:
    main_table([("pixels", pixels), (f"shifted{len(shifted)}", shifted)])
  if "eta" in tables:
    eta_table(f"shifted{len(shifted)}", shifted)
  if "sqrt_n" in tables:
    sqrt_n_table(shifted)
  if "balanced" in tables:
    balanced_table(shifted, f"shifted{len(shifted)}")
  if "small" in tables:
    small_table(pixels)
  if "features" in tables:
    features = np.load(_FEATURES.value).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    main_table([("features", features)])
    eta_table("features", features, ks=(10,))


if __name__ == "__main__":
  app.run(main)
