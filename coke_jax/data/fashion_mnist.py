"""Fashion-MNIST from its original IDX files: 70,000 real 28x28 images, offline.

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, arXiv:1708.07747): 60,000
training and 10,000 test ("t10k") grayscale images of 28x28 pixels, 10
balanced classes of clothing. Debian packages the original files:
`apt-get install dataset-fashion-mnist` puts the four gzipped IDX files in
/usr/share/datasets/fashion-mnist, the default `config.dataset.data_dir`.
Nothing is ever downloaded.

The training files are pretraining's "train" split; the t10k files are the
held-out split, never seen in training or tuning. With
`dataset.validation_fraction` > 0, a stratified share of the training images
stands in for the held-out split and the t10k files are not read at all.

IDX (LeCun et al., the MNIST page, yann.lecun.com/exdb/mnist): a magic number of
two zero bytes, a type code (0x08: unsigned byte) and the number of dimensions;
each dimension as a big-endian uint32; then the values, big-endian, in row-major
order. Files may be gzipped or not (told apart by their first bytes).

Host memory: the training images as float32 take 60,000 x 784 x 4 B = 188 MB,
the held-out ones 31 MB.
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from coke_jax import errors
from coke_jax.data import sources
from coke_jax.data import splits

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_COMMAND = "apt-get install dataset-fashion-mnist"
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# split -> (images file, labels file), each read as NAME.gz or NAME.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "heldout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# IDX type codes and their big-endian numpy types.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"
_REPLACE = ("replace it with an intact copy (`apt-get install --reinstall "
            "dataset-fashion-mnist` for the Debian files)")
_REPLACE_BOTH = _REPLACE.replace("it with an intact copy", "them with intact copies")


def read_idx(path: str) -> np.ndarray:
  """The array stored in the IDX file `path`, gzipped or plain.

  Raises ConfigError, naming the file, when it is not an IDX file (wrong
  magic number or type code), a damaged gzip stream, or when its size is not
  exactly the header's: a truncated file never reads as a shorter dataset.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # truncated stream, bad CRC, bad data
      raise errors.ConfigError(f"{path} is a damaged gzip file ({e}); {_REPLACE}.") from e
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or not raw[3]:
    raise errors.ConfigError(
        f"{path} is not an IDX file: it starts with 0x{raw[:4].hex() or '(empty)'}, not 0x0000 "
        f"followed by a type code ({', '.join(f'{c:#04x}' for c in _IDX_DTYPES)}) and the "
        f"number of dimensions; {_REPLACE}.")
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise errors.ConfigError(
        f"{path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header of "
        f"{ndim} dimensions; {_REPLACE}.")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  expected, found = math.prod(shape) * dtype.itemsize, len(raw) - header
  if found != expected:
    what = "is truncated" if found < expected else "is corrupt (bytes past the end)"
    raise errors.ConfigError(
        f"{path} {what}: its header declares shape {list(shape)} of {dtype.name}, "
        f"{expected:,} bytes of data, but {found:,} follow the header; {_REPLACE}.")
  return np.frombuffer(raw, dtype, count=math.prod(shape), offset=header).reshape(shape)


def _find(data_dir: str, name: str):
  """The path of NAME.gz or NAME in `data_dir`, or None."""
  for candidate in (name + ".gz", name):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  return None


def read_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W], labels int32 [N]) from one split's pair of IDX files.

  Raises ConfigError when a file holds the wrong kind of array (e.g. the
  image and label files swapped), the two counts differ, or a label is not
  a class in [0, 10).
  """
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.dtype != np.uint8 or images.ndim != 3:
    raise errors.ConfigError(
        f"{images_path} holds {images.dtype.name} of shape {list(images.shape)}; Fashion-MNIST "
        "images are unsigned bytes of shape [N, 28, 28]. Are the image and label files swapped?")
  if labels.dtype != np.uint8 or labels.ndim != 1:
    raise errors.ConfigError(
        f"{labels_path} holds {labels.dtype.name} of shape {list(labels.shape)}; Fashion-MNIST "
        "labels are unsigned bytes of shape [N]. Are the image and label files swapped?")
  if len(images) != len(labels):
    raise errors.ConfigError(
        f"{images_path} holds {len(images):,} images but {labels_path} holds {len(labels):,} "
        "labels; a split's two files must have the same count (a file of another split or "
        f"dataset?); {_REPLACE_BOTH}.")
  if not len(images):
    raise errors.ConfigError(f"{images_path} holds no images; {_REPLACE}.")
  bad = np.flatnonzero(labels >= NUM_CLASSES)
  if len(bad):
    raise errors.ConfigError(
        f"{labels_path} has label {labels[bad[0]]} at position {bad[0]} ({len(bad):,} label(s) "
        f"outside 0-{NUM_CLASSES - 1}); Fashion-MNIST has {NUM_CLASSES} classes; {_REPLACE}.")
  return images, labels.astype(np.int32)


def _as_float(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W] -> float32 [N, H, W, 1] in [0, 1]."""
  out = images.astype(np.float32)[..., None]
  out /= 255.0
  return out


def load(data_dir: str = "", validation_fraction: float = 0.0,
         split_seed: int = 0) -> sources.InMemorySource:
  """Fashion-MNIST as an in-memory source: train and held-out (t10k) images and labels.

  `data_dir` ("" = /usr/share/datasets/fashion-mnist) holds the four IDX
  files, gzipped or not. With `validation_fraction` > 0, that share of every
  class of the training images (drawn with `split_seed`) is returned as the
  held-out split and the rest as train; the t10k files are then neither read
  nor needed. Missing files raise MissingDataError naming the folder and the
  install command; damaged ones ConfigError (`read_idx`, `read_split`).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise errors.ConfigError(
        f"dataset.validation_fraction is {validation_fraction}; it must be in "
        "[0, 1) (0: evaluate on the held-out t10k images).")
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  needed = ("train",) if validation_fraction else ("train", "heldout")
  paths = {split: [_find(data_dir, name) for name in FILES[split]] for split in needed}
  missing = [name for split in needed for name, path in zip(FILES[split], paths[split])
             if path is None]
  if missing:
    raise sources.MissingDataError(
        f"Fashion-MNIST is not in {data_dir!r}: no {', '.join(missing)} (.gz or uncompressed). "
        f"coke_jax never downloads data: install the files with `{INSTALL_COMMAND}` (into "
        f"{DEFAULT_DATA_DIR}), or pass --config.dataset.data_dir=<folder with the IDX files>.")
  train_images, train_labels = read_split(*paths["train"])
  if validation_fraction:
    validation = splits.stratified_mask(train_labels, validation_fraction, split_seed)
    heldout_images, heldout_labels = train_images[validation], train_labels[validation]
    train_images, train_labels = train_images[~validation], train_labels[~validation]
  else:
    heldout_images, heldout_labels = read_split(*paths["heldout"])
    if heldout_images.shape[1:] != train_images.shape[1:]:
      raise errors.ConfigError(
          f"The held-out images in {paths['heldout'][0]} are "
          f"{'x'.join(map(str, heldout_images.shape[1:]))} but the training images in "
          f"{paths['train'][0]} are {'x'.join(map(str, train_images.shape[1:]))}; both "
          "splits must come from the same dataset.")
  return sources.InMemorySource("fashion_mnist", _as_float(train_images), train_labels,
                                _as_float(heldout_images), heldout_labels, NUM_CLASSES)
