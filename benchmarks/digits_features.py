"""Embeddings of a trained digits model, for the exact-LP comparison on learned features.

  nice -n 10 python -m benchmarks.digits_features --config=configs/digits.py \
      --config.num_epochs=20 --workdir=/tmp/coke_digits_features \
      --out=/tmp/digits_features.npy
  nice -n 10 python -m benchmarks.online_vs_lp --tables=features \
      --features=/tmp/digits_features.npy

Trains (or resumes) CoKe on digits with the given config, then writes the
eval-mode projection-head embeddings (the space CoKe clusters in) of the
shifted, noisy digits of benchmarks/digits_data.py, [copies * 1797, D].
"""

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from benchmarks import digits_data
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run is trained or resumed.")
_OUT = flags.DEFINE_string("out", "/tmp/digits_features.npy", "Where the embeddings go.")
_COPIES = flags.DEFINE_integer("copies", 30, "Copies of digits (shifted, noisy).")
_NOISE = flags.DEFINE_float("noise", 0.1, "Std of the pixel noise of the copies.")


def main(argv):
  del argv
  config = _CONFIG.value
  state = train.train_and_evaluate(config, _WORKDIR.value)
  trainer = train.Trainer(config, sources.get_source(config.dataset), sharding.make_mesh())
  images = digits_data.shifted_digit_images(_COPIES.value, _NOISE.value)[..., None]
  embed = jax.jit(lambda x: trainer.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, x, train=False)["proj"])
  proj = np.concatenate([np.asarray(embed(images[i:i + 2048]))
                         for i in range(0, len(images), 2048)])
  np.save(_OUT.value, proj.astype(np.float32))
  print(f"wrote {proj.shape} embeddings to {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
