"""C2BIN, "Learning Representations by Contrasting Clusters while Bootstrapping Instances"
(ICLR 2021 submission, seed 004), as an objective. No public implementation exists: the seed's
text is the authority, and where it is open the choice is a named option.

Networks (Sec. 3.1): the runner is the model (backbone F_theta, instance projector G^a, the
instance predictor P^a); the follower E_phi is an EMA copy of F and G^a (state, not trained);
the cluster predictors P^{c,k} are linear maps of the representation r = F_theta(x) to K
outputs, one head per K (the objective's parameters). Two views x', x'':

  L_align = 1 - cos(P^a(G^a(F_theta(x'))), sg(G^a_phi(F_phi(x''))))                  (Eq. 1)
  Z = softmax(P^{c,k}(r)) [n, K]; the batch-wise cluster assignment (BCA) of cluster k is
  the column c_k = Z[:, k] in R^n                                                   (Eqs. 2, 3)
  L_bca = 1/K sum_i -log( exp(c'_i . c''_i / tau) / sum_{j != i} exp(c'_i . c''_j / tau) )
                                                                                     (Eq. 4)
  L_clust^k = L_bca - lambda_ent H(s), s_k = sum_i c_k(i)                             (Eq. 5)
  L_clust = sum_k L_clust^k over the heads                                             (Eq. 6)
  L = L_align + lambda_clust L_clust                                                   (Eq. 7)
  phi <- gamma phi + (1 - gamma) theta after each step                                (Eq. 8)

The n rows of the BCAs are the *global* batch: the K x K products c'_i . c''_j and the masses
s_k are sums over its real rows (`sharding.batch_sum`, padding weight 0), so the loss and its
gradient do not depend on the number of devices. Where the text is open:

- `bca_form`: "text" implements Eq. 4 as written: raw dot products and the positive left out of
  the denominator, so the loss is unbounded below (identical columns give ln(K - 1));
  "pica": the form of PICA (Huang et al. 2020), whose clustering setup Sec. 4.3 follows: the
  columns L2-normalized (cosines) and the positive kept in the denominator (a K-way softmax
  cross-entropy, bounded below by 0; identical columns give ln K).
- `entropy_of`: "mass", the text's H(s) of the raw masses s_k (sum_k s_k = n); "distribution":
  PICA's H(s / sum s), an entropy in [0, ln K].
- `symmetric`: Eq. 1 and Eq. 4 are one-directional (x' to x''); True adds the swapped terms and
  halves the sums (BYOL's symmetrization). H(s) averages the two views either way.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from ml_collections import config_dict

from coke_jax import clustering
from coke_jax import config_rules as r
from coke_jax import errors
from coke_jax import sharding
from coke_jax.objectives import base
from coke_jax.objectives import ema

BCA_FORMS = ("text", "pica")
ENTROPY_OF = ("mass", "distribution")
# The follower copies these parts of the model (F and G^a); the predictor P^a is the runner's.
FOLLOWER_PARTS = ("backbone", "projector")


def bca_loss(z1: jax.Array, z2: jax.Array, weight: jax.Array, temperature: float,
             form: str = "text") -> jax.Array:
  """Eq. 4 (or PICA's form) of two views' memberships [b, K] over the global batch's rows."""
  products = sharding.batch_sum(z1, weight, y=z2)               # [K, K]: c'_i . c''_j
  if form == "pica":
    norm1 = jnp.sqrt(sharding.batch_sum(jnp.square(z1), weight))  # ||c'_i||
    norm2 = jnp.sqrt(sharding.batch_sum(jnp.square(z2), weight))
    products = products / jnp.maximum(norm1[:, None] * norm2[None, :], 1e-12)
  logits = products / temperature
  positive = jnp.diagonal(logits)
  if form == "text":  # the denominator runs over j != i
    logits = jnp.where(jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def mass_entropy(z: jax.Array, weight: jax.Array, of: str = "mass") -> jax.Array:
  """H(s) of Eq. 5, s_k = sum_i c_k(i) over the global batch's real rows (PICA: of s / sum s)."""
  s = sharding.batch_sum(z, weight)                             # [K]
  if of == "distribution":
    s = s / jnp.sum(s)
  return -jnp.sum(s * jnp.log(jnp.maximum(s, 1e-12)))


class C2BINState(NamedTuple):
  follower: Any                  # {"params": {backbone, projector}, "batch_stats": {...}}
  counts: tuple[jax.Array, ...]  # per head [K]: this epoch's argmax-membership counts


@dataclasses.dataclass(frozen=True)
class C2BIN(base.Objective):
  """Static settings (from `config.objective`); the cluster heads are parameters."""
  num_clusters: tuple[int, ...]       # the set K of Eq. 6
  temperature: float = 0.5            # tau of Eq. 4
  cluster_weight: float = 2.0         # lambda_clust of Eq. 7
  entropy_weight: float = 1.0         # lambda_ent of Eq. 5
  momentum: float = 0.99              # gamma of Eq. 8
  momentum_schedule: str = "constant"  # or BYOL's "cosine" (a deviation from the text)
  total_steps: int = 1                # optimizer steps of the run (the cosine schedule's length)
  bca_form: str = "text"
  entropy_of: str = "mass"
  symmetric: bool = False

  def __post_init__(self):
    if not self.num_clusters or min(self.num_clusters) < 2:
      raise errors.ConfigError(
          f"objective.num_clusters is {self.num_clusters}; give K >= 2 per head, e.g. "
          "(32, 64, 128) (seed 004 Table 5).")
    for name, choices in (("bca_form", BCA_FORMS), ("entropy_of", ENTROPY_OF),
                          ("momentum_schedule", ema.SCHEDULES)):
      if getattr(self, name) not in choices:
        raise errors.ConfigError(
            f"objective.{name} is {getattr(self, name)!r}; use one of {list(choices)}.")
    if not self.temperature > 0 or not 0.0 <= self.momentum <= 1.0:
      raise errors.ConfigError(
          f"objective.temperature ({self.temperature}) must be > 0 and objective.momentum "
          f"({self.momentum}) in [0, 1].")

  def _names(self):
    return [base.head_name(k, h) for h, k in enumerate(self.num_clusters)]

  def init(self, rng, model_variables=None, output_shapes=None):
    (dim,) = output_shapes["features"]
    keys = jax.random.split(rng, len(self.num_clusters))
    # torch's nn.Linear initialization: uniform in +-1/sqrt(fan_in), as PICA's heads.
    bound = 1.0 / math.sqrt(dim)
    heads = {name: {"kernel": jax.random.uniform(key, (dim, k), jnp.float32, -bound, bound),
                    "bias": jnp.zeros((k,), jnp.float32)}
             for name, k, key in zip(self._names(), self.num_clusters, keys)}
    follower = {"params": {p: model_variables["params"][p] for p in FOLLOWER_PARTS},
                "batch_stats": {p: model_variables["batch_stats"][p] for p in FOLLOWER_PARTS
                                if p in model_variables["batch_stats"]}}
    return {"heads": heads}, C2BINState(
        follower=follower, counts=tuple(jnp.zeros((k,), jnp.float32) for k in self.num_clusters))

  def memberships(self, head, features: jax.Array) -> jax.Array:
    """Z of Eq. 2: softmax of the linear cluster predictor, [..., K]."""
    return jax.nn.softmax(clustering.full_precision(features) @ head["kernel"] + head["bias"],
                          axis=-1)

  def loss(self, params, state, outputs, batch, ctx):
    weight = batch["weight"]
    # The follower in training mode on the same views (its own BatchNorm statistics), with
    # the runner's predictor, whose output it does not use.
    follower = {"params": {**state.follower["params"],
                           **{k: v for k, v in ctx.model_variables["params"].items()
                              if k not in FOLLOWER_PARTS}},
                "batch_stats": {**ctx.model_variables["batch_stats"],
                                **state.follower["batch_stats"]}}
    target, follower_stats = ctx.forward(follower, batch)
    target = lax.stop_gradient(target["proj"])                  # [V, b, D], unit-norm
    pred = outputs["pred"]                                       # P^a(z_a), unit-norm

    def align(v, w):  # Eq. 1, runner view v against the follower's view w
      return 1.0 - jnp.sum(pred[v] * target[w], axis=-1)

    directions = ((0, 1), (1, 0)) if self.symmetric else ((0, 1),)
    align_loss = sharding.batch_mean(
        sum(align(v, w) for v, w in directions) / len(directions), weight)
    cluster_loss, counts, metrics = 0.0, [], {}
    for name, c in zip(self._names(), state.counts):
      z = self.memberships(params["heads"][name], outputs["features"])  # [V, b, K]
      bca = sum(bca_loss(z[v], z[w], weight, self.temperature, self.bca_form)
                for v, w in directions) / len(directions)
      entropy = (mass_entropy(z[0], weight, self.entropy_of)
                 + mass_entropy(z[1], weight, self.entropy_of)) / 2
      cluster_loss = cluster_loss + bca - self.entropy_weight * entropy          # Eqs. 5, 6
      counts.append(c + sharding.batch_sum(
          lax.stop_gradient(jax.nn.one_hot(jnp.argmax(z[0], -1), c.shape[0])), weight))
      metrics[f"bca/{name}"] = bca
      metrics[f"mass_entropy/{name}"] = entropy
    metrics["align"] = align_loss
    # Only the follower's parts of the statistics move (the predictor's are the runner's).
    follower_stats = {p: follower_stats[p] for p in state.follower["batch_stats"]}
    state = state._replace(follower={**state.follower, "batch_stats": follower_stats},
                           counts=tuple(counts))
    return align_loss + self.cluster_weight * cluster_loss, (state, metrics)          # Eq. 7

  def update(self, params, state, outputs, batch, ctx):
    """Eq. 8: the follower moves towards the runner's new parameters."""
    tau = ema.decay(ctx.train_step, self.momentum, self.momentum_schedule, self.total_steps)
    runner = {p: ctx.model_variables["params"][p] for p in FOLLOWER_PARTS}
    follower = {**state.follower, "params": ema.update(state.follower["params"], runner, tau)}
    return params, state._replace(follower=follower), {"follower_momentum": tau * 1.0}

  def end_epoch(self, params, state, epoch, rng=None):
    del params, epoch, rng
    metrics = {}
    for name, counts in zip(self._names(), state.counts):
      for key, value in clustering.size_diagnostics(counts, 0.0).items():
        metrics[f"{key}/{name}"] = value
    return state._replace(counts=tuple(jnp.zeros_like(c) for c in state.counts)), metrics

  def eval_heads(self, params, state) -> list[base.EvalHead]:
    del state
    return [base.EvalHead(name=name, input="features", kernel=params["heads"][name]["kernel"],
                          bias=params["heads"][name]["bias"]) for name in self._names()]

  def fingerprint(self) -> dict[str, Any]:
    return {"num_clusters": list(self.num_clusters)}


# What each key of the section may hold (config_base.validate); the checks that need two
# keys or the data are in __post_init__.
RULES = {
    "num_clusters": r.each(r.integer(1, 1 << 24)),
    "temperature": r.positive(),
    "cluster_weight": r.real(0),
    "entropy_weight": r.real(0),
    "momentum": r.PROBABILITY,
    "momentum_schedule": r.one_of("constant", "cosine"),
    "bca_form": r.one_of("text", "pica"),
    "entropy_of": r.one_of("mass", "distribution"),
}


def default_config() -> config_dict.ConfigDict:
  """`config.objective` for C2BIN: the unified CIFAR/STL setting (seed 004 Table 5)."""
  c = config_dict.ConfigDict()
  c.name = "c2bin"
  c.num_clusters = (32, 64, 128)   # Table 5
  c.temperature = 0.5              # tau of Eq. 4 (Table 5)
  c.cluster_weight = 2.0           # lambda_clust (Table 5)
  c.entropy_weight = 1.0           # lambda_ent (Table 5)
  c.momentum = 0.99                # gamma of Eq. 8 (Table 5)
  c.momentum_schedule = "constant"  # Eq. 8: constant; "cosine": BYOL's
  c.bca_form = "text"              # "text": Eq. 4 as written; "pica": cosine, positive included
  c.entropy_of = "mass"            # "mass": H(s); "distribution": H(s / sum s) (PICA)
  c.symmetric = False              # Eqs. 1 and 4 are one-directional
  return c


def build(config, num_examples: int) -> C2BIN:
  obj = config.objective
  if config.num_views != 2 or config.num_small_views:
    raise errors.ConfigError(
        f"C2BIN contrasts exactly two views (x', x''); the config has num_views="
        f"{config.num_views} and num_small_views={config.num_small_views}. Set "
        "--config.num_views=2 --config.num_small_views=0.")
  if not config.model.pred_hidden_dim:
    raise errors.ConfigError(
        "C2BIN needs the instance predictor P^a (Eq. 1): set --config.model.pred_hidden_dim "
        "(512 in seed 004's Table 5).")
  steps = -(-num_examples // config.global_batch_size) * config.num_epochs
  return C2BIN(num_clusters=tuple(obj.num_clusters), temperature=obj.temperature,
               cluster_weight=obj.cluster_weight, entropy_weight=obj.entropy_weight,
               momentum=obj.momentum, momentum_schedule=obj.momentum_schedule,
               total_steps=steps, bca_form=obj.bca_form, entropy_of=obj.entropy_of,
               symmetric=obj.symmetric)
