"""Image folders: layouts, stable ids, bad files skipped and reported, resume, hosts, multi-crop."""

import json
import os

from absl.testing import absltest
import numpy as np
from PIL import Image

from coke_jax import errors
from coke_jax import train
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from tests import testing


def _write_images(folder, count, seed=0, size=(40, 50)):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    image = rng.integers(0, 255, (size[0] + i, size[1], 3), dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(folder, f"img{i:02d}.{'png' if i % 2 else 'jpg'}"))


class ImageFolderTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    root = self.create_tempdir().full_path
    self.train_dir, self.heldout_dir = os.path.join(root, "train"), os.path.join(root, "val")
    _write_images(os.path.join(self.train_dir, "cat"), 6)
    _write_images(os.path.join(self.train_dir, "dog", "nested"), 5, seed=1)
    _write_images(os.path.join(self.heldout_dir, "dog"), 3, seed=2)
    # Bad files: not an image at all, and a truncated JPEG.
    with open(os.path.join(self.train_dir, "dog", "broken.jpg"), "wb") as f:
      f.write(b"this is not a jpeg")
    with open(os.path.join(self.train_dir, "cat", "img00.jpg"), "rb") as f:
      head = f.read()[:200]
    with open(os.path.join(self.train_dir, "cat", "truncated.jpg"), "wb") as f:
      f.write(head)
    with open(os.path.join(self.train_dir, "cat", "notes.txt"), "w") as f:
      f.write("ignored: not an image extension")

  def _config(self, **overrides):
    return testing.smoke_config(**{
        "dataset.name": "image_folder", "dataset.data_dir": self.train_dir,
        "dataset.heldout_dir": self.heldout_dir, "dataset.image_size": 16,
        "global_batch_size": 6, **overrides})

  def _epoch(self, config, epoch, start=0, process_index=0, process_count=1):
    source = sources.get_source(config.dataset)
    return list(input_pipeline.train_batches(source, config, epoch, start, process_index,
                                             process_count))

  def test_layout_labels_and_stable_ids(self):
    source = sources.get_source(self._config().dataset)
    self.assertEqual(source.num_train, 13)  # 6 + 5 + 2 bad; notes.txt is not an image
    self.assertEqual(source.num_classes, 2)
    paths = source.paths["train"]
    self.assertEqual(list(paths), sorted(paths))
    self.assertEqual(source.labels["train"].tolist(), [0] * 7 + [1] * 6)
    self.assertEqual(source.labels["heldout"].tolist(), [1] * 3)  # "dog" is class 1 of train
    self.assertEqual(source.image_shape, (16, 16, 3))

  def test_bad_files_are_skipped_counted_and_reported(self):
    config = self._config()
    source = sources.get_source(config.dataset)
    bad = {i for i, p in enumerate(source.paths["train"]) if "broken" in p or "truncated" in p}
    self.assertLen(bad, 2)
    with self.assertLogs(level="WARNING") as logs:
      batches = self._epoch(config, 0)
    self.assertLen(batches, 3)  # ceil(13 / 6): the bad files keep their places
    index = np.concatenate([b["index"] for b in batches])
    weight = np.concatenate([b["weight"] for b in batches])
    good = sorted(set(range(13)) - bad)
    self.assertEqual(sorted(index[weight > 0].tolist()), good)
    self.assertTrue(all(weight[index == i].sum() == 0 for i in bad))
    message = "\n".join(logs.output)
    self.assertIn("2 image(s) could not be decoded", message)
    self.assertIn("broken.jpg", message)
    self.assertIn("truncated.jpg", message)

  def test_bad_files_are_reported_when_the_consumer_stops_early(self):
    config = self._config(global_batch_size=13)  # one batch holds the whole epoch
    batches = input_pipeline.train_batches(sources.get_source(config.dataset), config, 0)
    with self.assertLogs(level="WARNING") as logs:
      next(batches)
      batches.close()  # what a `break` out of the trainer's loop does to the generator
    self.assertIn("2 image(s) could not be decoded", "\n".join(logs.output))

  def test_flat_unlabeled_folder(self):
    flat = self.create_tempdir().full_path
    _write_images(flat, 4)
    source = sources.get_source(self._config(**{"dataset.data_dir": flat,
                                                "dataset.heldout_dir": flat}).dataset)
    self.assertEqual(source.labels["train"].tolist(), [-1] * 4)
    batch = next(iter(input_pipeline.train_batches(source, self._config(), 0)))
    self.assertEqual(batch["label"].tolist(), [-1] * 6)
    with self.assertRaisesRegex(errors.ConfigError, "unlabeled .*a linear probe needs labels"):
      sources.labeled_train(source)
    self.assertEqual(sources.labeled_train(sources.get_source(self._config().dataset)).num_train, 13)

  def test_pretraining_on_an_unlabeled_folder_reports_cluster_sizes(self):
    flat = self.create_tempdir().full_path
    _write_images(flat, 12)
    config = self._config(**{"dataset.data_dir": flat, "dataset.heldout_dir": flat,
                             "num_epochs": 1, "objective.num_clusters": (3,),
                             "global_batch_size": 8, "eval_batch_size": 8})
    workdir = self.create_tempdir().full_path
    with self.assertLogs(level="WARNING") as logs:
      train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "final_metrics.json")) as f:
      final = json.load(f)
    self.assertNotIn("knn", final)
    head = final["heads"]["k3_0"]
    self.assertNotIn("acc", head)
    self.assertAlmostEqual(head["train_size_bound"], 0.5 * 12 / 3, places=5)  # gamma' 0.5, N 12
    self.assertBetween(head["train_min_size"], 0, head["train_max_size"])
    self.assertIn("No labeled held-out images", "\n".join(logs.output))

  def test_empty_missing_and_mixed_folders_are_clear_errors(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, f"{empty}.*has no images"):
      sources.get_source(self._config(**{"dataset.data_dir": empty}).dataset)
    missing = os.path.join(empty, "nowhere")
    with self.assertRaisesRegex(sources.MissingDataError, "nowhere.*does not exist"):
      sources.get_source(self._config(**{"dataset.data_dir": missing}).dataset)
    _write_images(os.path.join(empty, "a"), 1)
    _write_images(empty, 1)
    with self.assertRaisesRegex(ValueError, "both images"):
      sources.get_source(self._config(**{"dataset.data_dir": empty}).dataset)
    with self.assertRaisesRegex(ValueError, "heldout_dir"):
      sources.get_source(self._config(**{"dataset.heldout_dir": ""}).dataset)

  def test_resume_hosts_and_multicrop(self):
    for on_device in (False, True):  # finished views, or the canvas and view parameters
      config = self._config(num_small_views=2, **{"augment.small_image_size": 8,
                                                  "augment.on_device": on_device})
      full = self._epoch(config, 2)
      if on_device:
        self.assertEqual(full[0]["canvas"].shape, (6, 64, 64, 3))  # augment.canvas_size(16)
        self.assertEqual(full[0]["small_view_params"].shape[:2], (6, 2))
      else:
        self.assertEqual(full[0]["images"].shape, (6, 2, 16, 16, 3))
        self.assertEqual(full[0]["small_images"].shape, (6, 2, 8, 8, 3))
      rest = self._epoch(config, 2, start=1)
      parts = [self._epoch(config, 2, process_index=p, process_count=2) for p in range(2)]
      for step, batch in enumerate(full):
        for key in batch:
          if step >= 1:
            np.testing.assert_array_equal(batch[key], rest[step - 1][key])
          np.testing.assert_array_equal(
              batch[key], np.concatenate([parts[0][step][key], parts[1][step][key]]))
    with self.assertRaisesRegex(ValueError, "does not divide over 4 processes"):
      self._epoch(config, 0, process_count=4)

  def test_eval_batches(self):
    source = sources.get_source(self._config().dataset)
    with self.assertLogs(level="WARNING"):
      batches = list(input_pipeline.eval_batches(source, "train", 8))
    self.assertLen(batches, 2)
    self.assertEqual(batches[0]["images"].shape, (8, 16, 16, 3))
    self.assertEqual(set(batches[0]), {"images", "label", "weight"})
    self.assertEqual(np.concatenate([b["weight"] for b in batches]).sum(), 11)  # 2 bad files


if __name__ == "__main__":
  absltest.main()
