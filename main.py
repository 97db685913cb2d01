"""Pretrain with CoKe: `python main.py --config=configs/digits.py --workdir=/tmp/coke_digits`.

Override any config value with --config.key=value (unknown keys are an error).
Running again with the same --workdir resumes from its latest checkpoint.

Evaluate a pretraining run's checkpoint (read-only) into another workdir:
  --mode=eval         kNN, clustering metrics and pictures (same config as pretraining)
  --mode=linear_eval  linear probe (config with a `linear_eval` section,
                      e.g. configs/linear_eval_digits.py)
  python main.py --mode=linear_eval --config=configs/linear_eval_digits.py \
      --pretrain_workdir=/tmp/coke_digits --workdir=/tmp/coke_digits_linear
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from coke_jax import train
from coke_jax.evaluation import checkpoint_eval
from coke_jax.evaluation import linear_probe

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                               "summaries and final_metrics.json.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "linear_eval"],
                          "train: pretrain (and evaluate at the end); eval / linear_eval: "
                          "evaluate the checkpoint in --pretrain_workdir.")
_PRETRAIN_WORKDIR = flags.DEFINE_string("pretrain_workdir", None,
                                        "The pretraining run's --workdir (eval modes).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops INFO records of Orbax's and TF's internals, which would drown the progress lines."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow/", "/tensorflow_datasets/"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # tf.data runs on the host; keep TensorFlow off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
  logging.info("JAX process %d/%d, %d local / %d global devices (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  if _MODE.value == "train":
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    return
  if not _PRETRAIN_WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --pretrain_workdir (the pretraining run's "
                         "--workdir, which holds its checkpoints).")
  if _MODE.value == "eval":
    checkpoint_eval.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _PRETRAIN_WORKDIR.value)
  else:
    linear_probe.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _PRETRAIN_WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
