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

Natural images are augmented on the host (finished float32 views) or, with
`augment.on_device`, only decoded there: the batch carries the image on a
uint8 canvas and each view's crop window and draws, and the step makes the
same views with `device_augment.augment_batch` (benchmarks/
input_pipeline_benchmark.py measures both paths).

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


def _decoded(ds: tf.data.Dataset, decode, fallback) -> tf.data.Dataset:
  """Adds `decode(example)` (a dict) to every example, ok=True; where it fails, `fallback`'s.

  Each example becomes a one-element dataset whose decode error is swallowed
  by `ignore_errors`, followed by the fallback (a blank image, ok=False, built
  only when needed): exactly one element per example, in order, however the
  decoding goes.
  """

  def decode_one(example):
    keep = {k: example[k] for k in ("index", "weight", "label")}
    good = tf.data.Dataset.from_tensors(example).map(
        lambda e: {**keep, **decode(e), "ok": True}).ignore_errors()
    bad = tf.data.Dataset.from_tensors(keep).map(lambda k: {**k, **fallback(k), "ok": False})
    return good.concatenate(bad).take(1)

  return ds.interleave(decode_one, cycle_length=16, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _decoded_images(ds: tf.data.Dataset, source, fallback_size: int,
                    safe: bool = True) -> tf.data.Dataset:
  """Decodes `image` (or reads `path`) of every example; a failure gives a blank image.

  With `safe` False, a plain parallel map instead, whose stream raises at the
  first bad image (`_resilient` then rebuilds it safe from that batch on): the
  per-example datasets of `_decoded` cost about 0.3 CPU-ms per image.
  """
  if safe:
    blank = lambda _: {"image": tf.zeros([fallback_size, fallback_size, 3], tf.uint8)}
    return _decoded(ds, lambda e: {"image": source.decode(e)}, blank)
  return ds.map(lambda e: {**{k: e[k] for k in ("index", "weight", "label")},
                           "image": source.decode(e), "ok": True},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _resilient(batches_from, start_step: int):
  """The batches of `batches_from(step, safe)` from `start_step` on, fast until a bad image.

  A batch is a pure function of (seed, epoch, step), so when the fast stream
  (safe=False) fails on an image, rebuilding the stream safe from the step of
  that batch continues exactly where it stopped; only epochs with a bad image
  pay for the safe decoding, and only from that batch on.
  """
  step, safe = start_step, False
  while True:
    try:
      with contextlib.closing(batches_from(step, safe)) as batches:
        for batch in batches:
          yield batch
          step += 1
      return
    except tf.errors.OpError:
      if safe:
        raise
      logging.info("An image failed to decode at step %d of the epoch; decoding the rest of "
                   "the epoch one example at a time, so that it keeps its place.", step)
      safe = True


def _finish(example: dict, views: dict) -> dict:
  """The batch row: views, index, label, weight (0 for a bad image) and the `bad` flag."""
  ok = example.get("ok", True)
  weight = example["weight"] * tf.cast(ok, tf.float32)
  return {**views, "index": tf.cast(example["index"], tf.int32), "weight": weight,
          "label": tf.cast(example["label"], tf.int32),
          "bad": tf.logical_and(tf.logical_not(ok), example["weight"] > 0)}


def _batches(ds: tf.data.Dataset, batch_size: int, source, split: str, what: str,
             padded: tuple[str, list[int]] | None = None):
  """Batches as numpy dicts; logs the examples that could not be decoded when the stream ends
  or its consumer stops early (the trainer leaves the last epoch's loop with a `break`).
  `padded` = (key, shape): that key's images are zero-padded (bottom, right) to the shape
  while batching, with no copy of their own."""
  options = tf.data.Options()
  options.deterministic = True
  if padded:
    shapes = {k: padded[1] if k == padded[0] else spec.shape
              for k, spec in ds.element_spec.items()}
    ds = ds.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=True)
  else:
    ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(2).with_options(options)
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
  """`config.augment.on_device`: the host only decodes; the views are made inside the step."""
  # Read with a default until config_base declares the key (the trainer's side of the switch).
  return bool(config.augment.get("on_device", False))


def canvas_side(config, source) -> int:
  """`config.augment.canvas_size`, or 0 for `augment.canvas_size(image_size)` (224 px: 512)."""
  return int(config.augment.get("canvas_size", 0)) or augment.canvas_size(source.image_size)


def train_batches(source, config, epoch: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """Yields this host's part of each global batch of `epoch`, from `start_step` on.

  Each batch is a dict of numpy arrays: `images` [b, V, H, W, C] (the V large
  views), with multi-crop `small_images` [b, S, h, w, C], `index` [b] int32
  (the example's stable id), `weight` [b] float32 (0 for padding and for
  images that failed to decode) and `label` [b] int32 (the class, -1 if
  unlabeled, for evaluation code; pretraining never reads it), with
  b = global_batch / process_count.

  Natural images with `augment.on_device` come as the step's inputs instead of
  `images` / `small_images`: `canvas` uint8 [b, K, K, 3] (the decoded image,
  top-left, zero-padded to K = `canvas_side`), `view_params` float32 [b, V, P]
  and with multi-crop `small_view_params` [b, S, P'] (crop windows and random
  draws, `augment.view_params`), which `device_augment.augment_batch` turns
  into the same normalized views as the host-only path. Array sources
  (digits) always send finished float32 views.
  """
  seed, num_train = config.seed, source.num_train
  num_views, num_small = config.num_views, config.num_small_views
  per_host = order.per_host_batch(config.global_batch_size, process_count)
  what = f"{source.name} epoch {epoch}"
  seeds = lambda index, views: [augment.view_seed(seed, epoch, index, v, num_train)
                                for v in views]
  examples = lambda step: _host_examples(source, seed, epoch, config.global_batch_size, step,
                                         process_index, process_count)
  if not source.encoded:
    if num_small:
      raise errors.ConfigError(
          f"num_small_views={num_small}: multi-crop needs natural images (a TFDS dataset or "
          f"an image folder), not the {source.name!r} arrays. Set --config.num_small_views=0.")

    def make_views(example):
      views = [augment.digits_view(example["image"], s, config.augment)
               for s in seeds(example["index"], range(num_views))]
      return _finish(example, {"images": tf.stack(views)})

    ds = examples(start_step).map(make_views, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)
    yield from _batches(ds, per_host, source, "train", what)
    return

  large, small = augment.view_specs(config.augment, num_views, num_small, source.image_size)
  groups = [(keys, specs, range(first, first + len(specs)))
            for keys, specs, first in zip(device_augment.VIEW_KEYS, (large, small),
                                          (0, num_views)) if specs]
  padded = None
  if augment_on_device(config):
    side = canvas_side(config, source)
    padded = (device_augment.CANVAS_KEY, [side, side, 3])

    def make_views(example):
      image = augment.fit_within(example["image"], side)
      windows = augment.crop_windows(tf.shape(image),
                                     seeds(example["index"], range(num_views + num_small)),
                                     large + small)
      inputs = {device_augment.CANVAS_KEY: image}
      for (_, params_key), specs, views in groups:
        inputs[params_key] = tf.stack([
            augment.view_params(s, spec, windows[v])
            for s, spec, v in zip(seeds(example["index"], views), specs, views)])
      return _finish(example, inputs)
  else:

    def make_views(example):
      views = {}
      for (image_key, _), specs, view_ids in groups:
        views[image_key] = augment.normalize(tf.stack([
            augment.natural_view(example["image"], s, spec)
            for s, spec in zip(seeds(example["index"], view_ids), specs)]))
      return _finish(example, views)

  def batches_from(step, safe):
    ds = _decoded_images(examples(step), source, source.image_size, safe).map(
        make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _batches(ds, per_host, source, "train", what, padded=padded)

  yield from _resilient(batches_from, start_step)


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
    ds = _decoded_images(ds, source, size).map(
        lambda e: _finish(e, {"images": augment.normalize(augment.center_view(e["image"], size,
                                                                             fraction))}),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda e: _finish(e, {"images": e["image"]}))
  for batch in _batches(ds, per_host, source, name, f"{source.name} {split} evaluation"):
    del batch["index"]
    yield batch
