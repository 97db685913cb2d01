"""SwAV on CIFAR-10 with a CIFAR ResNet-18.

  python main.py --config=configs/swav_cifar10.py --workdir=/tmp/swav_cifar10 \
      --config.dataset.data_dir=~/tensorflow_datasets

Neither the SwAV paper nor its code has a CIFAR setting; this is solo-learn's
(scripts/pretrain/cifar/swav.yaml, linear top-1 89.2 after 1000 epochs, a third-party
reference): ResNet-18 with the 3x3 stride-1 stem and no max-pool, projection 2048 -> 128,
K = 3000, tau = 0.1, eps = 0.05, 3 iterations, a queue of 3840 from epoch 50,
prototypes fixed for 2 epochs, LARS (trust 0.02) at 0.6 with 10 warm-up epochs and
cosine, weight decay 1e-6, batch 256, 1000 epochs; two 32-px crops (scale 0.08-1),
jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur 0.5, flip.
"""

from coke_jax import config_base


def get_config():
  c = config_base.default_config("swav")
  c.dataset.name = "cifar10"                 # needs `tfds build cifar10` in data_dir
  c.num_views = 2
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = "resnet18"
  c.model.backbone_kwargs.cifar_stem = True
  c.model.proj_hidden_dim = 2048
  c.model.proj_layers = 2
  c.model.proj_bn_on_output = False
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 0
  c.model.dtype = "bfloat16"

  c.objective.num_prototypes = (3000,)
  c.objective.freeze_prototypes_epochs = 2.0
  c.objective.queue_length = 3840
  c.objective.queue_start_epoch = 50

  c.optimizer.name = "lars"
  c.optimizer.trust_coefficient = 0.02       # solo-learn's eta
  c.optimizer.learning_rate = 0.6
  c.optimizer.warmup_epochs = 10
  c.optimizer.weight_decay = 1e-6
  c.global_batch_size = 256
  c.num_epochs = 1000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1960            # 10 epochs of 196 steps
  c.eval_every_epochs = 50
  return c
