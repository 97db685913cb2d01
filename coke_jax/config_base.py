"""Every config key with its default; experiment files in configs/ start from here.

Keeping the full schema in one place means `--config.key=value` overrides of a
mistyped key fail (the config is locked), and every experiment has every key.
"""

from ml_collections import config_dict

from coke_jax import errors
from coke_jax import objectives

# Sizes and counts, with the least value that works (a 0 batch divides by zero deep in the
# input pipeline; a 0 view count builds an empty loss).
_AT_LEAST = {"global_batch_size": 1, "eval_batch_size": 1, "num_epochs": 1, "num_views": 1,
             "num_small_views": 0, "log_every_steps": 1, "checkpoint_every_steps": 1,
             "keep_checkpoints": 1, "dataset.image_size": 1, "augment.small_image_size": 1}


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
  # digits (8x8 arrays): affine jitter, cutout, noise.
  c.augment.max_rotation_deg = 15.0
  c.augment.scale_range = (0.9, 1.1)
  c.augment.max_shift = 1.0            # pixels
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


def check_ranges(config: config_dict.ConfigDict):
  """Fails with one ConfigError naming the key, its value and the fix for a size or count below
  its least value (`_AT_LEAST`; None keeps the dataset's own image size)."""
  for key, least in _AT_LEAST.items():
    node = config
    for part in key.split("."):
      node = node[part]
    if node is not None and not (isinstance(node, int) and node >= least):
      raise errors.ConfigError(
          f"config.{key} is {node!r}; it must be an integer >= {least}. Set "
          f"--config.{key}=<a whole number >= {least}> (configs/digits.py shows working values).")
  if any(not isinstance(k, int) or k < 1 for k in config.knn_k):
    raise errors.ConfigError(f"config.knn_k is {tuple(config.knn_k)!r}; each neighbour count must "
                             "be an integer >= 1, e.g. --config.knn_k='(20, 200)'.")
