"""Exponential moving averages of parameters with a schedule (BYOL's target, C2BIN's follower).

  phi <- tau_k phi + (1 - tau_k) theta                   (C2BIN Eq. 8; BYOL Eq. 1)

with tau_k constant (C2BIN) or BYOL's cosine increase from tau_0 to 1 over the
run, tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2. The average itself is
optax's `incremental_update`.
"""

import jax
import jax.numpy as jnp
import optax

from coke_jax import errors

SCHEDULES = ("constant", "cosine")


def decay(step: jax.Array, base: float, schedule: str = "constant", total_steps: int = 1):
  """tau_k at optimizer step k (0-based) of `total_steps`."""
  if schedule == "constant":
    return jnp.asarray(base)
  if schedule == "cosine":
    progress = jnp.minimum(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
  raise errors.ConfigError(f"The EMA schedule is {schedule!r}; use one of {SCHEDULES}.")


def update(average, new, tau):
  """tau * average + (1 - tau) * new, leaf by leaf (any pytree of arrays)."""
  return optax.incremental_update(new, average, step_size=1.0 - tau)
