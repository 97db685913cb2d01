"""Orbax checkpoints of the whole train state, a guard against incompatible configs, and preemption.

Each checkpoint holds the state (the model's and the objective's params, BN
statistics, optimizer state, the objective's state such as label tables,
centers, queues; step and RNG), a JSON `meta` item with the settings that fix
the state's shapes and meaning, and a JSON `monitor` item with the run's
diagnostics (`monitor.CollapseMonitor`). Restoring into a run whose settings
differ fails (when the Checkpointer is made) with a message naming the
differences instead of loading or overwriting. The state is restored into the
shardings of the running job, so a checkpoint written on 8 devices resumes on
1 or 4 (the state is replicated; only its placement changes).

A checkpoint that does not restore (files truncated, corrupted or missing) is
moved aside to `<workdir>/damaged_checkpoints/<step>` (never deleted; outside
the folder Orbax lists steps in, so it is not tried again nor counted among the
kept ones) with one warning, and the next older one is tried.

Preemption: TPU and SLURM send SIGTERM before they stop a job. `PreemptionWatch`
tells the trainer the step at which every process stops; it then saves and
raises `Preempted`, and main.py exits with status 75.
"""

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from coke_jax import errors
from coke_jax import workdir_lock

# Bumped when a saved state would mean something else to this code: 2 holds params as
# {"model", "objective"} (objectives own parameters) and the torchvision-exact ResNet padding.
FORMAT = 2

# Config entries that must match for a checkpoint to be resumed: those that fix the state's
# shapes and meaning, and those that map a step to its epoch and its examples (another batch
# size or seed mid-epoch would label some examples twice and others never). The objective adds
# its own (`Objective.fingerprint`), e.g. CoKe's K per head.
_FINGERPRINT_KEYS = ("dataset.name", "dataset.image_size", "model", "num_views",
                     "num_small_views", "optimizer.name", "global_batch_size", "seed")


def fingerprint(config, num_train: int, objective) -> dict[str, Any]:
  flat = {"format": FORMAT}
  for key in _FINGERPRINT_KEYS:
    node = config
    for part in key.split("."):
      node = node[part]
    flat[key] = node.to_dict() if hasattr(node, "to_dict") else node
  flat["model"].pop("init_from", None)  # where the run started, not what its state means
  flat["objective"] = {"name": config.objective.name, **objective.fingerprint()}
  flat["num_train_examples"] = num_train
  return json_like(flat)


def json_like(tree):
  """Tuples as lists, as they come back from JSON, so fingerprints compare equal."""
  return jax.tree_util.tree_map(lambda x: list(x) if isinstance(x, tuple) else x, tree,
                                is_leaf=lambda x: isinstance(x, tuple))


def describe_differences(saved: dict[str, Any], expected: dict[str, Any], keys=None) -> str:
  """'key: checkpoint X vs config Y; ...' over `keys` (default: all of `expected`)."""
  if saved.get("format") != expected.get("format") and (keys is None or "format" in keys):
    return (f"it was written by another version of coke_jax (checkpoint format "
            f"{saved.get('format', 1)}, this version reads format {expected['format']})")
  return "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {expected.get(k)!r}"
                   for k in (keys or expected) if saved.get(k) != expected.get(k))


def resolve(workdir: str) -> epath.Path:
  """Local paths made absolute (Orbax needs that); gs:// and other URLs kept as they are."""
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


class IncompatibleCheckpointError(errors.ConfigError):
  """The workdir holds a checkpoint written by a run with other settings."""


class DamagedCheckpointError(errors.ConfigError):
  """Every checkpoint in the workdir failed to restore (each was moved aside, not deleted)."""


def short_error(e: Exception) -> str:
  """An Orbax/TensorStore error as one line: its type and the first line of its message."""
  lines = str(e).strip().splitlines()
  first = lines[0] if lines else ""
  return f"{type(e).__name__}: {first[:300]}"


def ignore_abandoned_reads():
  """Drops the "Event loop is closed" RuntimeErrors of a failed restore or save from now on.

  When one array of a checkpoint fails to read, Orbax closes its event loop
  while TensorStore still completes the other reads; each of their callbacks
  then fails in a thread and Python prints a traceback for it (two dozen for a
  smoke checkpoint), burying the one warning that says what happened. They
  arrive as unraisable exceptions, or, from a callback that prints its own
  error, through sys.excepthook: both are filtered, everything else passes.
  A failed save leaves write coroutines that the interpreter abandons at exit
  ("sys.meta_path is None"): dropped too.
  """
  if getattr(sys.unraisablehook, "drops_abandoned_reads", False):
    return

  def abandoned(exc_value) -> bool:
    return ((isinstance(exc_value, RuntimeError) and str(exc_value) == "Event loop is closed")
            or (isinstance(exc_value, ImportError) and "sys.meta_path is None" in str(exc_value)))

  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def unraisable_hook(unraisable):
    if not abandoned(unraisable.exc_value):
      previous_unraisable(unraisable)

  def except_hook(exc_type, exc_value, exc_traceback):
    if not abandoned(exc_value):
      previous_except(exc_type, exc_value, exc_traceback)

  unraisable_hook.drops_abandoned_reads = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


class CheckpointSaveError(errors.ConfigError):
  """A checkpoint could not be written (full, read-only or vanished filesystem)."""


class Preempted(Exception):
  """The job was asked to stop (SIGTERM); the state at `step` is saved."""

  def __init__(self, step: int, directory):
    super().__init__(
        f"Preempted (SIGTERM): stopped at step {step} and saved a checkpoint in {directory}. "
        "Run the same command again to resume from it.")
    self.step = step


class Checkpointer:
  """Saves every `save_interval_steps` (Orbax's policy) and when asked; keeps the last few.

  `meta` (JSON) is saved with every checkpoint; a directory whose checkpoint
  has another `meta` is refused when the Checkpointer is made, before anything
  is compiled, loaded or saved.
  """

  def __init__(self, workdir: str, meta: dict[str, Any], keep: int, save_interval_steps: int):
    self.directory = resolve(workdir) / "checkpoints"
    self.meta = json_like(meta)
    # Orbax's policies: every `save_interval_steps`, and at a multi-host preemption sync
    # point; not its default extra save at a fresh run's first step.
    policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             save_decision_policy=policy),
        item_names=("state", "meta", "monitor"))
    self.damaged = []  # (step, where it was moved, the error), in the order found
    self._check_compatible()

  @classmethod
  def for_training(cls, workdir: str, config, num_train: int, objective) -> "Checkpointer":
    return cls(workdir, fingerprint(config, num_train, objective), config.keep_checkpoints,
               config.checkpoint_every_steps)

  def _check_compatible(self):
    ignore_abandoned_reads()  # before any read: a failed one's callbacks race its except
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
        self._move_aside(step, e)
        continue
      if meta != self.meta:
        raise IncompatibleCheckpointError(
            f"{self.directory} holds a checkpoint (step {step}) from a run with other settings: "
            f"{describe_differences(meta, self.meta)}. It was neither loaded nor overwritten. "
            "Use another --workdir, or restore the original settings to resume it.")
      return
    self._raise_if_all_damaged()

  def _move_aside(self, step: int, error: Exception):
    """Renames checkpoint `step`, which failed to restore, to damaged_checkpoints/<step>[-n]
    (process 0; the others wait for it) and warns; the manager then no longer lists it."""
    aside = self.directory.parent / "damaged_checkpoints"
    target, n = aside / str(step), 1
    while target.exists():
      target, n = aside / f"{step}-{n}", n + 1
    logging.warning("Checkpoint %s/%d is damaged (%s); moved it to %s and trying the next older "
                    "one.", self.directory, step, short_error(error), target)
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"coke_jax: moved damaged checkpoint {step} aside")
    self.manager.reload()
    self.damaged.append((step, str(target), short_error(error)))

  def _raise_if_all_damaged(self):
    if self.damaged:
      raise DamagedCheckpointError(
          f"No intact checkpoint in {self.directory}: every one failed to restore and was moved "
          f"to {self.directory.parent / 'damaged_checkpoints'} (steps "
          f"{[step for step, _, _ in self.damaged]}; first error: {self.damaged[0][2]}). Run the "
          "same command again to start from step 0, or copy intact checkpoints back into "
          f"{self.directory} to resume from them.")

  def latest_step(self):
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def restore_or(self, state) -> tuple[Any, dict]:
    """(the newest intact checkpoint restored into `state`'s structure and shardings, the
    diagnostics saved with it), or (`state`, {}) when there is none; damaged ones are moved
    aside (`DamagedCheckpointError` if that leaves none)."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        monitor = {}
        if (self.directory / str(step) / "monitor").exists():
          monitor = self.manager.restore(
              step, args=ocp.args.Composite(monitor=ocp.args.JsonRestore()))["monitor"]
      except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
        self._move_aside(step, e)
        continue
      logging.info("Restored checkpoint %s/%d.", self.directory, step)
      return restored, monitor
    self._raise_if_all_damaged()
    return state, {}

  def save(self, step: int, state, monitor: Optional[dict] = None):
    with self._saving(step):
      self.manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta),
          monitor=ocp.args.JsonSave(monitor or {})))

  def wait(self):
    with self._saving(None):
      self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _saving(self, step):
    """Turns a failed write into one CheckpointSaveError. Orbax writes each checkpoint into a
    temporary directory and renames it when complete, so a failed save leaves the earlier
    ones as they were; the message lists them. An asynchronous save's error surfaces at the
    next save or wait (`step` None: the one in flight)."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (Orbax and TensorStore raise many)
      cause = workdir_lock.write_failure(e)
      if cause is None:
        raise
      ignore_abandoned_reads()
      try:
        self.manager.reload()
        intact = list(self.manager.all_steps())
      except Exception:  # pylint: disable=broad-except  (the directory may be unreadable too)
        intact = "unknown: the directory cannot be listed"
      which = "the checkpoint in flight" if step is None else f"the checkpoint of step {step}"
      raise CheckpointSaveError(
          f"Could not write {which} to {self.directory} ({workdir_lock.describe(cause)}). The "
          f"earlier checkpoints are kept (steps {intact}). Free space or make the workdir writable, "
          "then run the same command to resume from the newest of them.") from None


class PreemptionWatch:
  """Says at which step to stop after a SIGTERM; a context manager around the training loop.

  Several processes: JAX's preemption sync manager (started by
  jax.distributed.initialize) catches SIGTERM on any host and makes all hosts
  agree on one step (`multihost_utils.reached_preemption_sync_point`, which
  must be asked at every step; it is what Orbax's `reached_preemption` asks).
  One process: Orbax has no preemption signal without jax.distributed, so a
  Python SIGTERM handler sets a flag, and the step that is running finishes first.
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
