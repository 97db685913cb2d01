"""Every config key with its default; experiment files in configs/ start from here.

Keeping the full schema in one place means `--config.key=value` overrides of a
mistyped key fail (the config is locked), and every experiment has every key.
"""

from ml_collections import config_dict


def default_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.seed = 0

  c.dataset = config_dict.ConfigDict()
  c.dataset.name = "digits"            # digits | imagenet2012 | cifar10 | cifar100 | stl10
  c.dataset.data_dir = ""              # TFDS data_dir; "" means TFDS's default (~/tensorflow_datasets)
  c.dataset.holdout_fraction = 0.2     # digits: share of images held out for evaluation
  c.dataset.split_seed = 0             # digits: fixed, independent of `seed`

  c.num_views = 2                      # views per example for the loss and assignment (Eq. 15)
  c.augment = config_dict.ConfigDict()
  c.augment.max_rotation_deg = 15.0
  c.augment.scale_range = (0.9, 1.1)
  c.augment.max_shift = 1.0            # pixels
  c.augment.erase_prob = 0.0
  c.augment.erase_size = 3
  c.augment.noise_std = 0.0

  c.model = config_dict.ConfigDict()
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = config_dict.ConfigDict()
  c.model.proj_hidden_dim = 2048
  c.model.proj_layers = 2
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 0          # 0: no prediction head

  c.objective = config_dict.ConfigDict()
  c.objective.name = "coke"
  c.objective.num_clusters = (3000, 4000, 5000)  # one head per K (Sec. 4.1.3)
  c.objective.temperature = 0.1        # lambda of Eq. 12
  c.objective.min_size_ratio = 0.4     # gamma' (Table 1)
  c.objective.dual_lr = 20.0           # eta of Eq. 9 (Sec. 4)
  c.objective.dual_l1_radius = config_dict.placeholder(float)  # tau of Eq. 9; None: max(0, .)
  c.objective.alpha = 0.2              # one-hot weight of the two-view soft label (supp. Table 3)
  c.objective.beta = 0.5               # prediction-head loss weight (supp. Table 4)

  c.optimizer = config_dict.ConfigDict()
  c.optimizer.name = "lars"            # lars | sgd
  c.optimizer.learning_rate = 1.6      # peak learning rate (after scale_by_batch if set)
  c.optimizer.scale_by_batch = False   # multiply by global_batch_size / 256
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.trust_coefficient = 1e-3  # LARS

  c.global_batch_size = 1024
  c.num_epochs = 200                   # training epochs, after the epoch-0 scan
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_every_epochs = 0              # 0: evaluate only at the end
  c.eval_batch_size = 512
  c.knn_k = (20, 200)                  # weighted kNN neighbours (NPID/DINO); knn_top1 is the first
  c.knn_temperature = 0.07
  return c
