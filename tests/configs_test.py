"""Every config builds; the ImageNet config initializes its model and fails clearly without data."""

import glob
import importlib
import json
import os
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import models
from coke_jax import objectives
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import augment
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from coke_jax.evaluation import linear_probe
from tests import data_fashion_mnist_test
from tests import fake_tfds

_FILES = sorted(os.path.basename(p)[:-3]
                for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                if not p.endswith("__init__.py"))
# (file, argument) of every config: a file's VARIANTS lists the arguments it takes.
_CONFIGS = [(name, variant) for name in _FILES
            for variant in getattr(importlib.import_module(f"configs.{name}"), "VARIANTS", (None,))]


def _get_config(name, variant):
  module = importlib.import_module(f"configs.{name}")
  return module.get_config() if variant is None else module.get_config(variant)


# STL-10 configs run on the fake CIFAR-10 (the test checks the step, not the dataset).
_FAKE = {"cifar10": "coke_fake_cifar10", "cifar100": "coke_fake_cifar100",
         "imagenet2012": "coke_fake_imagenet", "stl10": "coke_fake_cifar10"}


def _shrunk(config, data_dir):
  """The config at toy sizes, on the fake TFDS datasets; every ResNet becomes a narrow
  ResNet-18 with the config's stem (the ResNets themselves: models_test, interop_test)."""
  if config.model.backbone.startswith("resnet"):
    config.model.backbone = "resnet18"
    config.model.backbone_kwargs = {**config.model.backbone_kwargs.to_dict(), "width": 8}
  if config.dataset.name == "fashion_mnist":  # tiny IDX files (data_fashion_mnist_test)
    config.dataset.data_dir = os.path.join(data_dir, "fashion_mnist")
  if config.dataset.name in _FAKE:
    config.dataset.name = _FAKE[config.dataset.name]
    config.dataset.data_dir = data_dir
    config.dataset.image_size = 32
    config.dataset.shuffle_buffer = 16
    config.augment.small_image_size = 16
  config.global_batch_size = 8
  config.model.proj_hidden_dim = 32
  config.model.pred_hidden_dim = 32 if config.model.pred_hidden_dim else 0
  for key in ("num_clusters", "num_prototypes", "num_classes"):  # K of each head
    if key in config.objective:
      config.objective[key] = tuple(range(2, 2 + min(len(config.objective[key]), 3)))
  if "column_group_size" in config.objective:
    config.objective.column_group_size = 4 if config.objective.column_group_size else 0
  if "queue_length" in config.objective:
    config.objective.queue_length = 8 if config.objective.queue_length else 0
  config.num_epochs = 2
  return config


def _program(name, variant):
  """What fixes the shrunk config's step program: configs that share it run one step test."""
  config = _shrunk(_get_config(name, variant), "")
  return json.dumps([config.model.to_dict(), config.objective.name, config.num_views,
                     config.num_small_views, config.optimizer.name,
                     sorted(config.objective)], sort_keys=True, default=str)


# One config per distinct step program (e.g. CIFAR-10 and -100 of one recipe share one).
_PROGRAMS = list({_program(*c): c for c in reversed(_CONFIGS)}.values())[::-1]


class ConfigsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fake_data = fake_tfds.prepared(
        (fake_tfds.FakeCifar10, fake_tfds.FakeCifar100, fake_tfds.FakeImagenet))
    cls.data_dir = cls.fake_data.__enter__()
    os.makedirs(os.path.join(cls.data_dir, "fashion_mnist"))
    data_fashion_mnist_test.write_dataset(os.path.join(cls.data_dir, "fashion_mnist"),
                                          num_train=64, num_heldout=16)

  @classmethod
  def tearDownClass(cls):
    cls.fake_data.__exit__(None, None, None)
    super().tearDownClass()

  @parameterized.parameters(*_PROGRAMS)
  def test_learning_step_traces_on_fake_data(self, name, variant):
    """The config's whole learning step (input pipeline's batch, model, objective, optimizer)
    traces, and keeps the state's shapes and dtypes (what donation needs), with a scalar
    loss. Traced, not compiled: compiling 19 programs cost 9 minutes of CI, and every
    objective's compiled step runs in train_step_test, preemption_test and
    evaluation_objectives_test; the config-specific parts (ResNet stems, LARS, multi-crop,
    the device augmentation) run compiled in models_test, optimizer_test and
    data_device_augment_test."""
    config = _shrunk(_get_config(name, variant), self.data_dir)
    mesh = sharding.make_mesh(jax.devices()[:1])  # train_step_test covers 8 devices
    source = sources.get_source(config.dataset)
    trainer = train.Trainer(config, source, mesh)
    state = jax.eval_shape(trainer.init_state)
    host_batch = next(input_pipeline.train_batches(source, config, epoch=trainer.scan_epochs))
    views = "view_params" if "canvas" in host_batch else "images"  # natural images: on device
    self.assertEqual(host_batch[views].shape[1], config.num_views)
    if config.num_small_views:
      self.assertEqual(host_batch["small_" + views].shape[1], config.num_small_views)
    batch = sharding.global_batch_from_host(host_batch, mesh)
    new_state, metrics = jax.eval_shape(trainer.learn_step, state, batch)
    shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)
    self.assertEqual(jax.tree_util.tree_structure(new_state), jax.tree_util.tree_structure(state))
    self.assertEqual(jax.tree_util.tree_leaves(shapes(new_state)),
                     jax.tree_util.tree_leaves(shapes(state)))
    self.assertEqual(metrics["loss"].shape, ())
    self.assertEqual(metrics["grad_norm"].shape, ())

  # The probe reads only the backbone: one pretraining objective per linear_eval file
  # (every objective's checkpoint is probed in evaluation_objectives_test).
  @parameterized.parameters(*[c for c in _CONFIGS if c[0].startswith("linear_eval")
                              and c[1] is None])
  def test_linear_probe_config_restores_trains_and_evaluates(self, name, variant):
    config = _shrunk(_get_config(name, variant), self.data_dir)
    config.linear_eval.num_epochs = 1
    config.linear_eval.batch_size = 8 if config.dataset.name in _FAKE.values() else 256
    pretrain_dir = self.create_tempdir().full_path
    train.train_and_evaluate(config, pretrain_dir, stop_at_step=1)  # checkpoint at step 1
    results = linear_probe.train_and_evaluate(config, self.create_tempdir().full_path,
                                              pretrain_dir)
    self.assertEqual((results["pretrain_step"], results["num_epochs"]), (1, 1))
    self.assertBetween(results["top1"], 0.0, 1.0)
    self.assertBetween(results["top5"], results["top1"], 1.0)

  @parameterized.parameters(*_CONFIGS)
  def test_builds_with_known_keys(self, name, variant):
    config = _get_config(name, variant)
    config.lock()
    with self.assertRaises(AttributeError):
      config.objective.temperaturee = 0.1
    with self.assertRaises(AttributeError):
      config.optimizer.learning_rat = 0.1
    objectives.build(config, num_examples=100_000)  # the unshrunk settings are valid

  def test_two_view_config_matches_paper(self):
    c = importlib.import_module("configs.coke_two_view").get_config()
    self.assertEqual(c.model.backbone, "resnet50")
    self.assertEqual(tuple(c.objective.num_clusters), (3000, 4000, 5000))
    self.assertEqual((c.global_batch_size, c.objective.temperature, c.objective.alpha,
                      c.objective.dual_lr, c.objective.min_size_ratio),
                     (1024, 0.05, 0.2, 20.0, 0.4))
    self.assertEqual((c.optimizer.name, c.optimizer.learning_rate, c.optimizer.warmup_epochs),
                     ("lars", 1.6, 10))

  def test_imagenet_linear_probe_trains_on_crop_and_flip_only(self):
    aug = importlib.import_module("configs.linear_eval_imagenet").get_config().linear_eval.augment
    (view,), small = augment.view_specs(aug, num_views=1, num_small_views=0, image_size=224)
    self.assertEqual(small, [])
    self.assertEqual((view.crop_scale, view.flip_prob), ((0.08, 1.0), 0.5))
    self.assertEqual((view.jitter_prob, view.grayscale_prob, view.blur_prob,
                      view.solarize_prob), (0.0, 0.0, 0.0, 0.0))

  def test_single_view_uses_the_simclr_recipe_of_the_official_code(self):
    aug = importlib.import_module("configs.coke_single_view").get_config().augment
    (view,), _ = augment.view_specs(aug, num_views=1, num_small_views=0, image_size=224)
    self.assertEqual((view.jitter, view.jitter_prob, view.grayscale_prob, view.blur_prob,
                      view.solarize_prob), ((0.8, 0.8, 0.8, 0.2), 0.8, 0.2, 0.5, 0.0))

  def test_two_view_model_initializes(self):
    c = importlib.import_module("configs.coke_two_view").get_config()
    model = models.build_model(c.model)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    self.assertEqual(out["features"].shape, (2, 2048))
    self.assertEqual(out["proj"].shape, (2, 128))
    self.assertEqual(out["pred"].shape, (2, 128))
    num_params = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))
    self.assertBetween(num_params, 25e6, 40e6)  # ResNet-50 (23.5M) + 3-layer MLP + predictor

  def test_two_view_without_imagenet_fails_at_once(self):
    c = importlib.import_module("configs.coke_two_view").get_config()
    data_dir = self.create_tempdir().full_path
    c.dataset.data_dir = data_dir
    start = time.time()
    with self.assertRaises(sources.MissingDataError) as ctx:
      train.train_and_evaluate(c, self.create_tempdir().full_path)
    self.assertLess(time.time() - start, 60)
    message = str(ctx.exception)
    for needed in ("imagenet2012", data_dir, "tfds build imagenet2012", "--config.dataset.data_dir"):
      self.assertIn(needed, message)


if __name__ == "__main__":
  absltest.main()
