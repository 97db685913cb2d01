"""A tiny run on digits for tests and quick checks (seconds on CPU); the argument names the
objective, as in configs/digits.py (`--config=configs/smoke.py:swav`)."""

from coke_jax import config_base
from coke_jax import errors


def get_config(objective: str = "coke"):
  c = config_base.default_config(objective)
  c.dataset.name = "digits"
  c.num_views = 2
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.widths = (8, 16)
  c.model.proj_hidden_dim = 32
  c.model.embed_dim = 16
  c.model.pred_hidden_dim = 16
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.warmup_epochs = 0
  c.global_batch_size = 256
  c.num_epochs = 1
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 2
  c.eval_batch_size = 256
  if objective == "coke":
    c.objective.num_clusters = (10, 16)
    c.objective.min_size_ratio = 0.5
    c.objective.dual_lr = 0.5
  elif objective == "swav":
    c.model.proj_bn_on_output = False
    c.objective.num_prototypes = (10, 16)
    c.objective.freeze_prototypes_epochs = 0.5  # 3 of the 6 steps of an epoch
    c.objective.queue_length = 512              # 2 batches, used from the second epoch
    c.objective.queue_start_epoch = 0
  elif objective == "self_classifier":
    c.model.proj_bn_on_output = False
    c.objective.num_classes = (10, 16)
    c.objective.temperature = 0.3
    c.objective.column_group_size = 0
  elif objective == "c2bin":
    c.model.proj_bn_on_output = False
    c.objective.num_clusters = (10, 16)
    c.objective.momentum = 0.9
  elif objective == "local_aggregation":
    c.model.proj_layers = 1
    c.model.proj_bn_on_output = False
    c.model.pred_hidden_dim = 0
    c.objective.num_clusters = (10, 16)
    c.objective.num_neighbours = 64
    c.objective.warmup_epochs = 1
    c.objective.kmeans_iterations = 5
  else:
    raise errors.ConfigError(f"configs/smoke.py has no settings for the objective {objective!r}.")
  return c
