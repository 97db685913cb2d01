"""CoKeKMeans against scikit-learn's KMeans: clustering quality on digits, and speed up to 1M rows.

  nice -n 10 python -m benchmarks.kmeans_estimator --tables=digits,shifted,million

Tables:
  digits   ACC / NMI / ARI (Hungarian accuracy, sklearn NMI and ARI) against the
           true digit on sklearn's 1,797 digits (64 pixels), mean +- std over
           --seeds seeds, with the smallest cluster and the fit time:
           CoKeKMeans (gamma' 0.4 and 0.9, per-batch Eq. 11 or per-epoch Eq. 10
           centers, other settings default) against KMeans (k-means++, n_init 10
           or 1) on the same L2-normalized rows and on the raw rows.
  shifted  the same on 53,910 shifted, noisy digits (benchmarks/digits_data.py),
           and the time of the exact LP of Eq. 6 for the CoKe centers.
  million  fit time on --rows rows of 64-d synthetic data (a mixture of K
           random directions plus noise): CoKeKMeans (first call, which
           compiles, and second call) against KMeans(n_init=1) and
           MiniBatchKMeans; plus ARI against the mixture component.
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np
from sklearn import cluster as sk_cluster
from sklearn import datasets as sk_datasets
from sklearn import metrics as sk_metrics

from benchmarks import digits_data
from coke_jax import kmeans
from coke_jax.evaluation import metrics

_TABLES = flags.DEFINE_list("tables", ["digits", "shifted", "million"], "Tables to print.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per setting in the digits table.")
_ROWS = flags.DEFINE_integer("rows", 1_000_000, "Rows of the million table.")
_MILLION_K = flags.DEFINE_list("million_k", ["100"], "K values of the million table.")


def header(title, columns):
  print(f"\n{title}\n" + " | ".join(columns) + "\n" + "|".join("---" for _ in columns))


def row(*cells):
  print(" | ".join(str(c) for c in cells), flush=True)


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def quality_rows(x, truth, k, seeds, coke_settings, with_raw=True):
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  methods = [(f"CoKeKMeans gamma'={ratio} centers={update}",
              lambda seed, ratio=ratio, update=update: kmeans.CoKeKMeans(
                  k, min_size_ratio=ratio, center_update=update, seed=seed).fit(x).labels_)
             for ratio, update in coke_settings]
  methods.append(("KMeans(n_init=10), L2-normalized rows",
                  lambda seed: sk_cluster.KMeans(k, n_init=10, random_state=seed).fit(xn).labels_))
  methods.append(("KMeans(n_init=1), L2-normalized rows",
                  lambda seed: sk_cluster.KMeans(k, n_init=1, random_state=seed).fit(xn).labels_))
  if with_raw:
    methods.append(("KMeans(n_init=10), raw rows",
                    lambda seed: sk_cluster.KMeans(k, n_init=10, random_state=seed).fit(x).labels_))
  for name, fit in methods:
    fit(0)  # compile / warm up
    scores, sizes, seconds = [], [], []
    for seed in range(seeds):
      labels, dt = timed(lambda: fit(seed))
      m = metrics.clustering_metrics(labels, truth)
      scores.append([m["acc"], m["nmi"], m["ari"]])
      sizes.append(np.bincount(labels, minlength=k).min())
      seconds.append(dt)
    mean, std = np.mean(scores, 0), np.std(scores, 0)
    row(name, *(f"{100 * a:.1f} +- {100 * b:.1f}" for a, b in zip(mean, std)),
        f"{np.mean(sizes):.0f}", f"{np.median(seconds):.2f}")


def digits_table():
  digits = sk_datasets.load_digits()
  x, truth = digits.data.astype(np.float32), digits.target
  header(f"Digits (N = {len(x)}, K = 10, bound gamma = gamma' N / K = 72 at 0.4, 162 at 0.9), "
         f"{_SEEDS.value} seeds; CoKeKMeans defaults: 20 epochs, batch N // 64 = 28, eta by rule",
         ["method", "ACC %", "NMI %", "ARI %", "smallest cluster", "fit s"])
  quality_rows(x, truth, 10, _SEEDS.value,
               [(0.4, "batch"), (0.4, "epoch"), (0.9, "batch"), (0.9, "epoch")])


def shifted_table():
  x = digits_data.shifted_digits(30, 0.1)
  truth = np.tile(sk_datasets.load_digits().target, 30)
  header(f"Shifted noisy digits (N = {len(x)}, K = 10), 3 seeds; CoKeKMeans defaults "
         "otherwise (batch 256, 20 epochs)", ["method", "ACC %", "NMI %", "ARI %", "smallest cluster",
                                     "fit s"])
  quality_rows(x, truth, 10, 3, [(0.4, "batch"), (0.9, "epoch")], with_raw=False)
  model = kmeans.CoKeKMeans(10, min_size_ratio=0.9, seed=0).fit(x)
  sims = x.astype(np.float64) @ model.cluster_centers_.T.astype(np.float64)
  (optimum, _), lp_seconds = timed(lambda: kmeans.solve_assignment_lp(sims, 0.9 * len(x) / 10))
  obj = sims[np.arange(len(x)), model.labels_].sum()
  print(f"\nExact LP of Eq. 6 for the final CoKe centers (gamma' = 0.9): {lp_seconds:.1f} s; "
        f"the CoKe labels reach {100 * obj / optimum:.2f}% of its optimum.")


def mixture(rows, k, dim=64, noise=0.5, seed=0):
  rng = np.random.default_rng(seed)
  directions = rng.normal(size=(k, dim)).astype(np.float32)
  truth = rng.integers(0, k, rows)
  x = directions[truth] / np.sqrt(dim) + noise / np.sqrt(dim) * rng.standard_normal(
      (rows, dim), dtype=np.float32)
  return x.astype(np.float32), truth


def million_table():
  header(f"Fit time on {_ROWS.value:,} x 64 rows (mixture of K directions), "
         f"{jax.devices()[0].platform.upper()}",
         ["K", "method", "epochs / iterations", "first fit s (compiles)", "fit s", "ARI %",
          "smallest / bound"])
  for k in map(int, _MILLION_K.value):
    x, truth = mixture(_ROWS.value, k)
    bound = 0.4 * len(x) / k
    for update, epochs in (("batch", 1), ("batch", 5), ("batch", 20), ("epoch", 20)):
      model = kmeans.CoKeKMeans(k, batch_size=1024, n_epochs=epochs, center_update=update,
                                    seed=0)
      _, first = timed(lambda: model.fit(x))
      _, second = timed(lambda: model.fit(x))  # compiled: the cost of the run itself
      ari = sk_metrics.adjusted_rand_score(truth, model.labels_)
      row(k, f"CoKeKMeans batch 1024, centers={update}", epochs, f"{first:.1f}",
          f"{second:.1f}", f"{100 * ari:.1f}", f"{model.cluster_sizes_.min()} / {bound:.0f}")
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    km, dt = timed(lambda: sk_cluster.KMeans(k, n_init=1, random_state=0).fit(xn))
    row(k, "sklearn KMeans(n_init=1)", km.n_iter_, "-", f"{dt:.1f}",
        f"{100 * sk_metrics.adjusted_rand_score(truth, km.labels_):.1f}",
        f"{np.bincount(km.labels_, minlength=k).min()} / -")
    mb, dt = timed(lambda: sk_cluster.MiniBatchKMeans(k, batch_size=1024, n_init=1,
                                                       random_state=0).fit(xn))
    row(k, "sklearn MiniBatchKMeans batch 1024", mb.n_iter_, "-", f"{dt:.1f}",
        f"{100 * sk_metrics.adjusted_rand_score(truth, mb.labels_):.1f}",
        f"{np.bincount(mb.labels_, minlength=k).min()} / -")


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  tables = set(_TABLES.value)
  if "digits" in tables:
    digits_table()
  if "shifted" in tables:
    shifted_table()
  if "million" in tables:
    million_table()


if __name__ == "__main__":
  app.run(main)
