"""Stratified splits of labeled in-memory datasets (digits, Fashion-MNIST)."""

import numpy as np


def stratified_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A boolean mask selecting round(fraction * n_c) random members of every class c."""
  rng = np.random.default_rng(seed)
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    mask[members[:int(round(fraction * len(members)))]] = True
  return mask
