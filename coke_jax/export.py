"""Export a pretrained backbone for PyTorch: torchvision's ResNet names and layouts, timm's ViT.

  python -m coke_jax.export --config=configs/coke_two_view.py \
      --pretrain_workdir=/tmp/coke_r50 --out=backbone.safetensors

reads the backbone of the latest checkpoint in --pretrain_workdir (or
--step's) and writes it with torchvision's parameter names and layouts
(`torchvision.models.resnet50().state_dict()` without `fc`; ViT-S/16 as
timm's `vit_small_patch16_224` without `head`): a .safetensors file, or a
.pth with PyTorch installed. --config (and any --config.* overrides) must be
the pretraining run's, as for `main.py --mode=eval`: it names the backbone,
and the checkpoint is refused if it was written with another one. Loading it
in PyTorch, and the Detectron2 conversion: docs/interop.md.
"""

import os
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from coke_jax import errors
from coke_jax import interop
from coke_jax import models
from coke_jax import sharding
from coke_jax.data import sources
from coke_jax.evaluation import linear_probe
from coke_jax.evaluation import restore


def _define_flags():
  """The command line's flags, defined only when run as a program: `--config` is also
  main.py's and show_augmentations' flag, and absl flags are process-wide."""
  config_flags.DEFINE_config_file("config", None, "The pretraining run's config file.",
                                  lock_config=True)
  flags.DEFINE_string("pretrain_workdir", None,
                      "The pretraining run's --workdir (holds checkpoints/).")
  flags.DEFINE_string("out", None, "The file to write: NAME.safetensors, or NAME.pth "
                      "(needs PyTorch).")
  flags.DEFINE_integer("step", None, "The checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["config", "pretrain_workdir", "out"])


def export_backbone(config: ml_collections.ConfigDict, pretrain_workdir: str, out: str,
                    step: Optional[int] = None) -> tuple[dict[str, np.ndarray], int]:
  """Writes the checkpoint's backbone to `out`; returns (the state dict written, its step).

  Every BatchNorm's `num_batches_tracked` holds the checkpoint's step (flax
  keeps no such counter; torch reads it only when momentum is None). The
  safetensors metadata names the source: workdir, step, backbone and its kwargs.
  """
  if config.model.backbone not in ("resnet18", "resnet34", "resnet50", "vit_s16"):
    raise errors.ConfigError(
        f"config.model.backbone is {config.model.backbone!r}, which has no PyTorch "
        "counterpart; export works for resnet18, resnet34, resnet50 (torchvision) and vit_s16 "
        "(timm).")
  mesh = sharding.make_mesh()
  source = sources.get_source(config.dataset)
  variables, step = linear_probe.restore_backbone(models.build_model(config.model), source,
                                                  config, mesh, pretrain_workdir, step)
  variables = jax.device_get(variables)
  metadata = {"format": "pt", "source": "coke_jax", "pretrain_workdir": pretrain_workdir,
              "step": str(step), "backbone": config.model.backbone,
              "backbone_kwargs": repr(dict(config.model.backbone_kwargs)),
              "naming": ("timm vit_small_patch16_224" if config.model.backbone == "vit_s16"
                         else f"torchvision {config.model.backbone}")}
  state_dict = interop.save_backbone(out, variables, num_batches_tracked=step,
                                     metadata=metadata)
  return state_dict, step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf.config.set_visible_devices([], "GPU")  # tf.data reads on the host; the GPU is JAX's
  args = flags.FLAGS
  try:
    state_dict, step = export_backbone(args.config, args.pretrain_workdir, args.out, args.step)
  except (errors.ConfigError, sources.MissingDataError, restore.MissingCheckpointError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    return 1
  num_values = sum(v.size for v in state_dict.values())
  logging.info("Wrote %s: %d tensors, %d values, from step %d of %s.", args.out,
               len(state_dict), num_values, step, args.pretrain_workdir)
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
