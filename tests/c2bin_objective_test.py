"""C2BIN against a literal numpy transcription of seed 004's Eqs. 1, 4, 5: the batch-wise
cluster-assignment contrast (text and PICA forms) and the mass entropy over the global batch,
their gradients, identical columns (ln(K - 1)), padding, 8 devices = 1, the follower's EMA."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import sharding
from coke_jax import train
from coke_jax.data import input_pipeline
from coke_jax.objectives import c2bin
from tests import testing


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _eq4_loop(z1, z2, tau, form):
  """Eq. 4 term by term: columns c'_i, c''_j of the [n, K] memberships."""
  k = z1.shape[1]
  c1, c2 = z1.T, z2.T
  if form == "pica":
    c1 = c1 / np.linalg.norm(c1, axis=1, keepdims=True)
    c2 = c2 / np.linalg.norm(c2, axis=1, keepdims=True)
  total = 0.0
  for i in range(k):
    positive = np.exp(c1[i] @ c2[i] / tau)
    others = sum(np.exp(c1[i] @ c2[j] / tau) for j in range(k) if form == "pica" or j != i)
    total += -np.log(positive / others)
  return total / k


def _entropy(z, of):
  s = z.sum(0)
  if of == "distribution":
    s = s / s.sum()
  return -np.sum(s * np.log(s))


class ClusterContrastTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.logits = rng.normal(size=(2, 16, 5))
    self.weight = np.array([1.0] * 12 + [0.0] * 4)

  def test_bca_and_entropy_equal_the_literal_equations_with_padding(self):
    z = _softmax(self.logits[:, :12])
    with jax.enable_x64(True):
      for form in ("text", "pica"):
        for of in ("mass", "distribution"):
          expected = _eq4_loop(z[0], z[1], 0.5, form) - _entropy(z[0], of)
          for devices in (1, 8):
            def total(rows, form=form, of=of):
              zz = jax.nn.softmax(jnp.swapaxes(rows["l"], 0, 1), axis=-1)
              return (c2bin.bca_loss(zz[0], zz[1], rows["w"], 0.5, form)
                      - c2bin.mass_entropy(zz[0], rows["w"], of))
            rows = {"l": np.swapaxes(self.logits, 0, 1), "w": self.weight}
            value, grad = jax.value_and_grad(
                lambda r, total=total, devices=devices: testing.on_devices(total, devices, r))(
                    rows)
            self.assertAlmostEqual(float(value), expected, places=10, msg=(form, of, devices))
            np.testing.assert_array_equal(np.asarray(grad["l"])[12:], 0.0)  # padding rows
            # The gradient of the literal equations, by central differences.
            eps, numeric = 1e-6, np.zeros((2, 12, 5))
            for idx in np.ndindex(numeric.shape):
              step = np.zeros_like(numeric)
              step[idx] = eps
              f = lambda l: (_eq4_loop(_softmax(l)[0], _softmax(l)[1], 0.5, form)
                             - _entropy(_softmax(l)[0], of))
              numeric[idx] = (f(self.logits[:, :12] + step) - f(self.logits[:, :12] - step)) / (
                  2 * eps)
            np.testing.assert_allclose(np.swapaxes(np.asarray(grad["l"]), 0, 1)[:, :12], numeric,
                                       rtol=1e-5, atol=1e-8)

  def test_identical_columns_give_log_k_minus_one(self):
    # Eq. 4 leaves the positive out: with every column equal it is ln(K - 1) (PICA's ln K).
    z = np.full((16, 32), 1 / 32)
    rows = {"z": z, "w": np.ones(16)}
    for form, expected in (("text", np.log(31)), ("pica", np.log(32))):
      got = testing.on_devices(lambda r, form=form: c2bin.bca_loss(r["z"], r["z"], r["w"], 0.5,
                                                                  form), 8, rows)
      self.assertAlmostEqual(float(got), expected, places=5, msg=form)
    uniform = testing.on_devices(lambda r: c2bin.mass_entropy(r["z"], r["w"], "distribution"),
                                 8, rows)
    self.assertAlmostEqual(float(uniform), np.log(32), places=5)

  def test_bad_settings_are_clear_errors(self):
    with self.assertRaisesRegex(ValueError, "bca_form is 'both'"):
      c2bin.C2BIN(num_clusters=(4,), bca_form="both")
    config = testing.smoke_config("c2bin", **{"model.pred_hidden_dim": 0})
    with self.assertRaisesRegex(ValueError, "pred_hidden_dim"):
      c2bin.build(config, 100)


class FollowerTest(absltest.TestCase):

  def test_follower_is_the_ema_of_the_runner_and_gets_no_gradient(self):
    config = testing.smoke_config("c2bin", **{"objective.momentum": 0.9})
    source = testing.random_source(num_train=512)
    mesh = sharding.make_mesh(jax.devices()[:1])
    trainer = train.Trainer(config, source, mesh)
    state = trainer.init_state()
    follower0 = jax.device_get(state.objective.follower["params"])
    runner0 = jax.device_get({p: state.params["model"][p] for p in c2bin.FOLLOWER_PARTS})
    testing.assert_trees_equal(follower0, runner0)  # the follower starts as the runner
    expected = follower0
    for batch in input_pipeline.train_batches(source, config, 0):
      state, _ = trainer.step(state, sharding.global_batch_from_host(batch, mesh), 0)
      runner = jax.device_get({p: state.params["model"][p] for p in c2bin.FOLLOWER_PARTS})
      # Eq. 8 with the runner's new parameters: nothing else moves the follower.
      expected = jax.tree_util.tree_map(lambda f, r: 0.9 * f + 0.1 * r, expected, runner)
      got = jax.device_get(state.objective.follower["params"])
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                                     atol=1e-7), got, expected)
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), runner, runner0)
    self.assertGreater(max(jax.tree_util.tree_leaves(moved)), 1e-4)


if __name__ == "__main__":
  absltest.main()
