"""The trainer: create_train_state, train_step and train_and_evaluate.

One code path for 1 device, many devices and many hosts: `train_step` is the
body for one device's slice of the global batch, wrapped once by
`sharding.shard_step`. The objective (CoKe) owns its state, its loss and its
clustering update; the trainer only orders them:

  epoch 0      the initialization scan of Sec. 3.3: forward passes collect
               labels and centers; no gradient step is taken.
  epoch t >= 1 loss against the labels/centers of epoch t-1, a gradient step,
               and the clustering update that writes epoch t's labels/centers.
  epoch end    the objective's `end_epoch` (labels/centers of t become t-1).
"""

import json
import time
from typing import Any, Callable, Optional

from absl import logging
from clu import metric_writers
import flax
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from coke_jax import checkpointing
from coke_jax import errors
from coke_jax import models
from coke_jax import monitor
from coke_jax import objectives
from coke_jax import sharding
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from coke_jax.evaluation import pictures
from coke_jax.evaluation import pretraining_eval


class TrainState(struct.PyTreeNode):
  """Everything a run needs to continue exactly; all of it is checkpointed.

  The data position is not stored separately: a batch is a function of
  (config.seed, step), see `input_pipeline`.
  """
  step: jax.Array        # global step, the epoch-0 scan included
  params: Any
  batch_stats: Any
  opt_state: Any
  objective: Any         # the objective's state (CoKe: one HeadState per head)
  rng: jax.Array         # uint32[2]; folded with the step for per-step randomness


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
  """Linear warm-up then cosine decay to 0, by optimizer step (the scan epoch takes none)."""
  opt = config.optimizer
  peak = opt.learning_rate
  if opt.scale_by_batch:
    peak *= config.global_batch_size / 256  # lr = base * batch / 256 (Goyal et al.)
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(int(opt.warmup_epochs * steps_per_epoch), total - 1)
  if warmup <= 0:
    return optax.cosine_decay_schedule(peak, total)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, 0.0)


# Parameters that are not weights of a linear map: ViT's class token and position embedding
# (excluded from weight decay as in DeiT and MoCo v3), besides every bias and norm scale.
_NOT_KERNELS = ("cls", "pos_embedding")


def decay_mask(params):
  """Weight decay and LARS scaling apply to kernels only: not to biases, norm parameters,
  ViT's class token or its position embedding."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim > 1 and getattr(path[-1], "key", None) not in _NOT_KERNELS, params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  opt = config.optimizer
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=opt.momentum))
  elif opt.name == "lars":
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=opt.trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=opt.momentum)
  else:
    raise errors.ConfigError(f"config.optimizer.name is {opt.name!r}; use 'sgd' or 'lars'.")
  return tx, schedule


def create_train_state(config, model, objective, tx, image_shape, mesh) -> TrainState:
  """A fresh state, built directly replicated on the mesh."""

  def init(rng):
    model_rng, objective_rng, state_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    variables = model.init(model_rng, dummy, train=False)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                       objective=objective.init(objective_rng), rng=state_rng)
    if config.model.dtype == "float64":  # the verification mode: every float of the state
      state = jax.tree_util.tree_map(
          lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return state

  return jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(config.seed))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, objective, tx,
               steps_per_epoch: int, learn: bool) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step on this device's slice of the batch; returns replicated state and metrics.

  batch: `images` [b, V, H, W, C] (the large views), optionally `small_images`
  [b, S, h, w, C] (multi-crop), `index` [b] and `weight` [b] (0 marks padding).
  With learn=False (the epoch-0 scan) no gradient is taken and the parameters
  and optimizer state are unchanged; BatchNorm still runs in training mode.
  """
  index, weight = batch["index"], batch["weight"]
  num_real = sharding.total(jnp.sum(weight))
  epoch = state.step // steps_per_epoch

  def forward(params):
    view_stats, outputs = [], {}
    for key, suffix in (("images", ""), ("small_images", "_small")):
      if key not in batch:
        continue

      def one_view(images):
        out, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                   train=True, mutable=["batch_stats"])
        return mutated["batch_stats"], {k: out[k] for k in ("proj", "pred") if k in out}

      # Each view is its own BatchNorm batch, as separate forward passes in the official
      # code; vmap runs all views as one pass over [V * b] images, with statistics per view
      # (a scan over views ran 1.7x slower on a GPU). stats: [V, ...], outs: [V, b, D].
      stats, outs = jax.vmap(one_view, in_axes=1)(batch[key])
      view_stats.append(stats)
      outputs.update({k + suffix: v for k, v in outs.items()})
    # The running statistics as after one forward pass per view in turn (large views first).
    batch_stats = models.batch_norm.sequential_update(
        state.batch_stats, jax.tree_util.tree_map(lambda *s: jnp.concatenate(s), *view_stats))
    per_example, aux = objective.loss(state.objective, outputs, index, epoch)
    loss = sharding.total(jnp.sum(per_example * weight)) / num_real
    aux = {k: sharding.total(jnp.sum(v * weight)) / num_real for k, v in aux.items()}
    return loss, (outputs, batch_stats, aux)

  if learn:
    (loss, (outputs, batch_stats, aux)), grads = jax.value_and_grad(
        forward, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    aux["grad_norm"] = optax.tree.norm(grads)
  else:
    loss, (outputs, batch_stats, aux) = forward(state.params)
    params, opt_state = state.params, state.opt_state

  # Clustering on the global batch: every device gathers all embeddings and
  # ids and runs the same update, so the clustering state stays replicated.
  embeddings = sharding.gather(jax.lax.stop_gradient(outputs["proj"]), axis=1)  # [V, B, D]
  objective_state, objective_metrics = objective.update(
      state.objective, embeddings, sharding.gather(index), sharding.gather(weight), epoch)

  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, objective=objective_state)
  return new_state, {"loss": loss, **aux, **objective_metrics}


class Trainer:
  """Compiled pieces of one run: the sharded steps, epoch end and embedding."""

  def __init__(self, config: ml_collections.ConfigDict, source, mesh):
    self.config, self.source, self.mesh = config, source, mesh
    self.steps_per_epoch = input_pipeline.steps_per_epoch(source.num_train,
                                                          config.global_batch_size)
    self.total_steps = self.steps_per_epoch * (config.num_epochs + 1)
    self.model = models.build_model(config.model, axis_name=sharding.DATA_AXIS)
    self.objective = objectives.build_objective(config, source.num_train)
    self.tx, self.schedule = make_optimizer(config, self.steps_per_epoch)
    step_kwargs = dict(model=self.model, objective=self.objective, tx=self.tx,
                       steps_per_epoch=self.steps_per_epoch)
    self.learn_step = sharding.shard_step(
        lambda s, b: train_step(s, b, learn=True, **step_kwargs), mesh)
    self.scan_step = sharding.shard_step(
        lambda s, b: train_step(s, b, learn=False, **step_kwargs), mesh)
    replicated = sharding.replicated(mesh)

    def end_epoch(state):
      epoch = state.step // self.steps_per_epoch - 1  # the epoch that just ended
      objective_state, metrics = self.objective.end_epoch(state.objective, epoch)
      return state.replace(objective=objective_state), metrics

    self.end_epoch = jax.jit(end_epoch, donate_argnums=(0,), out_shardings=replicated)

  def init_state(self) -> TrainState:
    return create_train_state(self.config, self.model, self.objective, self.tx,
                              self.source.image_shape, self.mesh)

  def step(self, state: TrainState, batch, epoch: int):
    return (self.scan_step if epoch == 0 else self.learn_step)(state, batch)


class Progress:
  """Console progress: step, epoch, loss, images/s and ETA, every `every` steps."""

  def __init__(self, total_steps: int, steps_per_epoch: int, global_batch: int, start_step: int):
    self.total, self.spe, self.batch = total_steps, steps_per_epoch, global_batch
    self.last_step, self.last_time, self.start_time = start_step, time.time(), time.time()
    self.start_step = start_step

  def report(self, step: int, loss: float) -> str:
    now = time.time()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    done = step - self.start_step
    avg_step = (now - self.start_time) / max(done, 1)
    eta = int(avg_step * (self.total - step))
    self.last_step, self.last_time = step, now
    epoch = (f"scan {step / self.spe:.0%}" if step < self.spe else
             f"epoch {step / self.spe - 1:.2f}/{self.total // self.spe - 1}")
    return (f"step {step}/{self.total}  {epoch}  loss {loss:.4f}  "
            f"{rate * self.batch:,.0f} img/s  "
            f"ETA {eta // 3600:d}:{eta % 3600 // 60:02d}:{eta % 60:02d}")


def evaluate(trainer: Trainer, state: TrainState, writer=None, workdir: Optional[str] = None,
             epoch: Optional[int] = None) -> dict[str, Any]:
  """Held-out clustering per head and kNN of backbone features (`pretraining_eval`).

  With a `writer`, also logs the results as `eval/*` scalars at the state's step
  and draws each head's exemplar grid (TensorBoard and `<workdir>/pictures/`).
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results, drawn = pretraining_eval.evaluate_model(
      trainer.model, variables, trainer.objective, state.objective, trainer.source,
      trainer.config, trainer.mesh, draw=writer is not None)
  if writer is not None:
    step = int(state.step)
    writer.write_scalars(step, pretraining_eval.flat_scalars(results, "eval"))
    if jax.process_index() == 0:
      pictures.write(writer, workdir, step, drawn, tag=f"epoch{epoch:04d}")
    logging.info("epoch %d eval: %s", epoch, pretraining_eval.summary(results))
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_at_step: Optional[int] = None,
                       mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
  """Trains (resuming from `workdir` if it holds a checkpoint), then evaluates.

  Writes TensorBoard summaries and checkpoints under `workdir` and the final
  metrics to `<workdir>/final_metrics.json`; returns the final state. With
  `stop_at_step`, stops there with a checkpoint and without evaluating (a
  later call resumes). On SIGTERM, saves at a step all processes agree on and
  raises `checkpointing.Preempted`; on a NaN or inf, raises FloatingPointError
  without saving. `mesh` defaults to all devices of all processes.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_divides(config.global_batch_size, mesh, jax.process_count())
  sharding.check_batch_divides(config.eval_batch_size, mesh, jax.process_count(),
                               name="eval_batch_size")
  source = sources.get_source(config.dataset)
  ckpt = checkpointing.Checkpointer(workdir, config, source.num_train)
  trainer = Trainer(config, source, mesh)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)
  state, monitor_state = ckpt.restore_or(trainer.init_state(), monitor={})
  collapse = monitor.CollapseMonitor(config.collapse, monitor_state)
  nonfinite = monitor.NonFiniteCheck(mesh)
  step = int(state.step)
  if step:
    logging.info("Resumed from %s at step %d (epoch %.2f).", ckpt.directory, step,
                 step / trainer.steps_per_epoch)
  else:
    writer.write_hparams(_flat_hparams(config))
  spe, total = trainer.steps_per_epoch, trainer.total_steps
  logging.info("%d training examples, %d steps per epoch, %d epochs + the epoch-0 scan, "
               "%d steps, %d devices.", source.num_train, spe, config.num_epochs, total,
               mesh.devices.size)
  progress = Progress(total, spe, config.global_batch_size, step)
  end = total if stop_at_step is None else min(stop_at_step, total)
  # The finally clause lets an in-flight save complete whatever stops the loop.
  with checkpointing.PreemptionWatch() as preemption:
    try:
      while step < end:
        epoch, start = divmod(step, spe)
        for host_batch in input_pipeline.train_batches(source, config, epoch, start,
                                                       jax.process_index(), jax.process_count()):
          batch = sharding.global_batch_from_host(host_batch, mesh)
          state, metrics = trainer.step(state, batch, epoch)
          step += 1
          nonfinite.note(step, metrics)
          if step % config.log_every_steps == 0 or step == total:
            nonfinite.check(step, ckpt)
            metrics = jax.device_get(metrics)
            metrics["learning_rate"] = float(trainer.schedule(max(step - spe, 0)))
            writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
            logging.info(progress.report(step, float(metrics["loss"])))
          if step % spe == 0:
            state, epoch_metrics = trainer.end_epoch(state)
            epoch_metrics = jax.device_get(epoch_metrics)
            done_epoch = step // spe - 1  # 0: the initialization scan
            collapsed = collapse.end_epoch(done_epoch, epoch_metrics)
            writer.write_scalars(step, {**{f"clusters/{k}": v for k, v in epoch_metrics.items()},
                                        **{f"clusters/collapse/{k}": v
                                           for k, v in collapsed.items()}})
            pretraining_eval.write_cluster_sizes(writer, workdir, step, f"epoch{done_epoch:04d}",
                                                 trainer.objective, state.objective)
            if (config.eval_every_epochs and step < total
                and done_epoch % config.eval_every_epochs == 0):
              evaluate(trainer, state, writer, workdir, done_epoch)
          preempted = preemption.reached(step)
          if preempted or step % config.checkpoint_every_steps == 0 or step == end:
            nonfinite.check(step, ckpt, state)  # a NaN state is never saved
            ckpt.save(step, state, collapse.state)
          if preempted:
            ckpt.wait()
            raise checkpointing.Preempted(step, ckpt.directory)
          if step == end:
            break
    finally:
      ckpt.wait()
  if step < total:
    return state
  results = evaluate(trainer, state, writer, workdir, config.num_epochs)
  writer.flush()
  results["collapse"] = {k: collapse.state[k] for k in ("num_warnings", "recent_warnings")}
  metrics_path = checkpointing.resolve(workdir) / "final_metrics.json"
  if jax.process_index() == 0:
    metrics_path.write_text(json.dumps(results, indent=2))
  logging.info("Final metrics (%s): %s", metrics_path, json.dumps(results, indent=2))
  return state


def _flat_hparams(config) -> dict[str, Any]:
  flat = flax.traverse_util.flatten_dict(config.to_dict(), sep=".")
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
