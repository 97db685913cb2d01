"""The collectives through which a loss couples the rows of the global batch: value and
gradient on 8 devices equal one device's and a numpy transcription, padding rows ignored."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import sharding
from tests import testing


def _coupled_loss(rows, params):
  """A loss that needs the whole batch: log of each column's weighted sum of exp(x W) and of
  the pairwise products (the forms Self-Classifier's and C2BIN's losses take)."""
  z = rows["x"] @ params                                         # [b, K]
  weight = rows["weight"]
  shift = sharding.batch_max(z, weight)                          # no gradient, any shift works
  log_norm = shift + jnp.log(sharding.batch_sum(jnp.exp(z - shift), weight))   # [K]
  pairs = sharding.batch_sum(jax.nn.softmax(z), weight, y=jax.nn.softmax(z[:, ::-1]))  # [K, K]
  per_row = jnp.sum(jax.nn.softmax(z) * (z - log_norm), -1)
  return sharding.batch_mean(per_row, weight) + jnp.sum(jnp.log(pairs))


def _numpy_loss(x, params):
  z = x @ params
  log_norm = np.log(np.exp(z).sum(0))
  soft = np.exp(z - z.max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  rev = soft[:, ::-1]
  return np.mean(np.sum(soft * (z - log_norm), -1)) + np.sum(np.log(soft.T @ rev))


class BatchCollectivesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.x = rng.normal(size=(16, 5))
    self.weight = np.array([1.0] * 11 + [0.0] * 5)              # 5 padding rows
    self.params = rng.normal(size=(5, 3))

  def test_value_and_gradient_equal_one_device_and_numpy_with_padding(self):
    with jax.enable_x64(True):
      results = {}
      for devices in (1, 8):
        rows = {"x": self.x, "weight": self.weight}
        loss, grad = jax.value_and_grad(
            lambda p, rows=rows: testing.on_devices(_coupled_loss, devices, rows, p))(self.params)
        results[devices] = (float(loss), np.asarray(grad))
      garbage = {"x": np.where(self.weight[:, None] > 0, self.x, 5.0), "weight": self.weight}
      padded = jax.value_and_grad(
          lambda p: testing.on_devices(_coupled_loss, 8, garbage, p))(self.params)
    real = self.x[:11]
    expected = _numpy_loss(real, self.params)
    eps = 1e-6  # central differences of the numpy transcription, in float64
    numeric = np.zeros_like(self.params)
    for i in np.ndindex(self.params.shape):
      step = np.zeros_like(self.params)
      step[i] = eps
      numeric[i] = (_numpy_loss(real, self.params + step)
                    - _numpy_loss(real, self.params - step)) / (2 * eps)
    for loss, grad in (*results.values(), (float(padded[0]), np.asarray(padded[1]))):
      self.assertAlmostEqual(loss, expected, places=10)
      np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    # 8 devices and 1 sum in another order only: float64 rounding.
    np.testing.assert_allclose(results[8][1], results[1][1], rtol=1e-12, atol=1e-14)

  def test_max_positions_and_rows(self):
    rows = {"x": self.x, "weight": self.weight}
    got = testing.on_devices(lambda r: sharding.batch_max(r["x"], r["weight"]), 8, rows)
    np.testing.assert_allclose(got, self.x[:11].max(0), rtol=1e-6)
    positions = jax.jit(jax.shard_map(
        lambda x: sharding.global_positions(x.shape[0]) + 0 * x.astype(jnp.int32),
        mesh=sharding.make_mesh(), in_specs=jax.sharding.PartitionSpec(sharding.DATA_AXIS),
        out_specs=jax.sharding.PartitionSpec(sharding.DATA_AXIS)))(jnp.zeros(16))
    np.testing.assert_array_equal(positions, np.arange(16))
    total = testing.on_devices(lambda r: jnp.float32(sharding.global_rows(r.shape[0])), 8,
                               jnp.zeros(16))
    self.assertEqual(float(total), 16)


if __name__ == "__main__":
  absltest.main()
