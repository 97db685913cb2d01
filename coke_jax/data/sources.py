"""Where images come from: bundled digits, Fashion-MNIST, TFDS datasets, image folders.

Every example has a stable id in [0, N): its position in the source's
canonical order of the split (digits, Fashion-MNIST: array row; image folder: sorted path;
TFDS: position in the split's files, in file order). The id indexes the
clustering label tables, so it never depends on the epoch, the host or a
restart.

Two kinds of sources, told apart by `random_access`:
  * random access (digits, Fashion-MNIST, image folders): `lookup(split, ids)` gives the
    examples of any ids (numpy), so an epoch follows an exact permutation;
  * streams (TFDS record files, which cannot be read at an offset):
    `read(split, lo, hi, shuffle_seed)` reads the ids in [lo, hi), either in
    canonical order or with the files permuted and a seeded shuffle buffer.
`input_pipeline` turns either into batches. Sources of encoded images
(`encoded = True`) also give `decode(example) -> uint8 [H, W, 3]`, which may
fail on a bad file; the pipeline catches that.
"""

import dataclasses
import os
from typing import Any, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from coke_jax import errors
from coke_jax.data import augment
from coke_jax.data import digits


class MissingDataError(FileNotFoundError):
  """The configured dataset is not on disk; the message says how to prepare it."""


# Split names a source understands: "train" (pretraining), "eval_train" (the
# labeled training images evaluation embeds) and "heldout". Only TFDS datasets
# such as STL-10 (train+unlabeled vs train) tell "train" and "eval_train" apart.
_SAME_AS_TRAIN = {"eval_train": "train"}


class InMemorySource(NamedTuple):
  """A dataset small enough to hold in host memory as float arrays (digits, Fashion-MNIST)."""
  name: str
  train_images: np.ndarray    # [N, H, W, C] float32
  train_labels: np.ndarray    # [N] int32, for evaluation only
  heldout_images: np.ndarray  # [M, H, W, C]
  heldout_labels: np.ndarray  # [M]
  num_classes: int

  random_access = True
  encoded = False             # arrays, augmented by `augment.digits_view`

  @property
  def num_train(self) -> int:
    return len(self.train_images)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train_images.shape[1:])

  def eval_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of "train" or "heldout", un-augmented."""
    if split == "train":
      return self.train_images, self.train_labels
    if split == "heldout":
      return self.heldout_images, self.heldout_labels
    raise ValueError(f"split is {split!r}; use 'train' or 'heldout'.")

  def num_examples(self, split: str) -> int:
    return len(self.eval_arrays(_SAME_AS_TRAIN.get(split, split))[0])

  def lookup(self, split: str, index: np.ndarray) -> dict[str, np.ndarray]:
    images, labels = self.eval_arrays(_SAME_AS_TRAIN.get(split, split))
    return {"image": images[index], "label": labels[index]}

  def describe(self, split: str, index: int) -> str:
    return f"{self.name} {split} example {index}"


def _digits(config) -> InMemorySource:
  train, heldout = digits.load(config.holdout_fraction, config.split_seed,
                               config.validation_fraction)
  return InMemorySource("digits", train.images, train.labels, heldout.images, heldout.labels, 10)


# ----------------------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root: str, class_names: Optional[list[str]] = None):
  """(paths, labels, class_names) of a folder, paths sorted so the ids are stable.

  A folder of class subfolders (`root/<class>/**/<image>`) gives labels in
  sorted-class order; a flat folder of images gives label -1 (unlabeled).
  With `class_names`, subfolders are labeled by that list (a held-out folder
  takes the training folder's classes).
  """
  if not tf.io.gfile.isdir(root):
    raise MissingDataError(
        f"The image folder {root!r} does not exist. Pass the folder of training images with "
        "--config.dataset.data_dir=<folder> (one subfolder per class, or images directly "
        "inside it for unlabeled data).")
  entries = sorted(tf.io.gfile.listdir(root))
  subdirs = [e.rstrip("/") for e in entries if tf.io.gfile.isdir(os.path.join(root, e))]
  top_images = [e for e in entries if _is_image(e) and e.rstrip("/") not in subdirs]
  if subdirs and top_images:
    raise errors.ConfigError(
        f"The image folder {root!r} holds both images ({top_images[0]!r}, ...) and "
        f"subfolders ({subdirs[0]!r}, ...); use one subfolder per class, or only images "
        "for unlabeled data.")
  paths, labels = [], []
  if subdirs:
    names = sorted(subdirs) if class_names is None else list(class_names)
    unknown = sorted(set(subdirs) - set(names))
    if unknown:
      raise errors.ConfigError(
          f"The folder {root!r} has classes {unknown[:5]} that the training folder "
          f"lacks; its classes must be among the training classes {names[:5]}...")
    for label, name in enumerate(names):
      class_dir = os.path.join(root, name)
      if not tf.io.gfile.isdir(class_dir):
        continue
      found = []
      for dirpath, _, filenames in tf.io.gfile.walk(class_dir):
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
      paths.extend(sorted(found))
      labels.extend([label] * len(found))
  else:
    names = list(class_names or [])
    paths = [os.path.join(root, e) for e in top_images]
    labels = [-1] * len(paths)
  if not paths:
    raise errors.ConfigError(
        f"The image folder {root!r} has no images (files ending in "
        f"{', '.join(IMAGE_EXTENSIONS)}). Expected one subfolder of images per class, or "
        "images directly inside it for unlabeled data.")
  return np.asarray(paths, dtype=object), np.asarray(labels, np.int32), names


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolderSource:
  """Encoded images on disk (local or any tf.io.gfile file system), read by path."""
  paths: dict[str, np.ndarray]    # split -> [N] str
  labels: dict[str, np.ndarray]   # split -> [N] int32, -1 where unlabeled
  num_classes: int
  image_size: int
  eval_crop_fraction: float
  name: str = "image_folder"

  random_access = True
  encoded = True

  @classmethod
  def from_config(cls, config) -> "ImageFolderSource":
    if not config.data_dir:
      raise errors.ConfigError(
          "dataset.name='image_folder' needs --config.dataset.data_dir=<folder of "
          "training images>.")
    if not config.heldout_dir:
      raise errors.ConfigError(
          "dataset.name='image_folder' needs --config.dataset.heldout_dir=<folder of held-out "
          "images> (same class subfolders) for the evaluation at the end of training; to "
          "evaluate on the training images, pass the same folder as data_dir.")
    paths, labels, names = list_image_folder(config.data_dir)
    heldout_paths, heldout_labels, _ = list_image_folder(config.heldout_dir, names)
    return cls(paths={"train": paths, "heldout": heldout_paths},
               labels={"train": labels, "heldout": heldout_labels},
               num_classes=max(len(names), 1),
               image_size=config.image_size or 224,
               eval_crop_fraction=config.eval_crop_fraction or 0.875)

  @property
  def num_train(self) -> int:
    return len(self.paths["train"])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  def num_examples(self, split: str) -> int:
    return len(self._split(split))

  def _split(self, split: str) -> np.ndarray:
    split = _SAME_AS_TRAIN.get(split, split)
    if split not in self.paths:
      raise ValueError(f"split is {split!r}; use 'train' or 'heldout'.")
    return self.paths[split]

  def lookup(self, split: str, index: np.ndarray) -> dict[str, np.ndarray]:
    return {"path": self._split(split)[index].astype(str),
            "label": self.labels[_SAME_AS_TRAIN.get(split, split)][index]}

  def decode(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
    return augment.decode(tf.io.read_file(example["path"]))

  def describe(self, split: str, index: int) -> str:
    return str(self._split(split)[index])


# ----------------------------------------------------------------------------- TFDS


class TFDSDataset(NamedTuple):
  """A TFDS dataset's defaults (each can be overridden in `config.dataset`)."""
  train_split: str
  eval_train_split: str   # labeled images for the kNN bank and train-set embeddings
  heldout_split: str
  label_key: str
  image_size: int
  eval_crop_fraction: float
  prepare: str            # how a user prepares it offline


_BUILD = "run `tfds build {name} --data_dir=<data_dir>` on a machine with internet access"
TFDS_DATASETS = {
    "imagenet2012": TFDSDataset(
        "train", "train", "validation", "label", 224, 0.875,
        "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into "
        "<data_dir>/downloads/manual/, then run `tfds build imagenet2012 --data_dir=<data_dir>` "
        "on a machine with the files"),
    "cifar10": TFDSDataset("train", "train", "test", "label", 32, 1.0,
                           _BUILD.format(name="cifar10")),
    # Clustering on CIFAR-100 is scored against its 20 superclasses (supp. Sec. 2.4).
    "cifar100": TFDSDataset("train", "train", "test", "coarse_label", 32, 1.0,
                            _BUILD.format(name="cifar100")),
    # Pretraining uses the 100k unlabeled images too; they carry label -1.
    "stl10": TFDSDataset("train+unlabeled", "train", "test", "label", 96, 1.0,
                         _BUILD.format(name="stl10")),
}


def _disable_tfds_network():
  """No TFDS code path may reach for GCS or the internet (a run must fail fast instead)."""
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


def check_tfds_prepared(name: str, data_dir: str):
  """The TFDS builder of `name` in `data_dir`; fails at once, never downloading, if not prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _disable_tfds_network()
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  spec = TFDS_DATASETS.get(name)
  how = spec.prepare if spec else f"run `tfds build {name} --data_dir=<data_dir>`"
  builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  if not builder.is_prepared():
    raise MissingDataError(
        f"The TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} (looked for "
        f"{builder.data_dir}). coke_jax never downloads data at run time. To prepare it, "
        f"{how.replace('<data_dir>', data_dir)}; then pass --config.dataset.data_dir={data_dir}. "
        "To train on the bundled data instead, use --config=configs/digits.py.")
  return builder


@dataclasses.dataclass(frozen=True, eq=False)
class TFDSSource:
  """A prepared TFDS dataset, read straight from its TFRecord files.

  Reading the files ourselves (rather than through `builder.as_dataset`)
  gives every record its id: the files of a split are concatenated in file
  order and the id is the record's position in that concatenation.
  """
  builder: Any
  splits: dict[str, str]          # "train" | "eval_train" | "heldout" -> TFDS split expression
  label_key: str
  image_size: int
  eval_crop_fraction: float
  shuffle_buffer: int
  cycle_length: int = 16          # files read at once when streaming

  random_access = False
  encoded = True

  @classmethod
  def from_config(cls, builder, spec: TFDSDataset, config) -> "TFDSSource":
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "tfrecord":
      raise errors.ConfigError(
          f"The TFDS dataset {builder.name!r} in {builder.data_dir} is stored as {file_format!r}; "
          "coke_jax reads TFRecord files. Prepare it with `tfds build "
          f"{builder.name} --file_format=tfrecord --data_dir=<data_dir>`.")
    splits = {"train": config.train_split or spec.train_split,
              "eval_train": config.eval_train_split or spec.eval_train_split,
              "heldout": config.heldout_split or spec.heldout_split}
    label_key = config.label_key or spec.label_key
    source = cls(builder=builder, splits=splits, label_key=label_key,
                 image_size=config.image_size or spec.image_size,
                 eval_crop_fraction=config.eval_crop_fraction or spec.eval_crop_fraction,
                 shuffle_buffer=config.shuffle_buffer)
    if label_key not in builder.info.features:
      raise errors.ConfigError(
          f"dataset.label_key={label_key!r} is not a feature of {builder.name!r}; "
          f"its features are {sorted(builder.info.features)}.")
    for split in splits.values():
      source._instructions(split)  # fails now, not at the end of training, on a bad split
    return source

  @property
  def name(self) -> str:
    return self.builder.name

  @property
  def num_classes(self) -> int:
    return self.builder.info.features[self.label_key].num_classes

  @property
  def num_train(self) -> int:
    return self.num_examples("train")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  def _tfds_split(self, split: str) -> str:
    if split not in self.splits:
      raise ValueError(f"split is {split!r}; use 'train', 'eval_train' or 'heldout'.")
    return self.splits[split]

  def _instructions(self, tfds_split: str) -> list[tuple[str, int, int]]:
    """(file, skip, take) of every piece of `tfds_split` ("a+b[:10%]" allowed), in order."""
    pieces = []
    for part in tfds_split.split("+"):
      try:
        instructions = self.builder.info.splits[part.strip()].file_instructions
      except (KeyError, ValueError) as e:
        raise errors.ConfigError(
            f"The split {part.strip()!r} of {tfds_split!r} is not in "
            f"{self.builder.name!r} (splits: {sorted(self.builder.info.splits)}): "
            f"{e}") from e
      pieces.extend((fi.filename, fi.skip, fi.take) for fi in instructions if fi.take)
    return pieces

  def num_examples(self, split: str) -> int:
    return sum(take for _, _, take in self._instructions(self._tfds_split(split)))

  def slices(self, split: str, lo: int, hi: int) -> list[tuple[str, int, int, int]]:
    """(file, skip, take, first id) covering ids [lo, hi) of `split`."""
    out, start = [], 0
    for filename, skip, take in self._instructions(self._tfds_split(split)):
      a, b = max(lo, start), min(hi, start + take)
      if a < b:
        out.append((filename, skip + a - start, b - a, a))
      start += take
    return out

  def read(self, split: str, lo: int, hi: int,
           shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
    """Examples {index, label, image (encoded)} with ids in [lo, hi) of `split`.

    Without `shuffle_seed`, in id order. With it, the file pieces are
    permuted, read `cycle_length` at a time, and passed through a shuffle
    buffer of `shuffle_buffer` records; the order is a function of the seed.
    """
    pieces = self.slices(split, lo, hi)
    if shuffle_seed is not None:
      pieces = [pieces[i] for i in np.random.default_rng(shuffle_seed).permutation(len(pieces))]
    files, skips, takes, firsts = (list(c) for c in zip(*pieces)) if pieces else ([], [], [], [])
    pieces_ds = tf.data.Dataset.from_tensor_slices((
        tf.constant(files, tf.string), tf.constant(skips, tf.int64), tf.constant(takes, tf.int64),
        tf.constant(firsts, tf.int64)))

    def read_piece(filename, skip, take, first):
      records = tf.data.TFRecordDataset(filename).skip(skip).take(take)
      return tf.data.Dataset.zip(records, tf.data.Dataset.range(first, first + take))

    if shuffle_seed is None:
      ds = pieces_ds.flat_map(read_piece)
    else:
      ds = pieces_ds.interleave(read_piece, cycle_length=self.cycle_length, block_length=1,
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _parse(self, record, index):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    example = self.builder.info.features.deserialize_example(
        record, decoders={"image": tfds.decode.SkipDecoding()})
    return {"index": tf.cast(index, tf.int32), "image": example["image"],
            "label": tf.cast(example[self.label_key], tf.int32)}

  def decode(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
    return augment.decode(example["image"])

  def describe(self, split: str, index: int) -> str:
    return f"{self.name} {self._tfds_split(split)} example {index}"


def labeled_train(source):
  """`source` with its labeled training images as "train", for supervised training (the
  linear probe): STL-10's "train", not the "train+unlabeled" CoKe pretrains on. Raises
  ConfigError when the training images have no labels (a flat image folder)."""
  if isinstance(source, ImageFolderSource) and (source.labels["train"] < 0).any():
    raise errors.ConfigError(
        f"The training images of {source.name!r} are unlabeled (a flat folder): a linear probe "
        "needs labels. Use a folder with one subfolder of images per class.")
  if isinstance(source, TFDSSource):
    return dataclasses.replace(source, splits={**source.splits,
                                               "train": source.splits["eval_train"]})
  return source


def get_source(config):
  """The data source named by `config.dataset.name`."""
  name = config.name
  if name == "digits":
    return _digits(config)
  if name == "fashion_mnist":
    # Imported here: fashion_mnist builds an InMemorySource, so it imports this module.
    from coke_jax.data import fashion_mnist  # pylint: disable=g-import-not-at-top
    return fashion_mnist.load(config.data_dir, config.validation_fraction, config.split_seed)
  if name == "image_folder":
    return ImageFolderSource.from_config(config)
  if name in TFDS_DATASETS:
    builder = check_tfds_prepared(name, config.data_dir)
    return TFDSSource.from_config(builder, TFDS_DATASETS[name], config)
  raise errors.ConfigError(
      f"config.dataset.name is {name!r}; known datasets: "
      f"{sorted(['digits', 'fashion_mnist', 'image_folder', *TFDS_DATASETS])}.")
