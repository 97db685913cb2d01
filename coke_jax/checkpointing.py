"""Orbax checkpoints of the whole train state, a guard against incompatible configs, and preemption.

Each checkpoint holds the state (params, BN statistics, optimizer state, the
clustering state, step and RNG), a JSON `meta` item with the settings that fix
the state's shapes and meaning, and a JSON `monitor` item with the run's
diagnostics (`monitor.CollapseMonitor`). Restoring into a run whose settings
differ fails (when the Checkpointer is made) with a message naming the
differences instead of loading or overwriting. The state is restored into the
shardings of the running job, so a checkpoint written on 8 devices resumes on
1 or 4 (the state is replicated; only its placement changes).

Preemption: TPU and SLURM send SIGTERM before they stop a job. `PreemptionWatch`
tells the trainer the step at which every process stops; it then saves and
raises `Preempted`, and main.py exits with status 75.
"""

import os
import signal
import threading
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from coke_jax import errors

# Config entries that must match for a checkpoint to be resumed: those that fix the state's
# shapes and meaning, and those that map a step to its epoch and its examples (another batch
# size or seed mid-epoch would label some examples twice and others never).
_FINGERPRINT_KEYS = ("dataset.name", "dataset.image_size", "model", "objective.name",
                     "objective.num_clusters", "objective.average_after_epoch",
                     "objective.avg_label_size", "num_views", "num_small_views",
                     "optimizer.name", "global_batch_size", "seed")


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


def resolve(workdir: str) -> epath.Path:
  """Local paths made absolute (Orbax needs that); gs:// and other URLs kept as they are."""
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


class IncompatibleCheckpointError(errors.ConfigError):
  """The workdir holds a checkpoint written by a run with other settings."""


class Preempted(Exception):
  """The job was asked to stop (SIGTERM); the state at `step` is saved."""

  def __init__(self, step: int, directory):
    super().__init__(
        f"Preempted (SIGTERM): stopped at step {step} and saved a checkpoint in {directory}. "
        "Run the same command again to resume from it.")
    self.step = step


class Checkpointer:
  """Saves every `config.checkpoint_every_steps` and at the end; keeps the last few."""

  def __init__(self, workdir: str, config, num_train: int):
    self.directory = resolve(workdir) / "checkpoints"
    self.meta = fingerprint(config, num_train)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
        item_names=("state", "meta", "monitor"))
    self._check_compatible()  # at once, before anything is compiled, loaded or saved

  def _check_compatible(self):
    step = self.manager.latest_step()
    if step is None:
      return
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta != self.meta:
      diffs = [f"{k}: checkpoint {meta.get(k)!r} vs config {v!r}"
               for k, v in self.meta.items() if meta.get(k) != v]
      raise IncompatibleCheckpointError(
          f"{self.directory} holds a checkpoint (step {step}) from a run with other settings "
          f"({'; '.join(diffs)}). It was neither loaded nor overwritten. Use another --workdir, "
          "or restore the original settings to resume it.")

  def latest_step(self):
    return self.manager.latest_step()

  def restore_or(self, state, monitor: Optional[dict] = None):
    """The latest checkpoint restored into `state`'s structure and shardings, or `state`.

    With `monitor` (a dict), also returns the diagnostics saved with the
    checkpoint (`monitor` itself if there is none): (state, monitor).
    """
    step = self.manager.latest_step()
    if step is None:
      return state if monitor is None else (state, monitor)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    logging.info("Restored checkpoint %s/%d.", self.directory, step)
    if monitor is None:
      return restored
    if (self.directory / str(step) / "monitor").exists():
      monitor = self.manager.restore(
          step, args=ocp.args.Composite(monitor=ocp.args.JsonRestore()))["monitor"]
    return restored, monitor

  def save(self, step: int, state, monitor: Optional[dict] = None):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta),
        monitor=ocp.args.JsonSave(monitor or {})))

  def wait(self):
    self.manager.wait_until_finished()


class PreemptionWatch:
  """Says at which step to stop after a SIGTERM; a context manager around the training loop.

  Several processes: JAX's preemption sync manager (started by
  jax.distributed.initialize) catches SIGTERM on any host and makes all hosts
  agree on one step (`multihost_utils.reached_preemption_sync_point`, which
  must be asked at every step). One process: a Python SIGTERM handler sets a
  flag, and the step that is running finishes first.
  """

  def __init__(self):
    self._distributed = jax.process_count() > 1
    self._signalled = False
    self._previous_handler = None

  def __enter__(self):
    if not self._distributed:
      if threading.current_thread() is not threading.main_thread():
        logging.warning("Training outside the main thread: SIGTERM will not save a checkpoint.")
        return self
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    elif not jax.distributed.is_initialized():
      logging.warning("%d processes without jax.distributed: SIGTERM will not save a "
                      "checkpoint. Start them with --num_processes (see docs/pods.md).",
                      jax.process_count())
    return self

  def __exit__(self, *exc):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: finishing the current step, then saving.")
    self._signalled = True

  def reached(self, step: int) -> bool:
    """True at the step where every process stops and saves; ask at every step."""
    if self._distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
