"""Pictures of a clustering run, as TensorBoard image summaries and PNG files.

- `exemplar_grid`: per head, the examples nearest to the centers of a fixed
  sample of clusters, one row per cluster (the supplementary's Figure 2).
- `cluster_size_chart`: every cluster's size, largest first, against the lower
  bound gamma_k = gamma' N / K of Eq. 5 where the objective has one (clusters
  under it in red).

Both return uint8 RGB arrays; `write` sends them to TensorBoard and to
`<workdir>/pictures/<name>_<tag>.png`.
"""

import io
import os
from typing import Mapping, Optional

import numpy as np
from PIL import Image, ImageDraw
import tensorflow as tf

_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
_BAR = (66, 114, 196)
_UNDER = (214, 39, 40)


def _to_display(image: np.ndarray, size: int) -> Image.Image:
  """One image [H, W, C] of any range (e.g. mean/std normalized) as a size x size RGB tile."""
  image = np.asarray(image, np.float32)
  lo, hi = float(image.min()), float(image.max())
  image = (image - lo) / max(hi - lo, 1e-6)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  tile = Image.fromarray(np.uint8(np.round(image[..., :3] * 255)))
  # Nearest keeps an 8x8 digit's pixels sharp; larger images are shrunk smoothly.
  resample = Image.NEAREST if tile.width <= size else Image.BILINEAR
  return tile.resize((size, size), resample)


def exemplar_grid(images: np.ndarray, scores: np.ndarray, cluster_ids: np.ndarray,
                  per_cluster: int = 8, tile: int = 32, pad: int = 2) -> np.ndarray:
  """Rows: clusters `cluster_ids`; columns: the `per_cluster` examples scoring highest for it.

  Args:
    images: [N, H, W, C] the examples (any value range).
    scores: [N, len(cluster_ids)] each example's score for each shown cluster (for
      centers: the similarity, so the columns are the nearest examples).
    cluster_ids: which clusters to show, in row order (their labels).
  Returns:
    uint8 [rows * (tile + pad) + pad, label + per_cluster * (tile + pad) + pad, 3].
  """
  sims = np.asarray(scores, np.float32)
  per_cluster = min(per_cluster, len(images))
  label_width = 36
  width = label_width + per_cluster * (tile + pad) + pad
  height = len(cluster_ids) * (tile + pad) + pad
  canvas = Image.new("RGB", (width, height), _BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  for row, cluster in enumerate(cluster_ids):
    top = pad + row * (tile + pad)
    draw.text((2, top + tile // 2 - 5), f"#{cluster}", fill=_TEXT)
    for col, i in enumerate(np.argsort(-sims[:, row], kind="stable")[:per_cluster]):
      canvas.paste(_to_display(images[i], tile), (label_width + pad + col * (tile + pad), top))
  return np.asarray(canvas)


def sample_clusters(num_clusters: int, num_shown: int, seed: int = 0) -> np.ndarray:
  """A fixed, sorted sample of cluster ids (the same every epoch, so pictures are comparable)."""
  if num_clusters <= num_shown:
    return np.arange(num_clusters)
  return np.sort(np.random.default_rng(seed).choice(num_clusters, num_shown, replace=False))


def cluster_size_chart(sizes: np.ndarray, bound: Optional[float], title: str, width: int = 480,
                       height: int = 240) -> np.ndarray:
  """Cluster sizes sorted largest first, with the lower bound (if any) as a line, uint8 [H, W, 3].

  With more clusters than pixel columns each column shows the largest size of
  the clusters it covers (and is red if any of them is under the bound).
  """
  sizes = np.sort(np.asarray(sizes, np.float64))[::-1]
  k = len(sizes)
  left, right, top, bottom = 44, 8, 30, 18
  plot_w, plot_h = width - left - right, height - top - bottom
  y_max = max(float(sizes.max()), bound or 0.0) * 1.05 or 1.0
  y = lambda v: top + plot_h - v / y_max * plot_h
  canvas = Image.new("RGB", (width, height), _BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  columns = min(k, plot_w)
  edges = np.linspace(0, k, columns + 1).astype(int)
  bar_w = plot_w / columns
  for c in range(columns):
    group = sizes[edges[c]:max(edges[c + 1], edges[c] + 1)]
    x0 = left + c * bar_w
    x1 = x0 + max(bar_w - (1 if bar_w >= 3 else 0), 1)
    under = bound is not None and group.min() < bound
    draw.rectangle([x0, y(group.max()), x1 - 1, top + plot_h], fill=_UNDER if under else _BAR)
  if bound is not None:
    draw.line([left, y(bound), left + plot_w, y(bound)], fill=_TEXT, width=1)
    label = f"bound {bound:.1f}"
    box = draw.textbbox((left + plot_w - 6 * len(label) - 4, y(bound) - 13), label)
    draw.rectangle(box, fill=_BACKGROUND)
    draw.text(box[:2], label, fill=_TEXT)
  draw.line([left, top, left, top + plot_h], fill=_TEXT)
  draw.line([left, top + plot_h, left + plot_w, top + plot_h], fill=_TEXT)
  for value in (0.0, y_max / 1.05):
    draw.text((2, y(value) - 5), f"{value:.0f}", fill=_TEXT)
  draw.text((left, 2), title, fill=_TEXT)
  under_text = (f"  {int(np.sum(sizes < bound))} of {k} under the bound" if bound is not None
                else f"  largest share {sizes.max() / max(sizes.sum(), 1):.1%}")
  draw.text((left, 14), f"min {sizes.min():.0f}  max {sizes.max():.0f}{under_text}", fill=_TEXT)
  draw.text((left, height - 14), f"clusters, largest first (K = {k})", fill=_TEXT)
  return np.asarray(canvas)


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def write(writer, workdir: str, step: int, pictures: Mapping[str, np.ndarray],
          tag: Optional[str] = None):
  """Image summaries at `step` and `<workdir>/pictures/<name>_<tag>.png` (tag defaults to step).

  Names may contain "/" (TensorBoard groups by it); in file names it becomes "_".
  """
  if not pictures:
    return
  writer.write_images(step, {f"pictures/{name}": image[None] for name, image in pictures.items()})
  directory = os.path.join(workdir, "pictures")
  tf.io.gfile.makedirs(directory)
  for name, image in pictures.items():
    path = os.path.join(directory, f"{name.replace('/', '_')}_{tag or step}.png")
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(encode_png(image))
