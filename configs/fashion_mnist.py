"""Every objective on Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grayscale).

  apt-get install dataset-fashion-mnist      # the original IDX files; nothing is downloaded
  python main.py --config=configs/fashion_mnist.py --workdir=/tmp/coke_fmnist           # CoKe
  python main.py --config=configs/fashion_mnist.py:swav --workdir=/tmp/swav_fmnist      # or
      # self_classifier, c2bin, local_aggregation: the same recipe, the objective's section
  python main.py --config=configs/fashion_mnist.py:long --workdir=/tmp/coke_fmnist_long  # GPU

The default is sized for a 2-core CPU: the backbone was chosen by the cost of its step
(docs/data.md, "Cost on the 2-core CPU": small_cnn (16, 32, 64) takes 272 ms per two-view
step of 128 images, 2.1 minutes per epoch, the next candidates 1.5x to 4x that), the epochs
by the slower of the two CPUs such machines have: on a Zen 1 EPYC (family 23 model 1) main.py
runs its learning steps at 0.81 s (6.3 minutes an epoch), the scan epoch in about 2 minutes
and the final evaluation in about 1 (2026-12-03), so 12 epochs end in about 85 minutes there
and in about 30 on the faster CPU. `:long` is
CoKe's CIFAR clustering recipe (supp. Sec. 2.4: ResNet-18 with the CIFAR stem, 400 epochs)
for an accelerator. Tune on `--config.dataset.validation_fraction=0.1` (a stratified 10% of
the training images); the t10k files are the held-out split.
"""

from ml_collections import config_dict

from configs import digits
from coke_jax import config_base
from coke_jax import errors

# The objectives this file configures (None: CoKe), and CoKe's accelerator setting.
VARIANTS = (None, "long", "swav", "self_classifier", "c2bin", "local_aggregation")


def get_config(variant: str = "coke"):
  objective = "coke" if variant in (None, "coke", "long") else variant
  if objective not in digits.OBJECTIVES:
    raise errors.ConfigError(f"configs/fashion_mnist.py has no setting {variant!r}; it has "
                             f"{sorted({'long', *digits.OBJECTIVES})}.")
  c = config_base.default_config(objective)
  c.dataset.name = "fashion_mnist"           # data_dir "": /usr/share/datasets/fashion-mnist
  c.num_views = 2
  # Array views (augment.digits_view) at 28 px: clothes are left-right symmetric, so flip;
  # shifts and scale stand in for crops (a 28-px image has no room for small ones).
  c.augment.mirror_prob = 0.5
  c.augment.max_rotation_deg = 10.0
  c.augment.scale_range = (0.8, 1.1)
  c.augment.max_shift = 3.0                  # pixels
  c.augment.erase_prob = 0.5
  c.augment.erase_size = 10
  c.augment.noise_std = 0.0

  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.widths = (16, 32, 64)
  c.model.proj_hidden_dim = 256
  c.model.proj_layers = 2
  c.model.embed_dim = 64

  c.optimizer.name = "sgd"                   # supp. Sec. 2.4
  c.optimizer.learning_rate = 0.2            # supp. Sec. 2.4 (batch 128)
  c.optimizer.warmup_epochs = 2
  c.optimizer.weight_decay = 5e-4
  c.global_batch_size = 128                  # supp. Sec. 2.4; 469 steps per epoch
  c.num_epochs = 12                          # the 90-minute budget on the slower CPU (above)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 469             # every epoch
  c.eval_every_epochs = 0                    # an evaluation costs 1-3 minutes here
  c.eval_batch_size = 512
  digits.OBJECTIVES[objective](c)            # the objective's section, as on digits
  if objective == "coke":
    # supp. Sec. 2.4 for a balanced set with CIFAR's ~400 steps per epoch (digits has 12 and
    # needs a 10x larger dual step).
    c.objective.min_size_ratio = 0.9
    c.objective.dual_lr = 0.1
  if objective == "local_aggregation":
    c.objective.warmup_epochs = 1            # the shortest: 8% of the run (digits, ImageNet: 5%)
  if variant == "long":
    _long(c)
  return c


def _long(c):
  """CoKe's CIFAR clustering recipe (configs/cifar10_clustering.py) at 28x28x1."""
  c.model.backbone = "resnet18"              # supp. Sec. 2.4
  c.model.backbone_kwargs = config_dict.ConfigDict({"cifar_stem": True,
                                                    "zero_init_last_bn": False})
  c.model.proj_hidden_dim = 512
  c.model.proj_layers = 3                    # supp. 2.1 (two views)
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 512
  c.model.dtype = "bfloat16"
  c.objective.num_clusters = tuple(10 * k for k in range(1, 11))  # supp. 2.4
  c.objective.temperature = 0.05             # supp. 2.1 (two views)
  c.optimizer.weight_decay = 1e-6            # supp. 2.1
  c.optimizer.warmup_epochs = 10             # supp. 2.1
  c.num_epochs = 400                         # supp. 2.4
  c.checkpoint_every_steps = 10 * 469
  c.eval_every_epochs = 20
