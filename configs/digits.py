"""CoKe with two views on scikit-learn's bundled digits: the offline default.

  python main.py --config=configs/digits.py --workdir=/tmp/coke_digits

Digits is small and balanced (10 classes), so the settings follow the
supplementary's CIFAR clustering protocol (supp. Sec. 2.4) where it applies:
SGD, two views, and several heads of different K with the head at the true K
evaluated. What digits needs differently (the size ratio, the dual step) was
chosen on a validation split of the training images.
"""

from coke_jax import config_base


def get_config():
  c = config_base.default_config()
  c.dataset.name = "digits"
  c.num_views = 2
  c.augment.max_rotation_deg = 15.0
  c.augment.scale_range = (0.85, 1.1)
  c.augment.max_shift = 1.0
  c.augment.noise_std = 0.05

  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.widths = (32, 64, 128)
  c.model.proj_hidden_dim = 256
  c.model.proj_layers = 2
  c.model.embed_dim = 64

  c.objective.num_clusters = (10, 20, 40)   # the head with K = 10 is the evaluated one
  c.objective.temperature = 0.1             # supp. 2.1's two-view 0.05 collapsed here (ACC 0.29)
  # The ratio and the dual step were chosen on a validation split carved from the training
  # images (--config.dataset.validation_fraction=0.2), never on the held-out split; K = 10
  # head ACC, mean of 2 seeds (docs/evaluation.md).
  # Balanced: digits classes differ by < 5% in size (supp. 2.4 takes 0.9 for CIFAR).
  # Validation: 0.991 at 1.0, 0.977 at 0.9.
  c.objective.min_size_ratio = 1.0
  # supp. 2.4 uses 0.1 with 390 steps per epoch (CIFAR, batch 128); digits has 12, so the
  # duals move ~30x less per epoch. Validation (ratio 0.9): 0.977 at 1.0, 0.948 at 2.0,
  # 0.958 at 0.1 (1 seed).
  c.objective.dual_lr = 1.0
  c.objective.alpha = 0.2

  c.optimizer.name = "sgd"                  # supp. Sec. 2.4
  c.optimizer.learning_rate = 0.2           # supp. Sec. 2.4 (batch 128)
  c.optimizer.warmup_epochs = 5
  c.optimizer.weight_decay = 5e-4
  c.global_batch_size = 128                 # supp. Sec. 2.4
  c.num_epochs = 200                        # validation ACC is flat from epoch ~125 on
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.eval_every_epochs = 25
  return c
