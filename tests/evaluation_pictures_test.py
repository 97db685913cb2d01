"""Pictures show the right examples and sizes, and land in TensorBoard and PNG files."""

import glob
import io
import os

from absl.testing import absltest
from clu import metric_writers
import numpy as np
from PIL import Image
import tensorflow as tf

from coke_jax.evaluation import pictures


def _marker_images(n: int) -> np.ndarray:
  """Image i of [n, 8, 8, 1] is dark with one bright pixel at position i, so a tile names its image."""
  images = np.zeros((n, 8, 8, 1), np.float32)
  images[np.arange(n), np.arange(n) // 8, np.arange(n) % 8] = 1.0
  return images


class ExemplarGridTest(absltest.TestCase):

  def test_rows_hold_each_centers_nearest_examples_in_order(self):
    centers = np.eye(4, 6)
    # Example i lies near center i % 4, further off (along an unused axis) the larger i // 4 is.
    cluster, rank = np.arange(24) % 4, np.arange(24) // 4
    embeddings = centers[cluster] + 0.1 * rank[:, None] * np.eye(6)[5]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    tile, pad, label = 16, 2, 36
    ids = np.array([3, 1])
    grid = pictures.exemplar_grid(_marker_images(24), embeddings @ centers[ids].T, ids,
                                  per_cluster=5, tile=tile, pad=pad)
    self.assertEqual(grid.shape, (2 * (tile + pad) + pad, label + 5 * (tile + pad) + pad, 3))
    for row, cluster_id in enumerate((3, 1)):
      for col in range(5):
        top, left = pad + row * (tile + pad), label + pad + col * (tile + pad)
        cell = grid[top:top + tile, left:left + tile, 0]
        y, x = np.unravel_index(np.argmax(cell), cell.shape)
        shown = (y // (tile // 8)) * 8 + x // (tile // 8)  # the marker's position in the 8x8 image
        self.assertEqual(shown, cluster_id + 4 * col, (row, col))

  def test_sample_is_fixed_sorted_and_distinct(self):
    ids = pictures.sample_clusters(3000, 10)
    np.testing.assert_array_equal(ids, pictures.sample_clusters(3000, 10))
    self.assertLen(set(ids.tolist()), 10)
    self.assertTrue(np.all(np.diff(ids) > 0))
    np.testing.assert_array_equal(pictures.sample_clusters(7, 10), np.arange(7))


class ClusterSizeChartTest(absltest.TestCase):

  def test_bars_under_the_bound_are_red_and_sorted(self):
    sizes = np.array([50, 10, 200, 120, 5, 90])
    chart = pictures.cluster_size_chart(sizes, bound=60.0, title="t", width=246, height=200)
    self.assertEqual(chart.shape, (200, 246, 3))
    # Read the bars back along a row just above the x axis: each bar is a run of its colour.
    row = chart[200 - 18 - 2]
    runs, previous = [], None
    for pixel in map(tuple, row):
      colour = {pictures._BAR: "bar", pictures._UNDER: "under"}.get(pixel)
      if colour != previous and colour is not None:
        runs.append(colour)
      previous = colour
    self.assertEqual(runs, ["bar", "bar", "bar", "under", "under", "under"])
    # Heights: the tallest bar is the first; bar tops decrease left to right.
    columns = [np.flatnonzero(np.all(chart[:, x] == pictures._BAR, axis=1)
                              | np.all(chart[:, x] == pictures._UNDER, axis=1))
               for x in range(46, 246 - 8, 200 // 6)]
    tops = [c.min() for c in columns]
    self.assertEqual(tops, sorted(tops))

  def test_more_clusters_than_pixels(self):
    sizes = np.concatenate([np.full(2990, 400), np.full(10, 3)])
    chart = pictures.cluster_size_chart(sizes, bound=171.0, title="K = 3000")
    self.assertEqual(chart.shape, (240, 480, 3))
    under = np.any(np.all(chart == pictures._UNDER, axis=-1), axis=0)
    self.assertTrue(under[-20:].any())  # the smallest clusters, at the right, are red
    self.assertFalse(under[:200].any())

  def test_without_a_bound_no_bar_is_red(self):
    chart = pictures.cluster_size_chart(np.array([50, 10, 200]), bound=None, title="SwAV")
    self.assertFalse(np.any(np.all(chart == pictures._UNDER, axis=-1)))
    self.assertTrue(np.any(np.all(chart == pictures._BAR, axis=-1)))


class WriteTest(absltest.TestCase):

  def test_png_files_and_tensorboard_images(self):
    workdir = self.create_tempdir().full_path
    writer = metric_writers.SummaryWriter(workdir)
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    pictures.write(writer, workdir, 7, {"exemplars/k10_0": image}, tag="epoch0003")
    writer.flush()
    png = os.path.join(workdir, "pictures", "exemplars_k10_0_epoch0003.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), image)
    tags = []
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
      for event in tf.compat.v1.train.summary_iterator(path):
        tags += [(event.step, value.tag) for value in event.summary.value]
    self.assertIn((7, "pictures/exemplars/k10_0"), tags)
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(pictures.encode_png(image)))), image)


if __name__ == "__main__":
  absltest.main()
