"""CoKe as a training objective: its state, its per-step update and its loss.

The math lives in `coke_jax.clustering`; this file only says which quantities
the trainer keeps (one `HeadState` per clustering head, Sec. 4.1.3) and in which
order Alg. 1 and Alg. 2 use them:

  loss   against the previous epoch's labels and centers   (Eq. 12, Alg. 2)
  update assignment (Eq. 8/15) -> duals (Eq. 9) -> centers (Eq. 11), on the
         global batch, identically on every device
  end of epoch: the labels and centers written this epoch become the previous ones.
"""

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from coke_jax import clustering


class HeadState(NamedTuple):
  """Clustering state of one head with K clusters over N training examples."""
  prev_labels: jax.Array   # [N] int32, y^{t-1}: targets of the loss this epoch
  labels: jax.Array        # [N] int32, y^t: written as examples arrive this epoch
  prev_centers: jax.Array  # [K, D] C^{t-1}: the classifier of the loss (Eq. 12)
  centers: jax.Array       # [K, D] C^t_m: running centers used by the assignment (Eq. 11)
  centers_sum: jax.Array   # [K, D] sum of this epoch's members
  counts: jax.Array        # [K] float32, this epoch's cluster sizes so far
  dual: jax.Array          # [K] rho, kept across epochs


@dataclasses.dataclass(frozen=True)
class CoKe:
  """Static settings of the objective (from `config.objective`); holds no arrays."""
  num_clusters: tuple[int, ...]
  num_examples: int
  embed_dim: int
  temperature: float = 0.1      # lambda of Eq. 12
  min_size_ratio: float = 0.4   # gamma' with gamma_k = gamma' N / K (Sec. 4)
  dual_lr: float = 20.0         # eta of Eq. 9
  dual_l1_radius: Optional[float] = None  # tau of Eq. 9; None: max(0, .) of Sec. 4
  alpha: float = 0.2            # weight of the one-hot label in the two-view target (Alg. 2)
  beta: float = 0.5             # weight of the prediction-head loss (supp. 2.2.4)

  def __post_init__(self):
    for k in self.num_clusters:
      if not 1 <= k <= self.num_examples:
        raise ValueError(
            f"objective.num_clusters has K={k}, but there are {self.num_examples} training "
            "examples: every K must be between 1 and the number of examples.")
    if not 0.0 <= self.min_size_ratio <= 1.0:
      raise ValueError(f"objective.min_size_ratio (gamma') is {self.min_size_ratio}; it must be in "
                       "[0, 1] (1 is balanced clustering, the paper uses 0.4).")

  def min_size_frac(self, k: int) -> float:
    """gamma_k / N = gamma' / K."""
    return self.min_size_ratio / k

  def init(self, rng: jax.Array) -> tuple[HeadState, ...]:
    """Random unit-norm centers as in Alg. 1; labels are filled by the epoch-0 scan."""
    heads = []
    for k, key in zip(self.num_clusters, jax.random.split(rng, len(self.num_clusters))):
      centers = clustering.l2_normalize(jax.random.normal(key, (k, self.embed_dim), jnp.float32))
      heads.append(HeadState(
          prev_labels=jnp.zeros((self.num_examples,), jnp.int32),
          labels=jnp.zeros((self.num_examples,), jnp.int32),
          prev_centers=centers,
          centers=centers,
          centers_sum=jnp.zeros_like(centers),
          counts=jnp.zeros((k,), jnp.float32),
          dual=jnp.zeros((k,), jnp.float32)))
    return tuple(heads)

  def loss(self, heads: tuple[HeadState, ...], outputs: dict[str, jax.Array],
           index: jax.Array, epoch: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-example loss and metrics [b] on this device's examples, averaged over heads and views.

    `outputs['proj']` [V, b, D] and optionally `outputs['pred']` [V, b, D] are
    unit-norm. With V >= 2 each view's target mixes the one-hot label with the
    other views' predictions (Alg. 2); the prediction-head loss, if present, is
    weighted by beta (supp. 2.2.4) and shares the projection-head targets.
    """
    proj, pred = outputs["proj"], outputs.get("pred")
    num_views = proj.shape[0]
    per_example, agreement = 0.0, 0.0
    for head, k in zip(heads, self.num_clusters):
      labels = head.prev_labels[index]
      proj_logits = clustering.similarities(proj, head.prev_centers) / self.temperature  # [V, b, K]
      probs = jax.nn.softmax(proj_logits, axis=-1)
      pred_logits = (None if pred is None else
                     clustering.similarities(pred, head.prev_centers) / self.temperature)
      head_loss = 0.0
      for v in range(num_views):
        reference = None
        if num_views > 1:  # mean prediction of the other views (Alg. 2 for V = 2)
          reference = (jnp.sum(probs, axis=0) - probs[v]) / (num_views - 1)
        targets = clustering.soft_targets(labels, k, reference, self.alpha)
        loss_v = clustering.normalized_softmax_loss(proj_logits[v], targets)
        if pred_logits is not None:
          loss_v = (self.beta * clustering.normalized_softmax_loss(pred_logits[v], targets)
                    + (1.0 - self.beta) * loss_v)
        head_loss = head_loss + loss_v / num_views
      per_example = per_example + head_loss / len(heads)
      agreement = agreement + (jnp.argmax(proj_logits[0], -1) == labels) / len(heads)
    return per_example, {"label_agreement": agreement}

  def update(self, heads: tuple[HeadState, ...], embeddings: jax.Array, index: jax.Array,
             weight: jax.Array, epoch: jax.Array
             ) -> tuple[tuple[HeadState, ...], dict[str, jax.Array]]:
    """One step of Alg. 1 on the global batch: assign (Eq. 8/15), duals (Eq. 9), centers (Eq. 11).

    Args:
      embeddings: [V, B, D] unit-norm projections of the whole global batch.
      index: [B] example ids into the label tables.
      weight: [B] 1 for real examples, 0 for padding (not counted, not written).
      epoch: the current epoch (0 is the scan), a traced scalar.
    """
    x = jnp.mean(embeddings.astype(jnp.float32), axis=0)  # Alg. 2's x_mean; Eq. 15
    b = jnp.sum(weight)
    # Padding rows are scattered out of bounds and dropped.
    write_index = jnp.where(weight > 0, index, self.num_examples)
    new_heads, metrics = [], {}
    for h, (head, k) in enumerate(zip(heads, self.num_clusters)):
      sims = clustering.similarities(x, head.centers)
      labels = clustering.assign(sims, head.dual)
      batch_counts = clustering.cluster_counts(labels, weight, k)
      dual = clustering.dual_update(head.dual, batch_counts, b, self.min_size_frac(k),
                                    self.dual_lr, self.dual_l1_radius)
      centers_sum, counts = clustering.accumulate_centers(
          head.centers_sum, head.counts, x, labels, weight)
      centers = clustering.centers_from_sums(centers_sum, counts, head.centers)
      new_heads.append(head._replace(
          labels=head.labels.at[write_index].set(labels, mode="drop"),
          centers=centers, centers_sum=centers_sum, counts=counts, dual=dual))
      metrics[f"dual_max/k{k}_{h}"] = jnp.max(dual)
    return tuple(new_heads), metrics

  def end_epoch(self, heads: tuple[HeadState, ...], epoch: jax.Array
                ) -> tuple[tuple[HeadState, ...], dict[str, Any]]:
    """The epoch's labels and centers become y^{t-1}, C^{t-1}; sums restart (Alg. 1)."""
    new_heads, metrics = [], {}
    for h, (head, k) in enumerate(zip(heads, self.num_clusters)):
      stats = clustering.size_diagnostics(head.counts, self.min_size_frac(k) * self.num_examples)
      metrics.update({f"{name}/k{k}_{h}": value for name, value in stats.items()})
      new_heads.append(head._replace(
          prev_labels=head.labels, prev_centers=head.centers,
          centers_sum=jnp.zeros_like(head.centers_sum), counts=jnp.zeros_like(head.counts)))
    return tuple(new_heads), metrics

  def predict(self, heads: tuple[HeadState, ...], embeddings: jax.Array) -> jax.Array:
    """Cluster of each (held-out) embedding per head: nearest final center, [H, B]."""
    return jnp.stack([jnp.argmax(clustering.similarities(embeddings, head.prev_centers), -1)
                      for head in heads])
