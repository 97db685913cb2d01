"""Self-Classifier against a direct numpy transcription of seed 002's Alg. 1: loss and gradient
on random inputs, zero logits (C ln C / N), column groups, the CIFAR target normalization,
padding rows, 8 devices = 1, and the fixed orthonormal heads."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import objectives
from coke_jax.objectives import self_classifier
from tests import testing


def _log_softmax(x, axis):
  x = x - x.max(axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _alg1_np(u1, u2, heads, tau, group=0, normalize_targets=False):
  """Alg. 1 (float64), per head then averaged; the column softmax over groups of `group`
  consecutive rows (0: all); the loss of a group is its rows' share of the batch mean."""
  n = len(u1)
  group = group or n
  total = 0.0
  for w in heads:
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    logits1, logits2 = u1 @ w.T / tau, u2 @ w.T / tau
    log_y_x1, log_y_x2 = _log_softmax(logits1, 1), _log_softmax(logits2, 1)
    head = 0.0
    for start in range(0, n, group):
      rows = slice(start, start + group)
      x1_y = np.exp(_log_softmax(logits1[rows], 0))
      x2_y = np.exp(_log_softmax(logits2[rows], 0))
      if normalize_targets:
        x1_y /= x1_y.sum(1, keepdims=True)
        x2_y /= x2_y.sum(1, keepdims=True)
      l1 = -(x2_y * log_y_x1[rows]).sum() / n
      l2 = -(x1_y * log_y_x2[rows]).sum() / n
      head += (l1 + l2) / 2
    total += head / len(heads)
  return total


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


class AlgorithmOneTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.u = _unit(rng.normal(size=(2, 16, 6)))
    self.heads = [rng.normal(size=(5, 6)), rng.normal(size=(9, 6))]
    self.weight = np.ones(16)

  def _ours(self, devices, u, weight, group=0, normalize_targets=False, tau=0.3):
    obj = self_classifier.SelfClassifier(num_classes=(5, 9), embed_dim=6, temperature=tau,
                                         column_group_size=group,
                                         normalize_targets=normalize_targets)
    _, state = obj.init(jax.random.PRNGKey(0))
    ctx = objectives.StepContext(step=0, epoch=0, train_step=0, rng=None, forward=None)

    def loss(rows, heads):
      outputs = {"proj": jnp.swapaxes(rows["u"], 0, 1)}
      value, _ = obj.loss({"heads": {"k5_0": heads[0], "k9_1": heads[1]}}, state, outputs,
                          {"weight": rows["weight"]}, ctx)
      return value

    rows = {"u": np.swapaxes(u, 0, 1), "weight": weight}
    value, (grad_rows, grad_heads) = jax.value_and_grad(
        lambda r, h: testing.on_devices(loss, devices, r, h), argnums=(0, 1))(rows, self.heads)
    return float(value), np.swapaxes(np.asarray(grad_rows["u"]), 0, 1), grad_heads

  def _numeric_grad(self, fn, x, eps=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
      step = np.zeros_like(x)
      step[i] = eps
      grad[i] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad

  def test_loss_and_gradient_equal_algorithm_1(self):
    expected = _alg1_np(self.u[0], self.u[1], self.heads, 0.3)
    grad_u1 = self._numeric_grad(lambda u1: _alg1_np(u1, self.u[1], self.heads, 0.3), self.u[0])
    grad_w0 = self._numeric_grad(
        lambda w: _alg1_np(self.u[0], self.u[1], [w, self.heads[1]], 0.3), self.heads[0])
    with jax.enable_x64(True):
      for devices in (1, 8):
        loss, grad_u, grad_heads = self._ours(devices, self.u, self.weight)
        self.assertAlmostEqual(loss, expected, places=10)
        np.testing.assert_allclose(grad_u[0], grad_u1, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(grad_heads[0], grad_w0, rtol=1e-6, atol=1e-9)

  def test_column_groups_and_the_cifar_normalization(self):
    with jax.enable_x64(True):
      for group, normalize in ((4, False), (8, True), (0, True)):
        expected = _alg1_np(self.u[0], self.u[1], self.heads, 0.3, group, normalize)
        loss, _, _ = self._ours(8, self.u, self.weight, group, normalize)
        self.assertAlmostEqual(loss, expected, places=10, msg=(group, normalize))
    # Groups are another objective than the whole batch (the seed's per-GPU softmax).
    self.assertGreater(abs(_alg1_np(self.u[0], self.u[1], self.heads, 0.3, 4)
                           - _alg1_np(self.u[0], self.u[1], self.heads, 0.3)), 1e-3)

  def test_padding_rows_change_nothing(self):
    weight = np.array([1.0] * 12 + [0.0] * 4)
    garbage = self.u.copy()
    garbage[:, 12:] = _unit(np.ones(6))
    expected = _alg1_np(self.u[0, :12], self.u[1, :12], self.heads, 0.3)
    with jax.enable_x64(True):
      for u in (self.u, garbage):
        loss, grad_u, _ = self._ours(8, u, weight)
        self.assertAlmostEqual(loss, expected, places=10)
        np.testing.assert_array_equal(grad_u[:, 12:], 0.0)

  def test_zero_logits_give_c_log_c_over_n(self):
    # p(x|y) = 1/N and log p(y|x) = -ln C: each head gives C ln C / N (seed Eq. 3).
    obj = self_classifier.SelfClassifier(num_classes=(10,), embed_dim=4)
    ctx = objectives.StepContext(step=0, epoch=0, train_step=0, rng=None, forward=None)
    _, state = obj.init(jax.random.PRNGKey(0))
    rows = {"u": np.ones((16, 2, 4)), "weight": np.ones(16)}
    loss = testing.on_devices(
        lambda r: obj.loss({"heads": {"k10_0": jnp.zeros((10, 4))}}, state,
                           {"proj": jnp.swapaxes(r["u"], 0, 1)}, {"weight": r["weight"]},
                           ctx)[0], 8, rows)
    self.assertAlmostEqual(float(loss), 10 * np.log(10) / 16, places=5)

  def test_heads_are_orthonormal_and_fixed_by_default(self):
    for c, d in ((5, 8), (12, 8)):
      w = np.asarray(self_classifier.orthonormal_init(jax.random.PRNGKey(0), c, d))
      gram = w @ w.T if c <= d else w.T @ w
      np.testing.assert_allclose(gram, np.eye(min(c, d)), atol=1e-5)
    obj = self_classifier.SelfClassifier(num_classes=(5,), embed_dim=8)
    params, _ = obj.init(jax.random.PRNGKey(0))
    self.assertFalse(bool(jax.tree_util.tree_leaves(obj.trainable(params, None))[0]))

  def test_needs_exactly_two_views(self):
    config = testing.smoke_config("self_classifier", num_views=3)
    with self.assertRaisesRegex(ValueError, "exactly two views.*num_views=3"):
      objectives.build(config, num_examples=100)


if __name__ == "__main__":
  absltest.main()
