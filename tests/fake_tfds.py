"""Small TFDS datasets written to disk by TFDS's own writer, for tests; never the network.

`tfds.testing.mock_data` replaces the reading of files with generated examples,
which would bypass what the data tests check (which record gets which id, file
pieces per host, skipping to a step). These builders subclass the registered
cifar10, cifar100, stl10 and imagenet2012 builders (their real features and
splits) with made-up examples, prepared into a temporary data_dir.
"""

import contextlib
import shutil
import tempfile
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds

from coke_jax.data import augment
from coke_jax.data import sources


def color(key: int) -> np.ndarray:
  """A constant 32x32 image whose red and green levels spell `key` (PNG keeps it exact)."""
  return np.broadcast_to(np.array([key % 256, key // 256, 7], np.uint8), (32, 32, 3)).copy()


def key_of(image_normalized: np.ndarray) -> int:
  rgb = np.round((image_normalized.reshape(-1, 3).mean(0) * augment.IMAGENET_STD
                  + augment.IMAGENET_MEAN) * 255)
  return int(rgb[0] + 256 * rgb[1])


def register(parent: str, name: str, splits: dict[str, int], example_fn):
  """A TFDS builder with `parent`'s features whose splits hold made-up examples."""

  def split_generators(self, dl_manager):
    del dl_manager
    return {split: self._fake_examples(split, n) for split, n in splits.items()}

  def fake_examples(self, split, n):
    del self
    for k in range(n):
      yield f"{split}{k}", example_fn(split, k)

  return type(name, (tfds.builder_cls(parent),),
              {"name": name, "_split_generators": split_generators,
               "_fake_examples": fake_examples})


FakeCifar100 = register(
    "cifar100", "coke_fake_cifar100", {"train": 45, "test": 11},
    lambda split, k: {"id": f"{split}_{k:05d}",
                      "image": color(k + (1000 if split == "test" else 0)),
                      "label": k % 100, "coarse_label": k % 20})
FakeStl10 = register(
    "stl10", "coke_fake_stl10", {"train": 6, "test": 4, "unlabeled": 9},
    lambda split, k: {"image": np.full((96, 96, 3), k, np.uint8),
                      "label": -1 if split == "unlabeled" else k % 10})
FakeImagenet = register(
    "imagenet2012", "coke_fake_imagenet", {"train": 10, "validation": 5},
    lambda split, k: {"file_name": f"{split}_{k}.JPEG", "label": k % 1000,
                      "image": np.random.default_rng(k).integers(
                          0, 255, (60 + 7 * k, 90 - 3 * k, 3), dtype=np.uint8)})

FakeCifar10 = register(
    "cifar10", "coke_fake_cifar10", {"train": 24, "test": 8},
    lambda split, k: {"id": f"{split}_{k:05d}", "image": color(k), "label": k % 10})

SPECS = {"coke_fake_cifar10": sources.TFDS_DATASETS["cifar10"],
         "coke_fake_cifar100": sources.TFDS_DATASETS["cifar100"],
          "coke_fake_stl10": sources.TFDS_DATASETS["stl10"],
          "coke_fake_imagenet": sources.TFDS_DATASETS["imagenet2012"]}


@contextlib.contextmanager
def prepared(builders=(FakeCifar10, FakeCifar100, FakeStl10, FakeImagenet)):
  """Yields a data_dir holding the fake datasets (4 shards each), known to coke_jax's sources."""
  data_dir = tempfile.mkdtemp()
  try:
    for builder_cls in builders:
      builder_cls(data_dir=data_dir).download_and_prepare(
          download_config=tfds.download.DownloadConfig(num_shards=4))
    with mock.patch.dict(sources.TFDS_DATASETS, SPECS):
      yield data_dir
  finally:
    shutil.rmtree(data_dir)
