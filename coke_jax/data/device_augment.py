"""Colour, blur, solarize, flip and normalization of the views, inside the jitted step.

The host decodes, crops and resizes every view and sends it as uint8 with its
random parameters (`augment.view_params`, drawn from the same stateless seeds
(seed, epoch, example id, view) as `augment.natural_view`); this module applies
the rest of the official CoKe recipe on the accelerator, as BYOL's JAX code does
with its colour augmentations (Grill et al. 2020, Sec. 3.3 and App. B):

  torchvision ColorJitter in random order (brightness, contrast, saturation,
  hue), grayscale, Gaussian blur, solarize, horizontal flip, then the ImageNet
  normalization.

Each op has the semantics of its TF counterpart in `augment` (the host-only
path and the reference of tests/data_device_augment_test.py, which holds them
to 1e-5 in float32). Everything is a pure per-view function, vmapped over
examples and views: no collectives and no randomness of its own, so it runs
on each device's slice inside `jax.shard_map`, and a view is a function of the
host batch alone, hence of (seed, epoch, id, view): resumes stay bit-exact.

The per-view parameters travel as one float32 vector (layout `PARAMS`, then the
blur kernel's taps), because a batch is a flat dict of arrays sharded along
its first axis.
"""

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

# Layout of a view's parameter vector; the blur kernel's 2r + 1 taps follow. Flags are 0 or 1;
# `order` holds the jitter ops' indices (0 brightness, 1 contrast, 2 saturation, 3 hue) in the
# order they apply. A view without blur has the identity kernel (1 in the middle).
PARAMS = ("jitter", "brightness", "contrast", "saturation", "hue",
          "order0", "order1", "order2", "order3", "grayscale", "solarize", "flip")
NUM_PARAMS = len(PARAMS)

# Batch keys: the uint8 views and the parameters that go with them.
VIEW_KEYS = (("images", "view_params"), ("small_images", "small_view_params"))


class ViewParams(NamedTuple):
  """One view's random parameters (scalars, except `order` [4] and `blur_kernel` [2r + 1])."""
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
    order = jnp.stack([field.pop(f"order{i}") for i in range(4)]).astype(jnp.int32)
    flags = {k: field.pop(k) > 0.5 for k in ("jitter", "grayscale", "solarize", "flip")}
    return cls(order=order, blur_kernel=params[NUM_PARAMS:], **flags, **field)


# ----------------------------------------------------------------------------- the ops
# Each takes and returns one view as channel planes, float32 [3, H, W] in [0, 1]: per-pixel
# colour arithmetic and the blur's shifted sums then run over contiguous rows (3 to 5x faster
# on a CPU than interleaved [H, W, 3], whose innermost axis of 3 does not vectorize).


def to_planes(view: jax.Array) -> jax.Array:
  """uint8 [H, W, 3] -> float32 planes [3, H, W] in [0, 1] (as `augment.resize` scales)."""
  return jnp.moveaxis(view, -1, 0).astype(jnp.float32) / 255.0


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


def augment_view(view: jax.Array, params: jax.Array) -> jax.Array:
  """One uint8 view [S, S, 3] and its parameter vector -> float32 normalized view [S, S, 3].

  The order of the official code after the crop: jitter, grayscale, blur,
  solarize, flip; then normalization.
  """
  p = ViewParams.unpack(params)
  x = to_planes(view)
  x = jnp.where(p.jitter, color_jitter(x, p), x)
  x = jnp.where(p.grayscale, grayscale(x)[None], x)
  x = gaussian_blur(x, p.blur_kernel)  # identity kernel when the view draws no blur
  x = jnp.where(p.solarize, solarize(x), x)
  x = jnp.where(p.flip, x[:, :, ::-1], x)
  return jnp.moveaxis(normalize(x), 0, -1)


def augment_batch(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch the forward pass consumes, from the batch the host sends.

  `images` uint8 [b, V, S, S, 3] with `view_params` float32 [b, V, P], and
  optionally `small_images` uint8 [b, Sm, s, s, 3] with `small_view_params`
  [b, Sm, P'], become float32 normalized `images` / `small_images` of the same
  shapes; the parameter keys are dropped and every other key (index, weight,
  label) passes through. A batch without parameters (the digits arrays, or the
  host-only path's finished views) is returned unchanged, so the step may call
  this unconditionally. Per example and view: safe on a device's slice inside
  `jax.shard_map`.
  """
  out = dict(batch)
  for image_key, params_key in VIEW_KEYS:
    if params_key not in batch:
      continue
    images, params = batch[image_key], out.pop(params_key)
    if images.dtype != jnp.uint8 or images.shape[:2] != params.shape[:2]:
      raise ValueError(
          f"{image_key} is {images.dtype} {images.shape} and {params_key} {params.shape}; "
          f"expected uint8 [b, V, S, S, 3] views with parameters [b, V, P] (the batches of "
          "input_pipeline.train_batches with augment.on_device).")
    out[image_key] = jax.vmap(jax.vmap(augment_view))(images, params)
  return out
