"""Natural-image augmentations against independent references (PIL, scipy, colorsys, numpy)."""

import colorsys
import math

from absl.testing import absltest
import numpy as np
from PIL import Image
from PIL import ImageOps
from scipy import ndimage
import tensorflow as tf

from coke_jax.data import augment
from coke_jax.data import show_augmentations
from coke_jax.data import sources
from tests import testing


def _seed(i):
  return tf.constant([3, i], tf.int64)


def _smooth_image(h=48, w=64, seed=0):
  """A smooth random color image in [0, 1] (few saturated pixels, so clipping rarely acts)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0.2, 0.8, (4, 4, 3))
  return tf.image.resize(coarse[None], [h, w], method="bilinear")[0].numpy().astype(np.float32)


class CropTest(absltest.TestCase):

  def test_window_fits_and_follows_scale_and_ratio(self):
    for i in range(200):
      top, left, h, w = (int(v) for v in augment.random_resized_crop_window(
          _seed(i), 120, 90, (0.08, 1.0), (3 / 4, 4 / 3)))
      self.assertTrue(0 <= top <= 120 - h and 0 <= left <= 90 - w, (top, left, h, w))
      # Rounding to whole pixels moves the area and ratio by at most half a pixel per side.
      self.assertBetween(h * w, 0.08 * 120 * 90 - (h + w), 120 * 90)
      self.assertBetween(w / h, 3 / 4 - 1 / h, 4 / 3 + 1 / h)

  def test_matches_torchvision_algorithm_on_same_draws(self):
    """A plain-Python port of torchvision's get_params, fed the same uniform draws."""
    scale, ratio, height, width = (0.3, 1.0), (3 / 4, 4 / 3), 50, 200
    for i in range(50):
      seed = _seed(i)
      s_area, s_ratio, s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
      areas = tf.random.stateless_uniform([10], s_area, scale[0], scale[1]).numpy() * height * width
      logs = tf.random.stateless_uniform([10], s_ratio, math.log(ratio[0]),
                                         math.log(ratio[1])).numpy()
      u_top = tf.random.stateless_uniform([10], s_top).numpy()
      u_left = tf.random.stateless_uniform([10], s_left).numpy()
      expected = None
      for a in range(10):
        w = round(math.sqrt(areas[a] * math.exp(logs[a])))
        h = round(math.sqrt(areas[a] / math.exp(logs[a])))
        if 0 < w <= width and 0 < h <= height:
          expected = (int(u_top[a] * (height - h + 1)), int(u_left[a] * (width - w + 1)), h, w)
          break
      if expected is None:  # wide image: clamp the ratio to 4/3, full height, centered
        h, w = height, round(height * ratio[1])
        expected = ((height - h) // 2, (width - w) // 2, h, w)
      got = tuple(int(v) for v in augment.random_resized_crop_window(seed, height, width, scale,
                                                                     ratio))
      self.assertEqual(got, expected)

  def test_fallback_is_centered_clamped_crop(self):
    # An area range no crop can reach forces the fallback.
    got = [int(v) for v in augment.random_resized_crop_window(_seed(0), 40, 200, (5.0, 6.0),
                                                              (3 / 4, 4 / 3))]
    self.assertEqual(got, [0, (200 - 53) // 2, 40, 53])  # w = round(40 * 4/3)

  def test_resize_matches_pil_bilinear(self):
    image = (_smooth_image(96, 128) * 255).round().astype(np.uint8)
    ours = augment.resize(tf.constant(image), [40, 56]).numpy() * 255
    pil = np.asarray(Image.fromarray(image).resize((56, 40), Image.BILINEAR), np.float32)
    self.assertLess(np.abs(ours - pil).max(), 2.0)  # PIL rounds to uint8


class ColorTest(absltest.TestCase):

  def test_single_jitter_components(self):
    image = _smooth_image()
    gray = image @ np.array([0.2989, 0.587, 0.114], np.float32)
    for i in range(5):
      brightness = augment.color_jitter(tf.constant(image), _seed(i), (0.4, 0, 0, 0)).numpy()
      factor = brightness / image
      self.assertLess(factor.std(), 1e-4)
      self.assertBetween(factor.mean(), 0.6, 1.4)

      contrast = augment.color_jitter(tf.constant(image), _seed(i), (0, 0.4, 0, 0)).numpy()
      # contrast: f * x + (1 - f) * mean gray; solve f from the spread around the mean.
      f = (contrast - contrast.mean()).std() / (image - image.mean()).std()
      np.testing.assert_allclose(contrast, f * image + (1 - f) * gray.mean(), atol=1e-4)

      saturation = augment.color_jitter(tf.constant(image), _seed(i), (0, 0, 0.4, 0)).numpy()
      f = np.sum((saturation - gray[..., None]) * (image - gray[..., None])) / np.sum(
          (image - gray[..., None]) ** 2)
      self.assertBetween(f, 0.6, 1.4)
      np.testing.assert_allclose(saturation, f * image + (1 - f) * gray[..., None], atol=1e-4)

  def test_hue_shift_against_colorsys(self):
    image = _smooth_image(8, 8)
    out = augment.color_jitter(tf.constant(image), _seed(1), (0, 0, 0, 0.1)).numpy()
    shifts = []
    for x, y in zip(image.reshape(-1, 3), out.reshape(-1, 3)):
      hx, sx, vx = colorsys.rgb_to_hsv(*x)
      hy, sy, vy = colorsys.rgb_to_hsv(*y)
      self.assertAlmostEqual(vx, vy, delta=1e-4)
      self.assertAlmostEqual(sx, sy, delta=1e-3)
      shifts.append((hy - hx + 0.5) % 1.0 - 0.5)
    self.assertLess(np.std(shifts), 1e-3)  # one shift for the whole image
    self.assertLessEqual(abs(np.mean(shifts)), 0.1 + 1e-4)
    self.assertGreater(abs(np.mean(shifts)), 1e-3)

  def test_jitter_order_is_random(self):
    image = tf.constant(_smooth_image(8, 8))
    outs = {augment.color_jitter(image, _seed(i), (0.4, 0.4, 0.4, 0.1)).numpy().tobytes()
            for i in range(20)}
    self.assertLen(outs, 20)

  def test_solarize_matches_pil(self):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    ours = augment.solarize(tf.constant(levels / 255.0, tf.float32)).numpy() * 255
    np.testing.assert_allclose(ours, np.asarray(ImageOps.solarize(Image.fromarray(levels))),
                               atol=1e-3)

  def test_blur_matches_scipy(self):
    image = np.random.default_rng(0).uniform(size=(32, 40, 3)).astype(np.float32)
    ours = augment.gaussian_blur(tf.constant(image), _seed(0), (1.5, 1.5)).numpy()
    # TF's REFLECT padding is scipy's "mirror"; the kernel is cut at 3 sigma (radius 5 here).
    reference = np.stack([ndimage.gaussian_filter(image[..., c], 1.5, mode="mirror",
                                                  truncate=5 / 1.5) for c in range(3)], -1)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def _unmirrored(image, seed, config):
  config = config.copy_and_resolve_references()
  config.mirror_prob = 0.0
  return augment.digits_view(image, seed, config).numpy()


class ViewTest(absltest.TestCase):

  def test_default_recipe_is_the_official_asymmetric_pair(self):
    config = testing.smoke_config(num_small_views=6)
    large, small = augment.view_specs(config.augment, 2, 6, 224)
    self.assertEqual([(v.blur_prob, v.solarize_prob) for v in large], [(1.0, 0.0), (0.1, 0.2)])
    self.assertEqual(large[0].jitter, (0.4, 0.4, 0.2, 0.1))
    self.assertEqual((large[0].jitter_prob, large[0].grayscale_prob, large[0].crop_scale),
                     (0.8, 0.2, (0.08, 1.0)))
    self.assertLen(small, 6)
    self.assertEqual((small[0].size, small[0].crop_scale, small[0].jitter, small[0].blur_prob),
                     (96, (0.05, 0.6), (0.8, 0.8, 0.8, 0.2), 0.5))

  def test_probabilities(self):
    image = tf.zeros([4, 4, 3])
    applied = [float(augment._maybe(_seed(i), 0.2, lambda x: x + 1, image)[0, 0, 0])
               for i in range(1000)]
    self.assertBetween(np.mean(applied), 0.16, 0.24)

  def test_views_are_seeded(self):
    image = tf.constant((_smooth_image(60, 80) * 255).astype(np.uint8))
    spec = augment.view_specs(testing.smoke_config().augment, 2, 0, 32)[0][1]
    a = augment.natural_view(image, _seed(0), spec).numpy()
    b = augment.natural_view(image, _seed(0), spec).numpy()
    c = augment.natural_view(image, _seed(1), spec).numpy()
    np.testing.assert_array_equal(a, b)
    self.assertGreater(np.abs(a - c).max(), 0.01)
    self.assertEqual(a.shape, (32, 32, 3))
    self.assertBetween(float(a.min()), 0.0, 1.0)
    self.assertBetween(float(a.max()), 0.0, 1.0)

  def test_array_mirror_flips_before_the_affine_and_leaves_the_other_draws(self):
    """augment.mirror_prob: 1 flips, 0 leaves the view exactly as before the key existed."""
    image = tf.constant(np.random.default_rng(0).uniform(size=(28, 28, 1)), tf.float32)
    config = testing.smoke_config().augment
    with config.unlocked():
      config.erase_prob, config.noise_std = 0.5, 0.1
    views = {}
    for prob in (0.0, 1.0):
      with config.unlocked():
        config.mirror_prob = prob
      views[prob] = [augment.digits_view(x, _seed(3), config).numpy()
                     for x in (image, image[:, ::-1])]
    # The mirrored view of an image is the unmirrored view of its mirror image: the flip
    # comes first and the affine, cutout and noise draws do not depend on it.
    np.testing.assert_array_equal(views[1.0][0], views[0.0][1])
    np.testing.assert_array_equal(views[1.0][1], views[0.0][0])
    with config.unlocked():
      config.mirror_prob = 0.5
    flipped = [not np.array_equal(augment.digits_view(image, _seed(i), config).numpy(),
                                  _unmirrored(image, _seed(i), config)) for i in range(200)]
    self.assertBetween(np.mean(flipped), 0.4, 0.6)

  def test_array_gray_jitter_is_colorjitter_brightness_then_contrast(self):
    """augment.gray_jitter (b, c): clip(x f_b), then a blend with that image's mean gray level,
    factors uniform in [1 - s, 1 + s]; the affine, cutout and noise draws stay as they were."""
    image = np.random.default_rng(0).uniform(0.2, 0.6, size=(28, 28, 1)).astype(np.float32)
    config = testing.smoke_config().augment
    with config.unlocked():
      config.max_rotation_deg, config.scale_range, config.max_shift = 0.0, (1.0, 1.0), 0.0
    np.testing.assert_allclose(augment.digits_view(tf.constant(image), _seed(0), config).numpy(),
                               image, atol=1e-6)  # the identity affine
    factors = {}
    for strength in ((0.4, 0.0), (0.0, 0.4)):
      with config.unlocked():
        config.gray_jitter = strength
      factors[strength] = []
      for i in range(100):
        view = augment.digits_view(tf.constant(image), _seed(i), config).numpy()
        if strength[0]:   # brightness: view = x f (x <= 0.6 and f <= 1.4: no clipping)
          f = view[0, 0, 0] / image[0, 0, 0]
          np.testing.assert_allclose(view, image * f, rtol=1e-5)
        else:             # contrast: view - mean = f (x - mean); the mean is kept
          mean = image.mean()
          f = (view[0, 0, 0] - mean) / (image[0, 0, 0] - mean)
          np.testing.assert_allclose(view, mean + f * (image - mean), atol=1e-5)
        factors[strength].append(f)
      self.assertBetween(min(factors[strength]), 0.6, 0.7)
      self.assertBetween(max(factors[strength]), 1.3, 1.4)
    # Both: the same two factors (their own seeds), brightness first, contrast about the mean
    # of the brightened image.
    with config.unlocked():
      config.gray_jitter = (0.4, 0.4)
    for i in range(20):
      bright = np.clip(image * factors[(0.4, 0.0)][i], 0, 1)
      mean = bright.mean()
      expected = np.clip(mean + factors[(0.0, 0.4)][i] * (bright - mean), 0, 1)
      np.testing.assert_allclose(augment.digits_view(tf.constant(image), _seed(i), config),
                                 expected, atol=1e-5)
    # A real affine, cutout and noise: the jittered view is the plain view, brightened (noise
    # off, so the only difference is the factor; cutout's zeros stay zero).
    with config.unlocked():
      config.max_rotation_deg, config.scale_range, config.max_shift = 15.0, (0.8, 1.1), 2.0
      config.erase_prob, config.erase_size = 1.0, 5
    for i in range(20):
      with config.unlocked():
        config.gray_jitter = (0.0, 0.0)
      plain = augment.digits_view(tf.constant(image), _seed(i), config).numpy()
      with config.unlocked():
        config.gray_jitter = (0.4, 0.0)
      np.testing.assert_allclose(augment.digits_view(tf.constant(image), _seed(i), config),
                                 np.clip(plain * factors[(0.4, 0.0)][i], 0, 1), atol=1e-5)

  def test_center_view_matches_resize_and_center_crop(self):
    """torchvision's Resize(256) + CenterCrop(224) on an image whose short side is 256."""
    image = (np.random.default_rng(0).uniform(size=(256, 320, 3)) * 255).astype(np.uint8)
    ours = augment.center_view(tf.constant(image), 224, 0.875).numpy()
    np.testing.assert_allclose(ours * 255, image[16:240, 48:272], atol=1e-3)


class ShowAugmentationsTest(absltest.TestCase):

  def test_grid_holds_each_original_then_its_views(self):
    config = testing.smoke_config()
    image = show_augmentations.render(config, num_examples=3, epoch=1, min_cell=16)
    cell, gap = 16, 2  # 8x8 digits zoomed 2x
    self.assertEqual(image.shape, (3 * (cell + gap) + gap, 3 * (cell + gap) + gap, 3))
    self.assertEqual(image.dtype, np.uint8)
    cells = [[image[gap + r * (cell + gap):][:cell, gap + c * (cell + gap):][:, :cell, 0]
              for c in range(3)] for r in range(3)]
    source = sources.get_source(config.dataset)
    digits = source.lookup("train", np.arange(source.num_train))["image"][..., 0]  # [N, 8, 8]
    for row in cells:
      original = row[0][::2, ::2] / 255.0
      self.assertLess(np.min(np.abs(digits - original).max(axis=(1, 2))), 1e-2)
      self.assertGreater(np.abs(row[1].astype(int) - row[2]).max(), 0)  # two different views


if __name__ == "__main__":
  absltest.main()
