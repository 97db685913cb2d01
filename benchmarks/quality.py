"""Quality per objective over seeds: pretraining + kNN/clustering + linear probe, timed.

  python -m benchmarks.quality --objectives coke swav self_classifier --seeds 0 1 2 \
      --workdir /tmp/digits_quality
  python -m benchmarks.quality --dataset fashion_mnist --objectives coke --seeds 0 1 2

Per objective o and seed s it runs exactly
  python main.py --config=configs/<dataset>.py:<o> --workdir=<w>/<o>_seed<s> --config.seed=<s>
  python main.py --mode=linear_eval --config=configs/linear_eval_<dataset>.py:<o> \
      --pretrain_workdir=<w>/<o>_seed<s> --workdir=<w>/<o>_seed<s>_linear --config.seed=<s>
(logs beside them) and prints a markdown table of the held-out metrics (K = 10 head
ACC/NMI/ARI/AMI, kNN top-1 at k = 20 and 200, linear top-1) with their mean and
standard deviation over seeds, the train step's ms and images/s (the run's own
`steps_per_sec`, median over its log points) and each run's wall-clock and CPU (user
+ sys) seconds. `--validation` evaluates on the validation split of the training
images instead (for tuning; no linear probe): 20% of digits, 10% of Fashion-MNIST.
Flags after `--` go to both commands (e.g. `-- --config.num_epochs=50`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tuning split of each dataset's training images (the held-out split is never used).
_VALIDATION_FRACTION = {"digits": 0.2, "fashion_mnist": 0.1}
_BATCH = 128  # configs/digits.py's and configs/fashion_mnist.py's global batch


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


def _steps_per_sec(workdir: str) -> float:
  """The median of clu's steps_per_sec over the run (metrics.jsonl)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [row["steps_per_sec"] for row in map(json.loads, f) if "steps_per_sec" in row]
  return float(np.median(rates))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dataset", choices=sorted(_VALIDATION_FRACTION), default="digits",
                      help="configs/<dataset>.py and configs/linear_eval_<dataset>.py")
  parser.add_argument("--objectives", nargs="+", default=["coke"])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default="", help="default: /tmp/<dataset>_quality")
  parser.add_argument("--validation", action="store_true",
                      help="evaluate on a validation split of the training images (tuning)")
  parser.add_argument("--parallel", action="store_true",
                      help="run the seeds at the same time (wall times then include contention)")
  parser.add_argument("--reuse", action="store_true",
                      help="skip the pretraining of workdirs that hold final_metrics.json "
                           "(e.g. runs started by an interrupted call; their times print as nan)")
  parser.add_argument("extra", nargs="*", help="more main.py flags, after --")
  args = parser.parse_args()
  args.workdir = args.workdir or f"/tmp/{args.dataset}_quality"
  os.makedirs(args.workdir, exist_ok=True)
  extra = args.extra + ([f"--config.dataset.validation_fraction="
                         f"{_VALIDATION_FRACTION[args.dataset]}"] if args.validation else [])
  runs = [(o, seed, os.path.join(args.workdir, f"{o}_seed{seed}"))
          for o in args.objectives for seed in args.seeds]
  finished = {d for _, _, d in runs
              if args.reuse and os.path.exists(os.path.join(d, "final_metrics.json"))}
  done = lambda d: d in finished
  times = iter(_run_all([([f"--config=configs/{args.dataset}.py:{o}", f"--workdir={d}",
                           f"--config.seed={seed}", *extra], d + ".log")
                         for o, seed, d in runs if not done(d)], args.parallel))
  pretrain = [(float("nan"),) * 2 if done(d) else next(times) for _, _, d in runs]
  linear = [(0.0, 0.0)] * len(runs)
  if not args.validation:
    linear = _run_all([(["--mode=linear_eval",
                         f"--config=configs/linear_eval_{args.dataset}.py:{o}",
                         f"--pretrain_workdir={d}", f"--workdir={d}_linear",
                         f"--config.seed={seed}", *extra], d + "_linear.log")
                       for o, seed, d in runs], args.parallel)
  rows = []
  for (objective, seed, d), pre, lin in zip(runs, pretrain, linear):
    with open(os.path.join(d, "final_metrics.json")) as f:
      final = json.load(f)
    probe = {"top1": float("nan")}
    if not args.validation:
      with open(os.path.join(d + "_linear", "linear_eval_metrics.json")) as f:
        probe = json.load(f)
    head = final["heads"]["k10_0"]  # the head at the true K
    rate = _steps_per_sec(d)
    rows.append({"objective": objective, "seed": seed, "acc": head["acc"], "nmi": head["nmi"],
                 "ari": head["ari"], "ami": head["ami"],
                 "knn20": final["knn"]["k20"]["top1"], "knn200": final["knn"]["k200"]["top1"],
                 "linear": probe["top1"], "step_ms": 1e3 / rate, "images_per_s": rate * _BATCH,
                 "pretrain_wall": pre[0], "pretrain_cpu": pre[1], "linear_wall": lin[0],
                 "linear_cpu": lin[1]})
    print(json.dumps(rows[-1]))

  keys = ("acc", "nmi", "ari", "ami", "knn20", "knn200", "linear")
  print("| objective | seed | ACC | NMI | ARI | AMI | kNN k=20 | kNN k=200 | linear top-1 "
        "| step ms | img/s | pretrain wall / CPU s | linear wall / CPU s |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for objective in args.objectives:
    mine = [r for r in rows if r["objective"] == objective]
    for r in mine:
      print(f"| {objective} | {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k in keys)
            + f" | {r['step_ms']:.0f} | {r['images_per_s']:,.0f}"
            + f" | {r['pretrain_wall']:.0f} / {r['pretrain_cpu']:.0f}"
            + f" | {r['linear_wall']:.0f} / {r['linear_cpu']:.0f} |")
    print(f"| {objective} | mean +- std | " + " | ".join(
        f"{np.mean([r[k] for r in mine]):.4f} +- {np.std([r[k] for r in mine]):.4f}"
        for k in keys) + f" | {np.mean([r['step_ms'] for r in mine]):.0f} | "
        f"{np.mean([r['images_per_s'] for r in mine]):,.0f} | | |")


if __name__ == "__main__":
  main()
