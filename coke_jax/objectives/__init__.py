"""Training objectives. Each owns its state, its loss and its per-step update.

An objective is a frozen dataclass with:
  init(rng) -> state
  loss(state, outputs, index, epoch) -> (per-example loss [b], per-example metrics)
  update(state, embeddings [V, B, D], index [B], weight [B], epoch) -> (state, metrics)
  end_epoch(state, epoch) -> (state, metrics)
  predict(state, embeddings [B, D]) -> cluster per head [H, B]
`loss` runs on one device's examples; `update` on the whole global batch.
`outputs` holds `proj` and optionally `pred` [V, b, D] for the V large views,
and `proj_small`/`pred_small` [S, b, D] for multi-crop's small crops. `epoch`
is a traced int32 scalar (0 is the initialization scan).
"""

from coke_jax import clustering
from coke_jax import errors
from coke_jax.objectives.coke import CoKe


def build_objective(config, num_examples: int):
  obj = config.objective
  if obj.name == "coke":
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
  raise errors.ConfigError(f"config.objective.name is {obj.name!r}; known objectives: ['coke'].")
