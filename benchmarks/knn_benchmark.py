"""Weighted kNN (k = 20 and 200) throughput and memory on synthetic features.

  python -m benchmarks.knn_benchmark [--bank 100000 --dim 512 --queries 10000]

`metrics.knn_rank` streams the train bank through the device in chunks, so the
device holds one chunk, the queries and their running top-200, never a
[queries, bank] similarity matrix: ImageNet (1.28M x 2048 bank, 50k queries)
needs about 0.5 GB for the chunk + 0.4 GB for the queries + 80 MB for the
top-200, on one device.
"""

import argparse
import time

import numpy as np

from coke_jax.evaluation import metrics


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--bank", type=int, nargs="+", default=[10_000, 50_000, 100_000])
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--queries", type=int, default=5_000)
  parser.add_argument("--chunk", type=int, default=65_536)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
  print("| bank | dim | queries | chunk | seconds | similarities / s | "
        "device bytes (chunk + queries + top-200) |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for bank_size in args.bank:
    bank = rng.normal(size=(bank_size, args.dim)).astype(np.float32)
    labels = rng.integers(0, 1000, bank_size)
    for _ in range(2):  # the second run, without compilation, is timed
      start = time.perf_counter()
      metrics.knn_rank(bank, labels, queries, 1000, ks=(20, 200), chunk_size=args.chunk)
      seconds = time.perf_counter() - start
    chunk = min(args.chunk, bank_size)
    device = 4 * (chunk * args.dim + args.queries * args.dim + 2 * args.queries * 200)
    print(f"| {bank_size:,} | {args.dim} | {args.queries:,} | {chunk:,} | {seconds:.2f} | "
          f"{bank_size * args.queries / seconds:.3g} | {device / 2**20:.0f} MiB |")


if __name__ == "__main__":
  main()
