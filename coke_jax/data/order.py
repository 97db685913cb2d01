"""Which example goes where: epoch order, padding of the last batch, and host shares.

Pure numpy functions of (seed, epoch, sizes), shared by the train and
evaluation streams.
"""

import math

import numpy as np

from coke_jax import errors


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return math.ceil(num_examples / global_batch)


def per_host_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise errors.ConfigError(
        f"The global batch {global_batch} does not divide over {process_count} processes: "
        "every host must feed the same number of examples per step. Use a multiple of "
        f"{process_count}, e.g. --config.global_batch_size="
        f"{max(1, round(global_batch / process_count)) * process_count}.")
  return global_batch // process_count


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def epoch_plan(seed: int, epoch: int, num_examples: int, global_batch: int):
  """(index, weight), each [steps_per_epoch, global_batch]: which example goes where this epoch.

  The rows past the last example repeat the start of the epoch's order with
  weight 0, so the last batch is full and every example has weight 1 once.
  """
  steps = steps_per_epoch(num_examples, global_batch)
  order = epoch_order(seed, epoch, num_examples)
  index = np.resize(order, steps * global_batch).reshape(steps, global_batch)
  weight = (np.arange(steps * global_batch) < num_examples).astype(np.float32)
  return index, weight.reshape(steps, global_batch)


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[lo, hi): host `process_index`'s contiguous share; shares differ in size by at most one.

  The largest share is ceil(N / P), so with b = global_batch / P every host
  fits its share into ceil(N / global_batch) steps: all hosts run the same
  number of steps per epoch.
  """
  return (process_index * num_examples // process_count,
          (process_index + 1) * num_examples // process_count)


def seed_for(*parts: int) -> int:
  """A non-negative int64 seed derived from integers (for tf.data ops that take one)."""
  return int(np.random.default_rng(list(parts)).integers(2 ** 63 - 1))
