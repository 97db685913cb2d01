"""The device augmentations against today's TF host ops, on the same parameters and seeds.

Each op of `device_augment` is held to its TF counterpart in `augment` (itself
tested against PIL, scipy and colorsys in data_augment_test.py) to 1e-5 in
float32, and so is the whole view against `augment.natural_view` on the same
seed; then the host batches and `augment_batch` end to end.
"""

import dataclasses
import functools
import os
from unittest import mock

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


def _params(**fields):
  """A parameter vector: no crop (the whole canvas at its size), no op, identity blur."""
  size = fields.pop("size", 32)
  vector = np.zeros(device_augment.NUM_PARAMS + 3, np.float32)
  defaults = {"height": size, "width": size, "inv_scale_y": 1.0, "inv_scale_x": 1.0}
  for name, value in {**defaults, **fields}.items():
    vector[device_augment.PARAMS.index(name)] = value
  vector[device_augment.NUM_PARAMS + 1] = 1.0
  return vector


class OpsTest(absltest.TestCase):
  """Each device op against the TF op on the same parameters."""

  def test_resized_crop_against_tf(self):
    photo = _photo(150, 180)
    canvas = np.zeros((200, 200, 3), np.uint8)
    canvas[:150, :180] = photo
    crop = jax.jit(device_augment.resized_crop, static_argnums=3)
    config = testing.smoke_config(num_small_views=1)
    windows = [(0, 0, 150, 180), (149, 179, 1, 1), (0, 170, 150, 10), (40, 0, 7, 180),
               (10, 20, 130, 100)]
    for size in (224, 96, 32, 16):
      spec = augment.view_specs(config.augment, 1, 0, size)[0][0]
      drawn = [augment.crop_window(tf.constant(photo.shape), _seed(i), spec) for i in range(6)]
      for window in windows + [tuple(int(v) for v in w) for w in drawn]:
        top, left, h, w = window
        p = device_augment.ViewParams.unpack(
            augment.view_params(_seed(0), spec, tf.constant(window)).numpy())
        expected = augment.resize(photo[top:top + h, left:left + w], [size, size]).numpy()
        np.testing.assert_allclose(_interleaved(crop(canvas, p.window, p.inv_scale, size)),
                                   expected, atol=_TOL, err_msg=f"{size} px from {window}")

  def test_normalize(self):
    image = _image(16, 16)
    np.testing.assert_allclose(_interleaved(device_augment.normalize(_planes(image))),
                               augment.normalize(image), atol=_TOL)

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
            window=None, inv_scale=None, jitter=True, brightness=f_b, contrast=f_c,
            saturation=f_s, hue=d_h,
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
    canvas = (_image(32, 32) * 255).astype(np.uint8)
    view = jax.jit(device_augment.augment_view, static_argnums=2)
    plain = view(canvas, _params(), 32) * _STD + _MEAN
    np.testing.assert_allclose(plain, canvas / 255, atol=_TOL)  # the identity crop
    flipped = view(canvas, _params(flip=1), 32) * _STD + _MEAN
    np.testing.assert_allclose(flipped, canvas[:, ::-1] / 255, atol=_TOL)

  def test_bad_inputs_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, r"parameters have shape \(12,\)"):
      device_augment.ViewParams.unpack(jnp.zeros(12))
    with self.assertRaisesRegex(ValueError, "13 taps needs square views larger than 6 px"):
      device_augment.gaussian_blur(jnp.zeros((3, 4, 4)), jnp.ones(13) / 13)
    batch = {"canvas": jnp.zeros((2, 8, 8, 3)), "view_params": jnp.zeros((2, 2, 21))}
    with self.assertRaisesRegex(ValueError, "canvas is float32"):
      device_augment.augment_batch(batch, 8)
    batch["canvas"] = jnp.zeros((2, 8, 8, 3), jnp.uint8)
    with self.assertRaisesRegex(ValueError, "view size 0"):
      device_augment.augment_batch(batch, 0)


class ViewTest(absltest.TestCase):
  """Whole views: the host's image and parameters, made into views on the device."""

  def setUp(self):
    super().setUp()
    config = testing.smoke_config(num_small_views=1, **{"augment.small_image_size": 24})
    large, small = augment.view_specs(config.augment, 2, 1, 56)
    self.specs = large + small
    self.photo = _photo()
    self.view = jax.jit(device_augment.augment_view, static_argnums=2)

  def _canvas(self, image, side=160):
    return tf.image.pad_to_bounding_box(image, 0, 0, side, side).numpy()

  def test_equals_natural_view_on_the_same_seed(self):
    canvas = self._canvas(self.photo)
    applied = {name: set() for name in ("jitter", "grayscale", "solarize", "flip")}
    for i in range(16):
      for spec in self.specs:
        window = augment.crop_window(tf.constant(self.photo.shape), _seed(i), spec)
        params = augment.view_params(_seed(i), spec, tf.stack(window)).numpy()
        for name, seen in applied.items():
          seen.add(params[device_augment.PARAMS.index(name)])
        ours = self.view(canvas, params, spec.size)
        reference = augment.normalize(augment.natural_view(self.photo, _seed(i), spec))
        np.testing.assert_allclose(ours, reference, atol=_TOL, err_msg=f"seed {i} {spec}")
    for name, seen in applied.items():
      self.assertEqual(seen, {0.0, 1.0}, name)  # every op was both drawn and skipped

  def test_images_larger_than_the_canvas_are_shrunk_to_fit(self):
    shrunk = augment.fit_within(tf.constant(self.photo), 100).numpy()  # 120 x 150
    self.assertEqual(shrunk.shape, (80, 100, 3))
    expected = tf.image.resize(self.photo, [80, 100], antialias=True).numpy()
    np.testing.assert_array_equal(shrunk, np.clip(np.round(expected), 0, 255))
    # An image that fits is kept as it is.
    np.testing.assert_array_equal(augment.fit_within(tf.constant(self.photo), 150), self.photo)

  def test_blur_kernel_is_drawn_or_identity(self):
    window = tf.constant([0, 0, 56, 56])
    kernels = {augment.view_params(_seed(i), self.specs[1], window).numpy()[
        device_augment.NUM_PARAMS:].tobytes() for i in range(40)}  # view 2 blurs with p 0.1
    identity = np.eye(13, dtype=np.float32)[6].tobytes()
    self.assertIn(identity, kernels)
    self.assertGreater(len(kernels), 1)
    for size, taps in ((8, 13), (4, 7)):  # the radius stays below the side, as on the host
      spec = dataclasses.replace(self.specs[2], size=size)
      self.assertLen(augment.view_params(_seed(0), spec, window),
                     device_augment.NUM_PARAMS + taps)


def _write_folder(folder, count=10):
  os.makedirs(folder, exist_ok=True)
  photo = _photo(200, 300)
  for i in range(count):
    Image.fromarray(photo[i * 5:i * 5 + 90 + i, i * 7:i * 7 + 110]).save(
        os.path.join(folder, f"img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"))


def _make_views(batch, image_size=32, small_image_size=16):
  return jax.jit(functools.partial(device_augment.augment_batch, image_size=image_size,
                                   small_image_size=small_image_size))(batch)


class PipelineTest(absltest.TestCase):
  """train_batches' canvases and parameters, and augment_batch, end to end."""

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    _write_folder(self.folder)  # images of 90-99 x 110 px, JPEG and PNG, and a broken file
    with open(os.path.join(self.folder, "img10.jpg"), "wb") as f:
      f.write(b"not a jpeg")

  def _config(self, on_device, **overrides):
    config = testing.smoke_config(**{
        "dataset.name": "image_folder", "dataset.data_dir": self.folder,
        "dataset.heldout_dir": self.folder, "dataset.image_size": 32, "global_batch_size": 8,
        "num_small_views": 2, "augment.small_image_size": 16, **overrides})
    with config.unlocked():
      config.augment.on_device = on_device
      config.augment.canvas_size = 128  # holds the images whole: exact natural_view views
    return config

  def _batches(self, config):
    return list(input_pipeline.train_batches(sources.get_source(config.dataset), config, 1))

  def test_host_batch_format(self):
    batch = self._batches(self._config(True))[0]
    p = device_augment.NUM_PARAMS
    expected = {"canvas": (np.uint8, (8, 128, 128, 3)),
                "view_params": (np.float32, (8, 2, p + 13)),
                "small_view_params": (np.float32, (8, 2, p + 13)),
                "index": (np.int32, (8,)), "weight": (np.float32, (8,)),
                "label": (np.int32, (8,))}
    self.assertEqual({k: (v.dtype, v.shape) for k, v in batch.items()}, expected)
    self.assertEqual(augment.canvas_size(224), 512)

  def test_device_path_equals_host_path(self):
    with self.assertLogs(level="WARNING") as logs:
      on_device, host_only = self._batches(self._config(True)), self._batches(self._config(False))
    self.assertIn("img10.jpg", "\n".join(logs.output))
    for host, reference in zip(on_device, host_only):
      np.testing.assert_array_equal(host["index"], reference["index"])
      np.testing.assert_array_equal(host["weight"], reference["weight"])  # the bad file: 0
      ours = _make_views(host)
      self.assertEqual(set(ours), set(reference))
      real = reference["weight"] > 0
      for key in ("images", "small_images"):
        self.assertEqual((ours[key].dtype, ours[key].shape),
                         (reference[key].dtype, reference[key].shape))
        np.testing.assert_allclose(np.asarray(ours[key])[real], reference[key][real],
                                   atol=_TOL * 5)  # normalized: 1e-5 in [0, 1] over the std

  def test_a_bad_image_switches_to_safe_decoding_from_its_batch_exactly(self):
    config = self._config(True, global_batch_size=4)  # img10.jpg is in the 2nd or 3rd batch
    with self.assertLogs(level="INFO") as logs:
      fast_first = self._batches(config)
    self.assertIn("failed to decode at step", "\n".join(logs.output))  # the switch happened
    always_safe = functools.partial(input_pipeline._decoded_images, safe=True)
    with mock.patch.object(input_pipeline, "_decoded_images",
                           lambda ds, source, size, safe: always_safe(ds, source, size)), \
         self.assertLogs(level="WARNING"):
      safe = self._batches(config)
    self.assertLen(fast_first, 3)
    for x, y in zip(fast_first, safe):
      for key in y:
        np.testing.assert_array_equal(x[key], y[key])

  def test_deterministic_and_the_same_on_any_mesh(self):
    config = self._config(True, num_small_views=0)
    a, b = self._batches(config)[0], self._batches(config)[0]
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
    make_views = functools.partial(device_augment.augment_batch, image_size=32)

    def on_mesh(devices, rows):
      mesh = sharding.make_mesh(jax.devices()[:devices])
      step = jax.jit(jax.shard_map(make_views, mesh=mesh, in_specs=P(sharding.DATA_AXIS),
                                   out_specs=P(sharding.DATA_AXIS)))
      return step(sharding.global_batch_from_host({k: v[rows] for k, v in a.items()}, mesh))

    # One example per device on 8 devices, or on 4 devices twice: the same per-device program,
    # so the same bits (as a run resumed on other hosts with the same per-device batch).
    eight = on_mesh(8, slice(0, 8))
    halves = [on_mesh(4, slice(0, 4)), on_mesh(4, slice(4, 8))]
    for key in eight:
      np.testing.assert_array_equal(eight[key], np.concatenate([h[key] for h in halves]))
    # Another per-device batch compiles another program: equal up to float rounding.
    whole = _make_views(b, small_image_size=0)
    for key in whole:
      np.testing.assert_allclose(eight[key], whole[key], atol=_TOL, rtol=0, err_msg=key)

  def test_array_batches_pass_through(self):
    batch = next(iter(input_pipeline.train_batches(testing.random_source(),
                                                   testing.smoke_config(), 0)))
    out = device_augment.augment_batch(batch, 8)
    self.assertEqual(set(out), set(batch))
    for key in batch:
      np.testing.assert_array_equal(out[key], batch[key])

  def test_show_augmentations_draws_the_device_path(self):
    config = self._config(False, num_small_views=0)
    picture = show_augmentations.render(config, num_examples=2, epoch=1, min_cell=32)
    with config.unlocked():
      config.global_batch_size = 2
      config.augment.on_device = True
    views = _make_views(self._batches(config)[0], small_image_size=0)["images"]
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
