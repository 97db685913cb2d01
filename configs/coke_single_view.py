"""CoKe with a single view on ImageNet (Table 5: 71.4% with 800 epochs).

  python main.py --config=configs/coke_single_view.py --workdir=gs://bucket/coke_single_view \
      --config.dataset.data_dir=gs://bucket/tensorflow_datasets

Ablations of the paper are overrides of this config (each trained 200 epochs there):
  ratio gamma' (Table 1):   --config.objective.min_size_ratio=1.0   (0.4, 0.6, 0.8, 1.0)
  K (Table 3):              --config.objective.num_clusters="(1000,)"
  multi-clustering (Tab. 4): --config.objective.num_clusters="(2000, 3000)"
  batch size (supp. Tab. 1): --config.global_batch_size=256 --config.optimizer.learning_rate=0.8
  T' (supp. Tab. 2):        --config.num_epochs=200 --config.objective.average_after_epoch=160
"""

from coke_jax import config_base


def get_config():
  c = config_base.default_config()
  c.dataset.name = "imagenet2012"
  c.dataset.data_dir = ""                    # set to where `tfds build imagenet2012` wrote it
  c.num_views = 1                            # Table 5: #View = 1
  # B.1: "the same augmentation as in [SwAV, SimCLR]"; official main_single_view.py: crop
  # 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5, flip.
  c.augment.jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.blur_prob = (0.5,)
  c.augment.solarize_prob = (0.0,)

  c.model.backbone = "resnet50"              # B.1
  c.model.proj_hidden_dim = 2048             # B.1: 2-layer MLP head
  c.model.proj_layers = 2                    # B.1
  c.model.embed_dim = 128                    # Table 5: #Dim = 128
  c.model.pred_hidden_dim = 0                # Table 5 has no prediction head
  c.model.dtype = "bfloat16"                 # CoKe+ of Table 6 used mixed precision

  c.objective.num_clusters = (3000, 4000, 5000)  # Table 4: 3k+4k+5k
  c.objective.temperature = 0.1              # Sec. 4
  c.objective.min_size_ratio = 0.4           # Table 1
  c.objective.dual_lr = 20.0                 # Sec. 4
  c.objective.average_after_epoch = 640      # supp. 2.2.2: T' = 160/200 of T
  c.objective.avg_label_size = 5             # supp. 2.2.2
  c.objective.avg_label_temperature = 0.5    # supp. 2.2.2

  c.optimizer.name = "lars"                  # B.1
  c.optimizer.learning_rate = 1.6            # B.1, batch 1024
  c.optimizer.warmup_epochs = 10             # B.1
  c.optimizer.momentum = 0.9                 # B.1
  c.optimizer.weight_decay = 1e-6            # B.1
  c.global_batch_size = 1024                 # B.1
  c.num_epochs = 800                         # Table 5
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2500
  return c
