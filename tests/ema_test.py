"""The EMA of parameters (objectives/ema.py) against its closed form after n steps."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import errors
from coke_jax.objectives import ema


class EmaTest(absltest.TestCase):

  def test_constant_decay_matches_the_closed_form(self):
    # phi_n = tau^n phi_0 + sum_t (1 - tau) tau^(n - 1 - t) theta_t   (C2BIN Eq. 8, unrolled)
    rng = np.random.default_rng(0)
    phi0 = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    thetas = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))} for _ in range(7)]
    tau, n = 0.9, len(thetas)
    phi = jax.tree_util.tree_map(jnp.asarray, phi0)
    for t, theta in enumerate(thetas):
      phi = ema.update(phi, theta, ema.decay(jnp.int32(t), tau))
    for key in phi0:
      expected = tau ** n * phi0[key] + sum((1 - tau) * tau ** (n - 1 - t) * th[key]
                                            for t, th in enumerate(thetas))
      np.testing.assert_allclose(phi[key], expected, rtol=1e-5)
    # A constant target is approached geometrically: phi_n - theta = tau^n (phi_0 - theta).
    phi = jnp.float32(0.0)
    for t in range(50):
      phi = ema.update(phi, jnp.float32(1.0), ema.decay(jnp.int32(t), 0.99))
    self.assertAlmostEqual(float(phi), 1 - 0.99 ** 50, places=5)

  def test_cosine_schedule_rises_from_tau0_to_one(self):
    # BYOL: tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2; the closed form after n steps of
    # a constant target is 1 - prod_k tau_k.
    total, tau0 = 20, 0.9
    taus = [float(ema.decay(jnp.int32(k), tau0, "cosine", total)) for k in range(total + 1)]
    self.assertAlmostEqual(taus[0], tau0, places=6)
    self.assertAlmostEqual(taus[-1], 1.0, places=6)
    self.assertTrue(all(a <= b for a, b in zip(taus, taus[1:])))
    phi = jnp.float32(0.0)
    for k in range(total):
      phi = ema.update(phi, jnp.float32(1.0), ema.decay(jnp.int32(k), tau0, "cosine", total))
    self.assertAlmostEqual(float(phi), 1 - np.prod(taus[:total]), places=5)

  def test_unknown_schedule_is_a_clear_error(self):
    with self.assertRaisesRegex(errors.ConfigError, "schedule is 'linear'"):
      ema.decay(jnp.int32(0), 0.99, "linear")


if __name__ == "__main__":
  absltest.main()
