"""Everything that knows about devices: the mesh, the sharded step and its collectives.

The train state (params, optimizer state, BN statistics, and the objective's
state: label tables, centers, duals, queues, banks) is replicated on every
device; the batch is split along the one mesh axis, `data`. Inside the step,
code asks for the global view of a per-device value only through the functions
below, and BatchNorm averages its statistics over `DATA_AXIS`. Nothing else in
the package calls a collective, so the same step runs on 1 device, 8 devices
or a multi-host pod.

Gradients: a loss computed from `batch_sum` (or `gather`) is the same on every
device, and shard_map's replication types (`check_vma`) make its gradient with
respect to the replicated params the gradient of that global loss: each use of
a replicated value in per-device code is transposed into a sum over devices.
So a loss that is the global mean over the real rows gives the global gradient,
with no explicit all-reduce of gradients (`tests/sharding_test.py` checks the
value and the gradient against one device, padding rows included).
"""

import functools
import math
from typing import Any, Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp
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


def shard_step(step_fn: Callable, mesh: Mesh, donate_state: bool = True,
               num_consts: int = 0) -> Callable:
  """jit(shard_map(step_fn)) with the state replicated and the batch split.

  `step_fn(state, batch, *consts) -> (state, metrics)` sees its device's slice of
  the batch and must return the state and metrics identical on every device
  (which `check_vma` verifies at trace time). The `num_consts` trailing
  arguments are replicated and not donated (e.g. a frozen backbone). The state
  is donated, so the label tables are updated in place rather than copied
  every step.
  """
  sharded = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)) + (P(),) * num_consts,
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())


def gather(x: Any, axis: int = 0) -> Any:
  """The global batch on every device: per-device [b, ...] -> [devices * b, ...] (pytrees too).

  The result is the same on every device (`invarying`), in device order, which
  is the order of the global batch.
  """
  return lax.all_gather(x, DATA_AXIS, axis=axis, tiled=True, to="invarying")


def batch_sum(x: jax.Array, weight: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
  """sum_i w_i x_i over the rows of the global batch, the same on every device; differentiable.

  The one collective through which a loss couples the rows of the global batch.
  x: [b, ...] this device's rows; weight: [b], 0 for padding rows, which so count
  nowhere. With `y` [b, ...], the weighted sum of outer products
  sum_i w_i x_i (x) y_i, e.g. [K1, K2] from [b, K1] and [b, K2], computed as one
  matrix product per device (never [b, K1, K2]).
  """
  weight = weight.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  weighted = jnp.where(weight > 0, x * weight, 0)  # an inf in a padding row gives 0, not NaN
  local = jnp.sum(weighted, axis=0) if y is None else jnp.tensordot(weighted, y, axes=([0], [0]))
  return lax.psum(local, DATA_AXIS)


def batch_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
  """The mean of x [b, ...] over the real rows of the global batch (see `batch_sum`)."""
  return batch_sum(x, weight) / jnp.maximum(batch_sum(jnp.ones_like(weight), weight), 1.0)


def batch_max(x: jax.Array, weight: jax.Array) -> jax.Array:
  """max_i x_i over the real rows of the global batch ([b, ...] -> [...]), under stop-gradient.

  For shifting exponentials (any constant shift cancels in a softmax, so no
  gradient is needed; `pmax` has none).
  """
  x = lax.stop_gradient(x)
  real = (weight > 0).reshape((-1,) + (1,) * (x.ndim - 1))
  return lax.pmax(jnp.max(jnp.where(real, x, -jnp.inf), axis=0), DATA_AXIS)


def global_positions(rows: int) -> jax.Array:
  """[rows] positions of this device's rows in the global batch (device order)."""
  return lax.axis_index(DATA_AXIS) * rows + jnp.arange(rows)


def global_rows(rows: int) -> int:
  """The global batch size, given this device's number of rows."""
  return rows * lax.axis_size(DATA_AXIS)


def total(x: Any) -> Any:
  """Sum over devices (of values already reduced on each device, such as counts)."""
  return lax.psum(x, DATA_AXIS)


def _checksum(x: jax.Array) -> jax.Array:
  """A uint32 fingerprint of x's bits: sum_i bits_i * (2 i + 1) mod 2^32 (integer arithmetic
  wraps, so the order of the sum does not matter; with odd weights a change to one element
  always changes it, and two elements trading places almost always)."""
  if x.dtype.itemsize == 8:
    bits = lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  elif jnp.issubdtype(x.dtype, jnp.floating):
    bits = lax.bitcast_convert_type(x, {4: jnp.uint32, 2: jnp.uint16}[x.dtype.itemsize])
  else:
    bits = x
  bits = jnp.ravel(bits).astype(jnp.uint32)
  weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
  return jnp.sum(bits * weights, dtype=jnp.uint32)


@functools.lru_cache(maxsize=None)
def _checksums_fn(mesh: Mesh, num_leaves: int) -> Callable:
  def per_device(*xs):
    # pcast: each device's own copy, which the type system would otherwise call one value.
    sums = jnp.stack([lax.pcast(_checksum(x), DATA_AXIS, to="varying") for x in xs])
    return lax.all_gather(sums, DATA_AXIS, axis=1, to="invarying")  # [leaves, devices]
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(),) * num_leaves,
                               out_specs=P()))


def replica_checksums(tree: Any, mesh: Mesh) -> tuple[list[str], np.ndarray]:
  """(leaf paths, [leaves, devices] uint32): each device's checksum of its copy of each
  array of a replicated pytree, in mesh order (every host's devices)."""
  paths, leaves = zip(*[(jax.tree_util.keystr(p), x) for p, x in
                        jax.tree_util.tree_flatten_with_path(tree)[0]
                        if isinstance(x, jax.Array)])
  checksums = _checksums_fn(mesh, len(leaves))(*leaves)
  return list(paths), host_copy(checksums)


def check_replicas(tree: Any, mesh: Mesh, step: int):
  """Raises ReplicaMismatchError if any device's copy of the replicated `tree` differs.

  Every device recomputes the replicated state (the objective's label tables, centers,
  banks, ...) from the gathered batch; an op that rounds differently from one run to the
  next (a scatter-add with atomics on a GPU) would let the copies drift apart unseen. The
  loop checks at every epoch end, before the state can be saved.
  """
  paths, sums = replica_checksums(tree, mesh)
  bad = np.flatnonzero(np.any(sums != sums[:, :1], axis=1))
  if bad.size:
    leaf = bad[0]
    devices = np.flatnonzero(sums[leaf] != sums[leaf, 0]).tolist()
    raise errors.ReplicaMismatchError(
        f"after step {step} the devices' copies of the train state disagree: "
        f"{len(bad)} array(s), first state{paths[leaf]}, where device(s) {devices} of "
        f"{sums.shape[1]} differ from device 0. An op of the step is not deterministic on this "
        f"backend (on GPUs try XLA_FLAGS=--xla_gpu_deterministic_ops=true); the checkpoints "
        f"before this step are intact, resume from them.")


def host_copy(tree: Any) -> Any:
  """This host's numpy copy of a replicated pytree (works when other hosts hold copies too)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
      tree)


def global_batch_from_host(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each host's slice (its rows of every array)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
