"""The trainer: create_train_state, train_step and train_and_evaluate, for every objective.

One code path for 1 device, many devices and many hosts: `train_step` is the
body for one device's slice of the global batch, wrapped once by
`sharding.shard_step`. The objective (`coke_jax.objectives`) owns its
parameters, its state, its loss and its per-step update; the trainer only
orders them:

  scan epochs   the objective's `scan_epochs` first epochs (CoKe: 1, the
                initialization scan of Sec. 3.3): forward passes and the
                objective's update, no gradient step.
  learning step loss of the model and objective params -> optimizer step (the
                objective may keep some of its params fixed) -> the objective's
                update with the new params and the step's outputs.
  epoch end     the objective's `end_epoch`, collapse warnings, cluster-size
                pictures, and every `eval_every_epochs` an evaluation.
"""

import functools
import json
from typing import Any, Callable, Optional

from absl import logging
import flax
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from coke_jax import checkpointing
from coke_jax import config_base
from coke_jax import errors
from coke_jax import loop
from coke_jax import models
from coke_jax import monitor
from coke_jax import objectives
from coke_jax import sharding
from coke_jax import writers
from coke_jax.data import device_augment
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from coke_jax.evaluation import pictures
from coke_jax.evaluation import pretraining_eval


class TrainState(struct.PyTreeNode):
  """Everything a run needs to continue exactly; all of it is checkpointed.

  The data position is not stored separately: a batch is a function of
  (config.seed, step), see `input_pipeline`.
  """
  step: jax.Array        # global step, the scan epochs included
  params: Any            # {"model": ..., "objective": ...}, both optimized
  batch_stats: Any       # the model's BatchNorm statistics
  opt_state: Any
  objective: Any         # the objective's other state (CoKe: one HeadState per head)
  rng: jax.Array         # uint32[2]; folded with the step for per-step randomness


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
  """The learning rate by optimizer step (the scan epochs take none).

  `optimizer.schedule`: "cosine" (linear warm-up from `warmup_start_lr`, then cosine decay
  to `end_lr`), "step" (warm-up, then the rate times `step_factor` at each of
  `step_epochs`), or "constant" (warm-up, then constant).
  """
  opt = config.optimizer
  scale = config.global_batch_size / 256 if opt.scale_by_batch else 1.0  # Goyal et al.
  peak = opt.learning_rate * scale
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(int(opt.warmup_epochs * steps_per_epoch), total - 1)
  if opt.schedule == "cosine":
    if warmup <= 0:
      alpha = opt.end_lr * scale / peak if peak else 0.0  # the end as a fraction of the peak
      return optax.cosine_decay_schedule(peak, total, alpha=alpha)
    return optax.warmup_cosine_decay_schedule(opt.warmup_start_lr * scale, peak, warmup, total,
                                              opt.end_lr * scale)
  if opt.schedule == "step":
    after = optax.piecewise_constant_schedule(
        peak, {int(e * steps_per_epoch) - warmup: opt.step_factor for e in opt.step_epochs})
  elif opt.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise errors.ConfigError(f"config.optimizer.schedule is {opt.schedule!r}; use 'cosine', "
                             "'step' or 'constant'.")
  if warmup <= 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(opt.warmup_start_lr * scale, peak, warmup), after], [warmup])


# Parameters that are not weights of a linear map: ViT's class token and position embedding
# (excluded from weight decay as in DeiT and MoCo v3), besides every bias and norm scale.
_NOT_KERNELS = ("cls", "pos_embedding")


def decay_mask(params):
  """Weight decay and LARS scaling apply to kernels only: not to biases, norm parameters,
  ViT's class token or its position embedding (objective params such as prototypes
  are kernels)."""
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
  elif opt.name == "adam":  # C2BIN's clustering setting; weight decay as an L2 term (torch's)
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
                     optax.adam(schedule))
  else:
    raise errors.ConfigError(
        f"config.optimizer.name is {opt.name!r}; use 'sgd', 'lars' or 'adam'.")
  return tx, schedule


def forward(model, variables, batch) -> tuple[dict[str, jax.Array], Any]:
  """The model in training mode over every view of `batch`: (outputs, new batch_stats).

  outputs: `features`, `proj` (and `pred`) [V, b, ...] for the large views
  `images` [b, V, H, W, C], and the same keys with `_small` [S, b, ...] for
  multi-crop's `small_images`. Each view is its own BatchNorm batch, as
  separate forward passes in the official code; vmap runs all views as one pass
  with statistics per view (a scan over views ran 1.7x slower on a GPU), and
  the running statistics become those after one pass per view in turn (large
  views first, `batch_norm.sequential_update`).
  """
  view_stats, outputs = [], {}
  for key, suffix in (("images", ""), ("small_images", "_small")):
    if key not in batch:
      continue

    def one_view(images):
      out, mutated = model.apply(variables, images, train=True, mutable=["batch_stats"])
      return mutated["batch_stats"], out

    stats, outs = jax.vmap(one_view, in_axes=1)(batch[key])  # stats [V, ...], outs [V, b, ...]
    view_stats.append(stats)
    outputs.update({k + suffix: v for k, v in outs.items()})
  batch_stats = models.batch_norm.sequential_update(
      variables["batch_stats"], jax.tree_util.tree_map(lambda *s: jnp.concatenate(s),
                                                       *view_stats))
  return outputs, batch_stats


def create_train_state(config, model, objective, tx, image_shape, mesh) -> TrainState:
  """A fresh state, built directly replicated on the mesh."""

  def init(rng):
    model_rng, objective_rng, state_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    variables = model.init(model_rng, dummy, train=False)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    output_shapes = {k: v.shape[1:] for k, v in jax.eval_shape(
        lambda: model.apply(variables, dummy, train=False)).items()}
    objective_params, objective_state = objective.init(objective_rng, variables, output_shapes)
    params = {"model": variables["params"], "objective": objective_params}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                       objective=objective_state, rng=state_rng)
    if config.model.dtype == "float64":  # the verification mode: every float of the state
      state = jax.tree_util.tree_map(
          lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return state

  return jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(config.seed))


def _keep_fixed(tx, updates, new_opt_state, opt_state, trainable):
  """Updates of 0 and the old optimizer state for the params whose `trainable` is False."""
  updates = jax.tree_util.tree_map(lambda u, t: jnp.where(t, u, jnp.zeros_like(u)),
                                   updates, trainable)
  # Param-shaped parts of the state (momentum) keep their old value; counts move on.
  keep = optax.tree_map_params(tx, lambda _, t: t, opt_state, trainable,
                               transform_non_params=lambda _: True)
  new_opt_state = jax.tree_util.tree_map(lambda t, new, old: jnp.where(t, new, old),
                                         keep, new_opt_state, opt_state)
  return updates, new_opt_state


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, objective, tx,
               schedule, steps_per_epoch: int, learn: bool, augment=None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step on this device's slice of the batch; returns replicated state and metrics.

  batch: `images` [b, V, H, W, C] (the large views), optionally `small_images`
  [b, S, h, w, C] (multi-crop), or the host's decoded images and view parameters
  that `augment` (`device_augment.augment_batch`) turns into them; `index` [b] and
  `weight` [b] (0 marks padding). With learn=False (a scan epoch) no gradient is
  taken and the parameters and optimizer state are unchanged; BatchNorm still
  runs in training mode.
  """
  if augment is not None:
    batch = augment(batch)
  batch = {k: v for k, v in batch.items() if k != "label"}  # objectives never see labels
  train_step_count = jnp.maximum(state.step - objective.scan_epochs * steps_per_epoch, 0)
  ctx = objectives.StepContext(
      step=state.step, epoch=state.step // steps_per_epoch, train_step=train_step_count,
      rng=jax.random.fold_in(state.rng, state.step),
      forward=functools.partial(forward, model),
      model_variables=jax.lax.stop_gradient({"params": state.params["model"],
                                             "batch_stats": state.batch_stats}))

  def loss_fn(params):
    outputs, batch_stats = forward(
        model, {"params": params["model"], "batch_stats": state.batch_stats}, batch)
    loss, (objective_state, metrics) = objective.loss(params["objective"], state.objective,
                                                      outputs, batch, ctx)
    return loss, (outputs, batch_stats, objective_state, metrics)

  metrics = {}
  if learn:
    (loss, (outputs, batch_stats, objective_state, loss_metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    trainable = objective.trainable(state.params["objective"], ctx)
    if trainable is not None:
      trainable = {"model": jax.tree_util.tree_map(lambda _: True, state.params["model"]),
                   "objective": trainable}
      updates, opt_state = _keep_fixed(tx, updates, opt_state, state.opt_state, trainable)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
  else:
    loss, (outputs, batch_stats, objective_state, loss_metrics) = loss_fn(state.params)
    params, opt_state = state.params, state.opt_state
  metrics.update(loss=loss, learning_rate=schedule(train_step_count), **loss_metrics)

  ctx = ctx._replace(model_variables={"params": params["model"], "batch_stats": batch_stats})
  objective_params, objective_state, update_metrics = objective.update(
      params["objective"], objective_state, jax.lax.stop_gradient(outputs), batch, ctx)
  params = {"model": params["model"], "objective": objective_params}
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, objective=objective_state)
  return new_state, {**metrics, **update_metrics}


def device_augmentation(config, source) -> Optional[Callable]:
  """The step's part of the augmentation (crop, colour, blur, ...) for natural images."""
  if not getattr(source, "encoded", False):
    return None
  return functools.partial(device_augment.augment_batch, image_size=source.image_size,
                           small_image_size=config.augment.small_image_size)


class Trainer:
  """Compiled pieces of one run: the sharded steps, the epoch end, and the step accounting."""

  def __init__(self, config: ml_collections.ConfigDict, source, mesh):
    config_base.validate(config)  # the eval modes build a Trainer without train_and_evaluate
    self.config, self.source, self.mesh = config, source, mesh
    self.steps_per_epoch = input_pipeline.steps_per_epoch(source.num_train,
                                                          config.global_batch_size)
    self.model = models.build_model(config.model, axis_name=sharding.DATA_AXIS)
    self.objective = objectives.build(config, source.num_train)
    self.scan_epochs = self.objective.scan_epochs
    self.total_steps = self.steps_per_epoch * (self.scan_epochs + config.num_epochs)
    self.tx, self.schedule = make_optimizer(config, self.steps_per_epoch)
    step_kwargs = dict(model=self.model, objective=self.objective, tx=self.tx,
                       schedule=self.schedule, steps_per_epoch=self.steps_per_epoch,
                       augment=device_augmentation(config, source))
    self.learn_step = sharding.shard_step(
        lambda s, b: train_step(s, b, learn=True, **step_kwargs), mesh)
    self.scan_step = sharding.shard_step(
        lambda s, b: train_step(s, b, learn=False, **step_kwargs), mesh)

    def end_epoch(state):
      epoch = state.step // self.steps_per_epoch - 1  # the data epoch that just ended
      rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
      objective_state, metrics = self.objective.end_epoch(state.params["objective"],
                                                          state.objective, epoch, rng)
      return state.replace(objective=objective_state), metrics

    self.end_epoch = jax.jit(end_epoch, donate_argnums=(0,),
                             out_shardings=sharding.replicated(mesh))

  def init_state(self) -> TrainState:
    return create_train_state(self.config, self.model, self.objective, self.tx,
                              self.source.image_shape, self.mesh)

  def with_backbone_from_file(self, state: TrainState) -> TrainState:
    """`state` with the backbone of `model.init_from` (torchvision layout), if it names one."""
    path = self.config.model.init_from
    if not path:
      return state
    loaded = models.backbone_from_file(self.model, self.source.image_shape, path)
    fit = lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding)
    model_params = {**state.params["model"],
                    "backbone": jax.tree_util.tree_map(fit, loaded["params"],
                                                       state.params["model"]["backbone"])}
    batch_stats = dict(state.batch_stats)
    if "batch_stats" in loaded:
      batch_stats["backbone"] = jax.tree_util.tree_map(fit, loaded["batch_stats"],
                                                       state.batch_stats["backbone"])
    logging.info("Backbone initialized from %s.", path)
    return state.replace(params={**state.params, "model": model_params}, batch_stats=batch_stats)

  def step(self, state: TrainState, batch, epoch: int):
    return (self.scan_step if epoch < self.scan_epochs else self.learn_step)(state, batch)

  def describe_epoch(self, step: int) -> str:
    """The epoch part of the progress line: the scan's progress, then training epochs."""
    scan_steps = self.scan_epochs * self.steps_per_epoch
    if step <= scan_steps and scan_steps:
      return f"scan {step / scan_steps:.0%}"
    return f"epoch {(step - scan_steps) / self.steps_per_epoch:.2f}/{self.config.num_epochs}"

  def training_epoch(self, data_epoch: int) -> int:
    """Training epochs done after data epoch `data_epoch` (0 after the scan)."""
    return data_epoch + 1 - self.scan_epochs


def evaluate(trainer: Trainer, state: TrainState, writer=None, workdir: Optional[str] = None,
             tag: str = "") -> dict[str, Any]:
  """Held-out clustering per head and kNN of backbone features (`pretraining_eval`).

  With a `writer`, also logs the results as `eval/*` scalars at the state's step
  and draws each head's exemplar grid (TensorBoard and `<workdir>/pictures/`).
  """
  variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
  heads = trainer.objective.eval_heads(*pretraining_eval.local_copy(
      (state.params["objective"], state.objective)))
  results, drawn = pretraining_eval.evaluate_model(
      trainer.model, variables, heads, trainer.source, trainer.config, trainer.mesh,
      draw=writer is not None)
  if writer is not None:
    step = int(state.step)
    writer.write_scalars(step, pretraining_eval.flat_scalars(results, "eval"))
    if jax.process_index() == 0:
      pictures.write(writer, workdir, step, drawn, tag=tag)
    logging.info("%s eval: %s", tag, pretraining_eval.summary(results))
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_at_step: Optional[int] = None,
                       mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
  """Trains (resuming from `workdir` if it holds a checkpoint), then evaluates.

  Writes TensorBoard summaries, `metrics.jsonl` and checkpoints under `workdir`
  and the final metrics to `<workdir>/final_metrics.json`; returns the final
  state. With `stop_at_step`, stops there with a checkpoint and without
  evaluating (a later call resumes). On SIGTERM, saves at a step all processes
  agree on and raises `checkpointing.Preempted`; on a NaN or inf, raises
  FloatingPointError without saving. `mesh` defaults to all devices.
  """
  config_base.validate(config)
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_divides(config.global_batch_size, mesh, jax.process_count())
  sharding.check_batch_divides(config.eval_batch_size, mesh, jax.process_count(),
                               name="eval_batch_size")
  source = sources.get_source(config.dataset)
  trainer = Trainer(config, source, mesh)
  config_base.check_against_data(config, source.num_train, trainer.steps_per_epoch)
  ckpt = checkpointing.Checkpointer.for_training(workdir, config, source.num_train,
                                                 trainer.objective)
  writer = writers.create(workdir)
  fresh = trainer.init_state()
  if ckpt.latest_step() is None:  # a resumed run's backbone comes from its checkpoint
    fresh = trainer.with_backbone_from_file(fresh)
  state, monitor_state = ckpt.restore_or(fresh)
  collapse = monitor.CollapseMonitor(config.collapse, monitor_state, config.objective.name)
  spe, total = trainer.steps_per_epoch, trainer.total_steps
  if int(state.step):
    logging.info("Resumed from %s at step %d (%s).", ckpt.directory, int(state.step),
                 trainer.describe_epoch(int(state.step)))
  else:
    writer.write_hparams(_flat_hparams(config))
  scan = f" + {trainer.scan_epochs} scan epoch(s)" if trainer.scan_epochs else ""
  logging.info("%s: %d training examples, %d steps per epoch, %d epochs%s, %d steps, "
               "%d devices.", config.objective.name, source.num_train, spe, config.num_epochs,
               scan, total, mesh.devices.size)

  def end_epoch(state, step):
    state, epoch_metrics = trainer.end_epoch(state)
    epoch_metrics = jax.device_get(epoch_metrics)
    done = trainer.training_epoch(step // spe - 1)  # 0: the end of the scan
    tag = f"epoch{done:04d}"
    collapsed = collapse.end_epoch(done, epoch_metrics)
    writer.write_scalars(step, {**{f"clusters/{k}": v for k, v in epoch_metrics.items()},
                                **{f"clusters/collapse/{k}": v for k, v in collapsed.items()}})
    heads = trainer.objective.eval_heads(*pretraining_eval.local_copy(
        (state.params["objective"], state.objective)))
    pretraining_eval.write_cluster_sizes(writer, workdir, step, tag, heads)
    if config.eval_every_epochs and step < total and done % config.eval_every_epochs == 0:
      evaluate(trainer, state, writer, workdir, tag)
    return state

  state = loop.run(
      state, step_fn=trainer.step, mesh=mesh, checkpointer=ckpt, writer=writer,
      batches=lambda start, end: input_pipeline.train_stream(
          source, config, start, end, jax.process_index(), jax.process_count()),
      total_steps=total, steps_per_epoch=spe, global_batch=config.global_batch_size,
      log_every_steps=config.log_every_steps, stop_at_step=stop_at_step, end_epoch=end_epoch,
      describe_epoch=trainer.describe_epoch, checkpoint_extra=lambda: collapse.state)
  if int(state.step) < total:
    return state
  results = evaluate(trainer, state, writer, workdir, f"epoch{config.num_epochs:04d}")
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
