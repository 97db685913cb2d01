"""Writes a PNG grid of the views training sees: one row per example, original first.

  python -m coke_jax.data.show_augmentations --config=configs/digits.py \
      --out=docs/images/digits_views.png

The views come from `input_pipeline.train_batches` (the first batch of
--epoch) and, for natural images, the device path (`augment.on_device`: the
decoded image and the views' draws from the host, then
`device_augment.augment_batch`), so the grid shows exactly what a run with
this config trains on.
Columns: the un-augmented image (natural images: the evaluation crop), the
large views, then the multi-crop small views (drawn at their own size).
"""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from coke_jax.data import augment
from coke_jax.data import device_augment
from coke_jax.data import input_pipeline
from coke_jax.data import sources


def _define_flags():
  """The command line's flags, defined only when run as a program: `--config` is also
  main.py's and export's flag, and absl flags are process-wide (tests import all three)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("out", None, "Where to write the PNG.")
  flags.DEFINE_integer("num_examples", 8, "Rows: examples of the first batch.")
  flags.DEFINE_integer("epoch", 1, "Epoch whose first batch is shown.")
  flags.DEFINE_integer("min_cell", 96, "Small images are enlarged (nearest neighbour) to at "
                       "least this many pixels per cell.")
  flags.mark_flags_as_required(["config", "out"])


def _originals(source, index: np.ndarray) -> np.ndarray:
  """Un-augmented images [n, H, W, C] in [0, 1] of training ids `index`."""
  if not source.encoded:
    return source.lookup("train", index)["image"]
  out = []
  for i in index.tolist():
    if source.random_access:
      example = {k: tf.constant(v[0]) for k, v in source.lookup("train", np.array([i])).items()}
    else:
      example = next(iter(source.read("train", i, i + 1)))
    try:
      image = source.decode(example)
    except tf.errors.InvalidArgumentError:
      image = tf.zeros([1, 1, 3], tf.uint8)
    out.append(augment.center_view(image, source.image_size, source.eval_crop_fraction).numpy())
  return np.stack(out)


def _to_display(images: np.ndarray, encoded: bool) -> np.ndarray:
  """Normalized views back to [0, 1] RGB."""
  if encoded:
    images = images * np.asarray(augment.IMAGENET_STD) + np.asarray(augment.IMAGENET_MEAN)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, -1)
  return np.clip(images, 0.0, 1.0)


def grid(rows: list[list[np.ndarray]], cell: int, gap: int = 2) -> np.ndarray:
  """Images [h, w, 3] in [0, 1] laid out top-left in cells of `cell` pixels; uint8 result."""
  cols = max(len(r) for r in rows)
  out = np.ones((len(rows) * (cell + gap) + gap, cols * (cell + gap) + gap, 3), np.float32)
  for r, row in enumerate(rows):
    for c, image in enumerate(row):
      y, x = gap + r * (cell + gap), gap + c * (cell + gap)
      out[y:y + image.shape[0], x:x + image.shape[1]] = image
  return (out * 255).round().astype(np.uint8)


def render(config, num_examples: int, epoch: int, min_cell: int) -> np.ndarray:
  """The grid (uint8 [H, W, 3]) for `config`."""
  source = sources.get_source(config.dataset)
  num_examples = min(num_examples, source.num_train)
  with config.unlocked():
    config.global_batch_size = num_examples
    config.augment.on_device = True
  batch = next(iter(input_pipeline.train_batches(source, config, epoch)))
  make_views = functools.partial(device_augment.augment_batch, image_size=source.image_size
                                 if source.encoded else 0,
                                 small_image_size=config.augment.small_image_size)
  batch = jax.device_get(jax.jit(make_views)(batch))
  originals = _to_display(_originals(source, batch["index"]), False)
  large = _to_display(batch["images"], source.encoded)
  small = _to_display(batch["small_images"], True) if "small_images" in batch else None
  scale = max(1, -(-min_cell // large.shape[2]))  # integer zoom, so pixels stay sharp
  zoom = lambda x: np.repeat(np.repeat(x, scale, 0), scale, 1)
  rows = []
  for n in range(num_examples):
    row = [zoom(originals[n])] + [zoom(v) for v in large[n]]
    if small is not None:
      row += [zoom(v) for v in small[n]]
    rows.append(row)
  return grid(rows, cell=large.shape[2] * scale)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  image = render(args.config, args.num_examples, args.epoch, args.min_cell)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  tf.io.write_file(args.out, tf.io.encode_png(image))
  print(f"Wrote {args.out} ({image.shape[1]}x{image.shape[0]}).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
