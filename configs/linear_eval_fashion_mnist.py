"""Linear probe of a `configs/fashion_mnist.py` pretraining run:

  python main.py --mode=linear_eval --config=configs/linear_eval_fashion_mnist.py \
      --pretrain_workdir=/tmp/coke_fmnist --workdir=/tmp/coke_fmnist_linear

The model and data settings are those of configs/fashion_mnist.py (they must match the
checkpoint; pass the pretraining run's --config.model.* overrides too); the argument names the
pretraining objective (or `long`), as there. The protocol is supp. 2.1's (SGD, batch 1024,
lr 0.4, cosine) with 30 epochs instead of 90: each epoch runs the frozen backbone over all
60,000 images (59 steps). The probe of the default run took 9 min 49 s on the slower 2-core
CPU (2026-12-03; top-1 0.807, README "Fashion-MNIST").
"""

from coke_jax.evaluation import linear_probe
from configs import fashion_mnist

VARIANTS = fashion_mnist.VARIANTS


def get_config(objective: str = "coke"):
  c = fashion_mnist.get_config(objective)
  c.linear_eval = linear_probe.default_config()
  c.linear_eval.num_epochs = 30
  c.linear_eval.batch_size = 1024        # supp. 2.1
  c.linear_eval.learning_rate = 0.4      # official run_lincls.sh (multi-view)
  c.linear_eval.eval_every_epochs = 10
  c.linear_eval.log_every_steps = 59     # once an epoch
  # The 28-px analogue of random crop and flip (MoCo's probe views): a mirror and small
  # shifts and scalings; no rotation, gray jitter, cutout or noise.
  c.linear_eval.augment = c.augment.copy_and_resolve_references()
  c.linear_eval.augment.mirror_prob = 0.5
  c.linear_eval.augment.max_rotation_deg = 0.0
  c.linear_eval.augment.scale_range = (0.9, 1.1)
  c.linear_eval.augment.max_shift = 2.0
  c.linear_eval.augment.gray_jitter = (0.0, 0.0)
  c.linear_eval.augment.erase_prob = 0.0
  c.linear_eval.augment.noise_std = 0.0
  return c
