"""tf.data streams of training batches and evaluation images, for every source.

Epoch semantics that CoKe relies on: every training example is seen exactly
once per epoch with weight 1, so its label is written exactly once. An epoch
has ceil(N / global_batch) steps on every host; the rows after the last
example fill the last batch(es) with real images of weight 0: they go through
the network (so BatchNorm sees real images) but add nothing to the loss, the
assignment, the duals, the centers or the label tables.

A batch is a pure function of (seed, epoch, step), so resuming at step s
rebuilds epoch s // steps_per_epoch and starts at its step s % steps_per_epoch:
  * random-access sources (digits, image folders): the epoch is a permutation
    of the ids drawn from (seed, epoch); host p takes columns [p b, (p+1) b)
    of every global batch, so batches do not depend on the number of hosts,
    and resuming skips straight to the step.
  * TFDS record files: host p reads only its contiguous share of the ids
    (`order.host_range`), with its file pieces permuted and a shuffle buffer
    seeded from (seed, epoch, p). Resuming replays the host's stream up to
    the step, reading (not decoding) the records it skips.
Each view's augmentation is drawn from (seed, epoch, id, view).

Images that fail to decode are not dropped (that would shift every later
batch): they keep their place with weight 0, and their number is logged at
the end of the epoch.
"""

import contextlib
import math

from absl import logging
import numpy as np
import tensorflow as tf

from coke_jax import errors
from coke_jax.data import augment
from coke_jax.data import device_augment
from coke_jax.data import order

steps_per_epoch = order.steps_per_epoch
epoch_order = order.epoch_order
epoch_plan = order.epoch_plan


def _host_examples(source, seed: int, epoch: int, global_batch: int, start_step: int,
                   process_index: int, process_count: int) -> tf.data.Dataset:
  """This host's examples {index, weight, label, raw image} of `epoch`, from `start_step` on."""
  per_host = order.per_host_batch(global_batch, process_count)
  num_train = source.num_train
  steps = order.steps_per_epoch(num_train, global_batch)
  if not 0 <= start_step <= steps:
    raise ValueError(f"start_step is {start_step}; an epoch has {steps} steps.")
  if source.random_access:
    index, weight = order.epoch_plan(seed, epoch, num_train, global_batch)
    cols = slice(process_index * per_host, (process_index + 1) * per_host)
    index, weight = index[start_step:, cols].reshape(-1), weight[start_step:, cols].reshape(-1)
    return tf.data.Dataset.from_tensor_slices(
        {"index": index, "weight": weight, **source.lookup("train", index)})
  lo, hi = order.host_range(num_train, process_index, process_count)
  shuffled = source.read("train", lo, hi, shuffle_seed=order.seed_for(seed, epoch, process_index))
  # Padding (at most one batch): the first ids of the host's share in file order (of the
  # split if the share is empty), so filling the last batch reads a few records, not a pass.
  pad_lo = lo if hi > lo else 0
  padding = source.read("train", pad_lo, min(pad_lo + per_host, num_train)).repeat()
  ds = (shuffled.map(lambda e: {**e, "weight": 1.0})
        .concatenate(padding.map(lambda e: {**e, "weight": 0.0}))
        .take(steps * per_host))
  return ds.skip(start_step * per_host)


def _decoded(ds: tf.data.Dataset, source, fallback_size: int) -> tf.data.Dataset:
  """Decodes `image` (or reads `path`) of every example; a failure gives a blank image, ok=False.

  Each example becomes a one-element dataset whose decode error is swallowed
  by `ignore_errors`, followed by the fallback: exactly one element per
  example, in order, however the decoding goes.
  """

  def decode_one(example):
    keep = {k: example[k] for k in ("index", "weight", "label")}
    good = tf.data.Dataset.from_tensors(example).map(
        lambda e: {**keep, "image": source.decode(e), "ok": True}).ignore_errors()
    bad = tf.data.Dataset.from_tensors(
        {**keep, "image": tf.zeros([fallback_size, fallback_size, 3], tf.uint8), "ok": False})
    return good.concatenate(bad).take(1)

  return ds.interleave(decode_one, cycle_length=16, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _finish(example: dict, views: dict) -> dict:
  """The batch row: views, index, label, weight (0 for a bad image) and the `bad` flag."""
  ok = example.get("ok", True)
  weight = example["weight"] * tf.cast(ok, tf.float32)
  return {**views, "index": tf.cast(example["index"], tf.int32), "weight": weight,
          "label": tf.cast(example["label"], tf.int32),
          "bad": tf.logical_and(tf.logical_not(ok), example["weight"] > 0)}


def _batches(ds: tf.data.Dataset, batch_size: int, source, split: str, what: str):
  """Batches as numpy dicts; logs the examples that could not be decoded when the stream ends
  or its consumer stops early (the trainer leaves the last epoch's loop with a `break`)."""
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(2).with_options(options)
  bad = []
  try:
    for batch in ds.as_numpy_iterator():
      bad.extend(batch["index"][batch.pop("bad")].tolist())
      yield batch
  finally:
    if bad:
      names = ", ".join(source.describe(split, i) for i in bad[:10])
      logging.warning("%s: %d image(s) could not be decoded and were skipped (weight 0): %s%s",
                      what, len(bad), names, ", ..." if len(bad) > 10 else "")


def augment_on_device(config) -> bool:
  """`config.augment.on_device`: send uint8 crops and draws, augment inside the step."""
  # Read with a default until config_base declares the key (the trainer's side of the switch).
  return bool(config.augment.get("on_device", False))


def train_batches(source, config, epoch: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """Yields this host's part of each global batch of `epoch`, from `start_step` on.

  Each batch is a dict of numpy arrays: `images` [b, V, H, W, C] (the V large
  views), with multi-crop `small_images` [b, S, h, w, C], `index` [b] int32
  (the example's stable id), `weight` [b] float32 (0 for padding and for
  images that failed to decode) and `label` [b] int32 (the class, -1 if
  unlabeled, for evaluation code; pretraining never reads it), with
  b = global_batch / process_count.

  Natural images come in one of two forms. Host-only (`augment.on_device`
  False): the finished views, float32 and normalized. Device path (True): the
  random resized crops as uint8 with each view's draws, `view_params`
  [b, V, P] (and `small_view_params` [b, S, P']) float32, which
  `device_augment.augment_batch` turns into the same normalized float32 views
  inside the step. Array sources (digits) always send finished float32 views.
  """
  seed, num_train = config.seed, source.num_train
  num_views, num_small = config.num_views, config.num_small_views
  ds = _host_examples(source, seed, epoch, config.global_batch_size, start_step, process_index,
                      process_count)
  if source.encoded:
    large, small = augment.view_specs(config.augment, num_views, num_small, source.image_size)
    ds = _decoded(ds, source, source.image_size)
    on_device = augment_on_device(config)

    def make_views(example):
      image, index = example["image"], example["index"]
      views = {}
      for (image_key, params_key), specs, first in zip(device_augment.VIEW_KEYS,
                                                      (large, small), (0, num_views)):
        if not specs:
          continue
        seeds = [augment.view_seed(seed, epoch, index, first + v, num_train)
                 for v in range(len(specs))]
        if on_device:
          views[image_key] = tf.stack([augment.crop_view_uint8(image, s, spec)
                                       for s, spec in zip(seeds, specs)])
          views[params_key] = tf.stack([augment.view_params(s, spec)
                                        for s, spec in zip(seeds, specs)])
        else:
          views[image_key] = augment.normalize(tf.stack([
              augment.natural_view(image, s, spec) for s, spec in zip(seeds, specs)]))
      return _finish(example, views)
  else:
    if num_small:
      raise errors.ConfigError(
          f"num_small_views={num_small}: multi-crop needs natural images (a TFDS dataset or "
          f"an image folder), not the {source.name!r} arrays. Set --config.num_small_views=0.")

    def make_views(example):
      image, index = example["image"], example["index"]
      views = [augment.digits_view(image, augment.view_seed(seed, epoch, index, v, num_train),
                                   config.augment) for v in range(num_views)]
      return _finish(example, {"images": tf.stack(views)})

  ds = ds.map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  per_host = config.global_batch_size // process_count
  yield from _batches(ds, per_host, source, "train", f"{source.name} epoch {epoch}")


def train_stream(source, config, start_step: int, end_step: int, process_index: int = 0,
                 process_count: int = 1):
  """This host's batches of global steps [start_step, end_step), across epoch boundaries.

  Batch s is batch s % steps_per_epoch of epoch s // steps_per_epoch (epoch 0
  is the scan), exactly as `train_batches` yields it, so one iterator (and one
  `prefetch.DevicePrefetch`) can feed a whole run without stalling at each
  epoch's start. Closing it closes the epoch's `train_batches`.
  """
  spe = steps_per_epoch(source.num_train, config.global_batch_size)
  step = start_step
  while step < end_step:
    epoch, start = divmod(step, spe)
    with contextlib.closing(train_batches(source, config, epoch, start, process_index,
                                          process_count)) as batches:
      for batch in batches:
        yield batch
        step += 1
        if step == end_step:
          return


def eval_batches(source, split: str, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
  """Yields this host's part of each batch of un-augmented `split` images ("train" or "heldout").

  Dicts of numpy arrays: `images` [b, H, W, C] (natural images: the central
  crop, resized and normalized), `label` [b] int32 and `weight` [b] float32,
  b = batch_size / process_count. Host p takes the contiguous share
  `order.host_range` of the split; every host yields ceil(M / batch_size)
  batches, the rows past its share padded with weight 0. "train" means the
  labeled training images (STL-10: its 5k `train`, not the unlabeled ones).
  """
  if split not in ("train", "heldout"):
    raise ValueError(f"split is {split!r}; use 'train' or 'heldout'.")
  name = "eval_train" if split == "train" else split
  per_host = order.per_host_batch(batch_size, process_count)
  num = source.num_examples(name)
  if not num:
    raise errors.ConfigError(f"The {split!r} split of {source.name!r} is empty.")
  lo, hi = order.host_range(num, process_index, process_count)
  total = math.ceil(num / batch_size) * per_host

  def read(a, b):
    if source.random_access:
      ids = np.arange(a, b, dtype=np.int32)
      return tf.data.Dataset.from_tensor_slices({"index": ids, **source.lookup(name, ids)})
    return source.read(name, a, b)

  pad_lo = lo if hi > lo else 0
  padding = read(pad_lo, min(pad_lo + per_host, num)).repeat()
  ds = (read(lo, hi).map(lambda e: {**e, "weight": 1.0})
        .concatenate(padding.map(lambda e: {**e, "weight": 0.0}))
        .take(total))
  if source.encoded:
    size, fraction = source.image_size, source.eval_crop_fraction
    ds = _decoded(ds, source, size).map(
        lambda e: _finish(e, {"images": augment.normalize(augment.center_view(e["image"], size,
                                                                             fraction))}),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda e: _finish(e, {"images": e["image"]}))
  for batch in _batches(ds, per_host, source, name, f"{source.name} {split} evaluation"):
    del batch["index"]
    yield batch
