"""SwAV against a direct numpy transcription of the paper's definition and the official code:
Sinkhorn, the swapped-prediction loss and its gradient, padding, 8 devices = 1, the queue, the
prototype freeze (optimizer state and weight decay included) and unit-norm prototypes."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import objectives
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import input_pipeline
from coke_jax.objectives import swav
from tests import testing


def _sinkhorn_np(scores, eps, iterations):
  """The official main_swav.py steps on a [B, K] score matrix, float64."""
  q = np.exp(scores / eps).T                 # [K, B]
  q /= q.sum()
  k, b = q.shape
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _loss_and_grads_np(z, prototypes, tau, eps, iterations, assign):
  """Eq. 1 with Sinkhorn codes, and its gradient w.r.t. the crops' z [T, B, D] and C [K, D]:
  with q fixed (stop-gradient), d(-sum_k q_k log p_k)/ds = (p - q) / tau."""
  num_crops, b = z.shape[:2]
  s = z @ prototypes.T
  log_p = _log_softmax(s / tau)
  p = np.exp(log_p)
  loss, grad_s = 0.0, np.zeros_like(s)
  for i in assign:
    q = _sinkhorn_np(s[i], eps, iterations)
    others = [v for v in range(num_crops) if v != i]
    for v in others:
      loss += -(q * log_p[v]).sum(-1).mean() / len(others) / len(assign)
      grad_s[v] += (p[v] - q) / tau / b / len(others) / len(assign)
  grad_c = np.einsum("tbk,tbd->kd", grad_s, z)
  grad_z = grad_s @ prototypes
  return loss, grad_z, grad_c


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ctx(epoch=0, train_step=0):
  return objectives.StepContext(step=jnp.int32(0), epoch=jnp.int32(epoch),
                                train_step=jnp.int32(train_step), rng=jax.random.PRNGKey(0),
                                forward=None)


class SinkhornTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.scores = np.clip(rng.normal(0, 0.4, size=(16, 6)), -1, 1)
    self.weight = np.array([1.0] * 13 + [0.0] * 3)

  def _codes(self, devices, iterations, scores=None, queue=None):
    rows = {"s": self.scores if scores is None else scores, "w": self.weight}
    queue_scores, queue_weight = queue if queue is not None else (None, None)
    return np.asarray(testing.on_devices(
        lambda r: sharding.gather(swav.sinkhorn(r["s"], r["w"], queue_scores, queue_weight,
                                                epsilon=0.05, iterations=iterations)),
        devices, rows))

  def test_three_iterations_equal_numpy_over_the_global_batch(self):
    expected = _sinkhorn_np(self.scores[:13], 0.05, 3)
    with jax.enable_x64(True):
      for devices in (1, 8):
        codes = self._codes(devices, 3)
        np.testing.assert_allclose(codes[:13], expected, rtol=1e-12, atol=1e-14)
      # Padding rows count nowhere: other values there change nothing.
      other = self.scores.copy()
      other[13:] = 1.0
      np.testing.assert_allclose(self._codes(8, 3, scores=other)[:13], expected, rtol=1e-12)
    np.testing.assert_allclose(expected.sum(1), 1.0, atol=1e-12)  # each code sums to 1
    # Per-device Sinkhorn would be another solution (the pitfall of lightly's default).
    per_device = _sinkhorn_np(self.scores[:2], 0.05, 3)
    self.assertGreater(np.abs(per_device - expected[:2]).max(), 1e-2)

  def test_thirty_iterations_give_uniform_prototype_marginals(self):
    with jax.enable_x64(True):
      codes = self._codes(8, 30)[:13]
    np.testing.assert_allclose(codes.sum(0) / 13, 1 / 6, atol=1e-3)
    np.testing.assert_allclose(codes.sum(1), 1.0, atol=1e-12)

  def test_the_queue_joins_the_samples(self):
    rng = np.random.default_rng(1)
    queue_scores = np.clip(rng.normal(0, 0.4, size=(8, 6)), -1, 1)
    queue_weight = np.array([1.0] * 6 + [0.0] * 2)  # two queued padding rows
    expected = _sinkhorn_np(np.concatenate([self.scores[:13], queue_scores[:6]]), 0.05, 3)[:13]
    with jax.enable_x64(True):
      codes = self._codes(8, 3, queue=(queue_scores, queue_weight))
    np.testing.assert_allclose(codes[:13], expected, rtol=1e-12, atol=1e-14)

  def test_identical_embeddings_give_uniform_codes(self):
    codes = self._codes(8, 3, scores=np.tile(self.scores[:1], (16, 1)))
    np.testing.assert_allclose(codes[:13], 1 / 6, rtol=1e-5)


class SwAVLossTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.z = _unit(rng.normal(size=(4, 16, 5)))      # 2 large + 2 small crops
    self.prototypes = _unit(rng.normal(size=(7, 5)))
    self.weight = np.array([1.0] * 11 + [0.0] * 5)
    self.obj = swav.SwAV(num_prototypes=(7,), embed_dim=5, num_views=2, temperature=0.1,
                         epsilon=0.05, sinkhorn_iterations=3)
    _, self.state = self.obj.init(jax.random.PRNGKey(0))

  def _loss(self, devices, z):
    def loss(rows, prototypes):
      crops = jnp.swapaxes(rows["z"], 0, 1)
      outputs = {"proj": crops[:2], "proj_small": crops[2:]}
      value, _ = self.obj.loss({"prototypes": {"k7_0": prototypes}}, self.state, outputs,
                               {"weight": rows["weight"]}, _ctx())
      return value

    rows = {"z": np.swapaxes(z, 0, 1), "weight": self.weight}
    value, (grad_rows, grad_c) = jax.value_and_grad(
        lambda r, c: testing.on_devices(loss, devices, r, c), argnums=(0, 1))(
            rows, self.prototypes)
    return float(value), np.swapaxes(np.asarray(grad_rows["z"]), 0, 1), np.asarray(grad_c)

  def test_loss_and_gradient_equal_numpy_on_one_and_eight_devices(self):
    loss, grad_z, grad_c = _loss_and_grads_np(self.z[:, :11], self.prototypes, 0.1, 0.05, 3,
                                              (0, 1))
    with jax.enable_x64(True):
      for devices in (1, 8):
        got_loss, got_z, got_c = self._loss(devices, self.z)
        self.assertAlmostEqual(got_loss, loss, places=10)
        np.testing.assert_allclose(got_c, grad_c, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_z[:, :11], grad_z, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(got_z[:, 11:], 0.0)  # padding rows get no gradient
      garbage = self.z.copy()
      garbage[:, 11:] = _unit(np.ones(5))
      got_loss, _, got_c = self._loss(8, garbage)
    self.assertAlmostEqual(got_loss, loss, places=10)
    np.testing.assert_allclose(got_c, grad_c, rtol=1e-9, atol=1e-12)
    self.assertGreater(loss, 0.0)

  def test_bad_settings_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, "assign_views is \\(0, 2\\)"):
      swav.SwAV(num_prototypes=(7,), embed_dim=5, num_views=2, assign_views=(0, 2))
    with self.assertRaisesRegex(ValueError, "epsilon is 0.001"):
      swav.SwAV(num_prototypes=(7,), embed_dim=5, num_views=2, epsilon=0.001)


class SwAVThroughTheTrainerTest(absltest.TestCase):

  def test_freeze_keeps_prototypes_and_their_optimizer_state_then_queue_fills(self):
    # Smoke: 6 steps an epoch; prototypes fixed for 3 optimizer steps; weight decay on.
    config = testing.smoke_config("swav", **{"optimizer.weight_decay": 0.1,
                                             "objective.queue_length": 512})
    source = testing.random_source(num_train=1536)  # 6 steps of 256
    mesh = sharding.make_mesh(jax.devices()[:1])
    trainer = train.Trainer(config, source, mesh)
    self.assertEqual(trainer.objective.freeze_prototypes_steps, 3)
    state = trainer.init_state()
    first = jax.device_get(state.params)

    def prototype_trace(opt_state):  # the SGD momentum of the prototypes
      traces = [x for x in jax.tree_util.tree_leaves(
          opt_state, is_leaf=lambda n: hasattr(n, "trace")) if hasattr(x, "trace")]
      return jax.device_get(traces[0].trace["objective"]["prototypes"])

    for step, batch in enumerate(input_pipeline.train_batches(source, config, 0)):
      before = jax.device_get(state.params)
      state, metrics = trainer.step(state, sharding.global_batch_from_host(batch, mesh), 0)
      after = jax.device_get(state.params)
      frozen = step < 3
      for name, value in after["objective"]["prototypes"].items():
        np.testing.assert_allclose(np.linalg.norm(value, axis=1), 1.0, rtol=1e-5)
        moved = float(np.abs(value - before["objective"]["prototypes"][name]).max())
        if frozen:
          self.assertEqual(moved, 0.0, (step, name))
          np.testing.assert_array_equal(value, first["objective"]["prototypes"][name])
          self.assertEqual(float(np.abs(prototype_trace(state.opt_state)[name]).max()), 0.0)
        else:
          self.assertGreater(moved, 0.0, (step, name))
      model_moved = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
          lambda a, b: float(np.abs(a - b).max()), after["model"], before["model"])))
      self.assertGreater(model_moved, 0.0)  # the network trains during the freeze
      # The queue (2 batches, from epoch 0) is read only once full: from the third step.
      self.assertEqual(float(metrics["queue_used"]), float(step >= 2), step)
    queue = jax.device_get(state.objective.queue)
    self.assertEqual(queue.shape, (2, 512, 16))
    np.testing.assert_allclose(np.linalg.norm(queue, axis=-1), 1.0, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
