"""scikit-learn's bundled handwritten digits: the offline default dataset.

1,797 grayscale 8x8 images of 10 classes, shipped inside scikit-learn, so it
needs no download. Split once into train and held-out with a fixed seed that
does not depend on the training seed, so every run evaluates on the same
held-out images.
"""

from typing import NamedTuple

import numpy as np
from sklearn import datasets as sk_datasets


class Split(NamedTuple):
  images: np.ndarray  # [N, 8, 8, 1] float32 in [0, 1]
  labels: np.ndarray  # [N] int32, used only by evaluation


def load(holdout_fraction: float = 0.2, split_seed: int = 0) -> tuple[Split, Split]:
  """(train, held-out), stratified by class so both splits keep the class balance."""
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f"dataset.holdout_fraction is {holdout_fraction}; it must be in (0, 1).")
  digits = sk_datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(split_seed)
  holdout = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    holdout[members[:int(round(holdout_fraction * len(members)))]] = True
  return (Split(images[~holdout], labels[~holdout]), Split(images[holdout], labels[holdout]))
