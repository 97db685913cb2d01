"""scikit-learn's bundled handwritten digits: the offline default dataset.

1,797 grayscale 8x8 images of 10 classes, shipped inside scikit-learn, so it
needs no download. Split once into train and held-out with a fixed seed that
does not depend on the training seed, so every run evaluates on the same
held-out images.
"""

from typing import NamedTuple

import numpy as np
from sklearn import datasets as sk_datasets

from coke_jax import errors
from coke_jax.data import splits


class Split(NamedTuple):
  images: np.ndarray  # [N, 8, 8, 1] float32 in [0, 1]
  labels: np.ndarray  # [N] int32, used only by evaluation


def load(holdout_fraction: float = 0.2, split_seed: int = 0,
         validation_fraction: float = 0.0) -> tuple[Split, Split]:
  """(train, held-out), stratified by class so both splits keep the class balance.

  With `validation_fraction` > 0, returns (train minus validation, validation)
  instead: that share of the training images, stratified, stands in for the
  held-out split, so settings can be tuned without ever scoring the held-out
  images, which this call then does not return at all.
  """
  if not 0.0 < holdout_fraction < 1.0:
    raise errors.ConfigError(
        f"dataset.holdout_fraction is {holdout_fraction}; it must be in (0, 1).")
  if not 0.0 <= validation_fraction < 1.0:
    raise errors.ConfigError(
        f"dataset.validation_fraction is {validation_fraction}; it must be in "
        "[0, 1) (0: evaluate on the held-out split).")
  digits = sk_datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  test = splits.stratified_mask(labels, holdout_fraction, split_seed)
  train, heldout = ~test, test
  if validation_fraction:
    rows = np.flatnonzero(train)
    heldout = np.zeros_like(test)
    heldout[rows[splits.stratified_mask(labels[rows], validation_fraction, split_seed + 1)]] = True
    train = ~test & ~heldout
  return Split(images[train], labels[train]), Split(images[heldout], labels[heldout])
