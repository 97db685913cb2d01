"""SwAV on ImageNet, the official recipes (facebookresearch/swav scripts and README).

  python main.py --config=configs/swav_imagenet.py --workdir=gs://bucket/swav_2x224 \
      --config.dataset.data_dir=gs://bucket/tensorflow_datasets
  python main.py --config=configs/swav_imagenet.py:multicrop ...

No argument: 2 x 224, 400 epochs, batch 4096 (linear top-1 70.1: CoKe's Table 5 row,
the official README's "400 ep, 2x224" model). `multicrop`: 2 x 224 + 6 x 96, 800 epochs
(75.3, SwAV's best ResNet-50). Both: ResNet-50, 2-layer projection 2048 -> 128 without
BN on its output, K = 3000, tau = 0.1, eps = 0.05, 3 Sinkhorn iterations, no queue at
batch 4096, prototypes fixed for the first 313 iterations (one epoch), LARS (trust
0.001) at 4.8 warmed up over 10 epochs from 0.3 and cosine to 0.0048, weight decay 1e-6.
"""

from coke_jax import config_base
from coke_jax import errors

VARIANTS = (None, "multicrop")


def get_config(variant=None):
  c = config_base.default_config("swav")
  c.dataset.name = "imagenet2012"
  c.dataset.data_dir = ""                    # set to where `tfds build imagenet2012` wrote it
  c.num_views = 2
  # Augmentations, the same for every crop (src/multicropdataset.py): jitter (0.8, 0.8, 0.8,
  # 0.2) with p 0.8, grayscale 0.2, blur p 0.5, flip; no solarize.
  c.augment.crop_scale = (0.08, 1.0)         # 2x224: RandomResizedCrop's default scale
  c.augment.jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = "resnet50"
  c.model.proj_hidden_dim = 2048             # src/resnet50.py: Linear-BN-ReLU-Linear
  c.model.proj_layers = 2
  c.model.proj_bn_on_output = False
  c.model.embed_dim = 128                    # --feat_dim
  c.model.pred_hidden_dim = 0
  c.model.dtype = "bfloat16"                 # the official runs use apex O1 mixed precision

  c.objective.num_prototypes = (3000,)       # --nmb_prototypes
  c.objective.temperature = 0.1
  c.objective.epsilon = 0.05
  c.objective.sinkhorn_iterations = 3
  c.objective.freeze_prototypes_epochs = 1.0  # --freeze_prototypes_niters 313 at batch 4096
  c.objective.queue_length = 0               # no queue at batch 4096

  c.optimizer.name = "lars"                  # SGD + LARC (trust 0.001, clip False)
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.learning_rate = 4.8            # --base_lr
  c.optimizer.warmup_epochs = 10             # --warmup_epochs
  c.optimizer.warmup_start_lr = 0.3          # --start_warmup
  c.optimizer.end_lr = 0.0048                # --final_lr
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6            # --wd
  c.global_batch_size = 4096                 # 64 GPUs x 64
  c.num_epochs = 400
  c.log_every_steps = 100
  c.checkpoint_every_steps = 626             # about two epochs of 313 steps
  if variant == "multicrop":
    c.num_small_views = 6                    # --nmb_crops 2 6
    c.augment.crop_scale = (0.14, 1.0)       # --min_scale_crops 0.14 0.05
    c.augment.small_image_size = 96          # --size_crops 224 96
    c.augment.small_crop_scale = (0.05, 0.14)  # --max_scale_crops 1 0.14
    c.augment.small_jitter = (0.8, 0.8, 0.8, 0.2)
    c.augment.small_blur_prob = 0.5
    c.num_epochs = 800
  elif variant is not None:
    raise errors.ConfigError(
        f"configs/swav_imagenet.py takes no argument or 'multicrop', not {variant!r}.")
  return c
