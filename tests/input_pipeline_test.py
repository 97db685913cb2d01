"""Epoch semantics, host sharding and determinism of the training stream."""

from absl.testing import absltest
import numpy as np

from coke_jax.data import digits
from coke_jax.data import input_pipeline
from tests import testing


def _epoch(source, config, epoch, start=0, process_index=0, process_count=1):
  return list(input_pipeline.train_batches(source, config, epoch, start, process_index,
                                           process_count))


class TrainBatchesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.source = testing.random_source(num_train=50)
    self.config = testing.smoke_config(global_batch_size=16)

  def test_every_example_once_per_epoch(self):
    batches = _epoch(self.source, self.config, epoch=3)
    self.assertLen(batches, 4)  # ceil(50 / 16)
    index = np.concatenate([b["index"] for b in batches])
    weight = np.concatenate([b["weight"] for b in batches])
    self.assertEqual(sorted(index[weight > 0]), list(range(50)))
    self.assertEqual(weight.sum(), 50)
    self.assertEqual(batches[0]["images"].shape, (16, 2, 8, 8, 1))

  def test_order_changes_with_epoch_and_is_deterministic(self):
    a = _epoch(self.source, self.config, 1)
    b = _epoch(self.source, self.config, 1)
    c = _epoch(self.source, self.config, 2)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x["images"], y["images"])
      np.testing.assert_array_equal(x["index"], y["index"])
    self.assertFalse(np.array_equal(a[0]["index"], c[0]["index"]))
    # The two views of an example differ.
    self.assertGreater(np.abs(a[0]["images"][:, 0] - a[0]["images"][:, 1]).max(), 0.01)

  def test_resume_mid_epoch_sees_the_same_batches(self):
    full = _epoch(self.source, self.config, 5)
    rest = _epoch(self.source, self.config, 5, start=2)
    for x, y in zip(full[2:], rest):
      np.testing.assert_array_equal(x["images"], y["images"])
      np.testing.assert_array_equal(x["index"], y["index"])

  def test_hosts_split_the_global_batch(self):
    whole = _epoch(self.source, self.config, 0)
    parts = [_epoch(self.source, self.config, 0, process_index=p, process_count=2)
             for p in range(2)]
    for step, batch in enumerate(whole):
      for key in ("images", "index", "weight"):
        np.testing.assert_array_equal(
            batch[key], np.concatenate([parts[0][step][key], parts[1][step][key]]))

  def test_clear_errors(self):
    with self.assertRaisesRegex(ValueError, "16 does not divide over 3 processes"):
      _epoch(self.source, self.config, 0, process_count=3)
    config = testing.smoke_config(global_batch_size=16, num_small_views=2)
    with self.assertRaisesRegex(ValueError, "multi-crop needs natural images"):
      _epoch(self.source, config, 0)


class EvalBatchesTest(absltest.TestCase):

  def test_padding_and_hosts(self):
    source = testing.random_source(num_train=50, num_heldout=13)
    whole = list(input_pipeline.eval_batches(source, "heldout", 8))
    self.assertLen(whole, 2)
    weight = np.concatenate([b["weight"] for b in whole])
    np.testing.assert_array_equal(weight, [1] * 13 + [0] * 3)
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in whole])[:13],
                                  source.heldout_images)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in whole])[:13],
                                  source.heldout_labels)
    # Two hosts: contiguous shares of 6 and 7, each in 2 batches of 4.
    parts = [list(input_pipeline.eval_batches(source, "heldout", 8, p, 2)) for p in range(2)]
    images = []
    for part in parts:
      self.assertLen(part, 2)
      w = np.concatenate([b["weight"] for b in part])
      images.append(np.concatenate([b["images"] for b in part])[w > 0])
    np.testing.assert_array_equal(np.concatenate(images), source.heldout_images)


class DigitsSplitTest(absltest.TestCase):

  def test_validation_comes_from_train_and_never_touches_the_heldout_split(self):
    key = lambda split: {x.tobytes() for x in split.images}
    train, heldout = digits.load(0.2, split_seed=0)
    self.assertEqual((len(train.labels), len(heldout.labels)), (1438, 359))
    self.assertEqual(np.bincount(heldout.labels).min(), 35)  # stratified: every class ~20%
    fit, validation = digits.load(0.2, split_seed=0, validation_fraction=0.2)
    self.assertEqual(len(fit.labels) + len(validation.labels), 1438)
    self.assertEqual(key(fit) | key(validation), key(train))
    self.assertFalse(key(validation) & key(heldout))
    self.assertEqual(np.bincount(validation.labels).min(), 28)
    with self.assertRaisesRegex(ValueError, "validation_fraction is 1.0"):
      digits.load(0.2, validation_fraction=1.0)


if __name__ == "__main__":
  absltest.main()
