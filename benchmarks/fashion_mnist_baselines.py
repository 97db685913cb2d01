"""Fashion-MNIST references: pixel baselines, the evaluation's cost, the input pipeline's.

  nice -n 10 python -m benchmarks.fashion_mnist_baselines
  nice -n 10 python -m benchmarks.fashion_mnist_baselines --validation_fraction=0.1 \
      --tables=pixels

Needs `apt-get install dataset-fashion-mnist` (or --data_dir). Prints up to three
tables (--tables):
  pixels:   raw-pixel baselines scored on the held-out t10k images (or, with
            --validation_fraction, on that stratified share of the training
            images): scikit-learn k-means (K = 10, fit on train, predict
            held-out; ACC/NMI/ARI as coke_jax.evaluation.metrics computes them,
            mean +- std over --seeds and the seed of lowest inertia, i.e. what
            n_init = len(seeds) would keep), scikit-learn's kNN (uniform vote,
            Euclidean) and the evaluation's weighted cosine kNN (T = 0.07,
            metrics.knn_accuracy), train bank -> held-out queries;
  eval:     what the end-of-run evaluation costs per small_cnn (--eval_widths,
            e.g. 16-32-64,32-64-128): eval-mode embedding of the train and
            held-out images (features.embed, batch --eval_batch_size, compilation
            included) and the weighted kNN (k = 20, 200) of the backbone
            features; weights are random (the cost does not depend on them);
  pipeline: the current digits augmentation (configs/digits.py) at 28x28, two
            views, batch 128: images/s of input_pipeline.train_batches and
            seconds per epoch.
Wall-clock and process CPU seconds (all threads) are both printed: on a shared
host the CPU seconds are the steadier figure.
"""

import argparse
import statistics
import time

import jax
import numpy as np
from sklearn import cluster as sk_cluster
from sklearn import neighbors as sk_neighbors

from coke_jax import models
from coke_jax import sharding
from coke_jax.data import fashion_mnist
from coke_jax.data import input_pipeline
from coke_jax.evaluation import features
from coke_jax.evaluation import metrics
from configs import digits


class _Timer:
  """Wall-clock and process CPU seconds of a `with` block."""

  def __enter__(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def pixel_table(source, seeds):
  train = source.train_images.reshape(source.num_train, -1)
  heldout = source.heldout_images.reshape(len(source.heldout_images), -1)
  print(f"\nRaw pixels ({train.shape[1]}-d, in [0, 1]): {len(train):,} train -> "
        f"{len(heldout):,} held-out")
  print("| method | ACC | NMI | ARI | kNN top-1 | wall s | CPU s |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  runs = []
  with _Timer() as t:
    for seed in seeds:
      kmeans = sk_cluster.KMeans(10, n_init=1, random_state=seed).fit(train)
      runs.append((kmeans.inertia_, metrics.clustering_metrics(kmeans.predict(heldout),
                                                               source.heldout_labels)))
  cells = []
  for name in ("acc", "nmi", "ari"):
    values = [r[name] for _, r in runs]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    cells.append(f"{statistics.mean(values):.3f} +- {std:.3f}")
  print(f"| k-means, K = 10, {len(seeds)} seeds (n_init = 1 each) | {' | '.join(cells)} | | "
        f"{t.wall:.1f} | {t.cpu:.1f} |")
  best = min(runs, key=lambda r: r[0])[1]
  print(f"| k-means, lowest inertia of the {len(seeds)} | {best['acc']:.3f} | {best['nmi']:.3f} | "
        f"{best['ari']:.3f} | | | |")
  for k in (5, 20):
    with _Timer() as t:
      knn = sk_neighbors.KNeighborsClassifier(k, algorithm="brute").fit(train,
                                                                          source.train_labels)
      accuracy = float(np.mean(knn.predict(heldout) == source.heldout_labels))
    print(f"| kNN, k = {k}, uniform, Euclidean (scikit-learn) | | | | {accuracy:.3f} | "
          f"{t.wall:.1f} | {t.cpu:.1f} |", flush=True)
  with _Timer() as t:
    knn = metrics.knn_accuracy(train, source.train_labels, heldout, source.heldout_labels, 10,
                               ks=(20, 200))
  for k in (20, 200):
    print(f"| kNN, k = {k}, weighted cosine, T = 0.07 (evaluation's) | | | | "
          f"{knn[f'k{k}']['top1']:.3f} | {t.wall:.1f} (both k) | {t.cpu:.1f} |", flush=True)


def eval_table(source, widths_list, batch_size):
  mesh = sharding.make_mesh()
  print(f"\nEvaluation cost ({jax.device_count()} x {jax.devices()[0].device_kind}, eval batch "
        f"{batch_size}): embed {source.num_train:,} train + {len(source.heldout_images):,} "
        "held-out images, weighted kNN k = 20, 200 of the backbone features")
  print("| backbone | features | embed train s | embed held-out s | kNN s | total wall s | "
        "total CPU s |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for widths in widths_list:
    config = digits.get_config()  # small_cnn, projection head 256 -> 64
    config.model.backbone_kwargs.widths = widths
    model = models.build_model(config.model, axis_name=sharding.DATA_AXIS)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((2, *source.image_shape), np.float32),
                           train=False)
    variables = jax.device_put(dict(variables), sharding.replicated(mesh))
    apply_fn = features.ModelOutputs(model)
    times = []
    with _Timer() as total:
      with _Timer() as t:
        train = features.embed(apply_fn, variables, source, "train", batch_size, mesh)
      times.append(t.wall)
      with _Timer() as t:
        heldout = features.embed(apply_fn, variables, source, "heldout", batch_size, mesh)
      times.append(t.wall)
      with _Timer() as t:
        metrics.knn_accuracy(train["features"], train["label"], heldout["features"],
                             heldout["label"], source.num_classes, ks=(20, 200))
      times.append(t.wall)
    print(f"| small_cnn {widths} | {train['features'].shape[1]} | {times[0]:.1f} | "
          f"{times[1]:.1f} | {times[2]:.1f} | {total.wall:.1f} | {total.cpu:.1f} |", flush=True)


def pipeline_table(source, num_batches):
  config = digits.get_config()
  config.global_batch_size = 128
  images = num_batches * config.global_batch_size
  batches = input_pipeline.train_batches(source, config, epoch=0)
  with _Timer() as t:
    for _, _ in zip(range(num_batches), batches):
      pass
  batches.close()
  steps = input_pipeline.steps_per_epoch(source.num_train, config.global_batch_size)
  print(f"\nInput pipeline (configs/digits.py augmentation, {config.num_views} views, batch "
        f"{config.global_batch_size}, first {num_batches} batches, start-up included)")
  print("| images | img/s | CPU ms/img | s per epoch of "
        f"{source.num_train:,} ({steps} steps) |")
  print("| --- | --- | --- | --- |")
  print(f"| {images:,} | {images / t.wall:,.0f} | {1e3 * t.cpu / images:.2f} | "
        f"{steps * config.global_batch_size * t.wall / images:,.0f} |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default="", help="The IDX files; '': the Debian path.")
  parser.add_argument("--validation_fraction", type=float, default=0.0,
                      help="> 0: score on this stratified share of the training images.")
  parser.add_argument("--tables", default="pixels,eval,pipeline")
  parser.add_argument("--seeds", type=int, default=10, help="k-means seeds 0, 1, ...")
  parser.add_argument("--eval_widths", default="16-32-64,32-64-128",
                      help="small_cnn widths for the eval table, '-' within, ',' between.")
  parser.add_argument("--eval_batch_size", type=int, default=512)
  parser.add_argument("--pipeline_batches", type=int, default=40)
  args = parser.parse_args()
  tables = args.tables.split(",")
  with _Timer() as t:
    source = fashion_mnist.load(args.data_dir, args.validation_fraction)
  held_out = (f"validation split {args.validation_fraction:g} of train" if
              args.validation_fraction else "t10k")
  print(f"# Fashion-MNIST: {source.num_train:,} train, {len(source.heldout_images):,} held-out "
        f"({held_out}); loaded in {t.wall:.1f} s")
  if "pixels" in tables:
    pixel_table(source, list(range(args.seeds)))
  if "eval" in tables:
    widths_list = [tuple(int(w) for w in ws.split("-")) for ws in args.eval_widths.split(",")]
    eval_table(source, widths_list, args.eval_batch_size)
  if "pipeline" in tables:
    pipeline_table(source, args.pipeline_batches)


if __name__ == "__main__":
  main()
