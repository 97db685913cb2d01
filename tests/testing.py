"""Shared helpers for tests: tiny configs and sources, and exact comparison of states."""

import jax
import numpy as np

from coke_jax import checkpointing
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import sources
from configs import smoke


def smoke_config(objective: str = "coke", **overrides):
  """configs/smoke.py (for `objective`) with dotted-key overrides, e.g.
  smoke_config(**{"objective.alpha": 1.0})."""
  config = smoke.get_config(objective)
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      node[leaf] = value
  return config


def random_source(num_train=64, num_heldout=16, shape=(8, 8, 1), num_classes=4, seed=0):
  """A small in-memory dataset of random images (for shape/equivalence tests)."""
  rng = np.random.default_rng(seed)
  return sources.InMemorySource(
      "random", rng.uniform(size=(num_train, *shape)).astype(np.float32),
      rng.integers(0, num_classes, num_train).astype(np.int32),
      rng.uniform(size=(num_heldout, *shape)).astype(np.float32),
      rng.integers(0, num_classes, num_heldout).astype(np.int32), num_classes)


def assert_trees_equal(a, b):
  """Bit-identical pytrees (params, labels, centers, duals, ...); names the leaf that differs."""
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def restore_latest(workdir: str, config, mesh=None) -> train.TrainState:
  """The latest checkpoint of a pretraining run in `workdir`, restored on `mesh` (all devices)."""
  source = sources.get_source(config.dataset)
  trainer = train.Trainer(config, source, mesh or sharding.make_mesh())
  state, _ = checkpointing.Checkpointer.for_training(
      workdir, config, source.num_train, trainer.objective).restore_or(trainer.init_state())
  return state


def on_devices(fn, num_devices: int, rows, *replicated):
  """fn(rows, *replicated) inside the sharded step's shard_map on the first `num_devices`
  devices: `rows` (a pytree of [B, ...]) split along axis 0, `replicated` on every device;
  fn's output must be replicated (a loss, a global statistic). Differentiable w.r.t. both."""
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  specs = (jax.sharding.PartitionSpec(sharding.DATA_AXIS),) + (
      jax.sharding.PartitionSpec(),) * len(replicated)
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs,
                               out_specs=jax.sharding.PartitionSpec()))(rows, *replicated)
