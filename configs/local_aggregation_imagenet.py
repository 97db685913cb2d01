"""Local Aggregation on ImageNet, the official ResNet settings (neuroailab/LocalAggregation).

  python main.py --config=configs/local_aggregation_imagenet.py --workdir=gs://bucket/la_r50
  python main.py --config=configs/local_aggregation_imagenet.py:resnet18 ...

ResNet-50 (or 18) with a linear 128-d embedding on its pooled features, a memory bank of
all 1,281,167 images, H x m = 10 x 30,000 k-means clusterings of the bank every epoch (supp.
Table 1: R-18 37.9, R-50 43.4 in its nearest-neighbour validation), k = 4096 background
neighbours, tau = 0.07, bank momentum 0.5; 200 epochs of which the first 10 are instance
recognition; SGD at 0.03, x 0.1 at epochs 160 and 190 (LocalAggregation-Pytorch's
imagenet_la.json), weight decay 1e-4, batch 128; one view: random resized crop at
0.2-1, colour jitter (0.4, 0.4, 0.4, 0.4) always, grayscale 0.2, flip. Linear top-1 of the
official ResNet-50: 60.2 (10 crops), kNN 49.4 (seed 002 Tables 1 and 3).

Memory (replicated on every device): the bank 656 MB in float32, the labels 51 MB.
"""

from coke_jax import config_base
from coke_jax import errors

VARIANTS = (None, "resnet18")


def get_config(variant=None):
  if variant not in VARIANTS:
    raise errors.ConfigError(f"configs/local_aggregation_imagenet.py takes no argument "
                             f"(ResNet-50) or 'resnet18', not {variant!r}.")
  c = config_base.default_config("local_aggregation")
  c.dataset.name = "imagenet2012"
  c.dataset.data_dir = ""
  c.num_views = 1
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.jitter = (0.4, 0.4, 0.4, 0.4)
  c.augment.jitter_prob = 1.0
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = variant or "resnet50"
  c.model.proj_layers = 1                    # a linear layer to 128 (resnet_model.py)
  c.model.proj_bn_on_output = False
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 0
  c.model.dtype = "bfloat16"

  c.objective.num_clusters = (30_000,) * 10
  c.objective.temperature = 0.07
  c.objective.num_neighbours = 4096
  c.objective.bank_momentum = 0.5
  c.objective.warmup_epochs = 10

  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.03
  c.optimizer.schedule = "step"
  c.optimizer.step_epochs = (160, 190)
  c.optimizer.warmup_epochs = 0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.global_batch_size = 128
  c.num_epochs = 200
  c.log_every_steps = 100
  c.checkpoint_every_steps = 10_009          # one epoch
  c.eval_every_epochs = 0
  return c
