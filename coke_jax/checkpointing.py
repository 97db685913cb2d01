"""Orbax checkpoints of the whole train state, with a guard against incompatible configs.

Each checkpoint holds the state (params, BN statistics, optimizer state, the
clustering state, step and RNG) and a JSON `meta` item with the settings that
fix the state's shapes and meaning. Restoring into a run whose settings differ
fails with a message naming the differences instead of loading or overwriting.
"""

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

# Config entries that must match for a checkpoint to be resumed.
_FINGERPRINT_KEYS = ("dataset.name", "model", "objective.name", "objective.num_clusters",
                     "num_views", "optimizer.name")


def fingerprint(config, num_train: int) -> dict[str, Any]:
  flat = {}
  for key in _FINGERPRINT_KEYS:
    node = config
    for part in key.split("."):
      node = node[part]
    flat[key] = node.to_dict() if hasattr(node, "to_dict") else node
  flat["num_train_examples"] = num_train
  return jax.tree_util.tree_map(lambda x: list(x) if isinstance(x, tuple) else x, flat,
                                is_leaf=lambda x: isinstance(x, tuple))


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint written by a run with other settings."""


class Checkpointer:
  """Saves every `config.checkpoint_every_steps` and at the end; keeps the last few."""

  def __init__(self, workdir: str, config, num_train: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.meta = fingerprint(config, num_train)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
        item_names=("state", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def restore_or(self, state):
    """The latest checkpoint restored into `state`'s structure and shardings, or `state`."""
    step = self.manager.latest_step()
    if step is None:
      return state
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta != self.meta:
      diffs = [f"{k}: checkpoint {meta.get(k)!r} vs config {v!r}"
               for k, v in self.meta.items() if meta.get(k) != v]
      raise IncompatibleCheckpointError(
          f"{self.directory} holds a checkpoint (step {step}) from a run with other settings "
          f"({'; '.join(diffs)}). It was neither loaded nor overwritten. Use another --workdir, "
          "or restore the original settings to resume it.")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    logging.info("Restored checkpoint %s/%d.", self.directory, step)
    return restored["state"]

  def save(self, step: int, state):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta)))

  def wait(self):
    self.manager.wait_until_finished()
