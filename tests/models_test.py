"""Backbones and heads: shapes, parameter counts, stems, zero-init, precision and remat."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import models
from coke_jax.models import resnet
from tests import testing


def _count(params):
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


def _init(module, shape):
  return jax.jit(lambda x: module.init(jax.random.PRNGKey(0), x, train=False))(jnp.zeros(shape))


class BackboneTest(parameterized.TestCase):

  @parameterized.parameters(
      ("resnet18", 11_176_512, 512), ("resnet34", 21_284_672, 512),
      ("resnet50", 23_508_032, 2048))
  def test_resnet_matches_reference_parameter_count(self, name, num_params, width):
    # torchvision's counts without the final fc layer.
    module = models.BACKBONES[name]()
    variables = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False),
                               jnp.zeros((1, 224, 224, 3)))
    self.assertEqual(_count(variables["params"]), num_params)
    out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables,
                         jnp.zeros((2, 224, 224, 3)))
    self.assertEqual(out.shape, (2, width))

  def test_vit_small(self):
    module = models.BACKBONES["vit_s16"]()
    variables = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False),
                               jnp.zeros((1, 224, 224, 3)))
    self.assertEqual(_count(variables["params"]), 21_665_664)  # ViT-S/16 without a classifier
    out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables,
                         jnp.zeros((2, 224, 224, 3)))
    self.assertEqual(out.shape, (2, 384))

  def test_cifar_stem_keeps_resolution(self):
    # The CIFAR stem (3x3 stride 1, no max-pool) leaves 32 px at 4 x 4 after stage 4.
    module = resnet.resnet18(cifar_stem=True)
    variables = _init(module, (1, 32, 32, 3))
    _, inter = module.apply(variables, jnp.zeros((1, 32, 32, 3)), train=False,
                            capture_intermediates=True)
    self.assertEqual(inter["intermediates"]["stage4_block1"]["__call__"][0].shape, (1, 4, 4, 512))
    self.assertEqual(variables["params"]["Conv_0"]["kernel"].shape, (3, 3, 3, 64))

  def test_small_cnn_stem_stride(self):
    # 28 px: stages at 28, 14, 7 with the default stem; 14, 7, 4 with stem_stride 2.
    for stride, sides in ((1, (28, 28, 14, 14, 7, 7)), (2, (14, 14, 7, 7, 4, 4))):
      module = models.BACKBONES["small_cnn"](widths=(4, 8, 16), stem_stride=stride)
      variables = _init(module, (1, 28, 28, 1))
      _, inter = jax.eval_shape(lambda v, x: module.apply(
          v, x, train=False, capture_intermediates=True), variables, jnp.zeros((1, 28, 28, 1)))
      self.assertEqual(tuple(inter["intermediates"][f"Conv_{i}"]["__call__"][0].shape[1]
                             for i in range(6)), sides)

  def test_zero_init_last_bn_makes_blocks_start_as_identity(self):
    params = _init(resnet.resnet18(zero_init_last_bn=True), (1, 32, 32, 3))["params"]
    scales = [p["BatchNorm_1"]["scale"] for k, p in params.items() if k.startswith("stage")]
    self.assertLen(scales, 8)
    for scale in scales:
      np.testing.assert_array_equal(scale, 0.0)


class SSLModelTest(parameterized.TestCase):

  def _model(self, **overrides):
    config = testing.smoke_config(**{"model.backbone": "resnet18",
                                     "model.backbone_kwargs": {"cifar_stem": True, "width": 8},
                                     **overrides})
    return models.build_model(config.model)

  def test_outputs_are_unit_norm_float32(self):
    model = self._model()
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    variables = _init(model, x.shape)
    out = model.apply(variables, x, train=False)
    self.assertEqual(out["features"].shape, (4, 64))
    for key in ("proj", "pred"):
      self.assertEqual(out[key].dtype, jnp.float32)
      np.testing.assert_allclose(jnp.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)

  def test_bfloat16_computes_in_bf16_with_float32_params(self):
    model = self._model(**{"model.dtype": "bfloat16"})
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    variables = _init(model, x.shape)
    for leaf in jax.tree_util.tree_leaves(variables):
      self.assertEqual(leaf.dtype, jnp.float32)
    out, inter = model.apply(variables, x, train=False, capture_intermediates=True)
    conv_out = inter["intermediates"]["backbone"]["Conv_0"]["__call__"][0]
    self.assertEqual(conv_out.dtype, jnp.bfloat16)
    self.assertEqual(out["proj"].dtype, jnp.float32)
    reference = self._model().apply(variables, x, train=False)
    np.testing.assert_allclose(out["proj"], reference["proj"], atol=0.05)

  def test_remat_gives_the_same_gradients(self):
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    plain, remat = self._model(), self._model(**{"model.remat": True})
    variables = _init(plain, x.shape)

    def grads(model):
      def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(out["proj"][:, 0])
      return jax.grad(loss)(variables["params"])

    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           grads(plain), grads(remat))

  def test_unknown_backbone_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, "resnet5.*known backbones"):
      self._model(**{"model.backbone": "resnet5"})


if __name__ == "__main__":
  absltest.main()
