"""Linear evaluation of a pretrained backbone (the MoCo protocol as the paper runs it).

A linear classifier on the frozen backbone's globally average-pooled features,
trained with SGD (momentum 0.9, weight decay 1e-6, cosine decay; 90 epochs at
batch 1024, supp. Sec. 2.1 / the official `eval_lincls.py`), on augmented
training views; reports top-1/top-5 on the un-augmented held-out split.

The backbone runs in inference mode: its BatchNorm statistics are the
pretrained ones and never change (as in MoCo's `model.eval()`), and only its
params and BN statistics are read from the pretraining checkpoint; the heads,
the clustering state and the optimizer state are not. Optionally
(`normalize_features`) each feature is standardized with its mean and standard
deviation over the un-augmented training images, computed once before
training; the classifier is still linear in the features, only SGD's
conditioning changes (as MAE's BatchNorm without affine before its probe). The step is
data-parallel over the same mesh as pretraining (`sharding.shard_step`) and runs
on the same loop (`coke_jax.loop`); the probe's own state is checkpointed in
`<workdir>/checkpoints`, and a run resumes from it exactly.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Optional

from absl import logging
from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from coke_jax import checkpointing
from coke_jax import loop
from coke_jax import models
from coke_jax import sharding
from coke_jax import train
from coke_jax import writers
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from coke_jax.evaluation import features
from coke_jax.evaluation import metrics
from coke_jax.evaluation import restore


def default_config() -> ml_collections.ConfigDict:
  """Settings of the probe, the `linear_eval` section of an evaluation config."""
  c = ml_collections.ConfigDict()
  c.num_epochs = 90            # supp. 2.1 (MoCo v3 protocol)
  c.batch_size = 1024          # supp. 2.1
  c.learning_rate = 0.4        # official run_lincls.sh: 0.2 single view, 0.4 multi-view (batch 1024)
  c.momentum = 0.9             # official eval_lincls.py
  c.weight_decay = 1e-6        # Sec. 4.1
  c.normalize_features = False  # the paper's protocol uses the raw features
  c.augment = ml_collections.ConfigDict()  # train views; the experiment config fills it
  c.pretrain_step = ml_collections.config_dict.placeholder(int)  # None: the latest checkpoint
  c.eval_every_epochs = 10     # held-out top-1 logged during training (0: only at the end)
  c.checkpoint_every_epochs = 1
  c.log_every_steps = 50
  return c


class ProbeState(struct.PyTreeNode):
  """The probe's trainable state; the frozen part (`probe_features`) travels beside it."""
  step: jax.Array
  params: Any      # {"kernel": [F, C], "bias": [C]}
  opt_state: Any


def probe_features(backbone: nn.Module, frozen, images: jax.Array) -> jax.Array:
  """The classifier's input [b, F]: inference-mode backbone features, shifted and scaled.

  frozen: {"backbone": {"params", "batch_stats"}, "shift": [F], "scale": [F]}.
  """
  feats = backbone.apply(frozen["backbone"], images, train=False)
  return (feats - frozen["shift"]) * frozen["scale"]


@dataclasses.dataclass(frozen=True)
class BackboneFeatures:
  """`apply_fn` for `features.embed`: the backbone's inference-mode features."""
  backbone: nn.Module

  def __call__(self, variables, images):
    return {"features": self.backbone.apply(variables, images, train=False)}


@dataclasses.dataclass(frozen=True)
class ProbeLogits:
  """`apply_fn` for `features.embed`: frozen features -> linear classifier, [b, C]."""
  backbone: nn.Module

  def __call__(self, variables, images):
    feats = probe_features(self.backbone, variables["frozen"], images)
    return {"logits": feats @ variables["linear"]["kernel"] + variables["linear"]["bias"]}


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """SGD with momentum, weight decay on weight and bias (as torch's SGD), cosine to 0."""
  schedule = optax.cosine_decay_schedule(config.learning_rate,
                                         max(config.num_epochs * steps_per_epoch, 1))
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(schedule, momentum=config.momentum))
  return tx, schedule


def init_params(rng: jax.Array, num_features: int, num_classes: int) -> dict[str, jax.Array]:
  """Weights ~ N(0, 0.01^2), bias 0 (the official eval_lincls.py)."""
  return {"kernel": 0.01 * jax.random.normal(rng, (num_features, num_classes), jnp.float32),
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def probe_step(state: ProbeState, batch, frozen, *, backbone: nn.Module, tx, schedule,
               augment=None):
  """One SGD step of the classifier on this device's slice of the batch.

  state and `frozen` (as in `probe_features`) are replicated; batch: `images`
  [b, 1, H, W, C] (or what `augment` makes them from), `label` [b], `weight` [b]
  (0 marks padding).
  """
  if augment is not None:
    batch = augment(batch)
  feats = jax.lax.stop_gradient(probe_features(backbone, frozen, batch["images"][:, 0]))
  label, weight = batch["label"], batch["weight"]

  def loss_fn(params):
    logits = feats @ params["kernel"] + params["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
    return sharding.batch_mean(ce, weight), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  correct = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
  metrics = {"loss": loss, "top1": sharding.batch_mean(correct, weight),
             "learning_rate": schedule(state.step)}
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
  return state, metrics


def pipeline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The input pipeline's view of the probe: one augmented view, the probe's batch."""
  pipe = ml_collections.ConfigDict(config.to_dict())
  pipe.global_batch_size = config.linear_eval.batch_size
  pipe.num_views = 1
  pipe.augment = config.linear_eval.augment
  return pipe


def heldout_accuracy(backbone, frozen, params, source, config, mesh) -> dict[str, float]:
  """Top-1 and top-5 of the probe on the un-augmented held-out split."""
  out = features.embed(ProbeLogits(backbone), {"frozen": frozen, "linear": params}, source,
                       "heldout", config.eval_batch_size, mesh)
  ranked = np.argsort(-out["logits"], axis=1, kind="stable")[:, :5]
  return {"top1": metrics.topk_accuracy(ranked, out["label"], 1),
          "top5": metrics.topk_accuracy(ranked, out["label"], 5)}


def feature_transform(backbone, variables, source, config, mesh) -> dict[str, Any]:
  """`frozen` for `probe_features`: the backbone and the identity or the standardization."""
  num_features = jax.eval_shape(lambda v: backbone.apply(
      v, jnp.zeros((1, *source.image_shape)), train=False), variables).shape[-1]
  shift, scale = np.zeros(num_features), np.ones(num_features)
  if config.linear_eval.normalize_features:
    train_feats = features.embed(BackboneFeatures(backbone), variables, source, "train",
                                 config.eval_batch_size, mesh)["features"]
    shift, std = train_feats.mean(0), train_feats.std(0)
    scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)  # constant features: 1
  frozen = {"backbone": variables, "shift": shift.astype(np.float32),
            "scale": scale.astype(np.float32)}
  return jax.device_put(frozen, sharding.replicated(mesh))


def restore_backbone(model, source, config, mesh, pretrain_workdir: str,
                     step: Optional[int] = None) -> tuple[dict[str, Any], int]:
  """The pretrained backbone's {"params", "batch_stats"}, replicated on `mesh`, and its step.

  `step` picks the checkpoint (None: the latest).
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((2, *source.image_shape)), train=False))
  target = {"params": {"model": {"backbone": shapes["params"]["backbone"]}}}
  if "batch_stats" in shapes:
    target["batch_stats"] = {"backbone": shapes["batch_stats"]["backbone"]}
  expected = {"format": checkpointing.FORMAT, "dataset.name": config.dataset.name,
              "model": config.model.to_dict()}
  restored, step = restore.restore(
      pretrain_workdir, target, mesh, checkpointing.json_like(expected), step=step,
      compare=("dataset.name", "model.backbone", "model.backbone_kwargs"))
  variables = {"params": restored["params"]["model"]["backbone"]}
  if "batch_stats" in restored:
    variables["batch_stats"] = restored["batch_stats"]["backbone"]
  return variables, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       pretrain_workdir: Optional[str],
                       stop_at_step: Optional[int] = None) -> Optional[dict[str, Any]]:
  """Trains the probe on the checkpoint in `pretrain_workdir` (None: on the backbone of
  `config.model.init_from`, published weights), writing to `workdir`.

  Runs on the pretraining loop (`coke_jax.loop`: progress and ETA, NaN watch,
  checkpoints of the probe's state, SIGTERM). Returns and writes
  `<workdir>/linear_eval_metrics.json`: held-out top-1/top-5, the pretraining
  checkpoint and step it evaluated. With `stop_at_step`, stops there with a
  checkpoint and returns None (a later call resumes).
  """
  probe = config.linear_eval
  mesh = sharding.make_mesh()
  sharding.check_batch_divides(probe.batch_size, mesh, jax.process_count())
  source = sources.get_source(config.dataset)
  model = models.build_model(config.model)
  if pretrain_workdir is None:  # published weights: config.model.init_from
    variables = jax.device_put(models.backbone_from_file(model, source.image_shape,
                                                         config.model.init_from),
                               sharding.replicated(mesh))
    pretrain_step, evaluated = None, config.model.init_from
  else:
    variables, pretrain_step = restore_backbone(model, source, config, mesh, pretrain_workdir,
                                                probe.pretrain_step)
    evaluated = restore.checkpoint_dir(pretrain_workdir)
  backbone = model.backbone
  source = sources.labeled_train(source)  # the probe trains on labeled images only
  frozen = feature_transform(backbone, variables, source, config, mesh)
  num_features = frozen["shift"].shape[-1]
  steps_per_epoch = input_pipeline.steps_per_epoch(source.num_train, probe.batch_size)
  total = steps_per_epoch * probe.num_epochs
  tx, schedule = make_optimizer(probe, steps_per_epoch)

  def init(rng):
    params = init_params(rng, num_features, source.num_classes)
    return ProbeState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  meta = {"pretrain_checkpoint": evaluated, "pretrain_step": pretrain_step}
  ckpt = checkpointing.Checkpointer(workdir, meta, keep=2, save_interval_steps=(
      steps_per_epoch * probe.checkpoint_every_epochs))
  state, _ = ckpt.restore_or(
      jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(config.seed)))
  writer = writers.create(workdir)
  pipe = pipeline_config(config)
  sharded = sharding.shard_step(
      functools.partial(probe_step, backbone=backbone, tx=tx, schedule=schedule,
                        augment=train.device_augmentation(pipe, source)), mesh, num_consts=1)
  logging.info("Linear probe of %s (step %s): %d features -> %d classes, %d epochs of %d steps "
               "from step %d.", meta["pretrain_checkpoint"], pretrain_step, num_features,
               source.num_classes, probe.num_epochs, steps_per_epoch, int(state.step))

  def end_epoch(state, step):
    done = step // steps_per_epoch
    if probe.eval_every_epochs and step < total and done % probe.eval_every_epochs == 0:
      acc = heldout_accuracy(backbone, frozen, state.params, source, config, mesh)
      writer.write_scalars(step, {f"linear_eval/heldout_{k}": v for k, v in acc.items()})
      logging.info("linear probe epoch %d: held-out top-1 %.4f", done, acc["top1"])
    return state

  state = loop.run(
      state, step_fn=lambda s, b, epoch: sharded(s, b, frozen), mesh=mesh, checkpointer=ckpt,
      writer=writer,
      batches=lambda start, end: (
          {k: v for k, v in b.items() if k != "index"} for b in input_pipeline.train_stream(
              source, pipe, start, end, jax.process_index(), jax.process_count())),
      total_steps=total, steps_per_epoch=steps_per_epoch, global_batch=probe.batch_size,
      log_every_steps=probe.log_every_steps, stop_at_step=stop_at_step, end_epoch=end_epoch,
      prefix="linear_eval/train")
  if int(state.step) < total:
    return None
  acc = heldout_accuracy(backbone, frozen, state.params, source, config, mesh)
  writer.write_scalars(total, {f"linear_eval/heldout_{k}": v for k, v in acc.items()})
  writer.flush()
  results = {**acc, **meta, "num_epochs": probe.num_epochs}
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(workdir, "linear_eval_metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  logging.info("Linear probe: %s", json.dumps(results))
  return results
