"""TFDS sources: ids, per-epoch order, host shares, resume, splits and labels.

The datasets are small fakes written with TFDS's own writer (tests/fake_tfds.py,
which says why not `tfds.testing.mock_data`). Nothing touches the network.
"""

import socket
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from coke_jax.data import augment
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from tests import fake_tfds
from tests import testing


# Views that leave a constant image constant, so its color still names the example.
_IDENTITY_AUGMENT = {"augment.crop_scale": (1.0, 1.0), "augment.crop_ratio": (1.0, 1.0),
                     "augment.jitter_prob": 0.0, "augment.grayscale_prob": 0.0,
                     "augment.blur_prob": (0.0,), "augment.solarize_prob": (0.0,),
                     "augment.flip_prob": 0.0}


class TFDSSourceTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fake_data = fake_tfds.prepared(
        (fake_tfds.FakeCifar100, fake_tfds.FakeStl10, fake_tfds.FakeImagenet))
    cls.data_dir = cls.fake_data.__enter__()

  @classmethod
  def tearDownClass(cls):
    cls.fake_data.__exit__(None, None, None)
    super().tearDownClass()

  def _config(self, name="coke_fake_cifar100", **overrides):
    # Finished views (the host-only path): these tests read them; the device path's batches
    # are tested in data_device_augment_test.py and by the resume test below.
    return testing.smoke_config(**{"dataset.name": name, "dataset.data_dir": self.data_dir,
                                   "global_batch_size": 8, "dataset.shuffle_buffer": 16,
                                   "augment.on_device": False, **overrides})

  def _epoch(self, config, epoch, start=0, process_index=0, process_count=1):
    source = sources.get_source(config.dataset)
    return list(input_pipeline.train_batches(source, config, epoch, start, process_index,
                                             process_count))

  def _canonical_keys(self, split="train"):
    """Reference: the example keys in TFDS's own reading order of the split's files."""
    builder = tfds.builder("coke_fake_cifar100", data_dir=self.data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return [int(x["id"].decode().split("_")[1]) for x in tfds.as_numpy(ds)]

  def test_source_properties_and_cifar100_superclasses(self):
    source = sources.get_source(self._config().dataset)
    self.assertEqual(source.num_train, 45)
    self.assertEqual(source.num_examples("heldout"), 11)
    self.assertEqual(source.image_shape, (32, 32, 3))
    self.assertEqual(source.num_classes, 20)  # coarse_label: the 20 superclasses
    self.assertGreater(len(source.slices("train", 0, 45)), 1)  # several files
    labels = np.concatenate([b["label"] for b in self._epoch(self._config(), 0)])
    self.assertTrue(np.all((labels >= 0) & (labels < 20)))

  def test_ids_follow_file_order_across_epochs_and_hosts(self):
    reference = self._canonical_keys()
    config = self._config(**_IDENTITY_AUGMENT)
    for epoch, process_count in ((1, 1), (2, 2)):
      for p in range(process_count):
        for batch in self._epoch(config, epoch, process_index=p, process_count=process_count):
          for row in range(len(batch["index"])):
            self.assertEqual(fake_tfds.key_of(batch["images"][row, 0]),
                             reference[batch["index"][row]])
            self.assertEqual(batch["label"][row], reference[batch["index"][row]] % 20)

  def test_every_example_once_per_epoch_on_uneven_hosts(self):
    config = self._config(global_batch_size=6)  # 45 over 3 hosts of 2: 15 each, 8 steps
    seen = []
    for p in range(3):
      batches = self._epoch(config, 4, process_index=p, process_count=3)
      self.assertLen(batches, input_pipeline.steps_per_epoch(45, 6))
      index = np.concatenate([b["index"] for b in batches])
      weight = np.concatenate([b["weight"] for b in batches])
      lo, hi = 15 * p, 15 * (p + 1)
      self.assertTrue(np.all((index >= lo) & (index < hi)))  # each host reads its own share
      seen.append(index[weight > 0])
    seen = np.concatenate(seen)
    self.assertEqual(sorted(seen.tolist()), list(range(45)))

  def test_order_is_deterministic_and_changes_with_epoch(self):
    config = self._config()
    a, b, c = self._epoch(config, 1), self._epoch(config, 1), self._epoch(config, 2)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x["images"], y["images"])
      np.testing.assert_array_equal(x["index"], y["index"])
    order_a = np.concatenate([x["index"] for x in a])
    order_c = np.concatenate([x["index"] for x in c])
    self.assertFalse(np.array_equal(order_a, order_c))
    self.assertFalse(np.array_equal(order_a[:45], np.sort(order_a[:45])))  # shuffled

  def test_resume_mid_epoch_is_exact(self):
    for on_device in (False, True):  # finished views, or the canvas and view parameters
      config = self._config(**{"augment.on_device": on_device})
      full = self._epoch(config, 3)
      rest = self._epoch(config, 3, start=4)
      self.assertLen(rest, len(full) - 4)
      for x, y in zip(full[4:], rest):
        self.assertEqual(set(x), {"canvas", "view_params", "index", "weight", "label"}
                         if on_device else {"images", "index", "weight", "label"})
        for key in x:
          np.testing.assert_array_equal(x[key], y[key])

  def test_stl10_pretrains_on_unlabeled_and_evaluates_on_labeled(self):
    config = self._config("coke_fake_stl10", global_batch_size=4)
    source = sources.get_source(config.dataset)
    self.assertEqual(source.num_train, 6 + 9)  # train+unlabeled
    self.assertEqual(source.image_shape, (96, 96, 3))
    batches = self._epoch(config, 0)
    labels = np.concatenate([b["label"] for b in batches])
    weight = np.concatenate([b["weight"] for b in batches])
    self.assertEqual(int(np.sum(labels[weight > 0] == -1)), 9)
    evaluation = list(input_pipeline.eval_batches(source, "train", 4))
    eval_labels = np.concatenate([b["label"] for b in evaluation])
    eval_weight = np.concatenate([b["weight"] for b in evaluation])
    self.assertEqual(eval_weight.sum(), 6)
    self.assertTrue(np.all(eval_labels[eval_weight > 0] >= 0))
    # The linear probe trains on the 6 labeled images only, and no label is -1 there.
    labeled = sources.labeled_train(source)
    self.assertEqual(labeled.num_train, 6)
    probe_batches = list(input_pipeline.train_batches(labeled, config, 0))
    probe_labels = np.concatenate([b["label"] for b in probe_batches])
    probe_weight = np.concatenate([b["weight"] for b in probe_batches])
    self.assertEqual(probe_weight.sum(), 6)
    self.assertTrue(np.all(probe_labels[probe_weight > 0] >= 0))
    self.assertEqual(source.num_train, 15)  # the pretraining source is unchanged

  def test_imagenet_eval_center_crop_and_multicrop(self):
    config = self._config("coke_fake_imagenet", global_batch_size=4, num_small_views=3,
                          **{"dataset.image_size": 24, "augment.small_image_size": 12})
    source = sources.get_source(config.dataset)
    batch = self._epoch(config, 0)[0]
    self.assertEqual(batch["images"].shape, (4, 2, 24, 24, 3))
    self.assertEqual(batch["small_images"].shape, (4, 3, 12, 12, 3))
    evaluation = list(input_pipeline.eval_batches(source, "heldout", 4))
    self.assertLen(evaluation, 2)
    self.assertEqual(evaluation[0]["images"].shape, (4, 24, 24, 3))
    np.testing.assert_array_equal(np.concatenate([b["weight"] for b in evaluation]),
                                  [1] * 5 + [0] * 3)
    # Reference: TFDS's decoded validation image 0, central 87.5% of the shorter side, resized.
    builder = tfds.builder("coke_fake_imagenet", data_dir=self.data_dir)
    first = next(iter(builder.as_dataset(split="validation", shuffle_files=False)))["image"]
    h, w = first.shape[:2]
    side = round(min(h, w) * 0.875)
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    crop = tf.image.resize(first[top:top + side, left:left + side], [24, 24], antialias=True)
    expected = (np.clip(crop.numpy() / 255, 0, 1) - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
    np.testing.assert_allclose(evaluation[0]["images"][0], expected, atol=1e-5)

  def test_unknown_split_or_label_fails_at_once(self):
    with self.assertRaisesRegex(ValueError, "split 'validation'.*coke_fake_cifar100"):
      sources.get_source(self._config(**{"dataset.heldout_split": "validation"}).dataset)
    with self.assertRaisesRegex(ValueError, "label_key='fine'"):
      sources.get_source(self._config(**{"dataset.label_key": "fine"}).dataset)

  def test_missing_dataset_names_the_fix_without_the_network(self):
    empty = self.create_tempdir().full_path
    config = self._config("cifar10", **{"dataset.data_dir": empty})

    def no_network(*args, **kwargs):
      raise AssertionError(f"a TFDS code path reached for the network: {args}")

    with mock.patch.object(socket.socket, "connect", no_network), \
         mock.patch.object(socket, "getaddrinfo", no_network), \
         self.assertRaises(sources.MissingDataError) as ctx:
      sources.get_source(config.dataset)
    for needed in ("cifar10", empty, "tfds build cifar10", "--config.dataset.data_dir"):
      self.assertIn(needed, str(ctx.exception))


if __name__ == "__main__":
  absltest.main()
