"""Weights to and from PyTorch: the torchvision/timm fixture, strict loading, checkpoint export.

The fixture (tests/fixtures/torchvision/, made by make_torchvision_fixture.py
with torchvision itself) holds torchvision's state dict keys, shapes and dtypes
and its eval-mode outputs; the weights are rebuilt here from a numpy seed.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from coke_jax import errors
from coke_jax import export
from coke_jax import interop
from coke_jax import models
from coke_jax import train
from coke_jax.models import resnet
from coke_jax.models import vit
from tests import testing
from tests.fixtures import make_torchvision_fixture as fixture

_TOLERANCE = 1e-4  # the bound on |flax - torchvision| for O(1) outputs
_BACKBONES = {
    "resnet18": lambda: resnet.resnet18(),
    "resnet18_cifar_stem": lambda: resnet.resnet18(cifar_stem=True),
    "vit_small_patch16": lambda: vit.vit_small16(),
}


@functools.cache
def _manifest():
  with open(os.path.join(fixture.FIXTURE_DIR, "manifest.json")) as f:
    return json.load(f)


@functools.cache
def _reference_outputs():
  return safetensors.numpy.load_file(os.path.join(fixture.FIXTURE_DIR, "outputs.safetensors"))


@functools.cache
def _case(name):
  """(backbone, NHWC inputs, torchvision's state dict rebuilt from the seed, shapes target)."""
  entry = _manifest()["models"][name]
  weights = fixture.fixture_weights(entry["state_dict"], entry["seed"])
  images = np.transpose(fixture.fixture_inputs(name), (0, 2, 3, 1))
  backbone = _BACKBONES[name]()
  target = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), jnp.asarray(images),
                                                train=False))
  return backbone, images, weights, target


@functools.cache
def _apply_fn(name):
  backbone = _case(name)[0]
  return jax.jit(lambda variables, images: backbone.apply(variables, images, train=False))


def _error(name, state_dict, apply_fn=None):
  """max |flax features - torchvision's| after loading `state_dict` through a safetensors file."""
  _, images, _, target = _case(name)
  path = os.path.join(absltest.get_default_test_tmpdir(), f"{name}.safetensors")
  interop.write_state_dict(path, state_dict)
  variables = interop.load_backbone(path, target)
  out = (apply_fn or _apply_fn(name))(variables, images)
  return float(np.max(np.abs(np.asarray(out) - _reference_outputs()[name])))


class TorchvisionFixtureTest(parameterized.TestCase):

  @parameterized.parameters("resnet18", "resnet18_cifar_stem", "vit_small_patch16")
  def test_outputs_match_torchvision(self, name):
    entry = _manifest()["models"][name]
    weights = _case(name)[2]
    # The rebuilt weights are the ones torchvision saw (else the generator changed, not the model).
    np.testing.assert_allclose(fixture.checksum(weights), entry["checksum"], rtol=1e-9)
    self.assertGreater(entry["output_abs_max"], 1.0)  # O(1) outputs: 1e-4 is a tight bound
    self.assertLess(_error(name, weights), _TOLERANCE)

  @parameterized.parameters("resnet18", "resnet18_cifar_stem", "vit_small_patch16")
  def test_export_has_torchvision_keys_shapes_and_dtypes(self, name):
    _, _, weights, target = _case(name)
    variables = interop.from_torch(weights, target)
    exported = interop.to_torch(variables)
    # The same keys in the same order, shapes and dtypes as torchvision's (timm's) state_dict().
    self.assertEqual([(k, list(v.shape), str(v.dtype)) for k, v in exported.items()],
                     [tuple(e) for e in _manifest()["models"][name]["state_dict"]])
    for key, value in exported.items():  # import then export is exact
      if not key.endswith("num_batches_tracked"):  # flax keeps no counter; export writes 0
        np.testing.assert_array_equal(value, weights[key], err_msg=key)

  def test_catches_a_transposed_kernel(self):
    weights = dict(_case("resnet18")[2])
    weights["layer2.0.conv1.weight"] = np.swapaxes(weights["layer2.0.conv1.weight"], 2, 3)
    self.assertGreater(_error("resnet18", weights), 100 * _TOLERANCE)

  def test_catches_swapped_running_mean_and_var(self):
    weights = dict(_case("resnet18")[2])
    key = "layer3.1.bn1.running_"
    weights[key + "mean"], weights[key + "var"] = weights[key + "var"], weights[key + "mean"]
    error = _error("resnet18", weights)  # negative variances give NaN, which also fails
    self.assertFalse(error <= 100 * _TOLERANCE, error)

  def test_catches_asymmetric_padding(self):
    backbone = _case("resnet18")[0]
    # XLA's "SAME": (0, 1) on the stride-2 layers of an even input, what the ResNet did before.
    with mock.patch.object(resnet, "_padding", lambda kernel_size: "SAME"):
      error = _error("resnet18", _case("resnet18")[2], jax.jit(
          lambda variables, images: backbone.apply(variables, images, train=False)))
    self.assertGreater(error, 100 * _TOLERANCE)

  def test_catches_another_batch_norm_epsilon(self):
    backbone = _case("resnet18")[0]
    with mock.patch.object(resnet, "BN_EPSILON", 1e-3):  # TensorFlow/Keras's default
      error = _error("resnet18", _case("resnet18")[2], jax.jit(
          lambda variables, images: backbone.apply(variables, images, train=False)))
    self.assertGreater(error, 100 * _TOLERANCE)


class StrictLoadingTest(absltest.TestCase):

  def _path(self, state_dict, name="w.safetensors"):
    path = os.path.join(self.create_tempdir().full_path, name)
    interop.write_state_dict(path, state_dict)
    return path

  def test_every_problem_in_one_error_and_nothing_loaded(self):
    _, _, weights, target = _case("resnet18")
    bad = dict(weights)
    del bad["layer1.0.bn2.running_var"]
    bad["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
    bad["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)  # a CIFAR stem for an ImageNet one
    with self.assertRaises(errors.ConfigError) as raised:
      interop.load_backbone(self._path(bad), target)
    message = str(raised.exception)
    for part in ("nothing was loaded", "1 missing: layer1.0.bn2.running_var",
                 "1 unexpected: layer5.0.conv1.weight",
                 "conv1.weight: file (64, 3, 3, 3), model (64, 3, 7, 7)", "cifar_stem"):
      self.assertIn(part, message)

  def test_heads_and_num_batches_tracked_are_optional(self):
    _, _, weights, target = _case("resnet18")
    state = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = np.zeros((1000, 512), np.float32)
    state["fc.bias"] = np.zeros((1000,), np.float32)
    loaded = interop.load_backbone(self._path(state), target)
    np.testing.assert_array_equal(loaded["batch_stats"]["BatchNorm_0"]["var"],
                                  weights["bn1.running_var"])

  def test_strips_moco_swav_and_toolbox_prefixes(self):
    _, _, weights, target = _case("resnet18_cifar_stem")
    expected = interop.from_torch(weights, target)
    moco = {f"module.encoder_q.{k}": v for k, v in weights.items()}
    moco.update({f"module.encoder_k.{k}": v for k, v in weights.items()})  # momentum encoder
    moco["module.queue"] = np.zeros((128, 16), np.float32)
    moco["module.encoder_q.fc.0.weight"] = np.zeros((2048, 512), np.float32)  # MLP head
    swav = {f"module.{k}": v for k, v in weights.items()}
    swav["module.projection_head.0.weight"] = np.zeros((2048, 512), np.float32)
    swav["module.prototypes.weight"] = np.zeros((3000, 128), np.float32)
    toolbox = {f"backbone.{k}": v for k, v in weights.items()}
    toolbox["neck.fc.weight"] = np.zeros((2, 2), np.float32)
    for state in (moco, swav, toolbox):
      testing.assert_trees_equal(interop.load_backbone(self._path(state), target), expected)

  def test_unreadable_files_are_clear_errors(self):
    target = _case("resnet18")[3]
    with self.assertRaisesRegex(errors.ConfigError, "No weight file"):
      interop.load_backbone("/nonexistent/r50.safetensors", target)
    with self.assertRaisesRegex(errors.ConfigError, "unknown weight file type"):
      interop.load_backbone(self._path({"a": np.zeros(1)}, "w.npz"), target)
    with self.assertRaisesRegex(errors.ConfigError, "neither a coke_jax ResNet nor a ViT"):
      interop.to_torch({"params": {"Conv_0": {"kernel": np.zeros((3, 3, 1, 8))}}})
    pth = os.path.join(self.create_tempdir().full_path, "r50.pth")
    with open(pth, "wb") as f:
      f.write(b"not a pickle")
    if importlib.util.find_spec("torch") is not None:
      message = "could not be read with torch.load"
    else:
      message = "needs PyTorch.*safetensors"
    with self.assertRaisesRegex(errors.ConfigError, message):
      interop.load_backbone(pth, target)


class RoundTripTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("resnet50_bottleneck", lambda: resnet.resnet50(width=8), (1, 32, 32, 3)),
      ("resnet34_cifar_stem", lambda: resnet.resnet34(cifar_stem=True, width=4), (1, 8, 8, 1)),
      ("vit", lambda: vit.ViT(hidden_dim=32, depth=2, num_heads=4, mlp_dim=64), (1, 32, 32, 3)))
  def test_export_then_import_is_exact(self, make, shape):
    module = make()
    target = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                                train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: rng.standard_normal(s.shape).astype(s.dtype), target)
    path = os.path.join(self.create_tempdir().full_path, "backbone.safetensors")
    written = interop.save_backbone(path, variables, num_batches_tracked=7)
    testing.assert_trees_equal(interop.load_backbone(path, target), variables)
    on_disk = safetensors.numpy.load_file(path)
    self.assertEqual(set(on_disk), set(written))
    for key, value in on_disk.items():
      np.testing.assert_array_equal(value, written[key])
      if key.endswith("num_batches_tracked"):
        self.assertEqual((value.shape, value.dtype, int(value)), ((), np.int64, 7))


def _subtree(tree, name):
  """The first sub-tree called `name`, at any depth (the train state's layout may nest it)."""
  if not hasattr(tree, "items"):
    return None
  if name in tree:
    return tree[name]
  return next((found for v in tree.values() if (found := _subtree(v, name)) is not None), None)


class ExportTest(absltest.TestCase):

  def test_exports_a_digits_resnet_checkpoint(self):
    config = testing.smoke_config(**{"model.backbone": "resnet18",
                                     "model.backbone_kwargs": {"cifar_stem": True, "width": 4}})
    workdir = self.create_tempdir().full_path
    state = train.train_and_evaluate(config, workdir, stop_at_step=1)
    out = os.path.join(self.create_tempdir().full_path, "backbone.safetensors")
    state_dict, step = export.export_backbone(config, workdir, out)
    self.assertEqual(step, 1)
    on_disk = safetensors.numpy.load_file(out)
    # torchvision's ResNet-18 keys (no fc), each at 1/16 of the width, one input channel.
    self.assertEqual(list(state_dict), [e[0] for e in _manifest()["models"]["resnet18"]
                                        ["state_dict"]])
    self.assertEqual(set(on_disk), set(state_dict))
    self.assertEqual(on_disk["conv1.weight"].shape, (4, 1, 3, 3))
    self.assertEqual(on_disk["layer4.1.conv2.weight"].shape, (32, 32, 3, 3))
    self.assertEqual(int(on_disk["bn1.num_batches_tracked"]), 1)
    # What was written is the checkpoint's backbone: the trained params, not an init.
    backbone = models.build_model(config.model).backbone
    target = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)),
                                                  train=False))
    testing.assert_trees_equal(
        interop.load_backbone(out, target),
        {"params": _subtree(state.params, "backbone"),
         "batch_stats": _subtree(state.batch_stats, "backbone")})
    with self.assertRaisesRegex(errors.ConfigError, "small_cnn.*no PyTorch counterpart"):
      export.export_backbone(testing.smoke_config(), workdir, out)


def _has_torch() -> bool:
  return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


@absltest.skipUnless(_has_torch(), "needs torch and torchvision (not dependencies of coke_jax)")
class TorchReferenceTest(absltest.TestCase):
  """Against torchvision itself: ResNet-50 (bottleneck blocks) read from and written to .pth.

  torchvision runs in a process of its own (make_torchvision_fixture.py):
  imported after TensorFlow, it crashes some builds.
  """

  def _torchvision(self, flag, directory):
    subprocess.run([sys.executable, os.path.abspath(fixture.__file__), flag, directory],
                   check=True)

  def test_resnet50_matches_torchvision(self):
    directory = self.create_tempdir().full_path
    self._torchvision("--resnet50_reference", directory)
    images = np.load(os.path.join(directory, "images.npy"))
    expected = np.load(os.path.join(directory, "outputs.npy"))
    backbone = resnet.resnet50()
    nhwc = np.transpose(images, (0, 2, 3, 1))
    target = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), nhwc, train=False))
    # A MoCo-style checkpoint: the state dict under "state_dict", `module.encoder_q.` names.
    variables = interop.load_backbone(os.path.join(directory, "checkpoint.pth.tar"), target)
    out = np.asarray(jax.jit(lambda v, x: backbone.apply(v, x, train=False))(variables, nhwc))
    error = float(np.max(np.abs(out - expected)))
    print(f"ResNet-50: max |flax - torchvision| = {error:.2e}, |out| max "
          f"{np.abs(expected).max():.2f}")
    self.assertGreater(float(np.abs(expected).max()), 1.0)
    self.assertLess(error, _TOLERANCE)

    interop.save_backbone(os.path.join(directory, "backbone.pth"), variables)
    self._torchvision("--check_export", directory)
    with open(os.path.join(directory, "load_result.json")) as f:
      self.assertEqual(json.load(f), {"missing": ["fc.bias", "fc.weight"], "unexpected": []})
    np.testing.assert_array_equal(np.load(os.path.join(directory, "export_outputs.npy")),
                                  expected)


if __name__ == "__main__":
  absltest.main()
