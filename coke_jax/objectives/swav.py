"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn codes, as an objective.

Notation (SwAV Sec. 3): z_t is the unit-norm projection of crop t [b, D], C the
prototypes [K, D] with unit rows, s_t = z_t C^T the scores [b, K].

  prediction  p_t = softmax(s_t / tau)                                     (Eq. 2)
  codes       q_t = argmax_{Q in the transportation polytope} Tr(Q^T S) + eps H(Q),
              approximated by 3 Sinkhorn-Knopp iterations, under stop-gradient  (Eq. 3)
  loss        for each assignment crop i, the mean over every other crop v
              (small crops included) of -sum_k q_i^(k) log p_v^(k), averaged over
              the assignment crops ("swapped prediction", Eq. 1)

What the official code (facebookresearch/swav, main_swav.py) does and this file
does too: Sinkhorn's marginals run over the *global* batch (sums over samples
all-reduced; here `sharding.batch_sum`, so padding rows count nowhere and B is
the number of real rows), plus a queue of earlier batches' embeddings when one
is configured (scored with the current prototypes, used from
`queue_start_epoch` once full, the batch pushed after its codes are computed);
the prototypes are re-normalized every step (here: after each update, and at
init) and kept fixed, optimizer state and weight decay included, for their
first `freeze_prototypes_epochs`. Several prototype sets (`num_prototypes`,
one head each, losses averaged) are an extension for evaluating a K = 10 head
beside larger ones, as CoKe's multi-clustering. A collapsed run has a loss at
ln K; the epoch end reports the loss over ln K for the collapse monitor.
"""

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
from ml_collections import config_dict
import numpy as np

from coke_jax import clustering
from coke_jax import config_rules as r
from coke_jax import errors
from coke_jax import sharding
from coke_jax.data import order
from coke_jax.objectives import base


def sinkhorn(scores: jax.Array, weight: jax.Array, queue_scores: Optional[jax.Array] = None,
             queue_weight: Optional[jax.Array] = None, *, epsilon: float,
             iterations: int) -> jax.Array:
  """Eq. 3's codes [b, K] of this device's rows, by Sinkhorn-Knopp over the global batch.

  The samples are this device's rows (`scores` [b, K], `weight` [b]) together
  with every other device's (through `sharding.batch_sum`) and the queue's
  (`queue_scores` [L, K], replicated, `queue_weight` [L]); rows of weight 0
  count nowhere. Starting from exp(S / eps) normalized to total mass 1, each
  iteration scales every prototype's mass to 1/K, then every sample's to 1/B
  (B: the number of real samples); the codes are the final rows times B, so
  each sample's code sums to 1, while the prototype marginals are only
  approximately 1/K after few iterations (by design, as in the paper).
  With |s| <= 1 (unit vectors) exp(s / eps) cannot overflow float32 for eps >= 0.012,
  so no shift is needed (a global one would not change the result).
  """
  q = jnp.exp(lax.stop_gradient(clustering.full_precision(scores)) / epsilon)       # [b, K]
  with_queue = queue_scores is not None
  qq = (jnp.exp(lax.stop_gradient(clustering.full_precision(queue_scores)) / epsilon)
        if with_queue else None)

  def per_prototype(q, qq):  # [K]: sum over every real sample
    total = sharding.batch_sum(q, weight)
    return total if qq is None else total + jnp.tensordot(queue_weight.astype(qq.dtype), qq, 1)

  num_samples = sharding.batch_sum(jnp.ones_like(weight, q.dtype), weight)
  if with_queue:
    num_samples = num_samples + jnp.sum(queue_weight)
  mass = jnp.sum(per_prototype(q, qq))
  q = q / mass
  qq = None if qq is None else qq / mass
  num_prototypes = q.shape[-1]
  for _ in range(iterations):
    rows = per_prototype(q, qq) * num_prototypes                         # prototypes -> 1/K
    q = q / rows
    q = q / (jnp.sum(q, axis=-1, keepdims=True) * num_samples)           # samples -> 1/B
    if qq is not None:
      qq = qq / rows
      qq = qq / (jnp.sum(qq, axis=-1, keepdims=True) * num_samples)
  return q * num_samples


class SwAVState(NamedTuple):
  """This epoch's statistics per prototype set, and the queue (None without one)."""
  counts: tuple[jax.Array, ...]  # per head [K]: this epoch's nearest-prototype counts
  loss_sum: jax.Array       # [H] this epoch's loss per head, summed over real rows
  num_rows: jax.Array       # real rows this epoch
  queue: Optional[jax.Array] = None         # [A, L, D] earlier batches' embeddings, per
                                            # assignment crop
  queue_weight: Optional[jax.Array] = None  # [A, L] 1 for a real row, 0 for padding or empty
  queue_filled: Optional[jax.Array] = None  # rows pushed so far, capped at L (int32)


@dataclasses.dataclass(frozen=True)
class SwAV(base.Objective):
  """Static settings (from `config.objective`); the prototypes are parameters."""
  num_prototypes: tuple[int, ...]
  embed_dim: int
  num_views: int                      # large crops; small crops come after them
  freeze_prototypes_steps: int = 0    # optimizer steps with the prototypes fixed
  temperature: float = 0.1            # tau of Eq. 2
  epsilon: float = 0.05               # eps of Eq. 3
  sinkhorn_iterations: int = 3
  assign_views: tuple[int, ...] = (0, 1)  # the crops whose codes are predicted
  queue_length: int = 0               # L, a multiple of the global batch (0: no queue)
  queue_start_epoch: int = 15

  def __post_init__(self):
    if not self.num_prototypes or min(self.num_prototypes) < 1:
      raise errors.ConfigError(
          f"objective.num_prototypes is {self.num_prototypes}; give one K >= 1 per head, "
          "e.g. (3000,).")
    if not self.assign_views or not set(self.assign_views) <= set(range(self.num_views)):
      raise errors.ConfigError(
          f"objective.assign_views is {self.assign_views}, but there are {self.num_views} "
          f"large views: name some of the views 0..{self.num_views - 1} (SwAV uses (0, 1)).")
    for name in ("temperature", "epsilon"):
      if not getattr(self, name) > 0:
        raise errors.ConfigError(f"objective.{name} is {getattr(self, name)}; it must be > 0.")
    if self.epsilon < 0.012:
      raise errors.ConfigError(
          f"objective.epsilon is {self.epsilon}; below 0.012 exp(1 / eps) overflows float32 "
          "in Sinkhorn. SwAV uses 0.05 (0.03 against collapse).")
    if self.sinkhorn_iterations < 1 or self.queue_length < 0:
      raise errors.ConfigError(
          f"objective.sinkhorn_iterations ({self.sinkhorn_iterations}) must be >= 1 and "
          f"objective.queue_length ({self.queue_length}) >= 0.")

  def _names(self):
    return [base.head_name(k, h) for h, k in enumerate(self.num_prototypes)]

  def init(self, rng, model_variables=None, output_shapes=None):
    del model_variables, output_shapes
    keys = jax.random.split(rng, len(self.num_prototypes))
    prototypes = {name: clustering.l2_normalize(
        jax.random.normal(key, (k, self.embed_dim), jnp.float32))
                  for name, k, key in zip(self._names(), self.num_prototypes, keys)}
    queue = {}
    if self.queue_length:
      num_assign, length = len(self.assign_views), self.queue_length
      queue = dict(queue=jnp.zeros((num_assign, length, self.embed_dim), jnp.float32),
                   queue_weight=jnp.zeros((num_assign, length), jnp.float32),
                   queue_filled=jnp.zeros((), jnp.int32))
    state = SwAVState(counts=tuple(jnp.zeros((k,), jnp.float32) for k in self.num_prototypes),
                      loss_sum=jnp.zeros((len(self.num_prototypes),), jnp.float32),
                      num_rows=jnp.zeros((), jnp.float32), **queue)
    return {"prototypes": prototypes}, state

  def _use_queue(self, state, epoch):
    """The queue takes part from `queue_start_epoch` on, once it is full."""
    if not self.queue_length:
      return jnp.bool_(False)
    return (epoch >= self.queue_start_epoch) & (state.queue_filled >= self.queue_length)

  def loss(self, params, state, outputs, batch, ctx):
    weight = batch["weight"]
    crops = outputs["proj"]
    if "proj_small" in outputs:
      crops = jnp.concatenate([crops, outputs["proj_small"]], axis=0)      # [T, b, D]
    num_crops = crops.shape[0]
    use_queue = self._use_queue(state, ctx.epoch)
    per_example, head_losses, counts = 0.0, [], []
    for h, name in enumerate(self._names()):
      prototypes = params["prototypes"][name]
      scores = clustering.similarities(crops, prototypes)                  # [T, b, K]
      log_p = jax.nn.log_softmax(scores / self.temperature, axis=-1)
      head_loss = 0.0
      for a, i in enumerate(self.assign_views):
        queue_scores = queue_weight = None
        if self.queue_length:  # scored with the current prototypes (official main_swav.py)
          queue_scores = clustering.similarities(state.queue[a], prototypes)
          queue_weight = state.queue_weight[a] * use_queue
        codes = sinkhorn(scores[i], weight, queue_scores, queue_weight, epsilon=self.epsilon,
                         iterations=self.sinkhorn_iterations)
        others = [v for v in range(num_crops) if v != i]
        head_loss = head_loss + sum(-jnp.sum(codes * log_p[v], -1) for v in others) / len(
            others)
      head_loss = head_loss / len(self.assign_views)
      per_example = per_example + head_loss / len(self.num_prototypes)
      head_losses.append(sharding.batch_sum(head_loss, weight))
      nearest = jax.nn.one_hot(jnp.argmax(scores[0], -1), prototypes.shape[0])
      counts.append(sharding.batch_sum(lax.stop_gradient(nearest), weight))
    state = state._replace(
        counts=tuple(c + n for c, n in zip(state.counts, counts)),
        loss_sum=state.loss_sum + lax.stop_gradient(jnp.stack(head_losses)),
        num_rows=state.num_rows + sharding.batch_sum(jnp.ones_like(weight), weight))
    return sharding.batch_mean(per_example, weight), (state, {"queue_used": use_queue * 1.0})

  def _learning(self, ctx):
    return ctx.train_step >= self.freeze_prototypes_steps

  def trainable(self, params, ctx):
    return jax.tree_util.tree_map(lambda _: self._learning(ctx), params)

  def update(self, params, state, outputs, batch, ctx):
    """Prototypes back on the unit sphere (when they moved: a fixed one stays bit for bit);
    the global batch pushed into the queue."""
    params = {"prototypes": jax.tree_util.tree_map(
        lambda c: jnp.where(self._learning(ctx), clustering.l2_normalize(c), c),
        params["prototypes"])}
    if self.queue_length:
      new = sharding.gather(outputs["proj"][np.asarray(self.assign_views)], axis=1)  # [A, B, D]
      new_weight = sharding.gather(batch["weight"])                                    # [B]
      rows = new.shape[1]
      push = ctx.epoch >= self.queue_start_epoch
      queue = jnp.concatenate([new, state.queue[:, :-rows]], axis=1)
      queue_weight = jnp.concatenate(
          [jnp.broadcast_to(new_weight, (len(self.assign_views), rows)),
           state.queue_weight[:, :-rows]], axis=1)
      state = state._replace(
          queue=jnp.where(push, queue, state.queue),
          queue_weight=jnp.where(push, queue_weight, state.queue_weight),
          queue_filled=jnp.where(push, jnp.minimum(state.queue_filled + rows, self.queue_length),
                                 state.queue_filled))
    return params, state, {}

  def end_epoch(self, params, state, epoch, rng=None):
    del params, epoch, rng
    metrics = {}
    rows = jnp.maximum(state.num_rows, 1.0)
    for h, (name, k) in enumerate(zip(self._names(), self.num_prototypes)):
      for key, value in clustering.size_diagnostics(state.counts[h], 0.0).items():
        metrics[f"{key}/{name}"] = value
      # ln K is the loss of a collapsed run (all codes and predictions uniform).
      metrics[f"loss_vs_uniform/{name}"] = state.loss_sum[h] / rows / math.log(max(k, 2))
    state = state._replace(counts=tuple(jnp.zeros_like(c) for c in state.counts),
                           loss_sum=jnp.zeros_like(state.loss_sum),
                           num_rows=jnp.zeros_like(state.num_rows))
    return state, metrics

  def eval_heads(self, params, state) -> list[base.EvalHead]:
    del state
    return [base.linear_head(name, "proj", params["prototypes"][name])
            for name in self._names()]

  def fingerprint(self) -> dict[str, Any]:
    return {"num_prototypes": list(self.num_prototypes), "embed_dim": self.embed_dim,
            "assign_views": list(self.assign_views), "queue_length": self.queue_length}


# What each key of the section may hold (config_base.validate); the checks that need two
# keys or the data are in __post_init__.
RULES = {
    "num_prototypes": r.each(r.integer(1, 1 << 24)),
    "temperature": r.positive(),
    "epsilon": r.positive(),
    "sinkhorn_iterations": r.integer(1, 10_000),
    "assign_views": r.each(r.integer(0, 31)),
    "freeze_prototypes_epochs": r.real(0, 1 << 24),
    "queue_length": r.integer(0, 1 << 24),
    "queue_start_epoch": r.integer(0, 1 << 24),
}


def default_config() -> config_dict.ConfigDict:
  """`config.objective` for SwAV: the official ImageNet defaults (main_swav.py, README)."""
  c = config_dict.ConfigDict()
  c.name = "swav"
  c.num_prototypes = (3000,)        # K (main_swav.py --nmb_prototypes)
  c.temperature = 0.1               # tau of Eq. 2
  c.epsilon = 0.05                  # eps of Eq. 3
  c.sinkhorn_iterations = 3
  c.assign_views = (0, 1)           # crops_for_assign: the two large crops
  # Prototypes fixed for the first steps (official: 313 iterations, one epoch at batch 4096).
  c.freeze_prototypes_epochs = 1.0
  c.queue_length = 0                # official: 3840 for batch 256, none at 4096
  c.queue_start_epoch = 15          # epoch_queue_starts
  return c


def build(config, num_examples: int) -> SwAV:
  obj = config.objective
  steps_per_epoch = order.steps_per_epoch(num_examples, config.global_batch_size)
  if obj.freeze_prototypes_epochs < 0:
    raise errors.ConfigError(
        f"objective.freeze_prototypes_epochs is {obj.freeze_prototypes_epochs}; it must be "
        ">= 0 (SwAV: 1).")
  # The official code keeps whole global batches in the queue (main_swav.py).
  queue_length = obj.queue_length - obj.queue_length % config.global_batch_size
  return SwAV(num_prototypes=tuple(obj.num_prototypes), embed_dim=config.model.embed_dim,
              num_views=config.num_views,
              freeze_prototypes_steps=int(round(obj.freeze_prototypes_epochs * steps_per_epoch)),
              temperature=obj.temperature, epsilon=obj.epsilon,
              sinkhorn_iterations=obj.sinkhorn_iterations,
              assign_views=tuple(obj.assign_views), queue_length=queue_length,
              queue_start_epoch=obj.queue_start_epoch)
