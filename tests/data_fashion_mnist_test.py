"""The Fashion-MNIST source: IDX parsing, every damaged-file case, the validation split."""

import gzip
import os
import struct

from absl.testing import absltest
import numpy as np

from coke_jax import errors
from coke_jax.data import fashion_mnist
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from tests import testing

_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
  """`array` in the IDX format, written here from the format's description, not by the reader."""
  array = np.asarray(array)
  array = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
  header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
  return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path: str, data: bytes, gz: bool) -> str:
  path += ".gz" if gz else ""
  with open(path, "wb") as f:
    f.write(gzip.compress(data) if gz else data)
  return path


def fake_split(num: int, offset: int = 0, size: int = 28):
  """(images uint8 [num, size, size], labels): image i is marked by its id in its first pixels,
  so tests can tell images apart after a split; label i % 10 (balanced)."""
  rng = np.random.default_rng(offset)
  ids = np.arange(offset, offset + num)
  images = rng.integers(0, 256, (num, size, size), dtype=np.uint8)
  images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
  return images, (ids % 10).astype(np.uint8)


def write_dataset(folder: str, num_train: int = 40, num_heldout: int = 20, gz: bool = True,
                  heldout: bool = True) -> dict[str, np.ndarray]:
  """The four Fashion-MNIST files in `folder` (the t10k pair only if `heldout`)."""
  arrays = {}
  splits = {"train": (num_train, 0), "heldout": (num_heldout, 1000)}
  for split in ("train", "heldout") if heldout else ("train",):
    images, labels = fake_split(*splits[split])
    image_name, label_name = fashion_mnist.FILES[split]
    write(os.path.join(folder, image_name), idx_bytes(images), gz)
    write(os.path.join(folder, label_name), idx_bytes(labels), gz)
    arrays[split + "_images"], arrays[split + "_labels"] = images, labels
  return arrays


def image_ids(images: np.ndarray) -> list[int]:
  """The ids `fake_split` marked in float images [N, H, W, 1]."""
  pixels = np.rint(images[:, 0, :2, 0] * 255).astype(int)
  return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


class ReadIdxTest(absltest.TestCase):

  def test_every_type_code_gzipped_and_plain(self):
    folder = self.create_tempdir().full_path
    for i, dtype in enumerate(_IDX_CODES):
      signed = dtype.kind != "u"
      array = (np.arange(24).reshape(2, 3, 4) - 5 * signed).astype(dtype)
      for gz in (False, True):
        path = write(os.path.join(folder, f"a{i}"), idx_bytes(array), gz)
        got = fashion_mnist.read_idx(path)
        self.assertEqual(got.shape, (2, 3, 4))
        np.testing.assert_array_equal(got, array)

  def _raises(self, data: bytes, regex: str, gz: bool = False):
    path = write(os.path.join(self.create_tempdir().full_path, "f"), data, gz)
    with self.assertRaisesRegex(errors.ConfigError, regex) as ctx:
      fashion_mnist.read_idx(path)
    self.assertIn(path, str(ctx.exception))
    self.assertIn("apt-get install --reinstall dataset-fashion-mnist", str(ctx.exception))
    self.assertNotIn("\n", str(ctx.exception))

  def test_damaged_files_are_errors_never_short_arrays(self):
    good = idx_bytes(fake_split(5)[0])
    self._raises(good[:-1], r"is truncated: its header declares shape \[5, 28, 28\] of uint8, "
                 r"3,920 bytes of data, but 3,919 follow the header")
    self._raises(good[:-784], "is truncated")
    self._raises(good[:10], r"is truncated: 10 bytes, shorter than its 16-byte header")
    self._raises(good + b"\0", r"is corrupt \(bytes past the end\).*3,921 follow")
    self._raises(b"", r"not an IDX file: it starts with 0x\(empty\)")
    self._raises(b"\x00\x00\x07\x03" + good[4:], "not an IDX file: it starts with 0x00000703")
    self._raises(b"PK\x03\x04" + good[4:], "not an IDX file: it starts with 0x504b0304")
    self._raises(b"\x00\x00\x08\x00", "not an IDX file")  # no dimensions
    # A gzipped file that lost its end, and one whose content was altered (bad CRC).
    compressed = gzip.compress(good)
    for name, data in (("cut.gz", compressed[:len(compressed) // 2]),
                       ("crc.gz", compressed[:-8] + bytes(8))):
      path = write(os.path.join(self.create_tempdir().full_path, name), data, gz=False)
      with self.assertRaisesRegex(errors.ConfigError, "is a damaged gzip file"):
        fashion_mnist.read_idx(path)
    # Truncated inside the gzip stream's content: a complete stream of a short file.
    self._raises(good[:-100], "is truncated", gz=True)


class LoadTest(absltest.TestCase):

  def test_gzipped_and_plain_files_give_the_same_source(self):
    loaded = []
    for gz in (True, False):
      folder = self.create_tempdir().full_path
      arrays = write_dataset(folder, gz=gz)
      source = fashion_mnist.load(folder)
      self.assertEqual(source.name, "fashion_mnist")
      self.assertEqual(source.num_classes, 10)
      self.assertEqual(source.train_images.shape, (40, 28, 28, 1))
      self.assertEqual(source.heldout_images.shape, (20, 28, 28, 1))
      self.assertEqual(source.train_images.dtype, np.float32)
      self.assertEqual(source.train_labels.dtype, np.int32)
      np.testing.assert_array_equal(source.train_images[..., 0] * 255, arrays["train_images"])
      np.testing.assert_array_equal(source.heldout_labels, arrays["heldout_labels"])
      self.assertEqual(image_ids(source.heldout_images), list(range(1000, 1020)))
      loaded.append(source)
    np.testing.assert_array_equal(loaded[0].train_images, loaded[1].train_images)

  def test_get_source_registers_the_name(self):
    folder = self.create_tempdir().full_path
    write_dataset(folder)
    config = testing.smoke_config(**{"dataset.name": "fashion_mnist",
                                     "dataset.data_dir": folder})
    source = sources.get_source(config.dataset)
    self.assertEqual((source.num_train, source.image_shape), (40, (28, 28, 1)))
    config = testing.smoke_config(**{"dataset.name": "fashion"})
    with self.assertRaisesRegex(errors.ConfigError, "known datasets: .*'fashion_mnist'"):
      sources.get_source(config.dataset)

  def test_missing_files_name_the_folder_and_the_package(self):
    folder = self.create_tempdir().full_path
    for where in (folder, os.path.join(folder, "nowhere")):
      with self.assertRaises(sources.MissingDataError) as ctx:
        fashion_mnist.load(where)
      message = str(ctx.exception)
      self.assertIn(f"Fashion-MNIST is not in {where!r}", message)
      self.assertIn("`apt-get install dataset-fashion-mnist`", message)
      self.assertIn("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images", message)
      self.assertNotIn("\n", message)
    # Only the held-out labels are missing: the message names that file alone.
    write_dataset(folder)
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    with self.assertRaisesRegex(sources.MissingDataError, r"no t10k-labels-idx1-ubyte \(.gz"):
      fashion_mnist.load(folder)

  def test_mismatched_files(self):
    folder = self.create_tempdir().full_path
    write_dataset(folder)
    labels = os.path.join(folder, "train-labels-idx1-ubyte.gz")
    write(labels[:-3], idx_bytes(fake_split(39)[1]), gz=True)
    with self.assertRaisesRegex(errors.ConfigError, "train-images-idx3-ubyte.gz holds 40 images "
                                "but .*train-labels-idx1-ubyte.gz holds 39 labels.*replace them"):
      fashion_mnist.load(folder)
    write(labels[:-3], idx_bytes(fake_split(40)[0]), gz=True)  # an image file as labels
    with self.assertRaisesRegex(errors.ConfigError, r"labels-idx1-ubyte.gz holds uint8 of shape "
                                r"\[40, 28, 28\].*Are the image and label files swapped"):
      fashion_mnist.load(folder)
    bad = fake_split(40)[1]
    bad[7] = 12
    write(labels[:-3], idx_bytes(bad), gz=True)
    with self.assertRaisesRegex(errors.ConfigError, "has label 12 at position 7"):
      fashion_mnist.load(folder)
    write_dataset(folder)
    write(os.path.join(folder, "t10k-images-idx3-ubyte"), idx_bytes(fake_split(20, size=14)[0]),
          gz=True)
    with self.assertRaisesRegex(errors.ConfigError, "held-out images .* are 14x14 but the "
                                "training images .* are 28x28"):
      fashion_mnist.load(folder)


class ValidationSplitTest(absltest.TestCase):

  def test_stratified_disjoint_and_the_heldout_files_are_never_read(self):
    folder = self.create_tempdir().full_path
    write_dataset(folder, num_train=100, heldout=False)
    with self.assertRaises(sources.MissingDataError):
      fashion_mnist.load(folder)  # evaluation on t10k needs its files
    source = fashion_mnist.load(folder, validation_fraction=0.2, split_seed=0)
    fit, validation = image_ids(source.train_images), image_ids(source.heldout_images)
    self.assertEqual((len(fit), len(validation)), (80, 20))
    self.assertEqual(sorted(fit + validation), list(range(100)))
    np.testing.assert_array_equal(np.bincount(source.heldout_labels), [2] * 10)
    np.testing.assert_array_equal(np.bincount(source.train_labels), [8] * 10)
    np.testing.assert_array_equal(source.heldout_labels, np.asarray(validation) % 10)
    # The split is a function of split_seed.
    again = fashion_mnist.load(folder, validation_fraction=0.2, split_seed=0)
    self.assertEqual(image_ids(again.heldout_images), validation)
    other = fashion_mnist.load(folder, validation_fraction=0.2, split_seed=1)
    self.assertNotEqual(sorted(image_ids(other.heldout_images)), sorted(validation))
    # Damaged t10k files are not read either.
    write(os.path.join(folder, "t10k-images-idx3-ubyte"), b"garbage", gz=False)
    write(os.path.join(folder, "t10k-labels-idx1-ubyte"), b"garbage", gz=False)
    fashion_mnist.load(folder, validation_fraction=0.2)
    with self.assertRaisesRegex(errors.ConfigError, "t10k-images-idx3-ubyte is not an IDX"):
      fashion_mnist.load(folder)
    with self.assertRaisesRegex(errors.ConfigError, "validation_fraction is 1.0; it must be in"):
      fashion_mnist.load(folder, validation_fraction=1.0)


class TrainBatchesTest(absltest.TestCase):

  def test_a_batch_of_28x28_views(self):
    folder = self.create_tempdir().full_path
    write_dataset(folder, num_train=20, heldout=False)
    source = fashion_mnist.load(folder, validation_fraction=0.5)
    config = testing.smoke_config(global_batch_size=8)
    batches = list(input_pipeline.train_batches(source, config, epoch=0))
    self.assertLen(batches, 2)  # 10 training images, batch 8
    images = batches[0]["images"]
    self.assertEqual(images.shape, (8, 2, 28, 28, 1))
    self.assertTrue(np.isfinite(images).all())
    self.assertGreater(np.abs(images[:, 0] - images[:, 1]).max(), 0.01)  # two different views
    index = np.concatenate([b["index"] for b in batches])
    weight = np.concatenate([b["weight"] for b in batches])
    self.assertEqual(sorted(index[weight > 0]), list(range(10)))


@absltest.skipUnless(
    all(os.path.isfile(os.path.join(fashion_mnist.DEFAULT_DATA_DIR, name + ".gz"))
        for pair in fashion_mnist.FILES.values() for name in pair),
    f"needs `{fashion_mnist.INSTALL_COMMAND}` ({fashion_mnist.DEFAULT_DATA_DIR}); .ci/run "
    "installs it")
class RealFilesTest(absltest.TestCase):

  def test_counts_shapes_and_balance(self):
    source = fashion_mnist.load()
    self.assertEqual(source.train_images.shape, (60_000, 28, 28, 1))
    self.assertEqual(source.heldout_images.shape, (10_000, 28, 28, 1))
    np.testing.assert_array_equal(np.bincount(source.train_labels), [6_000] * 10)
    np.testing.assert_array_equal(np.bincount(source.heldout_labels), [1_000] * 10)
    self.assertEqual((source.train_images.min(), source.train_images.max()), (0.0, 1.0))
    # The first training image is an ankle boot and the first test image too (label 9).
    self.assertEqual((source.train_labels[0], source.heldout_labels[0]), (9, 9))


if __name__ == "__main__":
  absltest.main()
