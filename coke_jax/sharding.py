"""Everything that knows about devices: the mesh, the sharded step and its collectives.

The train state (params, optimizer state, BN statistics, and the clustering
state: label tables, centers, duals) is replicated on every device; the batch
is split along the one mesh axis, `data`. Inside the step, code asks for the
global view of a per-device value only through `gather`, `mean` and `total`
below, and BatchNorm averages its statistics over `DATA_AXIS`. Nothing else in
the package calls a collective, so the same step runs on 1 device, 8 devices
or a multi-host pod.
"""

import math
from typing import Any, Callable

import jax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from coke_jax import errors

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over all global devices (every host's)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over the devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divides(global_batch: int, mesh: Mesh, process_count: int = 1,
                        name: str = "global_batch_size"):
  devices = mesh.devices.size
  if global_batch % devices or global_batch % process_count:
    raise errors.ConfigError(
        f"config.{name}={global_batch} does not divide over {devices} devices "
        f"({process_count} processes): each device must get the same number of examples. "
        f"Use a multiple of {math.lcm(devices, process_count)}, e.g. "
        f"--config.{name}={max(1, round(global_batch / devices)) * devices}.")


def shard_step(step_fn: Callable, mesh: Mesh, donate_state: bool = True) -> Callable:
  """jit(shard_map(step_fn)) with the state replicated and the batch split.

  `step_fn(state, batch) -> (state, metrics)` sees its device's slice of the
  batch and must return the state and metrics identical on every device
  (which `check_vma` verifies at trace time). The state is donated, so the
  label tables are updated in place rather than copied every step.
  """
  sharded = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())


def gather(x: Any, axis: int = 0) -> Any:
  """The global batch on every device: per-device [b, ...] -> [devices * b, ...] (pytrees too).

  The result is the same on every device (`invarying`), in device order, which
  is the order of the global batch.
  """
  return lax.all_gather(x, DATA_AXIS, axis=axis, tiled=True, to="invarying")


def mean(x: Any) -> Any:
  """Mean over devices (gradients, per-device averages)."""
  return lax.pmean(x, DATA_AXIS)


def total(x: Any) -> Any:
  """Sum over devices."""
  return lax.psum(x, DATA_AXIS)


def global_batch_from_host(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each host's slice (its rows of every array)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
