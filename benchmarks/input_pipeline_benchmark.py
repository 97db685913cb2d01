"""Images/s and host CPU-ms per image of the input pipeline, and the device augmentation's cost.

  nice -n 10 python -m benchmarks.input_pipeline_benchmark --json=/tmp/pipeline.json

Data written to a temporary folder: 32 px PNGs (synthetic, as TFDS stores
CIFAR) and, for 224 px crops, real-size JPEGs like ImageNet's: crops of about
400 x 350 of scikit-learn's two sample photos (random scale, position and
flip, luminance grain), quality 95, about 100 KB. Each row decodes and
augments with the official CoKe recipe: 1 view, the asymmetric 2 views, and
multi-crop 2 large + 6 small (small side 96 at 224 px, 16 at 32 px). Sources:
an image folder (random access) and the same images as TFDS TFRecord files
(streamed with the per-epoch file and buffer shuffle). Paths (--paths):
"device" (`augment.on_device`: the host decodes and draws the parameters and
sends the image on a uint8 canvas; crop, colour, blur, solarize, flip and
normalization run in the step) and "host" (everything on the host, float32
out).

Host CPU time counts every thread of this process; on a shared machine it is
the steadier figure (n free cores give about n * 1000 / ms images/s). With
--json the rows are also written as a list of objects with the keys source
("image_folder" | "tfds"), crop, views, small_views, images_per_s,
host_cpu_ms_per_image and augment ("device" | "host").

The train step column is one learning step of ResNet-18 (32 px) or ResNet-50
(224 px) with the same views, on this machine's default JAX device, at the
batch given. The last table is the device side of the device path:
`device_augment.augment_batch` (jitted) per image, against that step per
image (--device_batch images of each view set, on the default device).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import math
import shutil
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
from coke_jax.data import device_augment
from coke_jax.data import input_pipeline
from coke_jax.data import sources
from configs import coke_two_view

_NUM_IMAGES = flags.DEFINE_list("num_images", ["1024", "384"], "Images at 32 px and at 224 px.")
_BATCH = flags.DEFINE_list("batch", ["128", "32"], "Pipeline batch at 32 px and at 224 px.")
_STEP_BATCH = flags.DEFINE_list("step_batch", ["64", "8"], "Train-step batch at 32 / 224 px; "
                                "0 skips the train step (and the device cost's ratio).")
_SIZES = flags.DEFINE_list("sizes", ["32", "224"], "Crop sizes to run.")
_PATHS = flags.DEFINE_list("paths", ["device", "host"], "Augmentation paths to run.")
_SOURCES = flags.DEFINE_list("sources", ["image_folder", "tfds"], "Sources to run.")
_DEVICE_BATCH = flags.DEFINE_integer("device_batch", 32, "Images per augment_batch call in the "
                                     "device-cost table (0 skips it).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Epochs per pipeline row; the best is kept.")
_JSON = flags.DEFINE_string("json", None, "Also write the pipeline rows here, as JSON.")

_VIEWS = (("1 view", 1, 0), ("2 views", 2, 0), ("2 + 6 multi-crop", 2, 6))


def _photo_crops(count: int, rng: np.random.Generator):
  """ImageNet-like JPEG bytes: ~400 x 350 crops of real photos, quality 95, about 100 KB."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images  # two 427 x 640 photos
  for i in range(count):
    scale = rng.uniform(0.88, 1.0)
    photo = photos[i % 2]
    photo = tf.image.resize(photo, [int(photo.shape[0] * scale), int(photo.shape[1] * scale)],
                            antialias=True).numpy()
    h, w = int(rng.integers(330, 370)), int(rng.integers(380, 420))
    top, left = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
    crop = photo[top:top + h, left:left + w]
    crop = crop[:, ::-1] if rng.uniform() < 0.5 else crop
    # Luminance grain: photos of the sample's smoothness compress to ~60 KB, ImageNet's to ~110.
    crop = np.clip(crop + rng.normal(0, 14, (h, w, 1)), 0, 255).round().astype(np.uint8)
    yield tf.io.encode_jpeg(crop, quality=95).numpy()


def _write_images(folder: str, count: int, size: int) -> tuple[float, str]:
  """PNG 32 x 32 (synthetic) or JPEG photo crops; returns (mean file KB, mean H x W)."""
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  total, shapes = 0, []
  if size == 224:
    files = _photo_crops(count, rng)
  else:
    def synthetic():
      for _ in range(count):
        coarse = rng.uniform(0, 255, (1, 6, 8, 3)).astype(np.float32)
        image = tf.image.resize(coarse, [32, 32], method="bicubic")[0].numpy()
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        yield tf.io.encode_png(image).numpy()
    files = synthetic()
  for i, data in enumerate(files):
    with open(os.path.join(folder, f"{i:05d}.{'png' if size == 32 else 'jpg'}"), "wb") as f:
      f.write(data)
    total += len(data)
    shapes.append(tf.image.extract_jpeg_shape(data).numpy()[:2] if size == 224 else (32, 32))
  h, w = np.mean(shapes, axis=0)
  return total / count / 1024, f"{w:.0f}x{h:.0f}"


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


def _config(size: int, num_views: int, num_small: int, batch: int, source_name: str, data_dir,
            on_device: bool = False):
  config = coke_two_view.get_config()
  with config.unlocked():
    config.augment.on_device = on_device
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


def pipeline_rate(source, config, repeats: int) -> tuple[float, float]:
  """(images/s, CPU ms per image) over one epoch, after the first batch (tracing, buffer fill).

  CPU time counts every thread of this process; on a shared machine it is
  the steadier figure (images/s on n free cores is about n * 1000 / ms). The
  best of `repeats` epochs: other jobs only ever add time.
  """
  best = (0.0, float("inf"))
  for _ in range(repeats):
    batches = input_pipeline.train_batches(source, config, epoch=1)
    next(batches)
    start, cpu_start, count = time.perf_counter(), time.process_time(), 0
    for batch in batches:
      count += len(batch["index"])
    best = (max(best[0], count / (time.perf_counter() - start)),
            min(best[1], 1e3 * (time.process_time() - cpu_start) / count))
  return best


def step_rate(config, source, batch_size: int) -> tuple[float, float]:
  """(images/s, CPU-ms per image) of learning steps on the default device (after compiling)."""
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
  steps, start, cpu_start = 3, time.perf_counter(), time.process_time()
  for _ in range(steps):
    state, metrics = trainer.step(state, batch, epoch=1)
  jax.block_until_ready(metrics)
  return (steps * batch_size / (time.perf_counter() - start),
          1e3 * (time.process_time() - cpu_start) / (steps * batch_size))


def device_cost(config, source, batch_size: int) -> float:
  """CPU-ms (device time on an accelerator) per image of the jitted augment_batch."""
  with config.unlocked():
    config.global_batch_size = batch_size
    config.augment.on_device = True
  host = next(iter(input_pipeline.train_batches(source, config, epoch=1)))
  augment = jax.jit(functools.partial(device_augment.augment_batch,
                                      image_size=config.dataset.image_size,
                                      small_image_size=config.augment.small_image_size))
  batch = jax.device_put(host)
  jax.block_until_ready(augment(batch))
  reps = 5
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(reps):
    jax.block_until_ready(augment(batch))
  on_cpu = jax.devices()[0].platform == "cpu"
  elapsed = (time.process_time() - cpu_start) if on_cpu else (time.perf_counter() - start)
  return 1e3 * elapsed / (reps * batch_size)


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")
  root = tempfile.mkdtemp()
  rows, json_rows, costs = [], [], []
  try:
    for k, size in enumerate(int(s) for s in ("32", "224")):
      if str(size) not in _SIZES.value:
        continue
      count, batch = int(_NUM_IMAGES.value[k]), int(_BATCH.value[k])
      step_batch = int(_STEP_BATCH.value[k])
      folder = os.path.join(root, f"images{size}")
      kb, shape = _write_images(folder, count, size)
      data_dir = os.path.join(root, f"tfds{size}")
      bench = type(f"CokeBenchImages{size}", (_BenchImages,),
                   {"name": f"coke_bench_images{size}", "folder": folder})
      if "tfds" in _SOURCES.value:
        bench(data_dir=data_dir).download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=8))
      spec = sources.TFDS_DATASETS["imagenet2012"]._replace(train_split="train",
                                                             heldout_split="train")
      named = {"image_folder": ("image_folder", folder), "tfds": (bench.name, data_dir)}
      with mock.patch.dict(sources.TFDS_DATASETS, {bench.name: spec}):
        for label, views, small in _VIEWS:
          consume, step_ms = float("nan"), float("nan")
          for path in _PATHS.value:
            rates = {}
            for name in _SOURCES.value:
              config = _config(size, views, small, batch, *named[name], path == "device")
              source = sources.get_source(config.dataset)
              rates[name] = pipeline_rate(source, config, _REPEATS.value)
              json_rows.append({"source": name, "crop": size, "views": views,
                                "small_views": small, "images_per_s": round(rates[name][0], 1),
                                "host_cpu_ms_per_image": round(rates[name][1], 3),
                                "augment": path})
            if step_batch and math.isnan(consume):  # the step once per view set
              consume, step_cpu_ms = step_rate(config, source, step_batch)
              on_cpu = jax.devices()[0].platform == "cpu"
              step_ms = step_cpu_ms if on_cpu else 1e3 / consume
            nan = (float("nan"), float("nan"))
            rows.append((f"{size} px", label, f"{kb:.0f} KB, {shape}", path,
                         *rates.get("image_folder", nan), *rates.get("tfds", nan), consume,
                         step_batch))
            print(f"{rows[-1]}", flush=True)
          if _DEVICE_BATCH.value and "device" in _PATHS.value:
            config = _config(size, views, small, batch, *named[_SOURCES.value[0]], True)
            aug_ms = device_cost(config, sources.get_source(config.dataset), _DEVICE_BATCH.value)
            costs.append((f"{size} px", label, aug_ms, step_ms, step_batch))
            print(f"{costs[-1]}", flush=True)
  finally:
    shutil.rmtree(root)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(json_rows, f, indent=1)
  device = jax.devices()[0].device_kind
  print(f"\nInput pipeline, images/s and host CPU-ms per image ({os.cpu_count()} CPUs; JAX "
        f"device: {device})")
  print("| crop | views | files | augment | folder img/s | folder CPU ms/img | TFDS img/s "
        "| TFDS CPU ms/img | train step img/s (batch) |")
  print("|---|---|---|---|---:|---:|---:|---:|---:|")
  for size, label, files, path, f_rate, f_ms, t_rate, t_ms, consume, step_batch in rows:
    print(f"| {size} | {label} | {files} | {path} | {f_rate:,.0f} | {f_ms:.2f} | {t_rate:,.0f} "
          f"| {t_ms:.2f} | {consume:,.1f} ({step_batch}) |")
  if costs:
    unit = "CPU ms" if jax.devices()[0].platform == "cpu" else "ms"
    print(f"\nDevice side of the device path: augment_batch per image ({unit}, batch "
          f"{_DEVICE_BATCH.value}) against the train step per image ({device})")
    print(f"| crop | views | augment_batch {unit}/img | train step {unit}/img (batch) | share |")
    print("|---|---|---:|---:|---:|")
    for size, label, aug_ms, step_ms, step_batch in costs:
      print(f"| {size} | {label} | {aug_ms:.2f} | {step_ms:,.0f} ({step_batch}) "
            f"| {aug_ms / step_ms:.2%} |")


if __name__ == "__main__":
  app.run(main)
