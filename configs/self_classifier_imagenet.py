"""Self-Classifier on ImageNet (seed 002, arXiv v1, Sec. 7: linear top-1 69.7 after 800 epochs).

  python main.py --config=configs/self_classifier_imagenet.py --workdir=gs://bucket/sc \
      --config.dataset.data_dir=gs://bucket/tensorflow_datasets

ResNet-50; a projection with hidden layers 4096 x 4096 (BN, leaky ReLU) and a 128-d
output, l2-normalized; T = 30 fixed orthonormal heads of C = 1000 classes, tau = 0.1;
the column softmax over each GPU's 256 rows (16 V100s, batch 4096); MoCo v2
augmentations; LARS at 3.2, warmed up over 10 epochs from 0.2, cosine to 0.0032,
weight decay 1e-4, 800 epochs. Linear evaluation (Sec. 7.4) is LARS at 0.8 without
weight decay for 100 epochs at batch 4096.
"""

from coke_jax import config_base


def get_config():
  c = config_base.default_config("self_classifier")
  c.dataset.name = "imagenet2012"
  c.dataset.data_dir = ""                    # set to where `tfds build imagenet2012` wrote it
  c.num_views = 2
  # MoCo v2's augmentations (Sec. 7.3), the same for both views.
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.jitter = (0.4, 0.4, 0.4, 0.1)
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = "resnet50"
  c.model.proj_hidden_dim = 4096             # Sec. 7.2: 4096 x 4096 x 128
  c.model.proj_layers = 3
  c.model.proj_bn_on_output = False
  c.model.proj_activation = "leaky_relu"
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 0
  c.model.dtype = "bfloat16"                 # Sec. 7.4: mixed precision

  c.objective.num_classes = (1000,) * 30     # Table 4
  c.objective.temperature = 0.1              # Sec. 7.2
  c.objective.column_group_size = 256        # per GPU (16 GPUs, batch 4096)

  c.optimizer.name = "lars"                  # Sec. 7.4
  c.optimizer.learning_rate = 3.2
  c.optimizer.warmup_epochs = 10
  c.optimizer.warmup_start_lr = 0.2
  c.optimizer.end_lr = 0.0032
  c.optimizer.weight_decay = 1e-4
  c.global_batch_size = 4096
  c.num_epochs = 800
  c.log_every_steps = 100
  c.checkpoint_every_steps = 626
  return c
