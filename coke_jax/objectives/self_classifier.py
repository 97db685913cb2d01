"""Self-Classifier (Amrani & Bronstein, arXiv v1, seed 002) as an objective.

Two views x_1, x_2 of each image; T classification heads of C classes each;
logits y = W u / tau with u the unit-norm projection and W's rows unit-norm.

  p(y | x)  softmax over the classes (row softmax)
  p(x | y)  softmax over the samples of a batch (column softmax)
  l(x_1, x_2) = -1/N sum_n sum_y p(x_2n | y) log p(y | x_1n)          (Eq. 3)
  L = (l(x_1, x_2) + l(x_2, x_1)) / 2, averaged over the heads        (Eq. 4, Alg. 1)

Eq. 3 is the cross-entropy of Eq. 1 after Bayes' rule with a uniform prior
p(y) and equiprobable samples; since each column of p(x | y) sums to 1 over the
batch, every class keeps a sample of weight >= 1/N (Eq. 5), which prevents
collapse. There is no stop-gradient (Alg. 1).

The column softmax's "batch": the seed's ImageNet run took it over each GPU's
256 rows (16 GPUs, 4096 in all), its CIFAR runs over the whole batch of 256 on
one GPU. `column_group_size` is that number (0: the whole global batch); the
normalizer of each group of consecutive global-batch rows is a padding-aware
sum over devices (`sharding.batch_sum`), exact and differentiable. The heads
are fixed, orthonormal at init (seed Sec. 7.2; Sec. 5: a learnable classifier
collapses to 3.61%), unless `learnable_heads`. CIFAR (seed 7.2): each sample's
column-softmax target is L1-normalized over the classes (`normalize_targets`).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from coke_jax import clustering
from coke_jax import config_rules as r
from coke_jax import errors
from coke_jax import sharding
from coke_jax.objectives import base


def orthonormal_init(key: jax.Array, num_classes: int, dim: int) -> jax.Array:
  """[C, D] from the QR decomposition of a Gaussian matrix: orthonormal rows when C <= D,
  orthonormal columns when C > D (seed Sec. 7.2, after Hoffer et al. 2018)."""
  gaussian = jax.random.normal(key, (max(num_classes, dim), min(num_classes, dim)), jnp.float32)
  q, _ = jnp.linalg.qr(gaussian)
  return q if num_classes > dim else q.T


def column_log_softmax(logits: jax.Array, weight: jax.Array, group_size: int) -> jax.Array:
  """log p(x | y): [b, C] logits normalized over the real rows of each group of
  `group_size` consecutive rows of the global batch (0: the whole global batch)."""
  rows = logits.shape[0]
  total = sharding.global_rows(rows)
  group_size = group_size or total
  num_groups = total // group_size
  group = jax.nn.one_hot(sharding.global_positions(rows) // group_size, num_groups,
                         dtype=logits.dtype)                                       # [b, G]
  shift = sharding.batch_max(logits, weight)                                      # [C]
  # sum over each group's real rows of exp(l - shift), [G, C]; tiny keeps an all-padding group
  # finite (its rows carry weight 0 anyway).
  sums = sharding.batch_sum(group, weight, y=jnp.exp(logits - shift))
  log_norm = shift + jnp.log(jnp.maximum(group @ sums, jnp.finfo(logits.dtype).tiny))
  return logits - log_norm


class SelfClassifierState(NamedTuple):
  counts: tuple[jax.Array, ...]  # per head [C]: this epoch's predicted-class counts


@dataclasses.dataclass(frozen=True)
class SelfClassifier(base.Objective):
  """Static settings (from `config.objective`); the heads are parameters (fixed by default)."""
  num_classes: tuple[int, ...]     # C of each head (T = len)
  embed_dim: int
  temperature: float = 0.1         # tau (seed Sec. 7.2: 0.1 ImageNet, 0.3 CIFAR)
  column_group_size: int = 0       # rows per column softmax; 0: the whole global batch
  normalize_targets: bool = False  # CIFAR: L1-normalize each row of p(x | y)
  learnable_heads: bool = False

  def __post_init__(self):
    if not self.num_classes or min(self.num_classes) < 2:
      raise errors.ConfigError(
          f"objective.num_classes is {self.num_classes}; give C >= 2 per head, e.g. "
          "(1000,) * 30 (seed Table 4).")
    if not self.temperature > 0:
      raise errors.ConfigError(
          f"objective.temperature is {self.temperature}; it must be > 0 (seed: 0.1).")

  def _names(self):
    return [base.head_name(c, h) for h, c in enumerate(self.num_classes)]

  def init(self, rng, model_variables=None, output_shapes=None):
    del model_variables, output_shapes
    keys = jax.random.split(rng, len(self.num_classes))
    heads = {name: orthonormal_init(key, c, self.embed_dim)
             for name, c, key in zip(self._names(), self.num_classes, keys)}
    return {"heads": heads}, SelfClassifierState(
        counts=tuple(jnp.zeros((c,), jnp.float32) for c in self.num_classes))

  def logits(self, head: jax.Array, proj: jax.Array) -> jax.Array:
    """y = W u / tau with W's rows on the unit sphere: [..., D] -> [..., C]."""
    return clustering.similarities(proj, clustering.l2_normalize(head)) / self.temperature

  def per_example_loss(self, params, proj, weight):
    """Eq. 4 per example [b] (the batch mean of Eq. 3's sum, symmetrized), averaged over heads."""
    per_example, predicted = 0.0, []
    for name in self._names():
      logits = self.logits(params["heads"][name], proj)                  # [2, b, C]
      log_row = jax.nn.log_softmax(logits, axis=-1)                       # log p(y | x_v)
      col = jnp.exp(jnp.stack([column_log_softmax(v, weight, self.column_group_size)
                               for v in logits]))                         # p(x_v | y)
      if self.normalize_targets:
        col = col / jnp.sum(col, axis=-1, keepdims=True)
      l12 = -jnp.sum(col[1] * log_row[0], axis=-1)
      l21 = -jnp.sum(col[0] * log_row[1], axis=-1)
      per_example = per_example + 0.5 * (l12 + l21) / len(self.num_classes)
      predicted.append(jnp.argmax(logits[0], axis=-1))
    return per_example, predicted

  def loss(self, params, state, outputs, batch, ctx):
    del ctx
    weight = batch["weight"]
    per_example, predicted = self.per_example_loss(params, outputs["proj"], weight)
    counts = tuple(
        c + sharding.batch_sum(jax.nn.one_hot(p, c.shape[0]), weight)
        for c, p in zip(state.counts, predicted))
    return sharding.batch_mean(per_example, weight), (SelfClassifierState(counts), {})

  def trainable(self, params, ctx):
    del ctx
    return jax.tree_util.tree_map(lambda _: jnp.bool_(self.learnable_heads), params)

  def end_epoch(self, params, state, epoch, rng=None):
    del params, epoch, rng
    metrics = {}
    for name, counts in zip(self._names(), state.counts):
      for key, value in clustering.size_diagnostics(counts, 0.0).items():
        metrics[f"{key}/{name}"] = value
    return SelfClassifierState(tuple(jnp.zeros_like(c) for c in state.counts)), metrics

  def eval_heads(self, params, state) -> list[base.EvalHead]:
    del state
    return [base.linear_head(name, "proj", clustering.l2_normalize(params["heads"][name]))
            for name in self._names()]

  def fingerprint(self) -> dict[str, Any]:
    return {"num_classes": list(self.num_classes), "embed_dim": self.embed_dim}


# What each key of the section may hold (config_base.validate); the checks that need two
# keys or the data are in __post_init__.
RULES = {
    "num_classes": r.each(r.integer(1, 1 << 24)),
    "temperature": r.positive(),
    "column_group_size": r.integer(0, 1 << 24),
}


def default_config() -> config_dict.ConfigDict:
  """`config.objective` for Self-Classifier: the seed's ImageNet settings (Sec. 7)."""
  c = config_dict.ConfigDict()
  c.name = "self_classifier"
  c.num_classes = (1000,) * 30     # T = 30 heads of C = 1000 (Table 4's best, Sec. 7.2)
  c.temperature = 0.1              # Sec. 7.2
  c.column_group_size = 256        # the seed's 256 rows per GPU (16 V100s, batch 4096)
  c.normalize_targets = False      # True for CIFAR (Sec. 7.2)
  c.learnable_heads = False        # Sec. 5: fixed, orthonormal heads
  return c


def build(config, num_examples: int) -> SelfClassifier:
  del num_examples
  obj = config.objective
  if config.num_views != 2 or config.num_small_views:
    raise errors.ConfigError(
        f"Self-Classifier (Alg. 1) compares exactly two views; the config has num_views="
        f"{config.num_views} and num_small_views={config.num_small_views}. Set "
        "--config.num_views=2 --config.num_small_views=0.")
  group = obj.column_group_size
  if group < 0 or (group and config.global_batch_size % group):
    raise errors.ConfigError(
        f"objective.column_group_size is {group}, which does not divide the global batch "
        f"{config.global_batch_size}: use a divisor of it (the seed: 256 per GPU), or 0 for "
        "the whole global batch.")
  return SelfClassifier(num_classes=tuple(obj.num_classes), embed_dim=config.model.embed_dim,
                        temperature=obj.temperature, column_group_size=group,
                        normalize_targets=obj.normalize_targets,
                        learnable_heads=obj.learnable_heads)
