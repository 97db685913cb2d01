"""C2BIN (seed 004) in its three settings: the unified representation setting, clustering, ImageNet.

  python main.py --config=configs/c2bin.py --workdir=/tmp/c2bin_cifar10          # Table 1
  python main.py --config=configs/c2bin.py:stl10 ...      (also :cifar100)
  python main.py --config=configs/c2bin.py:clustering_cifar10 ...                # Table 3
  python main.py --config=configs/c2bin.py:clustering_stl10 ... (also :clustering_cifar100)
  python main.py --config=configs/c2bin.py:imagenet ...                           # Table 2

Unified (Sec. 4.1, Table 5): ResNet-18, K = {32, 64, 128}, tau 0.5, lambda_clust 2,
lambda_ent 1, gamma 0.99, LARS at a constant 0.2, weight decay 1e-6, batch 256, 500 epochs
(Table 1, CIFAR-10: LP 81.5, kNN 84.8 / 84.9). Clustering (Sec. 4.3, Table 10): K = {10, 40,
160} ({20, 40, 160} for CIFAR-100), tau 1.0, lambda_clust 1, lambda_ent 1, gamma 0.995, Adam
with cosine from 3e-4 to 0, no weight decay, 300 epochs (Table 3, CIFAR-10: NMI 0.62 / ACC
0.72 / ARI 0.53; the seed's ResNet-34-like network is a CIFAR-stem ResNet-34 here). ImageNet
(Sec. 4.2, Table 7): ResNet-50, K = {512, 1024, 2048}, tau 0.2, lambda_clust 1, lambda_ent
0.05, SGD 0.03 x 0.1 at epochs 120 and 160, batch 256, 200 epochs (Table 2: 64.4 linear).
The instance projector and predictor are 2-layer MLPs ("MLP(512, 512) ReLU"; ImageNet
"MLP(2048, 4096)", read as hidden widths) with BN in the hidden layer as BYOL's, to 128
dimensions as SimCLR's (the seed's "as in Chen et al."; the width is not given). The
augmentations are SimCLR's / MoCo v2's (the CoKe recipe's single-view one here).
"""

from coke_jax import config_base
from coke_jax import errors

VARIANTS = (None, "cifar100", "stl10", "clustering_cifar10", "clustering_cifar100",
            "clustering_stl10", "imagenet")


def get_config(variant=None):
  if variant not in VARIANTS:
    raise errors.ConfigError(f"configs/c2bin.py takes one of {VARIANTS[1:]} or no argument "
                             f"(CIFAR-10, Table 1), not {variant!r}.")
  c = config_base.default_config("c2bin")
  variant = variant or "cifar10"
  clustering = variant.startswith("clustering_")
  dataset = variant.replace("clustering_", "")
  c.dataset.name = "imagenet2012" if dataset == "imagenet" else dataset
  c.num_views = 2
  # SimCLR / MoCo v2 augmentations (Secs. 4.1-4.3), the same for both views.
  c.augment.jitter = (0.4, 0.4, 0.4, 0.1)
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,) if dataset in ("imagenet", "stl10") else (0.0,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = "resnet18"              # Table 5
  c.model.backbone_kwargs.cifar_stem = dataset != "imagenet"
  c.model.proj_hidden_dim = 512              # "MLP(512, 512) ReLU"
  c.model.proj_layers = 2
  c.model.proj_bn_on_output = False
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 512
  c.model.dtype = "bfloat16"

  c.objective.num_clusters = (32, 64, 128)   # Table 5
  c.objective.temperature = 0.5
  c.objective.cluster_weight = 2.0
  c.objective.entropy_weight = 1.0
  c.objective.momentum = 0.99
  c.optimizer.name = "lars"                  # Table 5
  c.optimizer.learning_rate = 0.2
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_epochs = 0
  c.optimizer.weight_decay = 1e-6
  c.optimizer.momentum = 0.9
  c.global_batch_size = 256
  c.num_epochs = 500
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 50

  if clustering:                             # Table 10
    c.model.backbone = "resnet34"
    c.objective.num_clusters = (20 if dataset == "cifar100" else 10, 40, 160)
    c.objective.temperature = 1.0
    c.objective.cluster_weight = 1.0
    c.objective.entropy_weight = 1.0
    c.objective.momentum = 0.995
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.weight_decay = 0.0
    c.num_epochs = 300
  elif dataset == "imagenet":                 # Table 7
    c.model.backbone = "resnet50"
    c.model.proj_hidden_dim = 4096           # "MLP(2048, 4096) ReLU"
    c.model.pred_hidden_dim = 4096
    c.objective.num_clusters = (512, 1024, 2048)
    c.objective.temperature = 0.2
    c.objective.cluster_weight = 1.0
    c.objective.entropy_weight = 0.05
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.03
    c.optimizer.schedule = "step"
    c.optimizer.step_epochs = (120, 160)
    c.num_epochs = 200
    c.checkpoint_every_steps = 5000
    c.eval_every_epochs = 0
  return c
