"""CoKe with two views on ImageNet: the paper's strongest single-model setting (Table 7, 74.9%).

  python main.py --config=configs/coke_two_view.py --workdir=gs://bucket/coke_two_view \
      --config.dataset.data_dir=gs://bucket/tensorflow_datasets

Needs the TFDS dataset imagenet2012 prepared in `dataset.data_dir`.
"""

from coke_jax import config_base


def get_config():
  c = config_base.default_config()
  c.dataset.name = "imagenet2012"
  c.dataset.data_dir = ""                    # set to where `tfds build imagenet2012` wrote it
  c.num_views = 2                            # Table 7, supp. 2.2.3

  c.model.backbone = "resnet50"              # Sec. 4.2
  c.model.proj_hidden_dim = 2048             # official code: 3-layer MLP of width 2048
  c.model.proj_layers = 3                    # Sec. 4.2 / supp. 2.1: 3-layer projection
  c.model.embed_dim = 128                    # Table 7: #D = 128
  c.model.pred_hidden_dim = 2048             # supp. 2.1: 2-layer prediction MLP
  c.model.dtype = "bfloat16"                 # mixed precision (the paper's CoKe+ used AMP, Table 6)

  c.objective.num_clusters = (3000, 4000, 5000)  # Table 4: 3k+4k+5k
  c.objective.temperature = 0.05             # supp. 2.1: 0.05 for two/multi-view
  c.objective.min_size_ratio = 0.4           # Table 1
  c.objective.dual_lr = 20.0                 # Sec. 4
  c.objective.alpha = 0.2                    # supp. Table 3
  c.objective.beta = 0.5                     # supp. Table 4

  c.optimizer.name = "lars"                  # supp. 2.1
  c.optimizer.learning_rate = 1.6            # supp. 2.1, batch 1024
  c.optimizer.warmup_epochs = 10             # supp. 2.1
  c.optimizer.momentum = 0.9                 # supp. 2.1
  c.optimizer.weight_decay = 1e-6            # supp. 2.1
  c.global_batch_size = 1024                 # supp. 2.1
  c.num_epochs = 1000                        # Table 7
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2500            # about two epochs at batch 1024
  c.eval_every_epochs = 0
  return c
