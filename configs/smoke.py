"""A tiny CoKe run on digits for tests and quick checks (seconds on CPU)."""

from coke_jax import config_base


def get_config():
  c = config_base.default_config()
  c.dataset.name = "digits"
  c.num_views = 2
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.widths = (8, 16)
  c.model.proj_hidden_dim = 32
  c.model.embed_dim = 16
  c.model.pred_hidden_dim = 16
  c.objective.num_clusters = (10, 16)
  c.objective.min_size_ratio = 0.5
  c.objective.dual_lr = 0.5
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.warmup_epochs = 0
  c.global_batch_size = 256
  c.num_epochs = 1
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 2
  c.eval_batch_size = 256
  return c
