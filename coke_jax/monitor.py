"""Watching a run for what must stop it (NaN/inf) or deserves a warning (a collapsing clustering).

`NonFiniteCheck` keeps, on a device, the first step whose metrics held a NaN
or inf; the trainer reads it (one host sync) only at log steps and before each
save, together with a finiteness check of the whole state, so a bad state is
never checkpointed and the loop never waits on the device for this.

`CollapseMonitor` reads the cluster-size diagnostics an objective reports at
each epoch end (`clustering.size_diagnostics`: `largest_share`, `min_size`,
`bound` per head, and `loss_vs_uniform` where it applies) and warns when one
cluster holds more than `collapse.max_cluster_share` of the epoch's examples,
when the smallest cluster stays below `collapse.min_size_fraction` of its
bound gamma_k (Eq. 5; CoKe), or when the loss stays above
`collapse.uniform_loss_fraction` of that of uniform predictions (SwAV's
collapse signal), for `collapse.patience_epochs` epochs in a row. Its state is a small JSON dict
saved with each checkpoint, so a resumed run reports what an uninterrupted one
would.
"""

from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import sharding

_RECENT_WARNINGS = 10  # kept in the checkpoint and final_metrics.json; the log has them all


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _note_first_nonfinite(first_bad, step, metrics):
  return jnp.where((first_bad < 0) & ~_all_finite(metrics), step, first_bad)


class NonFiniteCheck:
  """The first step with a NaN or inf metric (loss, gradient norm, duals), kept on a device."""

  def __init__(self, mesh):
    self._first_bad = None  # int32 on this process's first device; -1: none so far
    self._note = jax.jit(_note_first_nonfinite)
    self._state_finite = jax.jit(_all_finite, out_shardings=sharding.replicated(mesh))

  def note(self, step: int, metrics):
    """Records `metrics` of step `step` (the step count after it); does not wait for them.

    The metrics are replicated, so one device's copy is enough: a one-device
    computation costs far less to launch than one over the whole mesh.
    """
    local = jax.tree_util.tree_map(lambda x: x.addressable_data(0), metrics)
    if self._first_bad is None:
      self._first_bad = jax.device_put(np.int32(-1), jax.tree_util.tree_leaves(local)[0].device)
    self._first_bad = self._note(self._first_bad, np.int32(step), local)

  def check(self, step: int, checkpoints, state=None):
    """Raises FloatingPointError if a noted metric, or (if given) the state, is not finite.

    checkpoints: the run's `checkpointing.Checkpointer`, named in the message.
    """
    first_bad = -1 if self._first_bad is None else int(jax.device_get(self._first_bad))
    if first_bad < 0 and (state is None or bool(jax.device_get(self._state_finite(state)))):
      return
    where = (f"in the metrics (loss, gradient norm or duals) of step {first_bad}"
             if first_bad >= 0 else f"in the train state at step {step}")
    checkpoints.wait()
    latest = checkpoints.latest_step()
    kept = (f"The checkpoints in {checkpoints.directory} are kept (latest: step {latest}). "
            if latest is not None else "There is no checkpoint yet. ")
    raise FloatingPointError(
        f"NaN or inf {where}; stopped without saving. {kept}Lower "
        "config.optimizer.learning_rate or check the data, then run again: training resumes "
        "from the latest checkpoint.")


class CollapseMonitor:
  """Epoch-end collapse warnings per head; `state` (JSON) goes into every checkpoint."""

  def __init__(self, config, state: Optional[dict] = None, objective_name: str = ""):
    self.max_share = config.max_cluster_share
    self.min_fraction = config.min_size_fraction
    self.uniform_fraction = config.uniform_loss_fraction
    self.patience = config.patience_epochs
    self.objective_name = objective_name
    self.state = {"epochs_below": {}, "epochs_uniform": {}, "num_warnings": 0,
                  "recent_warnings": [], **(state or {})}
    self.state.setdefault("epochs_uniform", {})

  def _streak(self, kind: str, head: str, now: bool) -> int:
    count = self.state[kind].get(head, 0) + 1 if now else 0
    self.state[kind][head] = count
    return count

  def end_epoch(self, epoch: int, stats: dict[str, Any]) -> dict[str, float]:
    """Warns about the heads that collapse; returns {head: 1.0 if warned else 0.0}.

    stats: the objective's epoch-end metrics as host numbers, keyed "<name>/<head>":
    `largest_share` (every head), `min_size` and `bound` (the size bound; 0 for none)
    and, where the objective has one, `loss_vs_uniform` (the loss over that of
    uniform predictions, ln K: SwAV's loss stays at ln K when it collapses).
    """
    flagged = {}
    heads = sorted(k.split("/", 1)[1] for k in stats if k.startswith("largest_share/"))
    for head in heads:
      share = float(stats[f"largest_share/{head}"])
      smallest, bound = float(stats[f"min_size/{head}"]), float(stats[f"bound/{head}"])
      epochs_below = self._streak("epochs_below", head, smallest < self.min_fraction * bound)
      uniform = stats.get(f"loss_vs_uniform/{head}")
      epochs_uniform = self._streak(
          "epochs_uniform", head, uniform is not None and float(uniform) >= self.uniform_fraction)
      problems = []
      if share > self.max_share:
        problems.append(f"one cluster holds {share:.1%} of the examples "
                        f"(collapse.max_cluster_share={self.max_share})")
      if self.patience and epochs_below >= self.patience:
        problems.append(f"the smallest cluster ({smallest:.0f} examples) has been below "
                        f"{self.min_fraction} x the size bound ({bound:.1f}) for {epochs_below} "
                        f"epochs (collapse.min_size_fraction, collapse.patience_epochs)")
      if self.patience and epochs_uniform >= self.patience:
        problems.append(f"the loss has stayed at {float(uniform):.1%} of that of uniform "
                        f"predictions (ln K) for {epochs_uniform} epochs "
                        f"(collapse.uniform_loss_fraction={self.uniform_fraction})")
      flagged[head] = float(bool(problems))
      if problems:
        advice = (f"docs/objectives/{self.objective_name}.md says what counters it; "
                  if self.objective_name else "")
        message = (f"Clustering collapse warning, epoch {epoch}, head {head}: "
                   f"{'; '.join(problems)}. {advice}a lower learning rate may help.")
        logging.warning(message)
        self.state["num_warnings"] += 1
        self.state["recent_warnings"] = (
            self.state["recent_warnings"] + [message])[-_RECENT_WARNINGS:]
    return flagged
