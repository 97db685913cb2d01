"""Reading parts of a pretraining checkpoint for evaluation.

Evaluation restores only what it needs from `<pretrain_workdir>/checkpoints`:
the backbone's params and BatchNorm statistics for the linear probe, and
additionally the heads and the objective's params and state for
kNN/clustering. The
optimizer state and everything else are never read. Arrays come back
replicated on the evaluation's mesh, whatever the number of devices or hosts
that wrote them (Orbax reshards on read). The checkpoint is opened read-only:
a damaged newest checkpoint is skipped with a warning (not moved; the
pretraining run moves it aside when it resumes) and the next older one is read.
"""

from typing import Any, Optional, Sequence

from absl import logging
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

from coke_jax import checkpointing
from coke_jax import sharding


class MissingCheckpointError(FileNotFoundError):
  """The pretraining workdir holds no checkpoint."""


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, absolute for local paths (Orbax needs it), as is for gs:// etc."""
  return str(checkpointing.resolve(workdir) / "checkpoints")


def _manager(pretrain_workdir: str) -> ocp.CheckpointManager:
  directory = checkpoint_dir(pretrain_workdir)
  if not tf.io.gfile.isdir(directory):
    raise MissingCheckpointError(
        f"No pretraining checkpoints in {directory}. Pass the --workdir of a pretraining run "
        "as --pretrain_workdir (it has a checkpoints/ folder).")
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})


def check_compatible(meta: dict[str, Any], expected: dict[str, Any], keys: Sequence[str],
                     directory: str):
  """Fails with the differing settings if the checkpoint's `meta` disagrees with `expected`
  (a `checkpointing.fingerprint`) on `keys`.

  "model.backbone" style keys compare one entry of the "model" section.
  """
  def entry(tree, key):
    section, _, name = key.partition(".") if key.startswith("model.") else (key, "", "")
    value = tree.get(section)
    return (value or {}).get(name) if name else value

  if meta.get("format") != expected["format"]:
    diffs = checkpointing.describe_differences(meta, expected, ["format"])
  else:
    diffs = "; ".join(f"{k}: checkpoint {entry(meta, k)!r} vs config {entry(expected, k)!r}"
                      for k in keys if entry(meta, k) != entry(expected, k))
  if diffs:
    raise checkpointing.IncompatibleCheckpointError(
        f"The checkpoint in {directory} was written with other settings than the evaluation "
        f"config ({diffs}). Pass the pretraining run's config (and its --config.* overrides) "
        "to the evaluation.")


def restore(pretrain_workdir: str, target: dict[str, Any], mesh, expected_meta: dict[str, Any],
            compare: Sequence[str], step: Optional[int] = None) -> tuple[dict[str, Any], int]:
  """Restores the entries of `target` from a pretraining checkpoint, replicated on `mesh`.

  Args:
    pretrain_workdir: the pretraining run's --workdir.
    target: a sub-tree of the saved TrainState's fields, e.g. {"params": {"model":
      {"backbone": ...}}, "batch_stats": {"backbone": ...}}, with arrays or
      jax.ShapeDtypeStructs as leaves; only these leaves are read.
    expected_meta: the evaluation's `checkpointing.fingerprint`, checked against the
      checkpoint's on the `compare` keys (and its format) first.
    step: the checkpoint step; None for the latest.
  Returns:
    (the restored tree, the step it came from).
  """
  manager = _manager(pretrain_workdir)
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps or steps[0] not in manager.all_steps():
    raise MissingCheckpointError(
        f"No checkpoint {'at all' if step is None else f'at step {step}'} in "
        f"{manager.directory}; it holds steps {list(manager.all_steps())}.")
  replicated = sharding.replicated(mesh)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), target)
  damaged = []
  checkpointing.ignore_abandoned_reads()  # before the reads: their callbacks race the except
  for candidate in steps:
    try:
      meta = manager.restore(
          candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      check_compatible(meta, expected_meta, compare, str(manager.directory))
      restored = manager.restore(candidate, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)))["state"]
    except checkpointing.IncompatibleCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      logging.warning("Checkpoint %s/%d is damaged (%s)%s", manager.directory, candidate,
                      checkpointing.short_error(e),
                      "; trying the next older one." if candidate != steps[-1] else ".")
      damaged.append((candidate, checkpointing.short_error(e)))
      continue
    manager.close()
    return restored, candidate
  manager.close()
  raise checkpointing.DamagedCheckpointError(
      f"No intact checkpoint in {manager.directory} (damaged: steps "
      f"{[s for s, _ in damaged]}; first error: {damaged[0][1]}). Evaluate another step or "
      "pretraining run, or run the pretraining again with the same --workdir: it moves the "
      "damaged checkpoints aside and resumes from the newest intact one (or starts afresh).")
