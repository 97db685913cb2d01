"""The device augmentations against today's TF host ops, on the same parameters and seeds.

Each op of `device_augment` is held to its TF counterpart in `augment` (itself
tested against PIL, scipy and colorsys in data_augment_test.py) to 1e-5 in
float32; the whole view to `augment.augment_crop` on the same uint8 crop and
seed, and to `augment.natural_view` up to the uint8 rounding of the crop.
"""

import dataclasses
import os

from absl.testing import absltest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
from PIL import Image
import tensorflow as tf

from coke_jax import sharding
from coke_jax.data import augment
from coke_jax.data import device_augment
from coke_jax.data import input_pipeline
from coke_jax.data import show_augmentations
from coke_jax.data import sources
from tests import testing

_TOL = 1e-5
_STD = np.asarray(augment.IMAGENET_STD, np.float32)
_MEAN = np.asarray(augment.IMAGENET_MEAN, np.float32)


def _seed(i):
  return tf.constant([11, i], tf.int64)


def _image(h=48, w=64, seed=0):
  """Random colours in [0, 1] (every hue, saturated pixels, grays), float32 [h, w, 3]."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(h, w, 3)).astype(np.float32)
  special = [[0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1],
             [1, 0, 1], [0.3, 0.3, 0.7], [0, 0, 0]]  # grays, primaries, ties
  image.reshape(-1, 3)[:len(special)] = special
  return image


def _planes(image):
  """[H, W, 3] -> the device ops' channel planes [3, H, W]."""
  return jnp.moveaxis(jnp.asarray(image), -1, 0)


def _interleaved(planes):
  return np.moveaxis(np.asarray(planes), 0, -1)


def _photo(h=120, w=150):
  """A crop of scikit-learn's sample photo, uint8 [h, w, 3]."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  return load_sample_images().images[1][100:100 + h, 200:200 + w]


class OpsTest(absltest.TestCase):
  """Each device op against the TF op on the same parameters."""

  def test_to_planes_and_normalize(self):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    levels[..., 1] = levels[..., 0].T  # the channels differ
    x = device_augment.to_planes(jnp.asarray(levels))
    self.assertEqual(x.shape, (3, 16, 16))
    reference = tf.cast(levels, tf.float32).numpy() / 255.0
    np.testing.assert_allclose(_interleaved(x), reference, atol=_TOL)
    np.testing.assert_allclose(_interleaved(device_augment.normalize(x)),
                               augment.normalize(reference), atol=_TOL)

  def test_grayscale(self):
    image = _image()
    np.testing.assert_allclose(device_augment.grayscale(_planes(image)),
                               tf.image.rgb_to_grayscale(image)[..., 0], atol=_TOL)

  def test_hue_against_tf_at_every_shift(self):
    image = _image(32, 32)
    levels = (np.random.default_rng(1).integers(0, 256, (32, 32, 3)) / 255).astype(np.float32)
    hue = jax.jit(device_augment.adjust_hue)
    for x in (image, levels):
      for delta in (-0.5, -0.37, -0.1, -1e-3, 0.0, 1e-3, 0.05, 0.1, 0.2, 0.499, 0.5):
        expected = np.clip(tf.image.adjust_hue(x, delta).numpy(), 0, 1)
        np.testing.assert_allclose(_interleaved(hue(_planes(x), delta)), expected, atol=_TOL,
                                   err_msg=f"{delta}")

  def test_jitter_in_random_order_against_tf(self):
    image = _image(24, 24)
    jitter = jax.jit(device_augment.color_jitter)
    orders = set()
    for k, strength in enumerate(((0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2),
                                  (0.4, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.5))):
      for i in range(12 * k, 12 * (k + 1)):
        f_b, f_c, f_s, d_h, order = (t.numpy() for t in augment.jitter_params(_seed(i),
                                                                              strength))
        orders.add(tuple(order))
        params = device_augment.ViewParams(
            jitter=True, brightness=f_b, contrast=f_c, saturation=f_s, hue=d_h,
            order=jnp.asarray(order), grayscale=False, solarize=False, flip=False,
            blur_kernel=jnp.ones(3) / 3)
        expected = augment.color_jitter(tf.constant(image), _seed(i), strength).numpy()
        np.testing.assert_allclose(_interleaved(jitter(_planes(image), params)), expected,
                                   atol=_TOL,
                                   err_msg=f"{strength} seed {i} order {order}")
    self.assertGreater(len(orders), 15)  # most of the 24 orders were exercised

  def test_blur_against_tf_at_several_sigmas_and_sizes(self):
    blur = jax.jit(device_augment.gaussian_blur)
    for size in (224, 32, 16, 4):
      image = _image(size, size, seed=size)
      for sigma in (0.1, 0.7, 2.0):  # radius 1, 3, 6 (at 4 px: 3, the side less one)
        radius = augment.blur_radius(sigma, size, size)
        kernel = augment.blur_kernel(tf.constant(sigma), radius).numpy()
        expected = augment.gaussian_blur(tf.constant(image), _seed(0), (sigma, sigma)).numpy()
        np.testing.assert_allclose(_interleaved(blur(_planes(image), kernel)), expected,
                                   atol=_TOL,
                                   err_msg=f"{size} px, sigma {sigma}")
    identity = np.eye(13, dtype=np.float32)[6]
    image = _image(32, 32)
    np.testing.assert_array_equal(_interleaved(blur(_planes(image), identity)),
                                  image)  # a view without blur

  def test_solarize_threshold_and_flip(self):
    levels = (np.arange(256, dtype=np.float32) / 255).reshape(16, 16, 1).repeat(3, -1)
    ours = device_augment.solarize(levels)
    np.testing.assert_allclose(ours, augment.solarize(tf.constant(levels)), atol=_TOL)
    self.assertEqual(ours[8, 0, 0], 1 - levels[8, 0, 0])  # 128 itself is inverted (PIL)
    self.assertEqual(ours[7, 15, 0], levels[7, 15, 0])  # 127 is not
    image = _image(32, 32)
    params = np.zeros(device_augment.NUM_PARAMS + 3, np.float32)
    params[device_augment.PARAMS.index("flip")] = 1
    params[device_augment.NUM_PARAMS + 1] = 1  # identity blur
    u8 = (image * 255).astype(np.uint8)
    flipped = device_augment.augment_view(u8, params) * _STD + _MEAN
    np.testing.assert_allclose(flipped, u8[:, ::-1] / 255, atol=_TOL)

  def test_bad_inputs_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, r"parameters have shape \(12,\)"):
      device_augment.ViewParams.unpack(jnp.zeros(12))
    with self.assertRaisesRegex(ValueError, "13 taps needs square views larger than 6 px"):
      device_augment.gaussian_blur(jnp.zeros((3, 4, 4)), jnp.ones(13) / 13)
    batch = {"images": jnp.zeros((2, 2, 8, 8, 3)), "view_params": jnp.zeros((2, 2, 15))}
    with self.assertRaisesRegex(ValueError, "images is float32"):
      device_augment.augment_batch(batch)


class ViewTest(absltest.TestCase):
  """Whole views: the host's uint8 crop and draws, augmented on the device."""

  def setUp(self):
    super().setUp()
    config = testing.smoke_config(num_small_views=1, **{"augment.small_image_size": 24})
    large, small = augment.view_specs(config.augment, 2, 1, 56)
    self.specs = large + small
    self.image = tf.constant(_photo())
    self.view = jax.jit(device_augment.augment_view)

  def _device_view(self, seed, spec):
    u8 = augment.crop_view_uint8(self.image, seed, spec).numpy()
    return u8, np.asarray(self.view(u8, augment.view_params(seed, spec).numpy()))

  def test_equals_natural_view_on_the_same_crop_and_seed(self):
    applied = {name: set() for name in ("jitter", "grayscale", "solarize", "flip")}
    for i in range(16):
      for spec in self.specs:
        params = augment.view_params(_seed(i), spec).numpy()
        for name, seen in applied.items():
          seen.add(params[device_augment.PARAMS.index(name)])
        u8, ours = self._device_view(_seed(i), spec)
        reference = augment.normalize(augment.augment_crop(tf.cast(u8, tf.float32) / 255,
                                                           _seed(i), spec)).numpy()
        np.testing.assert_allclose(ours, reference, atol=_TOL, err_msg=f"seed {i} {spec}")
    for name, seen in applied.items():
      self.assertEqual(seen, {0.0, 1.0}, name)  # every op was both drawn and skipped

  def test_crop_is_natural_views_crop_rounded_to_uint8(self):
    for i in range(8):
      for spec in self.specs:
        u8 = augment.crop_view_uint8(self.image, _seed(i), spec).numpy()
        self.assertEqual((u8.dtype, u8.shape), (np.uint8, (spec.size, spec.size, 3)))
        crop = augment.crop_view(self.image, _seed(i), spec).numpy()
        self.assertLessEqual(np.abs(u8 / 255 - crop).max(), 0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(
            augment.natural_view(self.image, _seed(i), spec),
            augment.augment_crop(tf.constant(crop), _seed(i), spec))

  def test_close_to_natural_view_itself(self):
    """Only the crop's rounding (<= 0.5 / 255) separates the two; jitter gains can amplify it."""
    for i in range(4):
      for spec in self.specs:
        _, ours = self._device_view(_seed(i), spec)
        theirs = augment.normalize(augment.natural_view(self.image, _seed(i), spec)).numpy()
        diff = np.abs(ours - theirs) * _STD  # in [0, 1] units
        self.assertLess(diff.mean(), 4e-3)
        if not augment.view_params(_seed(i), spec)[device_augment.PARAMS.index("solarize")]:
          self.assertLess(diff.max(), 0.03)  # solarize may flip a pixel at its threshold

  def test_blur_kernel_is_drawn_or_identity(self):
    kernels = {augment.view_params(_seed(i), self.specs[1]).numpy()[
        device_augment.NUM_PARAMS:].tobytes() for i in range(40)}  # view 2 blurs with p 0.1
    identity = np.eye(13, dtype=np.float32)[6].tobytes()
    self.assertIn(identity, kernels)
    self.assertGreater(len(kernels), 1)
    for size, taps in ((8, 13), (4, 7)):  # the radius stays below the side, as on the host
      spec = dataclasses.replace(self.specs[2], size=size)
      self.assertLen(augment.view_params(_seed(0), spec), device_augment.NUM_PARAMS + taps)


def _write_folder(folder, count=10):
  os.makedirs(folder, exist_ok=True)
  photo = _photo(200, 300)
  for i in range(count):
    Image.fromarray(photo[i * 5:i * 5 + 90 + i, i * 7:i * 7 + 110]).save(
        os.path.join(folder, f"img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"))


class PipelineTest(absltest.TestCase):
  """train_batches' uint8 batches and augment_batch, end to end."""

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    _write_folder(self.folder)

  def _config(self, on_device, **overrides):
    config = testing.smoke_config(**{
        "dataset.name": "image_folder", "dataset.data_dir": self.folder,
        "dataset.heldout_dir": self.folder, "dataset.image_size": 32, "global_batch_size": 8,
        "num_small_views": 2, "augment.small_image_size": 16, **overrides})
    with config.unlocked():
      config.augment.on_device = on_device
    return config

  def _first_batch(self, config):
    source = sources.get_source(config.dataset)
    return next(iter(input_pipeline.train_batches(source, config, epoch=1)))

  def test_host_batch_format(self):
    batch = self._first_batch(self._config(True))
    p = device_augment.NUM_PARAMS
    expected = {"images": (np.uint8, (8, 2, 32, 32, 3)),
                "view_params": (np.float32, (8, 2, p + 13)),
                "small_images": (np.uint8, (8, 2, 16, 16, 3)),
                "small_view_params": (np.float32, (8, 2, p + 13)),
                "index": (np.int32, (8,)), "weight": (np.float32, (8,)),
                "label": (np.int32, (8,))}
    self.assertEqual({k: (v.dtype, v.shape) for k, v in batch.items()}, expected)

  def test_device_path_equals_host_path_up_to_rounding(self):
    host_u8 = self._first_batch(self._config(True))
    host_only = self._first_batch(self._config(False))
    np.testing.assert_array_equal(host_u8["index"], host_only["index"])
    ours = jax.jit(device_augment.augment_batch)(host_u8)
    self.assertEqual(set(ours), set(host_only))
    for key in ("images", "small_images"):
      self.assertEqual((ours[key].dtype, ours[key].shape),
                       (host_only[key].dtype, host_only[key].shape))
      self.assertLess(float(np.mean(np.abs(ours[key] - host_only[key]) * _STD)), 4e-3)
    np.testing.assert_array_equal(ours["weight"], host_only["weight"])

  def test_deterministic_and_the_same_on_any_mesh(self):
    config = self._config(True, num_small_views=0)
    a, b = self._first_batch(config), self._first_batch(config)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])

    def on_mesh(devices, rows):
      mesh = sharding.make_mesh(jax.devices()[:devices])
      step = jax.jit(jax.shard_map(device_augment.augment_batch, mesh=mesh,
                                   in_specs=P(sharding.DATA_AXIS),
                                   out_specs=P(sharding.DATA_AXIS)))
      return step(sharding.global_batch_from_host({k: v[rows] for k, v in a.items()}, mesh))

    # One example per device on 8 devices, or on 4 devices twice: the same per-device program,
    # so the same bits (as a run resumed on other hosts with the same per-device batch).
    eight = on_mesh(8, slice(0, 8))
    halves = [on_mesh(4, slice(0, 4)), on_mesh(4, slice(4, 8))]
    for key in eight:
      np.testing.assert_array_equal(eight[key], np.concatenate([h[key] for h in halves]))
    # Another per-device batch compiles another program: equal up to float rounding.
    whole = jax.jit(device_augment.augment_batch)(b)
    for key in whole:
      np.testing.assert_allclose(eight[key], whole[key], atol=_TOL, rtol=0, err_msg=key)

  def test_array_batches_pass_through(self):
    batch = next(iter(input_pipeline.train_batches(testing.random_source(),
                                                   testing.smoke_config(), 0)))
    out = device_augment.augment_batch(batch)
    self.assertEqual(set(out), set(batch))
    for key in batch:
      np.testing.assert_array_equal(out[key], batch[key])

  def test_show_augmentations_draws_the_device_path(self):
    config = self._config(False, num_small_views=0)
    picture = show_augmentations.render(config, num_examples=2, epoch=1, min_cell=32)
    with config.unlocked():
      config.global_batch_size = 2
      config.augment.on_device = True
    views = jax.jit(device_augment.augment_batch)(self._first_batch(config))["images"]
    views = (np.clip(np.asarray(views) * _STD + _MEAN, 0, 1) * 255).round().astype(np.uint8)
    cell, gap = 32, 2
    for row in range(2):
      for view in range(2):
        y, x = gap + row * (cell + gap), gap + (view + 1) * (cell + gap)
        np.testing.assert_array_equal(picture[y:y + cell, x:x + cell], views[row, view])


class TrainStreamTest(absltest.TestCase):

  def test_crosses_epochs_like_train_batches(self):
    source = testing.random_source(num_train=20)
    config = testing.smoke_config(global_batch_size=8)  # 3 steps per epoch
    expected = [b for epoch in range(3)
                for b in input_pipeline.train_batches(source, config, epoch)][2:8]
    got = list(input_pipeline.train_stream(source, config, start_step=2, end_step=8))
    self.assertLen(got, 6)
    for x, y in zip(got, expected):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])


if __name__ == "__main__":
  absltest.main()
