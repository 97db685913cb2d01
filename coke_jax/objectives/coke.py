"""CoKe as a training objective: its state, its per-step update and its loss.

The math lives in `coke_jax.clustering`; this file only says which quantities
the trainer keeps (one `HeadState` per clustering head, Sec. 4.1.3) and in which
order Alg. 1 and Alg. 2 use them:

  scan   epoch 0 is the initialization scan of Sec. 3.3 (`scan_epochs = 1`):
         forward passes collect labels and centers, no gradient step is taken
  loss   against the previous epoch's labels and centers   (Eq. 12, Alg. 2;
         Eq. 14 with averaged labels in the second stage; multi-crop)
  update assignment (Eq. 8/15) -> duals (Eq. 9) -> centers (Eq. 11, or the
         sums of Eq. 10), on the gathered global batch, identically on every device
  end of epoch: the epoch's labels and centers become the previous ones
         (averaged with the earlier ones in the second stage, Eq. 13).

CoKe has no learnable parameters of its own: the centers are running means,
not trained. Epochs are counted with the scan as epoch 0, so `average_after_epoch`
(T') and the `epoch` arguments below are data epochs.
"""

import dataclasses
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from ml_collections import config_dict
import numpy as np

from coke_jax import clustering
from coke_jax import config_rules as r
from coke_jax import errors
from coke_jax import sharding
from coke_jax.objectives import base


class HeadState(NamedTuple):
  """Clustering state of one head with K clusters over N training examples."""
  prev_labels: jax.Array   # [N] int32, y^{t-1}: targets of the loss this epoch
  labels: jax.Array        # [N] int32, y^t: written as examples arrive this epoch
  prev_centers: jax.Array  # [K, D] C^{t-1} (C_hat^{t-1} in the second stage): the loss's classifier
  centers: jax.Array       # [K, D] centers of the assignment: running (Eq. 11) or fixed (Eq. 10)
  centers_sum: jax.Array   # [K, D] sum of this epoch's members
  counts: jax.Array        # [K] float32, this epoch's cluster sizes so far
  dual: jax.Array          # [K] rho, kept across epochs
  # Sparse averaged labels y_hat^{t-1} of Eq. 13 (supp. 2.2.2); None without the second stage.
  avg_label_ids: Optional[jax.Array] = None      # [N, S] int32 clusters
  avg_label_weights: Optional[jax.Array] = None  # [N, S] their weights (0: unused slot)


@dataclasses.dataclass(frozen=True)
class CoKe(base.Objective):
  """Static settings of the objective (from `config.objective`); holds no arrays."""
  num_clusters: tuple[int, ...]
  num_examples: int
  embed_dim: int
  temperature: float = 0.1      # lambda of Eq. 12
  min_size_ratio: float = 0.4   # gamma' with gamma_k = gamma' N / K (Sec. 4)
  # Per-cluster gamma'_k, one tuple of K values per head (Eq. 5); () uses min_size_ratio.
  min_size_ratios: tuple[tuple[float, ...], ...] = ()
  dual_lr: Union[float, tuple[float, ...]] = 20.0  # eta of Eq. 9; a tuple: one per head
  dual_l1_radius: Optional[float] = None  # tau of Eq. 9; None: max(0, .) of Sec. 4
  alpha: float = 0.2            # weight of the one-hot label in the two-view target (Alg. 2)
  beta: float = 0.5             # weight of the prediction-head loss (supp. 2.2.4)
  center_update: str = "batch"  # "batch": Eq. 11 after every mini-batch; "epoch": Eq. 10
  average_after_epoch: Optional[int] = None  # T' of Eq. 13; None: one-stage training
  avg_label_size: int = 5       # non-zero entries kept per averaged label (supp. 2.2.2)
  avg_label_temperature: float = 0.5  # lambda' of the averaged label's softmax (supp. 2.2.2)
  multicrop_beta: float = 0.5   # weight of the large views against the small crops

  scan_epochs = 1  # the initialization scan of Sec. 3.3

  def __post_init__(self):
    for k in self.num_clusters:
      if not 1 <= k <= self.num_examples:
        raise errors.ConfigError(
            f"objective.num_clusters has K={k}, but there are {self.num_examples} training "
            "examples: every K must be between 1 and the number of examples.")
    if not 0.0 <= self.min_size_ratio <= 1.0:
      raise errors.ConfigError(
          f"objective.min_size_ratio (gamma') is {self.min_size_ratio}; it must be in "
          "[0, 1] (1 is balanced clustering, the paper uses 0.4).")
    if self.min_size_ratios and len(self.min_size_ratios) != len(self.num_clusters):
      raise errors.ConfigError(
          f"objective.min_size_ratios has {len(self.min_size_ratios)} entries but "
          f"there are {len(self.num_clusters)} heads {self.num_clusters}: give one "
          "tuple of K per-cluster ratios per head, or () for min_size_ratio.")
    for h in range(len(self.num_clusters)):
      self.min_size_fracs(h)  # validates per-cluster bounds
    if self.center_update not in ("batch", "epoch"):
      raise errors.ConfigError(
          f"objective.center_update is {self.center_update!r}; use 'batch' (Eq. 11) "
          "or 'epoch' (Eq. 10).")
    if self.average_after_epoch is not None and self.average_after_epoch < 0:
      raise errors.ConfigError(
          f"objective.average_after_epoch (T') is {self.average_after_epoch}; use "
          "an epoch >= 0 or None for one-stage training.")
    if self.avg_label_size < 1 or self.avg_label_temperature <= 0:
      raise errors.ConfigError(
          f"objective.avg_label_size ({self.avg_label_size}) must be >= 1 and "
          f"avg_label_temperature ({self.avg_label_temperature}) > 0.")
    if isinstance(self.dual_lr, tuple) and len(self.dual_lr) != len(self.num_clusters):
      raise errors.ConfigError(
          f"objective.dual_lrs has {len(self.dual_lr)} values for "
          f"{len(self.num_clusters)} heads {self.num_clusters}; give one eta per "
          "head, or () to use objective.dual_lr for all.")
    for name in ("alpha", "beta", "multicrop_beta"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise errors.ConfigError(
            f"objective.{name} is {getattr(self, name)}; it must be in [0, 1].")

  def min_size_fracs(self, head: int) -> np.ndarray:
    """gamma_k / N of every cluster of head `head`, [K]."""
    ratio = self.min_size_ratios[head] if self.min_size_ratios else self.min_size_ratio
    return clustering.min_size_fractions(self.num_clusters[head], ratio)

  def head_dual_lr(self, head: int) -> float:
    return self.dual_lr[head] if isinstance(self.dual_lr, tuple) else self.dual_lr

  @property
  def averaging(self) -> bool:
    return self.average_after_epoch is not None

  def init(self, rng: jax.Array, model_variables=None, output_shapes=None
           ) -> tuple[dict, tuple[HeadState, ...]]:
    """No parameters; random unit-norm centers as in Alg. 1 (labels come from the scan)."""
    del model_variables, output_shapes
    heads = []
    for k, key in zip(self.num_clusters, jax.random.split(rng, len(self.num_clusters))):
      centers = clustering.l2_normalize(jax.random.normal(key, (k, self.embed_dim), jnp.float32))
      online = clustering.init_online_state(centers)
      avg = {}
      if self.averaging:  # the one-hot of the (all-zero) initial labels
        shape = (self.num_examples, self.avg_label_size)
        avg = dict(avg_label_ids=jnp.zeros(shape, jnp.int32),
                   avg_label_weights=jnp.zeros(shape, jnp.float32).at[:, 0].set(1.0))
      heads.append(HeadState(
          prev_labels=jnp.zeros((self.num_examples,), jnp.int32),
          labels=jnp.zeros((self.num_examples,), jnp.int32),
          prev_centers=centers, **online._asdict(), **avg))
    return {}, tuple(heads)

  def _label_dist(self, head: HeadState, k: int, index: jax.Array) -> jax.Array:
    """y^{t-1} of the examples `index` as a distribution [b, K]: one-hot (Eq. 12) or the
    sharpened averaged label (Eq. 14, supp. 2.2.2), which is one-hot in the first stage."""
    if not self.averaging:
      return jax.nn.one_hot(head.prev_labels[index], k, dtype=jnp.float32)
    return clustering.sparse_soft_labels(head.avg_label_ids[index], head.avg_label_weights[index],
                                         k, self.avg_label_temperature)

  def loss(self, params, heads, outputs, batch, ctx):
    """The global mean of `per_example_loss` over the real rows, and the label agreement."""
    del params, ctx
    per_example, agreement = self.per_example_loss(heads, outputs, batch["index"])
    weight = batch["weight"]
    return sharding.batch_mean(per_example, weight), (
        heads, {"label_agreement": sharding.batch_mean(agreement, weight)})

  def per_example_loss(self, heads: tuple[HeadState, ...], outputs: dict[str, jax.Array],
                       index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss [b] on this device's examples, averaged over heads and views, and whether the
    first view's nearest previous center is the example's previous label [b].

    `outputs['proj']` [V, b, D] and optionally `outputs['pred']` [V, b, D] are
    unit-norm. With V >= 2 each view's target mixes the label with the mean
    softmax of the other views' projections (Alg. 2); the prediction-head
    loss, if present, is weighted by beta (supp. 2.2.4) and uses the same
    targets. Multi-crop (`proj_small`/`pred_small` [S, b, D]): each small crop's
    target mixes the label with the mean softmax of all large views'
    projections, and the loss is multicrop_beta * large + (1 - multicrop_beta)
    * small, as in the official multi-view code; small crops never enter the
    assignment.
    """
    proj, pred = outputs["proj"], outputs.get("pred")
    proj_small, pred_small = outputs.get("proj_small"), outputs.get("pred_small")
    num_views = proj.shape[0]
    per_example, agreement = 0.0, 0.0
    for head, k in zip(heads, self.num_clusters):
      label_dist = self._label_dist(head, k, index)                                # [b, K]
      proj_logits = clustering.similarities(proj, head.prev_centers) / self.temperature  # [V, b, K]
      probs = jax.nn.softmax(proj_logits, axis=-1)
      pred_logits = (None if pred is None else
                     clustering.similarities(pred, head.prev_centers) / self.temperature)

      def view_loss(v_proj_logits, v_pred_logits, targets):
        loss = clustering.normalized_softmax_loss(v_proj_logits, targets)
        if v_pred_logits is None:
          return loss
        return (self.beta * clustering.normalized_softmax_loss(v_pred_logits, targets)
                + (1.0 - self.beta) * loss)

      head_loss = 0.0
      for v in range(num_views):
        reference = None
        if num_views > 1:  # mean prediction of the other views (Alg. 2 for V = 2)
          reference = (jnp.sum(probs, axis=0) - probs[v]) / (num_views - 1)
        targets = clustering.soft_targets(label_dist, reference, self.alpha)
        head_loss = head_loss + view_loss(proj_logits[v], None if pred_logits is None
                                          else pred_logits[v], targets) / num_views
      if proj_small is not None:
        targets = clustering.soft_targets(label_dist, jnp.mean(probs, axis=0), self.alpha)
        small_proj = clustering.similarities(proj_small, head.prev_centers) / self.temperature
        small_pred = (None if pred_small is None else
                      clustering.similarities(pred_small, head.prev_centers) / self.temperature)
        num_small = proj_small.shape[0]
        small_loss = sum(view_loss(small_proj[s], None if small_pred is None else small_pred[s],
                                   targets) for s in range(num_small)) / num_small
        head_loss = self.multicrop_beta * head_loss + (1.0 - self.multicrop_beta) * small_loss
      per_example = per_example + head_loss / len(heads)
      agreement = agreement + (
          jnp.argmax(proj_logits[0], -1) == head.prev_labels[index]) / len(heads)
    return per_example, agreement

  def _batch_centers(self, epoch: jax.Array) -> jax.Array:
    """Eq. 11 (per mini-batch) or Eq. 10 (per epoch, always so in the second stage)."""
    per_batch = jnp.bool_(self.center_update == "batch")
    if self.averaging:
      per_batch = per_batch & (epoch <= self.average_after_epoch)
    return per_batch

  def update(self, params, heads, outputs, batch, ctx):
    """Alg. 1 on the gathered global batch, the same on every device (`update_global`)."""
    heads, metrics = self.update_global(
        heads, sharding.gather(outputs["proj"], axis=1), sharding.gather(batch["index"]),
        sharding.gather(batch["weight"]), ctx.epoch)
    return params, heads, metrics

  def update_global(self, heads: tuple[HeadState, ...], embeddings: jax.Array,
                    index: jax.Array, weight: jax.Array, epoch: jax.Array
                    ) -> tuple[tuple[HeadState, ...], dict[str, jax.Array]]:
    """One step of Alg. 1 on the global batch: assign (Eq. 8/15), duals (Eq. 9), centers.

    Args:
      embeddings: [V, B, D] unit-norm projections of the whole global batch.
      index: [B] example ids into the label tables.
      weight: [B] 1 for real examples, 0 for padding (not counted, not written).
      epoch: the current epoch (0 is the scan), a traced scalar.
    """
    x = jnp.mean(clustering.full_precision(embeddings), axis=0)  # Alg. 2's x_mean; Eq. 15
    # Padding rows are scattered out of bounds and dropped.
    write_index = jnp.where(weight > 0, index, self.num_examples)
    batch_centers = self._batch_centers(epoch)
    new_heads, metrics = [], {}
    for h, (head, k) in enumerate(zip(heads, self.num_clusters)):
      online = clustering.OnlineState(head.centers, head.centers_sum, head.counts, head.dual)
      online, labels = clustering.online_step(
          online, x, weight, min_size_frac=jnp.asarray(self.min_size_fracs(h)),
          dual_lr=self.head_dual_lr(h), dual_l1_radius=self.dual_l1_radius,
          batch_centers=batch_centers)
      new_heads.append(head._replace(
          labels=head.labels.at[write_index].set(labels, mode="drop"), **online._asdict()))
      metrics[f"dual_max/k{k}_{h}"] = jnp.max(online.dual)
    return tuple(new_heads), metrics

  def end_epoch(self, params, heads: tuple[HeadState, ...], epoch: jax.Array, rng=None
                ) -> tuple[tuple[HeadState, ...], dict[str, Any]]:
    """Epoch t ends: y^t, C^t become the loss's targets and classifier for t + 1 (Alg. 1);
    from T' on they are averaged into y_hat^t, C_hat^t (Eq. 13). Sums restart."""
    del params, rng
    factor = clustering.average_factor(epoch, self.average_after_epoch)
    new_heads, metrics = [], {}
    for h, (head, k) in enumerate(zip(heads, self.num_clusters)):
      stats = clustering.size_diagnostics(head.counts, self.min_size_fracs(h) * self.num_examples)
      metrics.update({f"{name}/k{k}_{h}": value for name, value in stats.items()})
      online = clustering.OnlineState(head.centers, head.centers_sum, head.counts, head.dual)
      centers = clustering.epoch_centers(online)
      avg = {}
      if self.averaging:
        centers = clustering.average_centers(head.prev_centers, centers, factor)
        ids, weights = clustering.average_sparse_labels(
            head.avg_label_ids, head.avg_label_weights, head.labels, factor)
        avg = dict(avg_label_ids=ids, avg_label_weights=weights)
      # The second stage assigns with the averaged centers all epoch (official code).
      online = clustering.start_epoch(online, centers)
      new_heads.append(head._replace(prev_labels=head.labels, prev_centers=centers,
                                     **online._asdict(), **avg))
    return tuple(new_heads), metrics

  def eval_heads(self, params, heads: tuple[HeadState, ...]) -> list[base.EvalHead]:
    """Per head: nearest final center C^{t-1} (no duals), the last epoch's labels y^{t-1} and
    the bound gamma = gamma' N / K (its smallest when the bounds differ per cluster)."""
    del params
    return [base.linear_head(base.head_name(k, h), "proj", head.prev_centers,
                             train_labels=np.asarray(head.prev_labels),
                             size_bound=float(np.min(self.min_size_fracs(h))) * self.num_examples)
            for h, (head, k) in enumerate(zip(heads, self.num_clusters))]

  def fingerprint(self) -> dict[str, Any]:
    return {"num_clusters": list(self.num_clusters), "embed_dim": self.embed_dim,
            "average_after_epoch": self.average_after_epoch,
            "avg_label_size": self.avg_label_size}


# What each key of the section may hold (config_base.validate); the checks that need two
# keys or the data are in __post_init__.
RULES = {
    "num_clusters": r.each(r.integer(1, 1 << 24)),
    "temperature": r.positive(),
    "min_size_ratio": r.PROBABILITY,
    "min_size_ratios": r.each(r.each(r.PROBABILITY), min_length=0),
    "dual_lr": r.positive(optional=True),
    "dual_lrs": r.each(r.positive(), min_length=0),
    "dual_l1_radius": r.positive(optional=True),
    "alpha": r.PROBABILITY,
    "beta": r.PROBABILITY,
    "center_update": r.one_of("batch", "epoch"),
    "average_after_epoch": r.integer(0, 1 << 24, optional=True),
    "avg_label_size": r.integer(1, 1 << 24),
    "avg_label_temperature": r.positive(),
    "multicrop_beta": r.PROBABILITY,
}


def default_config() -> config_dict.ConfigDict:
  """`config.objective` for CoKe: every key with its default (the paper's ImageNet values)."""
  c = config_dict.ConfigDict()
  c.name = "coke"
  c.num_clusters = (3000, 4000, 5000)  # one head per K (Sec. 4.1.3)
  c.temperature = 0.1        # lambda of Eq. 12
  c.min_size_ratio = 0.4     # gamma' (Table 1)
  c.min_size_ratios = ()     # per-cluster gamma'_k (Eq. 5): a K-tuple per head; (): above
  # eta of Eq. 9 (Sec. 4); None: clustering.default_dual_lr per head (K, batch, N x epochs)
  c.dual_lr = config_dict.FieldReference(20.0, field_type=float)
  c.dual_lrs = ()            # one eta per head (K grows: eta grows); (): dual_lr above
  c.dual_l1_radius = config_dict.placeholder(float)  # tau of Eq. 9; None: max(0, .)
  c.alpha = 0.2              # one-hot weight of the two-view soft label (supp. Table 3)
  c.beta = 0.5               # prediction-head loss weight (supp. Table 4)
  c.center_update = "batch"  # batch: Eq. 11 each mini-batch | epoch: Eq. 10 once an epoch
  c.average_after_epoch = config_dict.placeholder(int)  # T' of Eq. 13; None: one stage
  c.avg_label_size = 5       # non-zero entries of an averaged label (supp. 2.2.2)
  c.avg_label_temperature = 0.5  # lambda' of the averaged label's softmax (supp. 2.2.2)
  c.multicrop_beta = 0.5     # large views vs small crops (official main_multi_view.py)
  return c


def build(config, num_examples: int) -> CoKe:
  obj = config.objective
  dual_lr = tuple(float(eta) for eta in obj.dual_lrs) or obj.dual_lr
  if dual_lr is None:  # the rule of clustering.default_dual_lr, per head, over the whole run
    dual_lr = tuple(clustering.default_dual_lr(k, config.global_batch_size,
                                               num_examples * (config.num_epochs + 1))
                    for k in obj.num_clusters)
  return CoKe(num_clusters=tuple(obj.num_clusters), num_examples=num_examples,
              embed_dim=config.model.embed_dim, temperature=obj.temperature,
              min_size_ratio=obj.min_size_ratio, dual_lr=dual_lr,
              dual_l1_radius=obj.dual_l1_radius, alpha=obj.alpha, beta=obj.beta,
              min_size_ratios=tuple(tuple(r) for r in obj.min_size_ratios),
              center_update=obj.center_update, average_after_epoch=obj.average_after_epoch,
              avg_label_size=obj.avg_label_size,
              avg_label_temperature=obj.avg_label_temperature,
              multicrop_beta=obj.multicrop_beta)
