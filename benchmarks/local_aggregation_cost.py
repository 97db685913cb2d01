"""Local Aggregation's per-epoch cost: the bank's k-means clusterings and the per-step loss.

  nice -n 10 python -m benchmarks.local_aggregation_cost
  python -m benchmarks.local_aggregation_cost --rows=1281167 --clusters=30000 --clusterings=10

Per setting (N bank rows of D = --dim, H clusterings of m clusters, --iterations Lloyd
steps) it times, after compilation, `LocalAggregation.cluster` (what `end_epoch` runs once
per epoch) and one step of the loss and its gradient for a batch of --batch rows against
the bank (top-k over N, `aggregation_loss`), and prints a markdown table: the bank's and
the labels' memory, the seconds per clustering pass, the rate it ran at (GFLOP/s: a Lloyd
step costs 2 N m D multiply-adds for the scores), and the extrapolation of the clustering
to ImageNet's N = 1.28M, H x m = 10 x 30,000 (supp. Table 1) at that rate. The default
settings are scaled down to fit this 2-core CPU; give the full size on an accelerator.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import clustering
from coke_jax.objectives import local_aggregation

_ROWS = flags.DEFINE_list("rows", ["16384", "65536"], "Bank rows N per setting.")
_CLUSTERS = flags.DEFINE_list("clusters", ["1000", "3000"], "m per setting.")
_CLUSTERINGS = flags.DEFINE_integer("clusterings", 2, "H, clusterings per epoch.")
_DIM = flags.DEFINE_integer("dim", 128, "D, the embedding size.")
_ITERATIONS = flags.DEFINE_integer("iterations", 20, "Lloyd iterations per clustering.")
_BATCH = flags.DEFINE_integer("batch", 128, "Rows of the loss's batch.")
_NEIGHBOURS = flags.DEFINE_integer("neighbours", 4096, "k, the background neighbours.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows as a JSON list here.")

_IMAGENET = dict(rows=1_281_167, clusters=30_000, clusterings=10)


def _time(fn, *args, repeats=2):
  jax.block_until_ready(fn(*args))          # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def _flops(rows, clusters, clusterings, dim, iterations):
  # iterations Lloyd steps plus the final assignment; 2 flops per multiply-add.
  return 2.0 * rows * clusters * dim * (iterations + 1) * clusterings


def measure(rows: int, clusters: int, clusterings: int, dim: int, iterations: int,
            batch: int, neighbours: int) -> dict:
  objective = local_aggregation.LocalAggregation(
      num_clusters=(clusters,) * clusterings, num_examples=rows, embed_dim=dim,
      num_neighbours=neighbours, kmeans_iterations=iterations)
  key = jax.random.PRNGKey(0)
  bank = clustering.l2_normalize(jax.random.normal(key, (rows, dim), jnp.float32))
  cluster = jax.jit(objective.cluster)
  cluster_s = _time(cluster, bank, key)
  labels, _ = cluster(bank, key)
  v = clustering.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (batch, dim)))
  index = jnp.arange(batch, dtype=jnp.int32)

  def loss(v):
    return jnp.mean(local_aggregation.aggregation_loss(
        clustering.l2_normalize(v), index, bank, labels, objective.temperature,
        neighbours))

  loss_s = _time(jax.jit(jax.value_and_grad(loss)), v, repeats=5)
  flops = _flops(rows, clusters, clusterings, dim, iterations)
  rate = flops / cluster_s
  return dict(rows=rows, clusters=clusters, clusterings=clusterings, dim=dim,
              iterations=iterations, bank_mb=rows * dim * 4 / 2**20,
              labels_mb=clusterings * rows * 4 / 2**20, cluster_s=cluster_s,
              gflop_per_s=rate / 1e9, loss_step_ms=1e3 * loss_s,
              imagenet_cluster_s=_flops(dim=dim, iterations=iterations, **_IMAGENET) / rate)


def main(argv):
  del argv
  if len(_ROWS.value) != len(_CLUSTERS.value):
    raise app.UsageError(f"--rows ({_ROWS.value}) and --clusters ({_CLUSTERS.value}) need "
                         "one value per setting each.")
  results = [measure(int(n), int(m), _CLUSTERINGS.value, _DIM.value, _ITERATIONS.value,
                     _BATCH.value, _NEIGHBOURS.value)
             for n, m in zip(_ROWS.value, _CLUSTERS.value)]
  print(f"Local Aggregation on {jax.devices()[0].device_kind} ({jax.device_count()} device), "
        f"D = {_DIM.value}, {_ITERATIONS.value} Lloyd iterations, loss batch {_BATCH.value}, "
        f"k = {_NEIGHBOURS.value}\n")
  print("| N | H x m | bank MB | labels MB | clustering s / epoch | GFLOP/s | loss + grad ms "
        "/ step | ImageNet clustering at this rate |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for r in results:
    print(f"| {r['rows']:,} | {r['clusterings']} x {r['clusters']:,} | {r['bank_mb']:.0f} | "
          f"{r['labels_mb']:.1f} | {r['cluster_s']:.2f} | {r['gflop_per_s']:.0f} | "
          f"{r['loss_step_ms']:.1f} | {r['imagenet_cluster_s'] / 3600:.1f} h |")
  print(f"\nImageNet (N = {_IMAGENET['rows']:,}, H x m = {_IMAGENET['clusterings']} x "
        f"{_IMAGENET['clusters']:,}): bank {_IMAGENET['rows'] * _DIM.value * 4 / 2**20:.0f} MB, "
        f"labels {_IMAGENET['clusterings'] * _IMAGENET['rows'] * 4 / 2**20:.0f} MB, "
        f"{_flops(dim=_DIM.value, iterations=_ITERATIONS.value, **_IMAGENET) / 1e15:.0f} PFLOP "
        "of k-means per epoch.")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
