"""The views' random resized crop, colour, blur, solarize, flip and normalization, in the step.

The host only decodes: it sends each example's image as uint8 on a fixed
canvas with every view's random parameters (`augment.view_params`: the crop
window and the draws of `augment.natural_view`, from the same stateless seeds
(seed, epoch, example id, view)). This module makes the views on the
accelerator, as BYOL's JAX code does with its colour augmentations (Grill et
al. 2020, App. B), and like it keeps the recipe of the official CoKe code:

  random resized crop (bilinear, antialiased), torchvision ColorJitter in
  random order (brightness, contrast, saturation, hue), grayscale, Gaussian
  blur, solarize, horizontal flip, then the ImageNet normalization.

Each op has the semantics of its TF counterpart in `augment` (the host-only
path and the reference of tests/data_device_augment_test.py, which holds each
op and whole views to it to 1e-5 in float32). Everything is a pure per-view
function, vmapped over examples and views: no collectives and no randomness
of its own, so it runs on each device's slice inside `jax.shard_map`, and a
view is a function of the host batch alone, hence of (seed, epoch, id, view):
resumes stay bit-exact.

Why the crop is here too: on the host, TF's antialiased resize costs 1.1-1.7
CPU-ms per 224-px view, more than the JPEG decode (benchmarks/
input_pipeline_benchmark.py); on the device it is a few small matrix products.

The per-view parameters travel as one float32 vector (layout `PARAMS`, then the
blur kernel's taps), because a batch is a flat dict of arrays sharded along
its first axis.
"""

import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

# Per-channel statistics of ImageNet, used by the official code for every view.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale (and PIL's convert("L")) use them.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
SOLARIZE_THRESHOLD = 128 / 255  # PIL's ImageOps.solarize default (128 of 255)

# Layout of a view's parameter vector; the blur kernel's 2r + 1 taps follow. The crop window
# (top, left, height, width) is in canvas pixels; inv_scale_y and inv_scale_x are TF's
# 1 / (size / height) and 1 / (size / width), rounded as TF rounds them. Flags are 0 or 1;
# `order` holds the jitter ops' indices (0 brightness, 1 contrast, 2 saturation, 3 hue) in the
# order they apply. A view without blur has the identity kernel (1 in the middle).
PARAMS = ("top", "left", "height", "width", "inv_scale_y", "inv_scale_x",
          "jitter", "brightness", "contrast", "saturation", "hue",
          "order0", "order1", "order2", "order3", "grayscale", "solarize", "flip")
NUM_PARAMS = len(PARAMS)

# Batch keys: the views made and the parameters they are made from (all share the canvas).
CANVAS_KEY = "canvas"
VIEW_KEYS = (("images", "view_params"), ("small_images", "small_view_params"))


class ViewParams(NamedTuple):
  """One view's random parameters (scalars, except `window`, `order` and `blur_kernel`)."""
  window: jax.Array       # int32 [4]: top, left, height, width in canvas pixels
  inv_scale: jax.Array    # float32 [2]: window side / view side, vertical and horizontal
  jitter: jax.Array       # apply ColorJitter at all
  brightness: jax.Array   # factor in [1 - b, 1 + b]
  contrast: jax.Array     # factor in [1 - c, 1 + c]
  saturation: jax.Array   # factor in [1 - s, 1 + s]
  hue: jax.Array          # shift in [-h, h] turns
  order: jax.Array        # int32 [4]
  grayscale: jax.Array
  solarize: jax.Array
  flip: jax.Array
  blur_kernel: jax.Array  # normalized separable Gaussian taps, float32 [2r + 1]

  @classmethod
  def unpack(cls, params: jax.Array) -> "ViewParams":
    """From the float32 vector [NUM_PARAMS + 2r + 1] the host sends."""
    if params.ndim != 1 or params.shape[0] < NUM_PARAMS + 1 or (
        params.shape[0] - NUM_PARAMS) % 2 != 1:
      raise ValueError(
          f"A view's parameters have shape {params.shape}; expected [{NUM_PARAMS} + 2r + 1] "
          "(augment.view_params: the fields of device_augment.PARAMS, then the blur kernel).")
    field = {name: params[i] for i, name in enumerate(PARAMS)}
    stack = lambda names, dtype: jnp.stack([field.pop(n) for n in names]).astype(dtype)
    window = stack(("top", "left", "height", "width"), jnp.int32)
    inv_scale = stack(("inv_scale_y", "inv_scale_x"), jnp.float32)
    order = stack([f"order{i}" for i in range(4)], jnp.int32)
    flags = {k: field.pop(k) > 0.5 for k in ("jitter", "grayscale", "solarize", "flip")}
    return cls(window=window, inv_scale=inv_scale, order=order, blur_kernel=params[NUM_PARAMS:],
               **flags, **field)


# ----------------------------------------------------------------------------- the crop


def _resample_rows(x, start, length, inv_scale, size: int, max_inv_scale: float,
                   block: int = 32):
  """Rows [start, start + length) of x [N, M] resampled to `size` rows, as TF resizes.

  tf.image.resize(antialias=True) with bilinear is TF's ScaleAndTranslate with
  the triangle kernel: output row o samples the window at (o + 0.5) *
  inv_scale, from the rows within max(inv_scale, 1) of it (the kernel is
  widened when shrinking: the antialiasing), with weights normalized to sum
  to 1 over the rows inside the window. A block of `block` consecutive output
  rows reads a bounded run of input rows, so each block is one small matrix
  product with a dynamic start instead of a product with all N rows.
  """
  n = x.shape[0]
  kernel_scale = jnp.maximum(inv_scale, 1.0)
  block = min(block, size)
  span = min(n, math.ceil(block * max_inv_scale + 2 * max(max_inv_scale, 1.0)) + 2)
  out = []
  for first in range(0, size, block):
    sample = (jnp.arange(first, first + block, dtype=jnp.float32) + 0.5) * inv_scale
    lowest = jnp.floor(sample[0] - kernel_scale - 0.5).astype(jnp.int32) + start
    begin = jnp.clip(lowest, 0, n - span)
    pos = begin - start + jnp.arange(span)  # window coordinates of the rows read
    weight = jnp.maximum(0.0, 1.0 - jnp.abs((pos + 0.5 - sample[:, None]) *
                                            (1.0 / kernel_scale)))
    weight = jnp.where((pos >= 0) & (pos < length), weight, 0.0)
    # Rows of the last block past `size` have no weight; they are dropped below (no 0 / 0).
    weight = weight * (1.0 / jnp.maximum(jnp.sum(weight, axis=1, keepdims=True), 1e-30))
    rows = lax.dynamic_slice_in_dim(x, begin, span, axis=0)
    # HIGHEST: float32 products on every backend (no TF32 or bfloat16 passes on a GPU).
    out.append(jnp.dot(weight, rows, precision=lax.Precision.HIGHEST))
  return jnp.concatenate(out)[:size]


def resized_crop(canvas: jax.Array, window: jax.Array, inv_scale: jax.Array,
                 size: int) -> jax.Array:
  """The window of a uint8 canvas [C, C, 3] resized to planes [3, size, size] in [0, 1].

  As `augment.crop_view`: the window (top, left, height, width) resized with
  antialiased bilinear interpolation, divided by 255 and clipped. Rows first,
  then columns, as TF does. `inv_scale` comes from the host: computed here,
  XLA may simplify 1 / (size / h) into h / size, which moves the sample
  positions by an ulp and the result by up to 2e-5.
  """
  c = canvas.shape[0]
  top, left, height, width = window[0], window[1], window[2], window[3]
  x = canvas.astype(jnp.float32).reshape(c, c * 3)
  rows = _resample_rows(x, top, height, inv_scale[0], size, c / size)        # [S, C * 3]
  x = jnp.swapaxes(rows.reshape(size, c, 3), 0, 1).reshape(c, size * 3)     # [C, S * 3]
  cols = _resample_rows(x, left, width, inv_scale[1], size, c / size)       # [S, S * 3]
  planes = jnp.transpose(cols.reshape(size, size, 3), (2, 1, 0))            # [3, rows, cols]
  return jnp.clip(planes / 255.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- the ops
# Each takes and returns one view as channel planes, float32 [3, H, W] in [0, 1]: per-pixel
# colour arithmetic and the blur's shifted sums then run over contiguous rows (3 to 5x faster
# on a CPU than interleaved [H, W, 3], whose innermost axis of 3 does not vectorize).


def grayscale(planes: jax.Array) -> jax.Array:
  """Luma [H, W], as tf.image.rgb_to_grayscale."""
  w_r, w_g, w_b = GRAY_WEIGHTS
  return w_r * planes[0] + w_g * planes[1] + w_b * planes[2]


def _blend(planes, other, factor):
  """torchvision's _blend: factor * view + (1 - factor) * other, clipped to [0, 1]."""
  return jnp.clip(factor * planes + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(planes, factor):
  return jnp.clip(planes * factor, 0.0, 1.0)


def adjust_contrast(planes, factor):
  """Blend with the mean gray level of the view."""
  return _blend(planes, jnp.mean(grayscale(planes)), factor)


def adjust_saturation(planes, factor):
  """Blend with the view's grayscale image."""
  return _blend(planes, grayscale(planes), factor)


def adjust_hue(planes, delta):
  """Rotates the hue by `delta` turns, keeping value and saturation (tf.image.adjust_hue).

  In the HSV hexcone a hue rotation keeps each pixel's largest and smallest
  channel; only which channel is largest, which smallest, and the middle
  channel's value change. Hue h in [0, 6) is sector floor(h) plus the middle
  channel's position between min and max (rising in even sectors, falling in
  odd ones).
  """
  r, g, b = planes[0], planes[1], planes[2]
  hi = jnp.maximum(jnp.maximum(r, g), b)
  lo = jnp.minimum(jnp.minimum(r, g), b)
  mid = jnp.maximum(jnp.minimum(r, g), jnp.minimum(jnp.maximum(r, g), b))  # the median
  spread = hi - lo
  # Which channel is largest and which smallest gives the sector (0: r >= g >= b, 1: g > r >= b,
  # ...); ties may fall on either side, both give the same hue.
  sector = jnp.where(r >= g, jnp.where(b < g, 0, jnp.where(b > r, 4, 5)),
                     jnp.where(b < r, 1, jnp.where(b > g, 3, 2)))
  ratio = (mid - lo) / jnp.where(spread > 0, spread, 1.0)
  hue = jnp.where(spread > 0, sector + jnp.where(sector % 2 == 0, ratio, 1.0 - ratio), 0.0)
  hue = hue + delta * 6.0
  hue = jnp.where(hue < 0, hue + 6.0, hue)
  hue = jnp.where(hue >= 6.0, hue - 6.0, hue)
  sector = jnp.floor(hue).astype(jnp.int32)
  frac = hue - sector
  mid = lo + jnp.where(sector % 2 == 0, frac, 1.0 - frac) * spread
  # Each channel's value in sectors 0..5 (h: largest, m: middle, l: smallest).
  value = {"h": hi, "m": mid, "l": lo}
  channels = [jnp.select([sector == s for s in range(5)], [value[c] for c in table[:5]],
                         value[table[5]])
              for table in ("hmllmh", "mhhmll", "llmhhm")]  # r, g, b
  return jnp.clip(jnp.stack(channels), 0.0, 1.0)


def _blend_step(planes, op, params: ViewParams, apply):
  """Brightness (op 0), contrast (1) or saturation (2) where `apply`, else the view unchanged.

  All three are blends, factor * x + (1 - factor) * other with other = 0, the
  mean gray level or the gray image: one blend with the op's factor and other
  serves every op. Brightness's (1 - f) * 0 adds nothing, and factor 1 leaves
  a view in [0, 1] exactly as it is, so a skipped step costs no rounding.
  """
  gray = grayscale(planes)
  other = jnp.where(op == 1, jnp.mean(gray), jnp.where(op == 2, gray, 0.0))
  factor = jnp.where(op == 0, params.brightness,
                     jnp.where(op == 1, params.contrast, params.saturation))
  return _blend(planes, other, jnp.where(apply, factor, 1.0))


def color_jitter(planes, params: ViewParams):
  """torchvision's ColorJitter: the four adjustments in the order `params.order`.

  Under vmap each view has its own order, so a data-dependent branch would
  compute every op at every position; here the costly hue rotation runs once:
  the blends at positions 0-2 that come before it, the hue, then the blends at
  positions 1-3 after it (a skipped blend is the identity). The seven steps
  are a loop so that each step's view is stored: unrolled, XLA fuses the
  blends into the hue's per-channel loops and recomputes them for every
  channel they feed (2.3x slower on a CPU).
  """
  hue_at = jnp.argmax(params.order == 3)

  def step(x, j):
    def blend(x):
      i = jnp.where(j < 3, j, j - 3)
      return _blend_step(x, params.order[i], params, jnp.where(j < 3, i < hue_at, i > hue_at))
    return lax.cond(j == 3, lambda x: adjust_hue(x, params.hue), blend, x), None

  return lax.scan(step, planes, jnp.arange(7))[0]


def gaussian_blur(planes, kernel):
  """Separable blur with the taps `kernel` [2r + 1] and reflect padding (augment.gaussian_blur).

  A view is square, so the horizontal pass is the vertical pass on the
  transposed view: a loop of two passes, each a sum of 2r + 1 shifted copies
  (plain float32 multiply-adds on every backend, no TF32 convolution; the
  kernel may differ per view under vmap). The loop also stores the view
  before each pass: fused with their producers, the shifted reads would
  recompute the colour ops for every tap (4x slower on a CPU).
  """
  radius = (kernel.shape[0] - 1) // 2
  _, h, w = planes.shape
  if h != w or radius >= h:
    raise ValueError(f"A blur kernel of {kernel.shape[0]} taps needs square views larger than "
                     f"{radius} px; the view is {h}x{w}. Draw it with augment.view_params.")

  def vertical_then_transpose(x, _):
    padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    blurred = sum(kernel[i] * padded[:, i:i + h] for i in range(2 * radius + 1))
    return jnp.swapaxes(blurred, 1, 2), None

  return lax.scan(vertical_then_transpose, planes, None, length=2)[0]


def solarize(planes):
  """PIL's ImageOps.solarize at threshold 128: invert the bright pixels."""
  return jnp.where(planes >= SOLARIZE_THRESHOLD, 1.0 - planes, planes)


def normalize(planes):
  """ImageNet normalization of planes [3, H, W]."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)[:, None, None]
  std = jnp.asarray(IMAGENET_STD, jnp.float32)[:, None, None]
  return (planes - mean) / std


# ----------------------------------------------------------------------------- views and batches


def augment_view(canvas: jax.Array, params: jax.Array, size: int) -> jax.Array:
  """One view [size, size, 3], float32 and normalized, of a uint8 canvas [C, C, 3].

  `params` is the view's vector (`augment.view_params`). The order of the
  official code: crop, jitter, grayscale, blur, solarize, flip; then
  normalization.
  """
  p = ViewParams.unpack(params)
  x = resized_crop(canvas, p.window, p.inv_scale, size)
  x = jnp.where(p.jitter, color_jitter(x, p), x)
  x = jnp.where(p.grayscale, grayscale(x)[None], x)
  x = gaussian_blur(x, p.blur_kernel)  # identity kernel when the view draws no blur
  x = jnp.where(p.solarize, solarize(x), x)
  x = jnp.where(p.flip, x[:, :, ::-1], x)
  return jnp.moveaxis(normalize(x), 0, -1)


def augment_batch(batch: dict[str, jax.Array], image_size: int,
                  small_image_size: int = 0) -> dict[str, jax.Array]:
  """The batch the forward pass consumes, from the batch the host sends.

  The host batch (`input_pipeline.train_batches` with `augment.on_device`)
  holds `canvas` uint8 [b, C, C, 3] (each example's image, top-left, zero
  padded), `view_params` float32 [b, V, P] and, with multi-crop,
  `small_view_params` [b, Sm, P']. They become `images` float32 [b, V,
  image_size, image_size, 3] and `small_images` [b, Sm, small_image_size,
  small_image_size, 3], normalized as the forward pass takes them; the canvas
  and parameters are dropped and every other key (index, weight, label)
  passes through. A batch without a canvas (the digits arrays, or the
  host-only path's finished views) is returned unchanged, so the step may
  call this unconditionally. Per example and view: safe on a device's slice
  inside `jax.shard_map`.
  """
  if CANVAS_KEY not in batch:
    return batch
  out = dict(batch)
  canvas = out.pop(CANVAS_KEY)
  if canvas.dtype != jnp.uint8 or canvas.ndim != 4 or canvas.shape[1] != canvas.shape[2]:
    raise ValueError(f"canvas is {canvas.dtype} {canvas.shape}; expected uint8 [b, C, C, 3] "
                     "(input_pipeline.train_batches with augment.on_device).")
  for (image_key, params_key), size in zip(VIEW_KEYS, (image_size, small_image_size)):
    if params_key not in out:
      continue
    params = out.pop(params_key)
    if not size or params.shape[0] != canvas.shape[0]:
      raise ValueError(f"{params_key} is {params.shape} for a canvas {canvas.shape} and view "
                       f"size {size}; expected [b, views, P] and the view's side in pixels.")
    per_example = jax.vmap(lambda c, p, s=size: augment_view(c, p, s), in_axes=(None, 0))
    out[image_key] = jax.vmap(per_example)(canvas, params)
  return out
