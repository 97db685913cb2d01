"""tf.data streams of training batches and evaluation images.

Epoch semantics that CoKe relies on: every training example is seen exactly
once per epoch, so its label is written exactly once. An epoch has
ceil(N / global_batch) steps; the last batch is filled up with examples from
the start of the same epoch's order that are fed through the network (so
BatchNorm sees real images) but carry weight 0: they add nothing to the loss,
the assignment, the duals, the centers or the label tables.

The order of an epoch is a permutation drawn from (seed, epoch), and each
view's augmentation from (seed, epoch, example, view). A batch is therefore a
pure function of (seed, step), which makes restarts exact: resuming at step s
rebuilds the epoch and starts at its row s mod steps_per_epoch.
"""

import math

import numpy as np
import tensorflow as tf

from coke_jax.data import augment


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return math.ceil(num_examples / global_batch)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def epoch_plan(seed: int, epoch: int, num_examples: int, global_batch: int):
  """(index, weight), each [steps_per_epoch, global_batch]: which example goes where this epoch."""
  steps = steps_per_epoch(num_examples, global_batch)
  order = epoch_order(seed, epoch, num_examples)
  index = np.resize(order, steps * global_batch).reshape(steps, global_batch)
  weight = (np.arange(steps * global_batch) < num_examples).astype(np.float32)
  return index, weight.reshape(steps, global_batch)


def train_batches(source, config, epoch: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """Yields this host's part of each global batch of `epoch`, from `start_step` on.

  Each batch is a dict of numpy arrays: `images` [b, V, H, W, C] (V views),
  `index` [b] int32, `weight` [b] float32 and `label` [b] int32 (the class, for
  evaluation code such as the linear probe; pretraining never reads it), with
  b = global_batch / process_count.
  Host p gets columns [p b, (p + 1) b) of the global batch, so the global batch
  does not depend on the number of hosts.
  """
  global_batch = config.global_batch_size
  per_host = global_batch // process_count
  index, weight = epoch_plan(config.seed, epoch, source.num_train, global_batch)
  cols = slice(process_index * per_host, (process_index + 1) * per_host)
  index, weight = index[start_step:, cols].reshape(-1), weight[start_step:, cols].reshape(-1)

  image_fn = source.train_image_fn()
  label_table = tf.constant(source.train_labels)
  num_views, num_train, seed = config.num_views, source.num_train, config.seed
  aug_config = config.augment

  def make_example(i, w):
    image = image_fn(i)
    views = [augment.digits_view(image, augment.view_seed(seed, epoch, i, v, num_train),
                                 aug_config) for v in range(num_views)]
    return {"images": tf.stack(views), "index": i, "weight": w,
            "label": tf.gather(label_table, i)}

  ds = tf.data.Dataset.from_tensor_slices((index, weight))
  ds = ds.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(per_host, drop_remainder=True).prefetch(2)
  return ds.as_numpy_iterator()


def eval_batches(source, split: str, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
  """Yields this host's part of each batch of un-augmented `split` images ("train" or "heldout").

  Dicts of numpy arrays: `images` [b, H, W, C], `label` [b] int32 and `weight`
  [b] float32, b = batch_size / process_count; the last batch is padded with
  weight-0 rows. Host p gets rows [p b, (p + 1) b) of each global batch.
  """
  images, labels = source.eval_arrays(split)
  per_host = batch_size // process_count
  for start in range(0, len(images), batch_size):
    rows = np.arange(start, start + batch_size)
    weight = (rows < len(images)).astype(np.float32)
    rows = np.minimum(rows, len(images) - 1)[process_index * per_host:(process_index + 1) * per_host]
    yield {"images": images[rows], "label": labels[rows],
           "weight": weight[process_index * per_host:(process_index + 1) * per_host]}
