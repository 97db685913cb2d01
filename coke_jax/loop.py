"""The training loop that pretraining and the linear probe share.

`run` steps through epochs of host batches from the state's step to the end
(or `stop_at_step`), and around each step:
  * places the next batches on the devices while the step runs (`prefetch.DevicePrefetch`),
  * logs a progress line every `log_every_steps` (step, epoch, loss, images/s)
    and, through clu's `ReportProgress`, steps/s, the share done and the ETA
    (with `steps_per_sec` for TensorBoard); every step metric goes to the
    writer (TensorBoard and the metrics file), not to the console;
  * watches for NaN/inf (`monitor.NonFiniteCheck`: read at log steps and before
    every save, so a bad state is never checkpointed);
  * calls `end_epoch(state, step)` after the last step of every epoch, then checks that
    every device's copy of the state is the same (`sharding.check_replicas`);
  * saves at the checkpointer's interval (Orbax's policy), at the end and at a
    preemption (SIGTERM), then raises `checkpointing.Preempted`.
A batch is a pure function of (seed, epoch, step), so starting again at the
saved step continues exactly.
"""

import time
from typing import Any, Callable, Iterable, Optional

from absl import logging
from clu import periodic_actions
import jax

from coke_jax import checkpointing
from coke_jax import monitor
from coke_jax import sharding
from coke_jax.data import prefetch


def run(state, *, step_fn: Callable, batches: Callable[[int, int], Iterable[dict]],
        checkpointer: checkpointing.Checkpointer, writer, mesh, total_steps: int,
        steps_per_epoch: int, global_batch: int, log_every_steps: int,
        stop_at_step: Optional[int] = None, end_epoch: Optional[Callable] = None,
        describe_epoch: Optional[Callable[[int], str]] = None,
        checkpoint_extra: Callable[[], dict] = dict, prefix: str = "train") -> Any:
  """Trains from `state` (its `step` says where) and returns the state at the end.

  Args:
    step_fn: (state, batch of global arrays, epoch) -> (state, metrics); the
      metrics include "loss".
    batches: (first step, end step) -> this host's batches of those global steps, across
      epochs (`input_pipeline.train_stream`).
    checkpointer: saves (and says when to) the state with `checkpoint_extra()`.
    end_epoch: (state, step) -> state, after an epoch's last step.
    describe_epoch: step -> the epoch part of the progress line.
    prefix: of the metrics' TensorBoard tags ("train" -> "train/loss").
  """
  spe, total = steps_per_epoch, total_steps
  end = total if stop_at_step is None else min(stop_at_step, total)
  describe_epoch = describe_epoch or (lambda s: f"epoch {s / spe:.2f}/{total // spe}")
  nonfinite = monitor.NonFiniteCheck(mesh)
  # clu's ReportProgress says steps/s, the share done and the ETA (and writes steps_per_sec);
  # the line below adds what it cannot know: the loss, the epoch and images/s.
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_steps=log_every_steps, every_secs=None)
  step = int(state.step)
  last_step, last_time = step, time.time()
  # The finally clause lets an in-flight save complete whatever stops the loop.
  with checkpointing.PreemptionWatch() as preemption, \
      prefetch.DevicePrefetch(batches(step, end), mesh) as on_devices:
    try:
      for batch in on_devices:
        state, metrics = step_fn(state, batch, step // spe)
        step += 1
        nonfinite.note(step, metrics)
        report(step)
        if step % log_every_steps == 0 or step == total:
          nonfinite.check(step, checkpointer)
          metrics = jax.device_get(metrics)
          writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in metrics.items()})
          now = time.time()
          rate = (step - last_step) * global_batch / max(now - last_time, 1e-9)
          last_step, last_time = step, now
          logging.info("step %d/%d  %s  loss %.4f  %s img/s", step, total,
                       describe_epoch(step), float(metrics["loss"]), f"{rate:,.0f}")
        if step % spe == 0:
          if end_epoch is not None:
            state = end_epoch(state, step)
          sharding.check_replicas(state, mesh, step)  # before this epoch's state is saved
        preempted = preemption.reached(step)
        if preempted or step == end or checkpointer.should_save(step):
          nonfinite.check(step, checkpointer, state)  # a NaN state is never saved
          checkpointer.save(step, state, checkpoint_extra())
        if preempted:
          checkpointer.wait()
          raise checkpointing.Preempted(step, checkpointer.directory)
    finally:
      checkpointer.wait()
  return state
