"""Linear probe of a `configs/digits.py` pretraining run:

  python main.py --mode=linear_eval --config=configs/linear_eval_digits.py \
      --pretrain_workdir=/tmp/coke_digits --workdir=/tmp/coke_digits_linear

The model and data settings are those of configs/digits.py (they must match
the checkpoint; pass the pretraining run's --config.model.* overrides too). The
argument names the pretraining objective, as in configs/digits.py
(`--config=configs/linear_eval_digits.py:swav`); the probe reads only the backbone.
"""

from coke_jax.evaluation import linear_probe
from configs import digits

VARIANTS = digits.VARIANTS


def get_config(objective: str = "coke"):
  c = digits.get_config(objective)
  c.linear_eval = linear_probe.default_config()
  c.linear_eval.num_epochs = 90          # supp. 2.1
  c.linear_eval.batch_size = 256         # 1,438 training digits: 6 steps per epoch
  c.linear_eval.learning_rate = 0.4      # official run_lincls.sh (multi-view)
  c.linear_eval.eval_every_epochs = 30
  c.linear_eval.log_every_steps = 60
  # The digits analogue of random crop (no flip: it changes a digit's meaning):
  # small shifts and scalings, no rotation, cutout or noise.
  c.linear_eval.augment = c.augment.copy_and_resolve_references()
  c.linear_eval.augment.max_rotation_deg = 0.0
  c.linear_eval.augment.scale_range = (0.9, 1.1)
  c.linear_eval.augment.max_shift = 1.0
  c.linear_eval.augment.erase_prob = 0.0
  c.linear_eval.augment.noise_std = 0.0
  return c
