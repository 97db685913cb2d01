"""Pretraining evaluation: the report of a constructed state, periodic logging, checkpoint eval."""

import glob
import json
import os
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from coke_jax import train
from coke_jax.evaluation import checkpoint_eval
from coke_jax.evaluation import metrics
from coke_jax.evaluation import pretraining_eval
from coke_jax.objectives import EvalHead
from coke_jax.objectives import coke
from tests import testing


class EvaluateTest(absltest.TestCase):

  def test_report_of_a_constructed_clustering(self):
    rng = np.random.default_rng(0)
    num_train, dim = 300, 8
    objective = coke.CoKe(num_clusters=(3, 5), num_examples=num_train, embed_dim=dim,
                          min_size_ratio=0.9)
    centers = [np.eye(3, dim), np.linalg.qr(rng.normal(size=(dim, 5)))[0].T]
    train_assignment = [rng.integers(0, 3, num_train), np.repeat(np.arange(5), 60)]
    state = tuple(head._replace(prev_centers=jnp.asarray(c, jnp.float32),
                                prev_labels=jnp.asarray(a, jnp.int32))
                  for head, c, a in zip(objective.init(jax.random.PRNGKey(0))[1], centers,
                                        train_assignment))
    # Held-out images of class y sit at center (2 - y) of head 0: a permuted, perfect clustering.
    labels = rng.integers(0, 3, 90)
    proj = centers[0][2 - labels] + 0.05 * rng.normal(size=(90, dim))
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    train_labels = rng.integers(0, 3, num_train)
    outputs_train = {"features": np.eye(3, 4)[train_labels] + 0.1 * rng.normal(size=(300, 4)),
                     "proj": np.zeros((300, dim)), "label": train_labels}
    outputs_heldout = {"features": np.eye(3, 4)[labels] + 0.1 * rng.normal(size=(90, 4)),
                       "proj": proj, "label": labels}
    config = testing.smoke_config()
    results = pretraining_eval.evaluate(outputs_train, outputs_heldout, 3,
                                        objective.eval_heads({}, state), config)

    self.assertEqual(set(results["heads"]), {"k3_0", "k5_1"})
    head0 = results["heads"]["k3_0"]
    for key in ("acc", "nmi", "ari", "ami", "majority_acc"):
      self.assertAlmostEqual(head0[key], 1.0, msg=key)
    head1 = results["heads"]["k5_1"]
    expected = metrics.clustering_metrics(np.argmax(proj @ centers[1].T, axis=1), labels)
    for key, value in expected.items():
      self.assertAlmostEqual(head1[key], value, msg=key)
    sizes = np.bincount(train_assignment[0], minlength=3)
    self.assertEqual((head0["train_min_size"], head0["train_max_size"]), (sizes.min(), sizes.max()))
    self.assertAlmostEqual(head0["train_size_bound"], 0.9 / 3 * num_train, places=4)
    self.assertEqual(head0["train_num_under_bound"], int(np.sum(sizes < 90)))
    self.assertEqual((head1["train_min_size"], head1["train_max_size"]), (60, 60))
    self.assertEqual(set(results["knn"]), {"k20", "k200"})
    self.assertEqual(results["knn_top1"], results["knn"]["k20"]["top1"])
    self.assertEqual(results["knn"]["k20"]["top1"], 1.0)  # well separated classes

  def test_a_head_without_labels_or_bound_reports_its_predicted_train_sizes(self):
    rng = np.random.default_rng(1)
    proj = rng.normal(size=(50, 4))
    head = EvalHead(name="k3_0", input="proj", kernel=rng.normal(size=(4, 3)),
                    bias=np.array([0.0, 0.5, -0.5]))
    train_outputs = {"features": rng.normal(size=(50, 2)), "proj": proj,
                     "label": rng.integers(0, 3, 50)}
    results = pretraining_eval.evaluate(train_outputs, dict(train_outputs), 3, [head],
                                        testing.smoke_config())
    sizes = np.bincount(np.argmax(proj @ head.kernel + head.bias, -1), minlength=3)
    got = results["heads"]["k3_0"]
    self.assertEqual((got["train_min_size"], got["train_max_size"]), (sizes.min(), sizes.max()))
    self.assertNotIn("train_size_bound", got)
    self.assertEqual(set(got) - {"train_min_size", "train_max_size"},
                     {"acc", "nmi", "ari", "ami", "majority_acc"})


def _scalars_and_images(workdir):
  scalars, images, histograms = {}, set(), set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        kind = value.metadata.plugin_data.plugin_name
        if kind == "images":
          images.add((event.step, value.tag))
        elif kind == "histograms":
          histograms.add((event.step, value.tag))
        elif kind == "scalars":
          scalars[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
  return scalars, images, histograms


class PeriodicEvaluationTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # 6 steps per epoch: the scan ends at step 6, epoch 1 at 12, epoch 2 (the last) at 18.
    cls.config = testing.smoke_config(num_epochs=2, eval_every_epochs=1,
                                      checkpoint_every_steps=100)
    cls.workdir = tempfile.mkdtemp(prefix="periodic_eval_")
    train.train_and_evaluate(cls.config, cls.workdir)
    with open(os.path.join(cls.workdir, "final_metrics.json")) as f:
      cls.final = json.load(f)

  def test_curves_histograms_and_pictures_every_epoch(self):
    scalars, images, histograms = _scalars_and_images(self.workdir)
    for step in (6, 12, 18):  # epoch 0 (the scan) and 1 periodically, epoch 2 at the end
      for tag in ("eval/knn/k20/top1", "eval/knn/k200/top5", "eval/heads/k10_0/nmi",
                  "eval/heads/k16_1/acc", "eval/heads/k10_0/train_min_size"):
        self.assertIn((step, tag), scalars)
      for head in ("k10_0", "k16_1"):
        self.assertIn((step, f"pictures/exemplars/{head}"), images)
        self.assertIn((step, f"pictures/cluster_sizes/{head}"), images)
        self.assertIn((step, f"cluster_sizes/{head}"), histograms)
    self.assertAlmostEqual(scalars[(18, "eval/knn/k20/top1")], self.final["knn"]["k20"]["top1"],
                           places=6)  # float32 in TensorBoard
    self.assertIn((18, "train/loss"), scalars)
    pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.workdir, "pictures",
                                                                      "*.png")))
    self.assertEqual(pngs, sorted(f"{kind}_{head}_epoch{e:04d}.png"
                                  for kind in ("exemplars", "cluster_sizes")
                                  for head in ("k10_0", "k16_1") for e in range(3)))

  def test_checkpoint_eval_reproduces_the_final_metrics(self):
    eval_dir = self.create_tempdir().full_path
    results = checkpoint_eval.evaluate_checkpoint(self.config, eval_dir, self.workdir)
    self.assertEqual(results.pop("step"), 18)
    # The final metrics also carry the run's collapse-warning history, which is a record of
    # training, not a function of the checkpoint; everything else must be reproduced.
    self.assertIn("collapse", self.final)
    self.assertEqual(results, {k: v for k, v in self.final.items() if k != "collapse"})
    with open(os.path.join(eval_dir, "eval_metrics.json")) as f:
      self.assertEqual(json.load(f)["heads"], self.final["heads"])
    self.assertLen(glob.glob(os.path.join(eval_dir, "pictures", "*_step18.png")), 4)


if __name__ == "__main__":
  absltest.main()
