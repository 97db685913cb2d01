"""Linear probe of a `configs/coke_two_view.py` ImageNet run (supp. Sec. 2.1, official eval_lincls.py):

  python main.py --mode=linear_eval --config=configs/linear_eval_imagenet.py \
      --pretrain_workdir=gs://bucket/coke_two_view --workdir=gs://bucket/coke_two_view_linear \
      --config.dataset.data_dir=gs://bucket/tensorflow_datasets

ResNet-50 frozen in inference mode, a linear layer on its 2048 pooled
features, SGD (momentum 0.9, weight decay 1e-6), cosine decay over 90 epochs
at batch 1024; top-1/top-5 on the 50,000 validation images.
"""

from coke_jax.evaluation import linear_probe
from configs import coke_two_view


def get_config():
  c = coke_two_view.get_config()
  c.linear_eval = linear_probe.default_config()
  c.linear_eval.num_epochs = 90            # supp. 2.1
  c.linear_eval.batch_size = 1024          # supp. 2.1
  c.linear_eval.learning_rate = 0.4        # official run_lincls.sh (0.2 for single-view models)
  c.linear_eval.weight_decay = 1e-6        # Sec. 4.1
  c.linear_eval.normalize_features = False
  c.linear_eval.eval_every_epochs = 10
  c.linear_eval.log_every_steps = 100
  # Train views: random resized crop and horizontal flip only (official eval_lincls.py).
  c.linear_eval.augment = c.augment.copy_and_resolve_references()
  c.linear_eval.augment.crop_scale = (0.08, 1.0)   # torchvision RandomResizedCrop default
  c.linear_eval.augment.flip_prob = 0.5
  c.linear_eval.augment.jitter_prob = 0.0
  c.linear_eval.augment.grayscale_prob = 0.0
  c.linear_eval.augment.blur_prob = (0.0,)
  c.linear_eval.augment.solarize_prob = (0.0,)
  c.eval_batch_size = 1024
  return c
