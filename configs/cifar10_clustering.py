"""CoKe as an end-to-end deep clustering method on CIFAR-10 (supp. Sec. 2.4, Table 9: ACC 85.7).

  python main.py --config=configs/cifar10_clustering.py --workdir=/tmp/coke_cifar10 \
      --config.dataset.data_dir=~/tensorflow_datasets

Two-view CoKe with 10 heads of K = 10, 20, ..., 100; the K = 10 head is the one
evaluated (ACC/NMI/ARI on the test split, no fine-tuning: the SCAN protocol).
Settings not given in supp. 2.4 "remain the same" as the two-view ImageNet run.
"""

from coke_jax import config_base


def get_config(num_classes: int = 10, dataset: str = "cifar10"):
  c = config_base.default_config()
  c.dataset.name = dataset                   # needs `tfds build cifar10` in data_dir
  c.num_views = 2                            # supp. 2.4: CoKe with two-view optimization
  c.augment.crop_scale = (0.3, 1.0)          # supp. 2.4: [0.08, 1] -> [0.3, 1] at 32 px

  c.model.backbone = "resnet18"              # supp. 2.4: the same ResNet-18 as SCAN
  c.model.backbone_kwargs.cifar_stem = True  # 3x3 stem, no max-pool for 32x32 inputs
  c.model.backbone_kwargs.zero_init_last_bn = False  # torchvision's ResNet-18 default
  c.model.proj_hidden_dim = 512              # official code: MLP width = backbone width
  c.model.proj_layers = 3                    # as the two-view ImageNet setting (supp. 2.1)
  c.model.embed_dim = 128                    # supp. 2.1
  c.model.pred_hidden_dim = 512              # 2-layer prediction MLP (supp. 2.1)
  c.model.dtype = "bfloat16"                 # mixed precision on GPU/TPU (official code: AMP)

  c.objective.num_clusters = tuple(num_classes * k for k in range(1, 11))  # supp. 2.4
  c.objective.temperature = 0.05             # supp. 2.1 (two views)
  c.objective.min_size_ratio = 0.9           # supp. 2.4: CIFAR is balanced
  c.objective.dual_lr = 0.1                  # supp. 2.4
  c.objective.alpha = 0.2                    # supp. Table 3
  c.objective.beta = 0.5                     # supp. Table 4

  c.optimizer.name = "sgd"                   # supp. 2.4
  c.optimizer.learning_rate = 0.2            # supp. 2.4
  c.optimizer.momentum = 0.9                 # supp. 2.1
  c.optimizer.weight_decay = 1e-6            # supp. 2.1 ("other settings remain the same")
  c.optimizer.warmup_epochs = 10             # supp. 2.1
  c.global_batch_size = 128                  # supp. 2.4
  c.num_epochs = 400                         # supp. 2.4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 3910            # 10 epochs of 391 steps
  c.eval_every_epochs = 20
  return c
