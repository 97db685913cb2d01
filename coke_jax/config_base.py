"""Every config key with its default; experiment files in configs/ start from here.

Keeping the full schema in one place means `--config.key=value` overrides of a
mistyped key fail (the config is locked), and every experiment has every key.
"""

import math

from ml_collections import config_dict

from coke_jax import config_rules as rules
from coke_jax import errors
from coke_jax import objectives

def default_config(objective: str = "coke") -> config_dict.ConfigDict:
  """The whole schema, with `objective`'s section (`objectives.NAMES`) as `config.objective`."""
  c = config_dict.ConfigDict()
  c.seed = 0

  c.dataset = config_dict.ConfigDict()
  c.dataset.name = "digits"            # digits | imagenet2012 | cifar10 | cifar100 | stl10 | image_folder
  c.dataset.data_dir = ""              # TFDS data_dir ("" = ~/tensorflow_datasets), or the image folder
  c.dataset.heldout_dir = ""           # image_folder: the held-out images for evaluation
  # TFDS splits and label; None takes the dataset's own (see sources.TFDS_DATASETS), e.g.
  # stl10 pretrains on train+unlabeled, cifar100 evaluates its 20 superclasses (supp. Sec. 2.4).
  c.dataset.train_split = config_dict.placeholder(str)
  c.dataset.eval_train_split = config_dict.placeholder(str)  # labeled images for kNN
  c.dataset.heldout_split = config_dict.placeholder(str)
  c.dataset.label_key = config_dict.placeholder(str)
  # Side of the large views and of evaluation crops; None: ImageNet/folders 224, CIFAR 32, STL-10 96.
  c.dataset.image_size = config_dict.placeholder(int)
  # Evaluation: central crop of this fraction of the shorter side; None: 0.875 (256 -> 224)
  # for ImageNet and folders, 1.0 for CIFAR and STL-10.
  c.dataset.eval_crop_fraction = config_dict.placeholder(float)
  c.dataset.shuffle_buffer = 50_000    # TFDS: records (still encoded) in the shuffle buffer
  c.dataset.holdout_fraction = 0.2     # digits: share of images held out for evaluation
  c.dataset.split_seed = 0             # digits: fixed, independent of `seed`
  # digits: > 0 evaluates on this share of the training images instead of the held-out split
  # (which is then never read): tune settings here, report on the held-out split.
  c.dataset.validation_fraction = 0.0

  c.num_views = 2                      # views per example for the loss and assignment (Eq. 15)
  c.num_small_views = 0                # multi-crop: small views per example (supp. 2.1: 6 x 96)
  c.augment = config_dict.ConfigDict()
  # Arrays (digits, Fashion-MNIST): horizontal flip, affine jitter, brightness and contrast,
  # cutout, noise.
  c.augment.mirror_prob = 0.0          # a mirrored digit is no digit; clothes: 0.5
  c.augment.max_rotation_deg = 15.0
  c.augment.scale_range = (0.9, 1.1)
  c.augment.max_shift = 1.0            # pixels
  # Brightness and contrast strengths (ColorJitter's: factors uniform in [1 - s, 1 + s]).
  c.augment.gray_jitter = (0.0, 0.0)
  c.augment.erase_prob = 0.0
  c.augment.erase_size = 3
  c.augment.noise_std = 0.0
  # Natural images: the asymmetric two-view recipe of the official CoKe code
  # (main_double_view.py). Per-view tuples: view v takes entry v, later views the last one.
  c.augment.crop_scale = (0.08, 1.0)   # random resized crop area; CIFAR: (0.3, 1.0) (supp. 2.4)
  c.augment.crop_ratio = (3 / 4, 4 / 3)
  c.augment.jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (1.0, 0.1)
  c.augment.blur_sigma = (0.1, 2.0)    # pixels
  c.augment.solarize_prob = (0.0, 0.2)
  c.augment.flip_prob = 0.5
  # Natural images: the host decodes, the device crops and augments (device_augment.py);
  # False keeps the whole recipe on the host (tf.data), as before 2026-12-02.
  c.augment.on_device = True
  c.augment.canvas_size = 0            # host canvas side; 0: augment.canvas_size(image_size)
  # Small views of multi-crop (official main_multi_view.py).
  c.augment.small_image_size = 96
  c.augment.small_crop_scale = (0.05, 0.6)
  c.augment.small_jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.small_blur_prob = 0.5

  c.model = config_dict.ConfigDict()
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = config_dict.ConfigDict()
  c.model.proj_hidden_dim = 2048
  c.model.proj_layers = 2
  c.model.proj_bn_on_output = True     # BN on the projection (CoKe's official head; not SwAV's)
  c.model.proj_activation = "relu"     # relu | leaky_relu (Self-Classifier's head)
  c.model.embed_dim = 128
  c.model.pred_hidden_dim = 0          # 0: no prediction head
  c.model.dtype = "float32"            # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.remat = False                # rematerialize backbone blocks (less memory, more compute)
  # torchvision-layout weights (.safetensors, or .pth / .pth.tar with PyTorch) for the backbone:
  # the start of pretraining, or what --mode=eval / linear_eval evaluate without a checkpoint.
  c.model.init_from = ""

  # The objective's own section: `name` and its keys (coke_jax/objectives/<name>.py).
  c.objective = objectives.default_config(objective)

  c.optimizer = config_dict.ConfigDict()
  c.optimizer.name = "lars"            # lars | sgd | adam
  c.optimizer.learning_rate = 1.6      # peak learning rate (after scale_by_batch if set)
  c.optimizer.scale_by_batch = False   # multiply by global_batch_size / 256
  c.optimizer.schedule = "cosine"      # cosine | step | constant, after the warm-up
  c.optimizer.step_epochs = ()         # step: the epochs at which the rate is multiplied ...
  c.optimizer.step_factor = 0.1        # ... by this
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.warmup_start_lr = 0.0    # the warm-up's first value (after scale_by_batch if set)
  c.optimizer.end_lr = 0.0             # the cosine's last value (after scale_by_batch if set)
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.trust_coefficient = 1e-3  # LARS

  c.global_batch_size = 1024
  c.num_epochs = 200                   # training epochs, after the epoch-0 scan
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_every_epochs = 0              # 0: evaluate only at the end
  c.eval_batch_size = 512
  c.knn_k = (20, 200)                  # weighted kNN neighbours (NPID/DINO); knn_top1 is the first
  c.knn_temperature = 0.07

  # Collapse warnings (log and metrics; training goes on), see coke_jax/monitor.py.
  c.collapse = config_dict.ConfigDict()
  c.collapse.max_cluster_share = 0.5   # warn when one cluster holds more of an epoch's examples
  c.collapse.min_size_fraction = 0.5   # ... or the smallest cluster is below this x gamma_k
  c.collapse.uniform_loss_fraction = 0.99  # ... or the loss stays at this x that of uniform
  c.collapse.patience_epochs = 3       # ... for this many epochs in a row (0: never)
  return c


# Validation: what every key of the shared schema may hold, checked before anything is built
# (`validate`). The objectives declare their own keys' rules (`Objective.RULES`); settings that
# depend on each other or on the data are checked where both are known (the objectives'
# __post_init__, `check_against_data`). The upper bounds are far above any working value: they
# turn a mistyped exponent into one line instead of an out-of-memory crash or a NaN.
_DIM = 1 << 16        # widths, embedding sizes (the largest in use: 2048 to 8192)
_SIDE = 4096          # image sides, pixels
_VIEWS = 32           # views per example (multi-crop uses 2 + 6; DINO 2 + 10)
_SEED = (1 << 31) - 1


_JITTER = rules.Rule("(brightness, contrast, saturation, hue), the first three in [0, 1], hue in "
               "[0, 0.5]", lambda v: len(v) == 4 and all(map(rules.is_real, v))
               and all(0 <= x <= 1 for x in v[:3]) and 0 <= v[3] <= 0.5)

RULES = {
    "seed": rules.integer(0, _SEED),
    "dataset.image_size": rules.integer(1, _SIDE, optional=True),
    "dataset.eval_crop_fraction": rules.real(0, 1, lo_open=True, optional=True),
    "dataset.shuffle_buffer": rules.integer(1, 1 << 24),
    "dataset.holdout_fraction": rules.real(0, 1, lo_open=True, hi_open=True),
    "dataset.split_seed": rules.integer(0, _SEED),
    "dataset.validation_fraction": rules.real(0, 1, hi_open=True),
    "num_views": rules.integer(1, _VIEWS),
    "num_small_views": rules.integer(0, _VIEWS),
    "augment.mirror_prob": rules.PROBABILITY,
    "augment.max_rotation_deg": rules.real(0, 180),
    "augment.scale_range": rules.interval(0, 4),
    "augment.max_shift": rules.real(0, 64),
    "augment.gray_jitter": rules.each(rules.real(0, 1), length=2),
    "augment.erase_prob": rules.PROBABILITY,
    "augment.erase_size": rules.integer(1, 64),
    "augment.noise_std": rules.real(0, 10),
    "augment.crop_scale": rules.interval(0, 1),
    "augment.crop_ratio": rules.interval(0, 10),
    "augment.jitter": _JITTER,
    "augment.jitter_prob": rules.PROBABILITY,
    "augment.grayscale_prob": rules.PROBABILITY,
    "augment.blur_prob": rules.each(rules.PROBABILITY),
    "augment.blur_sigma": rules.interval(0, 100),
    "augment.solarize_prob": rules.each(rules.PROBABILITY),
    "augment.flip_prob": rules.PROBABILITY,
    "augment.canvas_size": rules.integer(0, _SIDE),
    "augment.small_image_size": rules.integer(1, _SIDE),
    "augment.small_crop_scale": rules.interval(0, 1),
    "augment.small_jitter": _JITTER,
    "augment.small_blur_prob": rules.PROBABILITY,
    "model.backbone_kwargs.widths": rules.each(rules.integer(1, _DIM)),
    "model.backbone_kwargs.stem_stride": rules.integer(1, 4),
    "model.backbone_kwargs.width": rules.integer(1, _DIM),
    "model.proj_hidden_dim": rules.integer(1, _DIM),
    "model.proj_layers": rules.integer(1, 16),
    "model.embed_dim": rules.integer(1, _DIM),
    "model.pred_hidden_dim": rules.integer(0, _DIM),
    "optimizer.name": rules.one_of("lars", "sgd", "adam"),
    "optimizer.learning_rate": rules.positive(),
    "optimizer.schedule": rules.one_of("cosine", "step", "constant"),
    "optimizer.step_epochs": rules.each(rules.real(0), min_length=0),
    "optimizer.step_factor": rules.positive(),
    "optimizer.warmup_epochs": rules.real(0),
    "optimizer.warmup_start_lr": rules.real(0),
    "optimizer.end_lr": rules.real(0),
    "optimizer.momentum": rules.real(0, 1, hi_open=True),
    "optimizer.weight_decay": rules.real(0),
    "optimizer.trust_coefficient": rules.positive(),
    "global_batch_size": rules.integer(1, 1 << 24),
    "num_epochs": rules.integer(1, 1 << 24),
    "log_every_steps": rules.integer(1, _SEED),
    "checkpoint_every_steps": rules.integer(1, _SEED),
    "keep_checkpoints": rules.integer(1, 1 << 20),
    "eval_every_epochs": rules.integer(0, 1 << 24),
    "eval_batch_size": rules.integer(1, 1 << 20),
    "knn_k": rules.each(rules.integer(1, 1 << 20)),
    "knn_temperature": rules.positive(),
    "collapse.max_cluster_share": rules.PROBABILITY,
    "collapse.min_size_fraction": rules.PROBABILITY,
    "collapse.uniform_loss_fraction": rules.PROBABILITY,
    "collapse.patience_epochs": rules.integer(0, 1 << 24),
}


def _leaves(node, prefix=""):
  for key, value in node.items():
    if isinstance(value, config_dict.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def _not_finite(value) -> bool:
  if isinstance(value, (tuple, list)):
    return any(map(_not_finite, value))
  return isinstance(value, float) and not math.isfinite(value)


def validate(config: config_dict.ConfigDict):
  """One ConfigError naming the key, its value and what fits, for the first setting that
  breaks its rule (`RULES`, the objective's `RULES`) or is a NaN or infinity anywhere."""
  every = {**RULES, **{f"objective.{k}": rule
                       for k, rule in objectives.rules(config.objective.name).items()}}
  for key, value in _leaves(config):
    rule = every.get(key)
    problem = "a finite number" if _not_finite(value) else rule and rule.problem(value)
    if problem:
      raise errors.ConfigError(
          f"config.{key} is {value!r}; it must be {problem}. Set --config.{key}=<{problem}> "
          "(configs/digits.py shows working values).")


def check_against_data(config: config_dict.ConfigDict, num_train: int, steps_per_epoch: int):
  """The settings that must fit the training set: a batch no larger than it (a larger one
  is all padding), and a step count that the int32 step counter holds."""
  if config.global_batch_size > num_train:
    raise errors.ConfigError(
        f"config.global_batch_size is {config.global_batch_size}, more than the "
        f"{num_train} training examples. Set --config.global_batch_size=<at most {num_train}>.")
  if (config.num_epochs + 1) * steps_per_epoch > _SEED:
    raise errors.ConfigError(
        f"config.num_epochs is {config.num_epochs}: {steps_per_epoch} steps per epoch make "
        f"more steps than the step counter holds ({_SEED}). Set fewer --config.num_epochs.")
