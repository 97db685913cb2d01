"""Images/s of the input pipeline beside the train step's consumption, at 32 and 224 pixels.

  nice -n 10 python -m benchmarks.input_pipeline_benchmark

Synthetic data written to a temporary folder: 32 px PNGs (as TFDS stores
CIFAR) and ImageNet-sized JPEGs (random sizes around 400 x 450, smooth
content with noise, quality 90) for 224 px crops. Each row decodes and
augments with the official CoKe recipe: 1 view, the asymmetric 2 views, and
multi-crop 2 large + 6 small (small side 96 at 224 px, 16 at 32 px). Sources:
an image folder (random access) and the same images as TFDS TFRecord files
(streamed with the per-epoch file and buffer shuffle). The train step column
is one learning step of ResNet-18 (32 px) or ResNet-50 (224 px) with the
same views, on this machine's default JAX device, at the batch given.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile
import time
from unittest import mock

from absl import app
from absl import flags
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from coke_jax import sharding
from coke_jax import train
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from configs import coke_two_view

_NUM_IMAGES = flags.DEFINE_list("num_images", ["1024", "192"], "Images at 32 px and at 224 px.")
_BATCH = flags.DEFINE_list("batch", ["128", "32"], "Pipeline batch at 32 px and at 224 px.")
_STEP_BATCH = flags.DEFINE_list("step_batch", ["64", "8"], "Train-step batch at 32 / 224 px; "
                                "0 skips the train step.")
_SIZES = flags.DEFINE_list("sizes", ["32", "224"], "Crop sizes to run.")

_VIEWS = (("1 view", 1, 0), ("2 views", 2, 0), ("2 + 6 multi-crop", 2, 6))


def _write_images(folder: str, count: int, size: int) -> float:
  """Synthetic images, PNG 32 x 32 or JPEG around 400 x 450; returns the mean file size in KB."""
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  total = 0
  for i in range(count):
    if size == 32:
      h, w = 32, 32
    else:
      h, w = int(rng.integers(330, 470)), int(rng.integers(380, 520))
    coarse = rng.uniform(0, 255, (1, 6, 8, 3)).astype(np.float32)
    image = tf.image.resize(coarse, [h, w], method="bicubic")[0].numpy()
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    data = (tf.io.encode_png(image) if size == 32 else
            tf.io.encode_jpeg(image, quality=90)).numpy()
    with open(os.path.join(folder, f"{i:05d}.{'png' if size == 32 else 'jpg'}"), "wb") as f:
      f.write(data)
    total += len(data)
  return total / count / 1024


class _BenchImages(tfds.core.GeneratorBasedBuilder):
  """The folder's images as a TFDS dataset (TFRecord files, 8 shards)."""
  VERSION = tfds.core.Version("1.0.0")
  folder = ""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, name in enumerate(sorted(os.listdir(self.folder))):
      yield name, {"image": os.path.join(self.folder, name), "label": i % 10}


def _config(size: int, num_views: int, num_small: int, batch: int, source_name: str, data_dir):
  config = coke_two_view.get_config()
  config.dataset.name = source_name
  config.dataset.data_dir = data_dir
  config.dataset.heldout_dir = data_dir
  config.dataset.image_size = size
  config.dataset.shuffle_buffer = 10_000
  config.num_views, config.num_small_views = num_views, num_small
  config.augment.small_image_size = 96 if size == 224 else 16
  config.global_batch_size = batch
  config.objective.num_clusters = (10,)
  if size == 32:
    config.model.backbone = "resnet18"
    config.model.backbone_kwargs.cifar_stem = True  # supp. Sec. 2.4: ResNet-18 on CIFAR
  return config


def pipeline_rate(source, config) -> tuple[float, float]:
  """(images/s, CPU ms per image) over one epoch, after the first batch (tracing, buffer fill).

  CPU time counts every thread of this process; on a shared machine it is
  the steadier figure (images/s on n free cores is about n * 1000 / ms).
  """
  batches = input_pipeline.train_batches(source, config, epoch=1)
  next(batches)
  start, cpu_start, count = time.perf_counter(), time.process_time(), 0
  for batch in batches:
    count += len(batch["index"])
  return (count / (time.perf_counter() - start),
          1e3 * (time.process_time() - cpu_start) / count)


def step_rate(config, source, batch_size: int) -> float:
  """Images/s of learning steps on the default device (after compiling)."""
  with config.unlocked():
    config.global_batch_size = batch_size
  mesh = sharding.make_mesh(jax.devices()[:1])
  trainer = train.Trainer(config, source, mesh)
  state = trainer.init_state()
  size, small = config.dataset.image_size, config.augment.small_image_size
  host = {"images": np.zeros((batch_size, config.num_views, size, size, 3), np.float32),
          "index": np.arange(batch_size, dtype=np.int32) % source.num_train,
          "weight": np.ones(batch_size, np.float32)}
  if config.num_small_views:
    host["small_images"] = np.zeros((batch_size, config.num_small_views, small, small, 3),
                                    np.float32)
  batch = sharding.global_batch_from_host(host, mesh)
  state, metrics = trainer.step(state, batch, epoch=1)
  jax.block_until_ready(metrics)
  steps, start = 3, time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.step(state, batch, epoch=1)
  jax.block_until_ready(metrics)
  return steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")
  root = tempfile.mkdtemp()
  rows = []
  try:
    for k, size in enumerate(int(s) for s in ("32", "224")):
      if str(size) not in _SIZES.value:
        continue
      count, batch = int(_NUM_IMAGES.value[k]), int(_BATCH.value[k])
      step_batch = int(_STEP_BATCH.value[k])
      folder = os.path.join(root, f"images{size}")
      kb = _write_images(folder, count, size)
      data_dir = os.path.join(root, f"tfds{size}")
      bench = type(f"CokeBenchImages{size}", (_BenchImages,),
                   {"name": f"coke_bench_images{size}", "folder": folder})
      bench(data_dir=data_dir).download_and_prepare(
          download_config=tfds.download.DownloadConfig(num_shards=8))
      spec = sources.TFDS_DATASETS["imagenet2012"]._replace(train_split="train",
                                                             heldout_split="train")
      with mock.patch.dict(sources.TFDS_DATASETS, {bench.name: spec}):
        for label, views, small in _VIEWS:
          rates = {}
          for source_name, directory in (("image_folder", folder), (bench.name, data_dir)):
            config = _config(size, views, small, batch, source_name, directory)
            source = sources.get_source(config.dataset)
            rates[source_name == "image_folder"] = pipeline_rate(source, config)
          consume = step_rate(config, source, step_batch) if step_batch else float("nan")
          rows.append((f"{size} px", label, f"{kb:.0f} KB", *rates[True], *rates[False],
                       consume, step_batch))
          print(f"{rows[-1]}", flush=True)
  finally:
    shutil.rmtree(root)
  print(f"\nInput pipeline, images/s ({os.cpu_count()} CPUs; JAX device: "
        f"{jax.devices()[0].device_kind})")
  print("| crop | views | file | folder img/s | folder CPU ms/img | TFDS img/s | TFDS CPU ms/img "
        "| train step img/s (batch) |")
  print("|---|---|---|---:|---:|---:|---:|---:|")
  for size, label, kb, f_rate, f_ms, t_rate, t_ms, consume, step_batch in rows:
    print(f"| {size} | {label} | {kb} | {f_rate:,.0f} | {f_ms:.2f} | {t_rate:,.0f} | {t_ms:.2f} "
          f"| {consume:,.1f} ({step_batch}) |")


if __name__ == "__main__":
  app.run(main)
