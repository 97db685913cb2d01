"""Digits quality over seeds: pretraining + kNN/clustering + linear probe, with their times.

  python -m benchmarks.digits_quality --seeds 0 1 2 --workdir /tmp/digits_quality

Per seed s it runs exactly
  python main.py --config=configs/digits.py --workdir=<w>/seed<s> --config.seed=<s>
  python main.py --mode=linear_eval --config=configs/linear_eval_digits.py \
      --pretrain_workdir=<w>/seed<s> --workdir=<w>/seed<s>_linear --config.seed=<s>
(logs in <w>/seed<s>.log and <w>/seed<s>_linear.log) and prints a markdown
table of the held-out metrics (K = 10 head ACC/NMI/ARI, kNN top-1 at k = 20
and 200, linear top-1) with their mean and standard deviation over seeds, and
each run's wall-clock and CPU (user + sys) seconds. Flags after `--` go to both
commands (e.g. `-- --config.num_epochs=50`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_all(jobs: list[tuple[list[str], str]], parallel: bool) -> list[tuple[float, float]]:
  """Runs `main.py <args>` per (args, log path); returns each run's (wall s, CPU s)."""
  results, pending = [], list(jobs)
  while pending:
    batch, pending = (pending, []) if parallel else (pending[:1], pending[1:])
    started = []
    for args, log_path in batch:
      log = open(log_path, "w")
      started.append((log, time.time(), subprocess.Popen(
          [sys.executable, "main.py", *args], cwd=_REPO, stdout=log, stderr=subprocess.STDOUT)))
    for log, start, proc in started:
      _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
      log.close()
      if status:
        raise RuntimeError(f"main.py failed (exit status {status}); see {log.name}.")
      results.append((time.time() - start, usage.ru_utime + usage.ru_stime))
  return results


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default="/tmp/digits_quality")
  parser.add_argument("--parallel", action="store_true",
                      help="run the seeds at the same time (wall times then include contention)")
  parser.add_argument("extra", nargs="*", help="more main.py flags, after --")
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  dirs = [os.path.join(args.workdir, f"seed{seed}") for seed in args.seeds]
  pretrain = _run_all([(["--config=configs/digits.py", f"--workdir={d}",
                         f"--config.seed={seed}", *args.extra], d + ".log")
                       for seed, d in zip(args.seeds, dirs)], args.parallel)
  linear = _run_all([(["--mode=linear_eval", "--config=configs/linear_eval_digits.py",
                       f"--pretrain_workdir={d}", f"--workdir={d}_linear",
                       f"--config.seed={seed}", *args.extra], d + "_linear.log")
                     for seed, d in zip(args.seeds, dirs)], args.parallel)
  rows = []
  for seed, d, pre, lin in zip(args.seeds, dirs, pretrain, linear):
    with open(os.path.join(d, "final_metrics.json")) as f:
      final = json.load(f)
    with open(os.path.join(d + "_linear", "linear_eval_metrics.json")) as f:
      probe = json.load(f)
    head = final["heads"][sorted(final["heads"])[0]]  # k10_0: the head at the true K
    rows.append({"seed": seed, "acc": head["acc"], "nmi": head["nmi"], "ari": head["ari"],
                 "knn20": final["knn"]["k20"]["top1"], "knn200": final["knn"]["k200"]["top1"],
                 "linear": probe["top1"], "pretrain_wall": pre[0], "pretrain_cpu": pre[1],
                 "linear_wall": lin[0], "linear_cpu": lin[1]})
    print(json.dumps(rows[-1]))

  keys = ("acc", "nmi", "ari", "knn20", "knn200", "linear")
  print("| seed | ACC | NMI | ARI | kNN k=20 | kNN k=200 | linear top-1 "
        "| pretrain wall / CPU s | linear wall / CPU s |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k in keys)
          + f" | {r['pretrain_wall']:.0f} / {r['pretrain_cpu']:.0f}"
          + f" | {r['linear_wall']:.0f} / {r['linear_cpu']:.0f} |")
  print("| mean +- std | " + " | ".join(
      f"{np.mean([r[k] for r in rows]):.4f} +- {np.std([r[k] for r in rows]):.4f}"
      for k in keys) + " | | |")


if __name__ == "__main__":
  main()
