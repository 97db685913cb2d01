"""Local Aggregation (Zhuang, Zhai & Yamins, ICCV 2019) as an objective.

The main paper is not among the seeds; its supplementary is (`003_…`), and the objective is
the official TF code's (neuroailab/LocalAggregation, `instance_model.py`), as restated in
`../shared/reference/baselines.md` §4 (the maintainers confirm it is the paper's Eq. 3).

  v_i = the unit embedding of image i (the model's `proj`); V the memory bank [N, D] of unit
        vectors, one per training image, a constant for the loss (state, not trained);
  P(j | v) = exp(V_j . v / tau) / Z, P(A | v) = sum_{j in A} P(j | v)   (non-parametric
        softmax; Z cancels below);
  B_i  = the k bank rows most similar to v_i ("background neighbours", own row included);
  C_i  = the images that share a cluster with i in any of H k-means clusterings of the
        bank ("close neighbours"; supp. Sec. 1: H clusterings of m clusters each);
  L_i  = -log( P(C_i and B_i | v_i) / P(B_i | v_i) + 1e-7 )               (paper Eq. 3)

After each step the bank rows of the step's images move towards their new embeddings,
V_i <- normalize(m V_i + (1 - m) v_i), m = 0.5, from the gathered global batch (padding
rows write nothing). At the end of every epoch the bank is clustered again (`lloyd_kmeans`,
in JAX on the accelerator; the official code runs FAISS's k-means, 20 iterations from a
random sample of the rows). Before the first clustering every image is its own cluster
(C_i = {i}, as in the official code) and the image's own bank row always counts among its
background neighbours, so the loss is instance recognition (NPID's non-parametric softmax over
the neighbours): the warm-up the method starts from (`warmup_epochs`; the official run trains
instance recognition for 10 epochs, with NCE over 4096 noise samples instead). With several views per image
the loss averages over views and the bank takes their mean (an extension: LA uses one view).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from ml_collections import config_dict
import numpy as np

from coke_jax import clustering
from coke_jax import config_rules as r
from coke_jax import errors
from coke_jax import sharding
from coke_jax.objectives import base


def lloyd_kmeans(key: jax.Array, x: jax.Array, num_clusters: int, iterations: int = 20,
                 chunk_rows: int = 4096) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means of the rows x [N, D] (squared Euclidean distance): (labels [N],
  centroids [m, D]), from `num_clusters` distinct random rows.

  The assignment runs over chunks of `chunk_rows` rows, so memory stays at
  chunk_rows x m scores (ImageNet's N = 1.28M, m = 30,000 in 0.5 GB chunks); a
  cluster that loses all its rows keeps its centroid.
  """
  n, dim = x.shape
  x = clustering.full_precision(x)
  centroids = x[jax.random.choice(key, n, (num_clusters,), replace=False)]
  padded = -(-n // chunk_rows) * chunk_rows
  chunks = jnp.pad(x, ((0, padded - n), (0, 0))).reshape(-1, min(chunk_rows, padded), dim)

  def assign(centroids):
    # argmin ||x - c||^2 = argmax x . c - ||c||^2 / 2
    half_norms = 0.5 * jnp.sum(jnp.square(centroids), axis=-1)
    labels = lax.map(lambda rows: jnp.argmax(rows @ centroids.T - half_norms, -1), chunks)
    return labels.reshape(-1)[:n].astype(jnp.int32)

  def step(_, centroids):
    labels = assign(centroids)
    sums = jax.ops.segment_sum(x, labels, num_segments=num_clusters)
    counts = jax.ops.segment_sum(jnp.ones((n,), x.dtype), labels, num_segments=num_clusters)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)

  centroids = lax.fori_loop(0, iterations, step, centroids)
  return assign(centroids), centroids


def aggregation_loss(v: jax.Array, index: jax.Array, bank: jax.Array, labels: jax.Array,
                     temperature: float, num_neighbours: int,
                     include_self: jax.Array = False) -> jax.Array:
  """L_i of Eq. 3 for this device's rows: v [b, D] unit, index [b] their bank rows, bank
  [N, D], labels [H, N] the clusterings; [b].

  With `include_self` (the warm-up) each image's own bank row joins its background
  neighbours if the top k missed it, which makes the loss instance recognition (NPID's
  non-parametric softmax, over the neighbours instead of all N).
  """
  scores = clustering.similarities(v, bank) / temperature                       # [b, N]
  top, rows = lax.top_k(scores, min(num_neighbours, bank.shape[0]))              # B_i
  close = jnp.any(labels[:, rows] == labels[:, index][:, :, None], axis=0)       # [b, k]
  own = jnp.take_along_axis(scores, index[:, None], axis=1)                      # [b, 1]
  missed = include_self & ~jnp.any(rows == index[:, None], axis=1, keepdims=True)
  top = jnp.concatenate([top, own], axis=1)
  close = jnp.concatenate([close, missed], axis=1)
  counted = jnp.concatenate([jnp.ones_like(close[:, :-1]), missed], axis=1)
  weights = jnp.exp(top - lax.stop_gradient(jnp.max(top, axis=-1, keepdims=True))) * counted
  ratio = jnp.sum(jnp.where(close, weights, 0.0), -1) / jnp.sum(weights, -1)
  return -jnp.log(ratio + 1e-7)


class LocalAggregationState(NamedTuple):
  bank: jax.Array                 # [N, D] unit vectors, one per training image
  labels: jax.Array               # [H, N] int32 cluster of every image in each clustering
  centroids: tuple[jax.Array, ...]  # per clustering [m, D], for evaluation
  clustered: jax.Array            # bool: the bank has been clustered (after the warm-up)


@dataclasses.dataclass(frozen=True)
class LocalAggregation(base.Objective):
  """Static settings (from `config.objective`); no parameters beyond the model's."""
  num_clusters: tuple[int, ...]    # m of each of the H clusterings
  num_examples: int
  embed_dim: int
  temperature: float = 0.07        # tau
  num_neighbours: int = 4096       # k, the background neighbours
  bank_momentum: float = 0.5       # m of the bank update
  kmeans_iterations: int = 20
  warmup_epochs: int = 0           # epochs of instance recognition before the first clustering

  def __post_init__(self):
    for m in self.num_clusters:
      if not 2 <= m <= self.num_examples:
        raise errors.ConfigError(
            f"objective.num_clusters has m={m}, but there are {self.num_examples} training "
            "examples: every clustering needs 2 <= m <= N.")
    if not self.temperature > 0 or self.num_neighbours < 1:
      raise errors.ConfigError(
          f"objective.temperature ({self.temperature}) must be > 0 and "
          f"objective.num_neighbours ({self.num_neighbours}) >= 1.")
    if not 0.0 <= self.bank_momentum < 1.0 or self.warmup_epochs < 0:
      raise errors.ConfigError(
          f"objective.bank_momentum ({self.bank_momentum}) must be in [0, 1) and "
          f"objective.warmup_epochs ({self.warmup_epochs}) >= 0.")

  def _names(self):
    return [base.head_name(m, h) for h, m in enumerate(self.num_clusters)]

  def cluster(self, bank: jax.Array, rng: jax.Array):
    """The H k-means clusterings of the bank: (labels [H, N], centroids per clustering)."""
    results = [lloyd_kmeans(key, bank, m, self.kmeans_iterations)
               for m, key in zip(self.num_clusters, jax.random.split(rng, len(self.num_clusters)))]
    return jnp.stack([r[0] for r in results]), tuple(r[1] for r in results)

  def init(self, rng, model_variables=None, output_shapes=None):
    del model_variables, output_shapes
    bank_rng, cluster_rng = jax.random.split(rng)
    bank = clustering.l2_normalize(
        jax.random.normal(bank_rng, (self.num_examples, self.embed_dim), jnp.float32))
    identity = jnp.broadcast_to(jnp.arange(self.num_examples, dtype=jnp.int32),
                                (len(self.num_clusters), self.num_examples))
    state = LocalAggregationState(
        bank=bank, labels=identity,
        centroids=tuple(jnp.zeros((m, self.embed_dim), jnp.float32) for m in self.num_clusters),
        clustered=jnp.bool_(False))
    if not self.warmup_epochs:  # clustered at the start (the official code's first LA step)
      labels, centroids = self.cluster(bank, cluster_rng)
      state = state._replace(labels=labels, centroids=centroids, clustered=jnp.bool_(True))
    return {}, state

  def loss(self, params, state, outputs, batch, ctx):
    del params, ctx
    proj = outputs["proj"]                                                       # [V, b, D]
    per_example = sum(aggregation_loss(v, batch["index"], state.bank, state.labels,
                                       self.temperature, self.num_neighbours,
                                       include_self=~state.clustered)
                      for v in proj) / proj.shape[0]
    return sharding.batch_mean(per_example, batch["weight"]), (state, {})

  def update(self, params, state, outputs, batch, ctx):
    """The bank rows of the global batch move towards their embeddings."""
    v = clustering.l2_normalize(jnp.mean(sharding.gather(outputs["proj"], axis=1), axis=0))
    index, weight = sharding.gather(batch["index"]), sharding.gather(batch["weight"])
    rows = jnp.where(weight > 0, index, self.num_examples)  # padding rows are dropped
    moved = clustering.l2_normalize(self.bank_momentum * state.bank[index]
                                    + (1.0 - self.bank_momentum) * v)
    return params, state._replace(bank=state.bank.at[rows].set(moved, mode="drop")), {}

  def end_epoch(self, params, state, epoch, rng=None):
    """The bank's clusterings, from the end of the warm-up on; the size diagnostics."""
    del params
    if self.warmup_epochs:
      labels, centroids = lax.cond(
          epoch + 1 >= self.warmup_epochs, lambda: self.cluster(state.bank, rng),
          lambda: (state.labels, state.centroids))
      clustered = state.clustered | (epoch + 1 >= self.warmup_epochs)
    else:
      (labels, centroids), clustered = self.cluster(state.bank, rng), jnp.bool_(True)
    state = state._replace(labels=labels, centroids=centroids, clustered=clustered)
    metrics = {}
    for h, (name, m) in enumerate(zip(self._names(), self.num_clusters)):
      counts = jax.ops.segment_sum(jnp.ones((self.num_examples,)), labels[h], num_segments=m)
      for key, value in clustering.size_diagnostics(counts, 0.0).items():
        metrics[f"{key}/{name}"] = value
    return state, metrics

  def eval_heads(self, params, state) -> list[base.EvalHead]:
    """Nearest centroid per clustering (argmax v . c - ||c||^2 / 2); none before the first."""
    del params
    if not bool(np.asarray(state.clustered)):
      return []
    heads = []
    for h, (name, centroids) in enumerate(zip(self._names(), state.centroids)):
      centroids = np.asarray(centroids, np.float32)
      heads.append(base.EvalHead(name=name, input="proj", kernel=centroids.T,
                                 bias=-0.5 * np.sum(centroids ** 2, axis=-1),
                                 train_labels=np.asarray(state.labels[h])))
    return heads

  def fingerprint(self) -> dict[str, Any]:
    return {"num_clusters": list(self.num_clusters), "embed_dim": self.embed_dim}


# What each key of the section may hold (config_base.validate); the checks that need two
# keys or the data are in __post_init__.
RULES = {
    "num_clusters": r.each(r.integer(1, 1 << 24)),
    "temperature": r.positive(),
    "num_neighbours": r.integer(1, 1 << 24),
    "bank_momentum": r.real(0, 1, hi_open=True),
    "kmeans_iterations": r.integer(1, 10_000),
    "warmup_epochs": r.integer(0, 1 << 24),
}


def default_config() -> config_dict.ConfigDict:
  """`config.objective` for Local Aggregation: the official ImageNet ResNet settings."""
  c = config_dict.ConfigDict()
  c.name = "local_aggregation"
  c.num_clusters = (30_000,) * 10  # H x m = 10 x 30,000 (supp. Table 1's best for R-18/50)
  c.temperature = 0.07             # tau (la_final.json)
  c.num_neighbours = 4096          # k (supp. Table 4; la_final.json)
  c.bank_momentum = 0.5            # m (instance_model.py)
  c.kmeans_iterations = 20         # FAISS's, as the official cluster_km.py runs it
  c.warmup_epochs = 10             # instance recognition first (the official README)
  return c


def build(config, num_examples: int) -> LocalAggregation:
  obj = config.objective
  if config.num_small_views:
    raise errors.ConfigError(
        f"Local Aggregation takes no multi-crop (num_small_views={config.num_small_views}); "
        "set --config.num_small_views=0.")
  return LocalAggregation(num_clusters=tuple(obj.num_clusters), num_examples=num_examples,
                          embed_dim=config.model.embed_dim, temperature=obj.temperature,
                          num_neighbours=obj.num_neighbours, bank_momentum=obj.bank_momentum,
                          kmeans_iterations=obj.kmeans_iterations,
                          warmup_epochs=obj.warmup_epochs)
