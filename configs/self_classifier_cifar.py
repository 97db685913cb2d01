"""Self-Classifier on CIFAR-10 or CIFAR-100-20 (seed 002, Sec. 7; Table 2: CIFAR-10 NMI 60.7,
ARI 51.8, AMI 60.5; CIFAR-100-20 NMI 38.3, ARI 20.0, AMI 37.4; head 0, test split).

  python main.py --config=configs/self_classifier_cifar.py --workdir=/tmp/sc_cifar10
  python main.py --config=configs/self_classifier_cifar.py:cifar100_20 --workdir=/tmp/sc_c100

ResNet-18 (CIFAR stem); hidden layers 256 x 256 (BN, leaky ReLU), a 64-d output,
l2-normalized; 30 fixed orthonormal heads of 3x over-clustering (30 classes for
CIFAR-10, 60 for CIFAR-100-20), tau = 0.3, each sample's column-softmax target
L1-normalized; the column softmax over the whole batch of 256 (one GPU); SGD at 3.2,
cosine to 0.032 without warm-up, weight decay 1e-6, 800 epochs; MoCo v2 augmentations
at 32 px. The seed reports NMI, ARI and AMI of head 0 (no ACC: it over-clusters).
"""

from coke_jax import config_base
from coke_jax import errors

VARIANTS = (None, "cifar100_20")


def get_config(variant=None):
  if variant not in VARIANTS:
    raise errors.ConfigError(
        f"configs/self_classifier_cifar.py takes no argument (CIFAR-10) or 'cifar100_20', not "
        f"{variant!r}.")
  c = config_base.default_config("self_classifier")
  c.dataset.name = "cifar100" if variant else "cifar10"  # cifar100 scores its 20 superclasses
  c.num_views = 2
  c.augment.crop_scale = (0.2, 1.0)          # Sec. 7.3
  c.augment.jitter = (0.4, 0.4, 0.4, 0.1)
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = "resnet18"
  c.model.backbone_kwargs.cifar_stem = True
  c.model.proj_hidden_dim = 256              # Sec. 7.2: 256 x 256 x 64
  c.model.proj_layers = 3
  c.model.proj_bn_on_output = False
  c.model.proj_activation = "leaky_relu"
  c.model.embed_dim = 64
  c.model.pred_hidden_dim = 0
  c.model.dtype = "bfloat16"

  c.objective.num_classes = (60 if variant else 30,) * 30  # Sec. 7.2: 3x over-clustering
  c.objective.temperature = 0.3              # Sec. 7.2
  c.objective.column_group_size = 0          # the whole batch of 256 on one GPU
  c.objective.normalize_targets = True       # Sec. 7.2 (CIFAR)

  c.optimizer.name = "sgd"                   # Sec. 7.4
  c.optimizer.learning_rate = 3.2
  c.optimizer.warmup_epochs = 0
  c.optimizer.end_lr = 0.032
  c.optimizer.weight_decay = 1e-6
  c.global_batch_size = 256
  c.num_epochs = 800
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1960            # 10 epochs of 196 steps
  c.eval_every_epochs = 50
  return c
