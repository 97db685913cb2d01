"""Stateless TF augmentations: every random draw is a function of an explicit seed.

A view's seed is derived from (run seed, epoch, example index, view), so the
augmentations a run sees do not depend on pipeline position, parallelism or
restarts.
"""

import math

import tensorflow as tf


def view_seed(seed: int, epoch, index, view: int, num_examples: int) -> tf.Tensor:
  """The [2] int64 stateless seed of one view of one example in one epoch."""
  epoch = tf.cast(epoch, tf.int64)
  index = tf.cast(index, tf.int64)
  return tf.stack([tf.constant(seed, tf.int64),
                   (epoch * 1009 + view) * num_examples + index])


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def random_affine(image: tf.Tensor, seed: tf.Tensor, max_rotation_deg: float,
                  scale_range: tuple[float, float], max_shift: float) -> tf.Tensor:
  """Rotation, isotropic scaling and translation about the image center (bilinear, zero fill)."""
  s_rot, s_scale, s_shift = _split(seed, 3)
  h, w = image.shape[0], image.shape[1]
  angle = tf.random.stateless_uniform([], s_rot, -1.0, 1.0) * max_rotation_deg * math.pi / 180
  scale = tf.random.stateless_uniform([], s_scale, scale_range[0], scale_range[1])
  shift = tf.random.stateless_uniform([2], s_shift, -max_shift, max_shift)
  # The transform maps output pixel (x, y) to input pixel, i.e. the inverse motion.
  cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  tx = cx - cos * (cx + shift[0]) + sin * (cy + shift[1])
  ty = cy - sin * (cx + shift[0]) - cos * (cy + shift[1])
  transform = tf.stack([cos, -sin, tx, sin, cos, ty, 0.0, 0.0])[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.constant([h, w]),
      interpolation="BILINEAR", fill_mode="CONSTANT", fill_value=0.0)
  return out[0]


def add_noise(image: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
  return tf.clip_by_value(image + std * tf.random.stateless_normal(tf.shape(image), seed), 0.0, 1.0)


def random_erase(image: tf.Tensor, seed: tf.Tensor, prob: float, size: int) -> tf.Tensor:
  """With probability `prob`, zero a random size x size square (cutout)."""
  s_apply, s_pos = _split(seed, 2)
  h, w = image.shape[0], image.shape[1]
  s_row, s_col = _split(s_pos, 2)  # integer draws take scalar bounds only
  pos = (tf.random.stateless_uniform([], s_row, 0, h - size + 1, dtype=tf.int32),
         tf.random.stateless_uniform([], s_col, 0, w - size + 1, dtype=tf.int32))
  rows = tf.range(h)[:, None, None]
  cols = tf.range(w)[None, :, None]
  inside = ((rows >= pos[0]) & (rows < pos[0] + size) & (cols >= pos[1]) & (cols < pos[1] + size))
  apply = tf.random.stateless_uniform([], s_apply) < prob
  return tf.where(inside & apply, tf.zeros_like(image), image)


def digits_view(image: tf.Tensor, seed: tf.Tensor, config) -> tf.Tensor:
  """One augmented view of an 8x8 digit: affine jitter, cutout, pixel noise."""
  s_affine, s_erase, s_noise = _split(seed, 3)
  image = random_affine(image, s_affine, config.max_rotation_deg, tuple(config.scale_range),
                        config.max_shift)
  if config.erase_prob > 0:
    image = random_erase(image, s_erase, config.erase_prob, config.erase_size)
  if config.noise_std > 0:
    image = add_noise(image, s_noise, config.noise_std)
  return image
