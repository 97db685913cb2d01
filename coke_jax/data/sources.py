"""Where images come from. A source gives un-augmented images by example index.

Each training example has a stable id in [0, N) (its position in the source's
train split), which indexes the clustering label tables.
"""

import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from coke_jax.data import digits


class MissingDataError(FileNotFoundError):
  """The configured dataset is not on disk; the message says how to prepare it."""


class InMemorySource(NamedTuple):
  """A dataset small enough to hold in host memory (digits; tests)."""
  name: str
  train_images: np.ndarray    # [N, H, W, C] float32
  train_labels: np.ndarray    # [N] int32, for evaluation only
  heldout_images: np.ndarray  # [M, H, W, C]
  heldout_labels: np.ndarray  # [M]
  num_classes: int

  @property
  def num_train(self) -> int:
    return len(self.train_images)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train_images.shape[1:])

  def eval_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of "train" or "heldout", un-augmented."""
    if split == "train":
      return self.train_images, self.train_labels
    if split == "heldout":
      return self.heldout_images, self.heldout_labels
    raise ValueError(f"split is {split!r}; use 'train' or 'heldout'.")

  def train_image_fn(self):
    """A TF function index -> image, closed over the train images."""
    table = tf.constant(self.train_images)
    return lambda index: tf.gather(table, index)


def _digits(config) -> InMemorySource:
  train, heldout = digits.load(config.holdout_fraction, config.split_seed)
  return InMemorySource("digits", train.images, train.labels, heldout.images, heldout.labels, 10)


# TFDS datasets the configs name, and how a user prepares each one offline.
TFDS_PREPARE = {
    "imagenet2012": (
        "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into "
        "<data_dir>/downloads/manual/, then run `tfds build imagenet2012 --data_dir=<data_dir>` "
        "on a machine with the files"),
    "cifar10": "run `tfds build cifar10 --data_dir=<data_dir>` on a machine with internet access",
    "cifar100": "run `tfds build cifar100 --data_dir=<data_dir>` on a machine with internet access",
    "stl10": "run `tfds build stl10 --data_dir=<data_dir>` on a machine with internet access",
}


def check_tfds_prepared(name: str, data_dir: str):
  """Fails at once, never downloading, unless the TFDS dataset is prepared in `data_dir`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  how = TFDS_PREPARE.get(name, f"run `tfds build {name} --data_dir=<data_dir>`")
  builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  if not builder.is_prepared():
    raise MissingDataError(
        f"The TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} (looked for "
        f"{builder.data_dir}). coke_jax never downloads data at run time. To prepare it, "
        f"{how.replace('<data_dir>', data_dir)}; then pass --config.dataset.data_dir={data_dir}. "
        "To train on the bundled data instead, use --config=configs/digits.py.")
  return builder


def get_source(config):
  """The data source named by `config.dataset.name`."""
  name = config.name
  if name == "digits":
    return _digits(config)
  if name in TFDS_PREPARE:
    check_tfds_prepared(name, config.data_dir)
    raise NotImplementedError(
        f"Training on the TFDS dataset {name!r} needs the TFDS input pipeline (issue #4).")
  raise ValueError(f"config.dataset.name is {name!r}; known datasets: "
                   f"{sorted(['digits', *TFDS_PREPARE])}.")
