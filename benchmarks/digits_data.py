"""Real embeddings for the clustering benchmarks: digits pixels, and digits under shifts and noise.

sklearn's digits ship with scikit-learn (no download): 1,797 8x8 images of 10
classes, flattened to 64-d rows and L2-normalized (CoKe's x_i have unit norm).
"""

import numpy as np
from sklearn import datasets as sk_datasets


def digits_pixels() -> np.ndarray:
  """sklearn's 1,797 digits as L2-normalized 64-d rows, [N, 64] float32."""
  x = sk_datasets.load_digits().data / 16.0
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def shifted_digit_images(copies: int, noise: float, seed: int = 0) -> np.ndarray:
  """Digits plus copies - 1 shifted (np.roll by <= 1 px in x and y), noisy copies: [N, 8, 8].

  Pixels are in [0, 1] (the trainer's scale); the noise is Gaussian with std `noise`.
  """
  images = sk_datasets.load_digits().images / 16.0
  rng = np.random.default_rng(seed)
  out = [images]
  for _ in range(copies - 1):
    dx, dy = rng.integers(-1, 2, size=(2, len(images)))
    shifted = np.stack([np.roll(im, (a, b), axis=(0, 1)) for im, a, b in zip(images, dy, dx)])
    out.append(shifted + noise * rng.normal(size=images.shape))
  return np.concatenate(out).astype(np.float32)


def shifted_digits(copies: int, noise: float, seed: int = 0) -> np.ndarray:
  """`shifted_digit_images` as L2-normalized 64-d rows, [copies * 1797, 64] float32."""
  x = shifted_digit_images(copies, noise, seed).reshape(-1, 64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)
