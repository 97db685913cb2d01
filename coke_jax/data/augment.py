"""Stateless TF augmentations: every random draw is a function of an explicit seed.

A view's seed is derived from (run seed, epoch, example index, view), so the
augmentations a run sees do not depend on pipeline position, parallelism or
restarts.
"""

import dataclasses
import functools
import math

import tensorflow as tf

from coke_jax.data import device_augment


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
  """One augmented view of a small array image (digits, Fashion-MNIST): a horizontal flip
  with probability `mirror_prob` (clothes are left-right symmetric, digits are not), affine
  jitter, brightness and contrast (`gray_jitter`, ColorJitter's factors), cutout, pixel
  noise."""
  s_affine, s_erase, s_noise = _split(seed, 3)
  # The flip's and the jitter's draws come from their own seeds, so that the other draws
  # stay what they were before these keys existed.
  image = _maybe(tf.random.experimental.stateless_fold_in(seed, 3), config.mirror_prob,
                 lambda x: x[:, ::-1], image)
  image = random_affine(image, s_affine, config.max_rotation_deg, tuple(config.scale_range),
                        config.max_shift)
  brightness, contrast = config.gray_jitter
  if brightness > 0 or contrast > 0:
    s_b, s_c = _split(tf.random.experimental.stateless_fold_in(seed, 4), 2)
    image = _brightness(image, _jitter_factor(s_b, brightness))
    image = _contrast(image, tf.reduce_mean(image), _jitter_factor(s_c, contrast))
  if config.erase_prob > 0:
    image = random_erase(image, s_erase, config.erase_prob, config.erase_size)
  if config.noise_std > 0:
    image = add_noise(image, s_noise, config.noise_std)
  return image


# ---------------------------------------------------------------------------
# Natural images (ImageNet, CIFAR, STL-10, image folders).
#
# The recipes follow the official CoKe code (torchvision semantics): random
# resized crop, color jitter in random order with probability 0.8, grayscale
# 0.2, Gaussian blur, solarize, horizontal flip. Views take and return float32
# images in [0, 1]; normalization happens after the views are stacked.
# ---------------------------------------------------------------------------

# Per-channel statistics of ImageNet, used by the official code for every view.
IMAGENET_MEAN = device_augment.IMAGENET_MEAN
IMAGENET_STD = device_augment.IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """How to draw one augmented view of a natural image (all probabilities in [0, 1])."""
  size: int                                   # output side in pixels
  crop_scale: tuple[float, float]             # area fraction of the crop
  crop_ratio: tuple[float, float]             # aspect ratio w / h of the crop
  jitter: tuple[float, float, float, float]   # brightness, contrast, saturation, hue
  jitter_prob: float
  grayscale_prob: float
  blur_prob: float
  blur_sigma: tuple[float, float]             # pixels of the output view
  solarize_prob: float
  flip_prob: float


def _per_view(values, view: int):
  """Entry `view` of a per-view tuple; views past its end take the last entry."""
  values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
  return values[min(view, len(values) - 1)]


def view_specs(aug_config, num_views: int, num_small_views: int,
               image_size: int) -> tuple[list[ViewSpec], list[ViewSpec]]:
  """(large, small) view recipes from `config.augment`.

  Large views differ only in their blur and solarize probabilities (the
  asymmetric pair of the official two-view code: blur 1.0 / 0.1, solarize
  0.0 / 0.2); small (multi-crop) views share one recipe.
  """
  a = aug_config
  large = [ViewSpec(size=image_size, crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio),
                    jitter=tuple(a.jitter), jitter_prob=a.jitter_prob,
                    grayscale_prob=a.grayscale_prob, blur_prob=_per_view(a.blur_prob, v),
                    blur_sigma=tuple(a.blur_sigma), solarize_prob=_per_view(a.solarize_prob, v),
                    flip_prob=a.flip_prob)
           for v in range(num_views)]
  small = [ViewSpec(size=a.small_image_size, crop_scale=tuple(a.small_crop_scale),
                    crop_ratio=tuple(a.crop_ratio), jitter=tuple(a.small_jitter),
                    jitter_prob=a.jitter_prob, grayscale_prob=a.grayscale_prob,
                    blur_prob=a.small_blur_prob, blur_sigma=tuple(a.blur_sigma),
                    solarize_prob=0.0, flip_prob=a.flip_prob)] * num_small_views
  return large, small


def random_resized_crop_window(seed: tf.Tensor, height, width, scale: tuple[float, float],
                               ratio: tuple[float, float], attempts: int = 10):
  """(top, left, h, w) of a crop as torchvision's RandomResizedCrop draws it.

  Up to `attempts` draws of an area fraction in `scale` and a log-uniform
  aspect ratio in `ratio`; the first that fits wins. If none fits, the
  largest centered crop whose aspect ratio is clamped to `ratio`.
  """
  s_area, s_ratio, s_top, s_left = _split(seed, 4)
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = height_f * width_f * tf.random.stateless_uniform([attempts], s_area, scale[0], scale[1])
  aspect = tf.exp(tf.random.stateless_uniform([attempts], s_ratio, math.log(ratio[0]),
                                              math.log(ratio[1])))
  w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)

  in_ratio = width_f / height_f
  fallback_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(height_f * ratio[1]), tf.int32),
                        width)
  fallback_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(width_f / ratio[0]), tf.int32),
                        height)
  h = tf.where(found, h[first], fallback_h)
  w = tf.where(found, w[first], fallback_w)
  u_top = tf.random.stateless_uniform([attempts], s_top)[first]
  u_left = tf.random.stateless_uniform([attempts], s_left)[first]
  # torchvision: randint(0, height - h + 1), i.e. uniform over the valid offsets.
  top = tf.where(found, tf.cast(u_top * tf.cast(height - h + 1, tf.float32), tf.int32),
                 (height - h) // 2)
  left = tf.where(found, tf.cast(u_left * tf.cast(width - w + 1, tf.float32), tf.int32),
                  (width - w) // 2)
  return tf.minimum(top, height - h), tf.minimum(left, width - w), h, w


def resize(image: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize with antialiasing (PIL's behaviour when shrinking), to float32 in [0, 1]."""
  image = tf.image.resize(image, size, method="bilinear", antialias=True)
  return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def _blend(image, other, factor):
  return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _uniform(seed, low, high):
  return tf.random.stateless_uniform([], seed, low, high)


def _jitter_factor(seed, strength: float):
  """ColorJitter's factor for brightness, contrast or saturation: uniform in [1 - s, 1 + s]."""
  return _uniform(seed, max(0.0, 1 - strength), 1 + strength)


def _brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def _contrast(image, mean_gray, factor):
  """A blend with the image's mean gray level."""
  return _blend(image, mean_gray, factor)


def jitter_params(seed: tf.Tensor, strength: tuple[float, float, float, float]):
  """ColorJitter's random draws: (brightness, contrast, saturation, hue, order [4] int32).

  Brightness, contrast and saturation factors are uniform in [1 - s, 1 + s],
  the hue shift uniform in [-h, h] turns; `order` lists the ops (0
  brightness, 1 contrast, 2 saturation, 3 hue) in the order they apply.
  """
  brightness, contrast, saturation, hue = strength
  s_order, s_b, s_c, s_s, s_h = _split(seed, 5)
  f_b = _jitter_factor(s_b, brightness)
  f_c = _jitter_factor(s_c, contrast)
  f_s = _jitter_factor(s_s, saturation)
  d_h = _uniform(s_h, -hue, hue)
  order = tf.argsort(tf.random.stateless_uniform([4], s_order))
  return f_b, f_c, f_s, d_h, order


def color_jitter(image: tf.Tensor, seed: tf.Tensor,
                 strength: tuple[float, float, float, float]) -> tf.Tensor:
  """torchvision's ColorJitter: brightness, contrast, saturation, hue in a random order.

  Brightness scales, contrast blends with the mean gray level, saturation
  with the grayscale image, hue rotates in HSV (draws: `jitter_params`).
  """
  f_b, f_c, f_s, d_h, order = jitter_params(seed, strength)
  ops = [lambda x: _brightness(x, f_b),
         lambda x: _contrast(x, tf.reduce_mean(tf.image.rgb_to_grayscale(x)), f_c),
         lambda x: _blend(x, tf.image.rgb_to_grayscale(x), f_s),
         lambda x: tf.clip_by_value(tf.image.adjust_hue(x, d_h), 0.0, 1.0)]
  for i in range(4):
    image = tf.switch_case(order[i], [functools.partial(op, image) for op in ops])
  return image


def blur_radius(sigma_max: float, height: int, width: int) -> int:
  """Kernel radius: 3 sigma, kept below the view's side (reflect padding needs it)."""
  return max(1, min(math.ceil(3 * sigma_max), height - 1, width - 1))


def blur_kernel(sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """The normalized Gaussian taps [2 radius + 1] of standard deviation `sigma` pixels."""
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-x ** 2 / (2 * sigma ** 2))
  return kernel / tf.reduce_sum(kernel)


def gaussian_blur(image: tf.Tensor, seed: tf.Tensor, sigma_range: tuple[float, float]) -> tf.Tensor:
  """Separable Gaussian blur with sigma uniform in `sigma_range` (PIL's GaussianBlur radius)."""
  sigma = _uniform(seed, sigma_range[0], sigma_range[1])
  radius = blur_radius(sigma_range[1], image.shape[0], image.shape[1])
  kernel = blur_kernel(sigma, radius)
  channels = image.shape[-1]
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                  mode="REFLECT")
  vertical = tf.tile(kernel[:, None, None, None], [1, 1, channels, 1])
  horizontal = tf.tile(kernel[None, :, None, None], [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
  return tf.nn.depthwise_conv2d(out, horizontal, [1, 1, 1, 1], "VALID")[0]


def solarize(image: tf.Tensor) -> tf.Tensor:
  """PIL's ImageOps.solarize at its default threshold 128: invert the bright pixels."""
  return tf.where(image >= device_augment.SOLARIZE_THRESHOLD, 1.0 - image, image)


def _coin(seed, prob: float) -> tf.Tensor:
  """True with probability `prob` (always for prob >= 1, never for prob <= 0)."""
  if prob <= 0:
    return tf.constant(False)
  if prob >= 1:
    return tf.constant(True)
  return tf.random.stateless_uniform([], seed) < prob


def _maybe(seed, prob: float, fn, image):
  if prob <= 0:
    return image
  if prob >= 1:
    return fn(image)
  return tf.cond(_coin(seed, prob), lambda: fn(image), lambda: image)


def _view_seeds(seed: tf.Tensor) -> dict[str, tf.Tensor]:
  """The eight seeds of one view's draws, in the order `natural_view` has always split them."""
  names = ("crop", "jitter_apply", "jitter", "grayscale", "blur_apply", "blur", "solarize",
           "flip")
  return dict(zip(names, _split(seed, len(names))))


def crop_window(image_shape: tf.Tensor, seed: tf.Tensor, spec: ViewSpec):
  """(top, left, h, w) of the view's random resized crop in an image of shape [H, W, ...]."""
  return random_resized_crop_window(_view_seeds(seed)["crop"], image_shape[0], image_shape[1],
                                    spec.crop_scale, spec.crop_ratio)


def crop_view(image: tf.Tensor, seed: tf.Tensor, spec: ViewSpec) -> tf.Tensor:
  """The view's random resized crop of a uint8 [H, W, 3] image: float32 [size, size, 3], [0, 1]."""
  top, left, h, w = crop_window(tf.shape(image), seed, spec)
  view = resize(tf.slice(image, [top, left, 0], [h, w, 3]), [spec.size, spec.size])
  view.set_shape([spec.size, spec.size, 3])
  return view


def augment_crop(view: tf.Tensor, seed: tf.Tensor, spec: ViewSpec) -> tf.Tensor:
  """The recipe after the crop, on a float32 [size, size, 3] view in [0, 1].

  The order of the official code: jitter, grayscale, blur, solarize, flip.
  """
  s = _view_seeds(seed)
  view = _maybe(s["jitter_apply"], spec.jitter_prob,
                lambda x: color_jitter(x, s["jitter"], spec.jitter), view)
  view = _maybe(s["grayscale"], spec.grayscale_prob,
                lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), view)
  view = _maybe(s["blur_apply"], spec.blur_prob,
                lambda x: gaussian_blur(x, s["blur"], spec.blur_sigma), view)
  view = _maybe(s["solarize"], spec.solarize_prob, solarize, view)
  return _maybe(s["flip"], spec.flip_prob, lambda x: x[:, ::-1], view)


def natural_view(image: tf.Tensor, seed: tf.Tensor, spec: ViewSpec) -> tf.Tensor:
  """One augmented view [size, size, 3] float32 in [0, 1] of a uint8 [H, W, 3] image.

  The order of the official code: crop, jitter, grayscale, blur, solarize, flip.
  """
  return augment_crop(crop_view(image, seed, spec), seed, spec)


def canvas_size(image_size: int) -> int:
  """The default canvas side for views of `image_size`: 2.25 x, to a multiple of 32 (224: 512).

  Images that fit (e.g. ImageNet's common 500 x 375 and 500 x 333) keep the
  exact `natural_view` semantics; larger ones are shrunk to fit (`fit_within`)
  before their views are drawn, as a Resize(side) would.
  """
  return 32 * math.ceil(2.25 * image_size / 32)


def fit_within(image: tf.Tensor, side: int) -> tf.Tensor:
  """A uint8 image, shrunk (antialiased, aspect kept, rounded) if a side exceeds `side` px."""
  shape = tf.shape(image)
  longer = tf.maximum(shape[0], shape[1])

  def shrink():
    scale = side / tf.cast(longer, tf.float32)
    size = tf.maximum(1, tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32))
    size = tf.minimum(size, side)
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

  return tf.cond(longer > side, shrink, lambda: image)


def crop_windows(image_shape: tf.Tensor, seeds, specs) -> tf.Tensor:
  """The views' crop windows [n, 4] int32 (top, left, h, w) in an image of `image_shape`."""
  return tf.stack([tf.stack(crop_window(image_shape, s, spec)) for s, spec in zip(seeds, specs)])


def view_params(seed: tf.Tensor, spec: ViewSpec, window: tf.Tensor) -> tf.Tensor:
  """The view's parameters as the float32 vector `device_augment.augment_view` takes.

  Layout `device_augment.PARAMS` (the crop `window` (top, left, h, w), TF's
  inverse resize scales, the draws of `augment_crop`), then the blur kernel's
  taps (the identity kernel when the view draws no blur). The same seeds and
  draws as `natural_view`, so the device makes the same view.
  """
  s = _view_seeds(seed)
  flag = lambda name, prob: tf.cast(_coin(s[name], prob), tf.float32)
  f_b, f_c, f_s, d_h, order = jitter_params(s["jitter"], spec.jitter)
  radius = blur_radius(spec.blur_sigma[1], spec.size, spec.size)
  identity = tf.one_hot(radius, 2 * radius + 1, dtype=tf.float32)
  if spec.blur_prob > 0:
    sigma = _uniform(s["blur"], spec.blur_sigma[0], spec.blur_sigma[1])
    kernel = tf.where(_coin(s["blur_apply"], spec.blur_prob), blur_kernel(sigma, radius),
                      identity)
  else:
    kernel = identity
  window = tf.cast(window, tf.float32)
  # tf.image.resize's scale is size / input, and ScaleAndTranslate inverts it: round as they do.
  inv_scale = 1.0 / (tf.constant(float(spec.size)) / window[2:])
  fields = {"top": window[0], "left": window[1], "height": window[2], "width": window[3],
            "inv_scale_y": inv_scale[0], "inv_scale_x": inv_scale[1],
            "jitter": flag("jitter_apply", spec.jitter_prob), "brightness": f_b,
            "contrast": f_c, "saturation": f_s, "hue": d_h,
            **{f"order{i}": tf.cast(order[i], tf.float32) for i in range(4)},
            "grayscale": flag("grayscale", spec.grayscale_prob),
            "solarize": flag("solarize", spec.solarize_prob), "flip": flag("flip", spec.flip_prob)}
  return tf.concat([tf.stack([fields[name] for name in device_augment.PARAMS]), kernel], 0)


def center_view(image: tf.Tensor, size: int, crop_fraction: float) -> tf.Tensor:
  """The evaluation transform: the central crop_fraction of the shorter side, resized to size.

  Equals torchvision's Resize(size / crop_fraction) + CenterCrop(size) up to
  rounding (ImageNet: 224 of 256, crop_fraction 0.875).
  """
  shape = tf.shape(image)
  side = tf.cast(tf.round(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * crop_fraction),
                 tf.int32)
  side = tf.maximum(side, 1)
  top, left = (shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2
  view = resize(tf.slice(image, [top, left, 0], [side, side, 3]), [size, size])
  view.set_shape([size, size, 3])
  return view


def normalize(images: tf.Tensor) -> tf.Tensor:
  return (images - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """JPEG, PNG, GIF (first frame) or BMP bytes -> uint8 [H, W, 3]; raises on bad data."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)
