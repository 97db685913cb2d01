"""The collectives through which a loss couples the rows of the global batch: value and
gradient on 8 devices equal one device's and a numpy transcription, padding rows ignored."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import errors
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



class ReplicaCheckTest(absltest.TestCase):
  """Each device's copy of a replicated state is compared; one differing bit is one line."""

  def setUp(self):
    super().setUp()
    self.mesh = sharding.make_mesh()
    self.assertGreater(self.mesh.devices.size, 1, "needs XLA's 8 host devices (tests/__init__.py)")
    self.state = jax.device_put(
        {"labels": jnp.arange(12, dtype=jnp.int32) % 5, "centers": jnp.linspace(-1, 1, 20),
         "counts": jnp.zeros((3, 2), jnp.uint8), "step": jnp.int32(4)},
        sharding.replicated(self.mesh))

  def _with_copy(self, name, device, value):
    """The state with `device`'s copy of `name` replaced by `value`."""
    x = self.state[name]
    copies = [jax.device_put(value if i == device else np.asarray(x), d)
              for i, d in enumerate(self.mesh.devices.flat)]
    return {**self.state, name: jax.make_array_from_single_device_arrays(
        x.shape, x.sharding, copies)}

  def test_identical_copies_pass(self):
    paths, sums = sharding.replica_checksums(self.state, self.mesh)
    self.assertLen(paths, 4)
    self.assertEqual(sums.shape, (4, self.mesh.devices.size))
    self.assertTrue(np.all(sums == sums[:, :1]))
    sharding.check_replicas(self.state, self.mesh, step=3)

  def test_one_bit_or_two_swapped_values_on_one_device_are_named(self):
    bits = np.asarray(self.state["centers"]).view(np.uint32).copy()
    bits[7] ^= 1                                                 # the last mantissa bit
    swapped = np.asarray(self.state["labels"])[[1, 0] + list(range(2, 12))]
    changed = {"centers": (2, bits.view(np.float32)),
               "labels": (self.mesh.devices.size - 1, swapped)}
    for name, (device, value) in changed.items():
      with self.subTest(name=name):
        with self.assertRaises(errors.ReplicaMismatchError) as caught:
          sharding.check_replicas(self._with_copy(name, device, value), self.mesh, step=17)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn("after step 17", message)
        self.assertIn(f"state['{name}']", message)
        self.assertIn(f"device(s) [{device}]", message)


if __name__ == "__main__":
  absltest.main()
