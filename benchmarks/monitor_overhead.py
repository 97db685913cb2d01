"""The per-step cost of the NaN/inf watch (`monitor.NonFiniteCheck.note`) in the training loop.

  python -m benchmarks.monitor_overhead --steps=30 --repeats=5

Times the smoke config's learning step on all local devices, with and without
noting its metrics after each step (the note itself never waits for the
device), and prints a table of the median ms per step, then the cost of one
note on ready metrics.
"""

import statistics
import time

from absl import app
from absl import flags
import jax

from coke_jax import monitor
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from configs import smoke

_STEPS = flags.DEFINE_integer("steps", 30, "Steps per timed block.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed blocks per variant (median reported).")
# Unbounded run-ahead of collective steps can stall XLA's CPU rendezvous (8 virtual devices
# on few cores); the trainer waits for the metrics at every log step.
_SYNC = flags.DEFINE_integer("sync_every", 10, "Wait for the device every this many steps.")


def main(argv):
  del argv
  config = smoke.get_config()
  mesh = sharding.make_mesh()
  source = sources.get_source(config.dataset)
  trainer = train.Trainer(config, source, mesh)
  host_batch = next(input_pipeline.train_batches(source, config, epoch=1))
  batch = sharding.global_batch_from_host(host_batch, mesh)
  state = trainer.init_state()
  check = monitor.NonFiniteCheck(mesh)

  def block(note: bool) -> float:
    nonlocal state
    start = time.perf_counter()
    for i in range(_STEPS.value):
      state, metrics = trainer.learn_step(state, batch)
      if note:
        check.note(i, metrics)
      if i % _SYNC.value == _SYNC.value - 1:  # as the trainer's log steps do
        jax.block_until_ready(metrics)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / _STEPS.value * 1e3

  block(True)  # compile both
  times = {False: [], True: []}
  for _ in range(_REPEATS.value):
    for note in (False, True):
      times[note].append(block(note))
  base, watched = statistics.median(times[False]), statistics.median(times[True])
  _, metrics = trainer.learn_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(1000):
    check.note(i, metrics)
  jax.block_until_ready(check._first_bad)  # pylint: disable=protected-access
  note_us = (time.perf_counter() - start) * 1e3
  print(f"{jax.device_count()} {jax.devices()[0].platform} devices, smoke config, "
        f"global batch {config.global_batch_size}")
  print("| variant | ms/step (median) |\n| --- | --- |")
  print(f"| step | {base:.2f} |\n| step + NonFiniteCheck.note | {watched:.2f} |")
  print(f"| difference | {watched - base:+.2f} ({(watched - base) / base:+.1%}) |")
  print(f"NonFiniteCheck.note alone (metrics ready): {note_us:.0f} us per call")


if __name__ == "__main__":
  app.run(main)
