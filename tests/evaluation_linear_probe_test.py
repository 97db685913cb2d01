"""The linear probe: one sharded step against a hand-written SGD step, 8 devices = 1, resume."""

import functools
import json
import os
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from coke_jax import models
from coke_jax import sharding
from coke_jax import train
from coke_jax.evaluation import linear_probe
from tests import testing


def _probe_config(**overrides):
  config = testing.smoke_config(**overrides)
  with config.unlocked():
    config.linear_eval = linear_probe.default_config()
    config.linear_eval.num_epochs = 3
    config.linear_eval.batch_size = 256
    config.linear_eval.learning_rate = 1.0
    config.linear_eval.normalize_features = True
    config.linear_eval.eval_every_epochs = 2
    config.linear_eval.log_every_steps = 4
    config.linear_eval.augment = config.augment.copy_and_resolve_references()
  return config


class ProbeStepTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    config = _probe_config()
    self.backbone = models.build_model(config.model).backbone
    rng = np.random.default_rng(0)
    self.batch = {"images": rng.uniform(size=(16, 1, 8, 8, 1)).astype(np.float32),
                  "label": rng.integers(0, 10, 16).astype(np.int32),
                  "weight": np.array([1.0] * 13 + [0.0] * 3, np.float32)}
    # BN statistics away from their init, so that inference mode visibly uses them.
    variables = self.backbone.init(jax.random.PRNGKey(1), self.batch["images"][:, 0], train=False)
    variables = jax.tree_util.tree_map(
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), variables)
    variables["batch_stats"] = jax.tree_util.tree_map(jnp.abs, variables["batch_stats"])
    # Host copies throughout: the step donates its inputs.
    self.frozen = {"backbone": jax.device_get(variables),
                   "shift": rng.normal(size=16).astype(np.float32),
                   "scale": rng.uniform(0.5, 2.0, size=16).astype(np.float32)}
    self.params = {"kernel": rng.normal(size=(16, 10)).astype(np.float32) * 0.1,
                   "bias": rng.normal(size=(10,)).astype(np.float32) * 0.1}
    self.probe = config.linear_eval
    self.tx, self.schedule = linear_probe.make_optimizer(self.probe, steps_per_epoch=10)

  def _step(self, batch, devices):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    state = linear_probe.ProbeState(step=jnp.zeros((), jnp.int32), params=self.params,
                                    opt_state=self.tx.init(self.params))
    state, frozen = jax.device_put((state, self.frozen), sharding.replicated(mesh))
    step = sharding.shard_step(
        functools.partial(linear_probe.probe_step, backbone=self.backbone, tx=self.tx,
                          schedule=self.schedule), mesh, num_consts=1)
    state, metrics = step(state, sharding.global_batch_from_host(batch, mesh), frozen)
    return jax.device_get((state, frozen, metrics))

  def test_matches_hand_written_sgd_step(self):
    state, _, metrics = self._step(self.batch, devices=8)
    # Reference: the mean cross-entropy over the 13 real rows of a linear layer on
    # inference-mode features, shifted and scaled; the first SGD-momentum step with
    # weight decay is p - lr * (grad + wd * p).
    feats = np.asarray(self.backbone.apply(self.frozen["backbone"],
                                           self.batch["images"][:13, 0], train=False))
    feats = (feats - self.frozen["shift"]) * self.frozen["scale"]
    labels = self.batch["label"][:13]

    def loss_fn(params):
      logits = feats @ params["kernel"] + params["bias"]
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(13), labels])

    loss, grads = jax.value_and_grad(loss_fn)(self.params)
    lr, wd = self.probe.learning_rate, self.probe.weight_decay
    for name in ("kernel", "bias"):
      expected = self.params[name] - lr * (grads[name] + wd * self.params[name])
      np.testing.assert_allclose(state.params[name], expected, rtol=1e-5, atol=1e-6)
    self.assertAlmostEqual(float(metrics["loss"]), float(loss), places=5)
    self.assertEqual(int(state.step), 1)

  def test_eight_devices_equal_one_and_padding_is_ignored(self):
    """One SGD step of a linear layer, 8 devices against 1: the gradient is a sum of 13 rows,
    which another order changes by at most ~13 x 6e-8 of its size, with no later step to
    amplify it; rtol 1e-5 bounds that with a margin. Garbage in the padding rows must not
    move the result at all beyond the same rounding."""
    eight, frozen, _ = self._step(self.batch, devices=8)
    one, _, _ = self._step(self.batch, devices=1)
    garbage = dict(self.batch, images=self.batch["images"].copy(), label=self.batch["label"].copy())
    garbage["images"][13:] = 100.0
    garbage["label"][13:] = 9 - garbage["label"][13:]
    padded, _, _ = self._step(garbage, devices=8)
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(eight.params[name], one.params[name], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(padded.params[name], eight.params[name], rtol=1e-5, atol=1e-6)
    # The backbone, BN statistics included, is untouched.
    for got, want in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(self.frozen)):
      np.testing.assert_array_equal(got, want)


class FeatureTransformTest(absltest.TestCase):

  def test_standardizes_train_features_or_leaves_them(self):
    source = testing.random_source(num_train=40, num_heldout=8)
    mesh = sharding.make_mesh()
    for normalize in (True, False):
      config = _probe_config(eval_batch_size=16)
      config.linear_eval.normalize_features = normalize
      backbone = models.build_model(config.model).backbone
      variables = backbone.init(jax.random.PRNGKey(0), source.train_images[:2], train=False)
      frozen = linear_probe.feature_transform(backbone, variables, source, config, mesh)
      raw = np.asarray(backbone.apply(variables, source.train_images, train=False))
      got = np.asarray(linear_probe.probe_features(backbone, frozen, source.train_images))
      if normalize:
        np.testing.assert_allclose(got.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(got.std(0), 1.0, rtol=1e-3)
      else:
        np.testing.assert_allclose(got, raw, rtol=1e-6)


class TrainAndEvaluateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pretrain_dir = tempfile.mkdtemp(prefix="probe_pretrain_")
    train.train_and_evaluate(testing.smoke_config(num_epochs=1), cls.pretrain_dir,
                             stop_at_step=6)

  def _params(self, workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    return manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore()))["state"]["params"]

  def test_learns_writes_metrics_and_resumes_exactly(self):
    config = _probe_config()
    full_dir = self.create_tempdir().full_path
    full = linear_probe.train_and_evaluate(config, full_dir, self.pretrain_dir)
    with open(os.path.join(full_dir, "linear_eval_metrics.json")) as f:
      self.assertEqual(json.load(f), full)
    self.assertEqual(full["pretrain_step"], 6)
    # 10 balanced classes: chance is 0.1; three epochs on the smoke backbone get far above.
    self.assertGreater(full["top1"], 0.3)
    self.assertGreaterEqual(full["top5"], full["top1"])

    resumed_dir = self.create_tempdir().full_path
    self.assertIsNone(linear_probe.train_and_evaluate(config, resumed_dir, self.pretrain_dir,
                                                      stop_at_step=8))
    resumed = linear_probe.train_and_evaluate(config, resumed_dir, self.pretrain_dir)
    self.assertEqual(resumed, full)
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(self._params(resumed_dir)[name],
                                    self._params(full_dir)[name])


if __name__ == "__main__":
  absltest.main()
