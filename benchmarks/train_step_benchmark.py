"""Times the train step: per backbone, per objective, against fixed targets, and the label tables.

  python -m benchmarks.train_step_benchmark --backbones=small_cnn,resnet18 --batch_size=128

(from the repository root, so that `configs` imports). A backbone may carry
keyword arguments and the input size may be set for all of them, e.g. the
candidates for Fashion-MNIST (28x28 grayscale):

  python -m benchmarks.train_step_benchmark --image_size=28 --channels=1 --tables=1 \
      --backbones=small_cnn:widths=16-32-64,resnet18:width=32 --batch_size=128

Prints four tables
(--tables picks some):
  1. per backbone at its resolution and per number of views (--num_views):
     compile time, median step time, examples/s and views/s (and the fraction
     of peak FLOP/s when --peak_tflops is given, e.g. 989 for an H100 or H200
     SXM at dense bf16);
  2. the cost of the clustering itself: the CoKe step against the same step
     whose objective keeps its targets fixed (no assignment, duals, centers or
     label writes), at K = --clusters and D = 128;
  3. the step with a label table of 10,000 against one of 10,000,000 examples
     (the tables are donated and updated in place, so this should not matter);
  4. the step of each objective of --objectives (name:views or name:views+small,
     default CoKe with 1 view, SwAV with 2 and with 2 + 6 crops, the paper's Table 6
     comparison) in its ImageNet config on --objective_backbone, with the ratio
     of CoKe's first row to each; Table 6 reports 11.1 / 20.8 = 0.53 minutes per
     ImageNet epoch (CoKe single view / SwAV, 8 V100s).
Tables 2 and 3 use --overhead_backbone with the last of --num_views.

  python -m benchmarks.train_step_benchmark --tables=4 --batch_size=32 --steps=3

and with --recipe=digits each objective's digits config (the README methods table):

  python -m benchmarks.train_step_benchmark --tables=4 --recipe=digits --batch_size=128 \
      --steps=20 --objectives=coke:2,swav:2,self_classifier:2,c2bin:2,local_aggregation:2

Batches are synthetic (random images and ids) and stay on the device: this
measures the step, not the input pipeline (see input_pipeline_benchmark.py).
"""

import dataclasses
import re
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from coke_jax import models
from coke_jax import objectives
from coke_jax import sharding
from coke_jax import train
from configs import coke_single_view
from configs import c2bin
from configs import coke_two_view
from configs import digits
from configs import local_aggregation_imagenet
from configs import self_classifier_imagenet
from configs import swav_imagenet

_BACKBONES = flags.DEFINE_list("backbones", ["small_cnn", "resnet18", "resnet50"],
                               "Backbones for table 1.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after compilation).")
_VIEWS = flags.DEFINE_list("num_views", ["2"], "Views per example (table 1 runs each).")
_TABLES = flags.DEFINE_list("tables", ["1", "2", "3"], "Which tables to print.")
_CLUSTERS = flags.DEFINE_list("clusters", ["3000", "3000", "3000"], "K of each head.")
_OVERHEAD_BACKBONE = flags.DEFINE_string("overhead_backbone", "resnet18",
                                         "Backbone for tables 2 and 3.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak FLOP/s of one device in TFLOP/s; 0: skip.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Side of the input images for every backbone "
                                   "(28 for Fashion-MNIST); 0: each backbone's own.")
_CHANNELS = flags.DEFINE_integer("channels", 0, "Channels of the input images for every "
                                 "backbone (1: grayscale); 0: each backbone's own.")
_OBJECTIVES = flags.DEFINE_list(
    "objectives", ["coke:1", "swav:2", "swav:2+6"], "Table 4: objective:views[+small views].")
_OBJECTIVE_BACKBONE = flags.DEFINE_string("objective_backbone", "resnet50",
                                          "Backbone for table 4.")
_RECIPE = flags.DEFINE_enum("recipe", "imagenet", ["imagenet", "digits"],
                            "Table 4's configs: each objective's ImageNet config on "
                            "--objective_backbone, or configs/digits.py:<objective> as it is "
                            "(its small CNN at 8x8; the README methods table's step times).")
_CPU_TIME = flags.DEFINE_bool("cpu_time", False, "Table 1 adds the median process CPU time per "
                              "step, all threads: steadier than wall-clock on a shared host.")

# Resolution and stem of each backbone in its config.
_RESOLUTION = {"small_cnn": (8, 1, {}), "resnet18": (32, 3, {"cifar_stem": True}),
               "resnet34": (32, 3, {"cifar_stem": True}), "resnet50": (224, 3, {}),
               "vit_s16": (224, 3, {})}


@dataclasses.dataclass(frozen=True)
class FixedTargets(objectives.CoKe):
  """CoKe whose clustering update does nothing: the step's cost without the clustering."""

  def update(self, params, heads, outputs, batch, ctx):
    return params, heads, {}


def parse_backbone(spec: str) -> tuple[str, dict]:
  """'resnet18:width=32:cifar_stem=false' -> ('resnet18', {'width': 32, 'cifar_stem': False}).

  Values are true/false, numbers, or integers joined by '-' for a tuple
  (`small_cnn:widths=16-32-64`; commas would split the flag's list).
  """
  name, *pairs = spec.split(":")
  kwargs = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key or not value:
      raise app.UsageError(f"--backbones entry {spec!r}: {pair!r} is not key=value.")
    if value.lower() in ("true", "false"):
      kwargs[key] = value.lower() == "true"
    elif re.fullmatch(r"\d+(-\d+)+", value):
      kwargs[key] = tuple(int(v) for v in value.split("-"))
    else:
      try:
        number = float(value)
      except ValueError:
        raise app.UsageError(f"--backbones entry {spec!r}: {key}={value!r} is not a number, "
                             "true/false or integers joined by '-'.") from None
      kwargs[key] = int(value) if value.lstrip("-").isdigit() else number
  if name not in _RESOLUTION:
    raise app.UsageError(f"--backbones entry {spec!r}: unknown backbone {name!r}; known: "
                         f"{sorted(_RESOLUTION)}.")
  return name, kwargs


def _config(backbone: str, num_clusters, num_views: int, objective: str = "coke",
            num_small_views: int = 0):
  """The objective's ImageNet config for this many views (CoKe: Table 5 or 7; SwAV:
  swav_imagenet.py; Self-Classifier: its Sec. 7) on `backbone` (a spec of
  `parse_backbone`), at the backbone's resolution unless --image_size/--channels set it."""
  if objective == "coke":
    config = (coke_single_view if num_views == 1 else coke_two_view).get_config()
    config.objective.num_clusters = tuple(num_clusters)
  elif objective == "swav":
    config = swav_imagenet.get_config("multicrop" if num_small_views else None)
  elif objective == "self_classifier":
    config = self_classifier_imagenet.get_config()
    config.objective.column_group_size = 0  # the benchmark's batch, whatever it is
  elif objective == "c2bin":
    config = c2bin.get_config("imagenet")
  elif objective == "local_aggregation":
    config = local_aggregation_imagenet.get_config()
  else:
    raise app.UsageError(f"Unknown objective {objective!r}; known: {list(objectives.NAMES)}.")
  backbone, overrides = parse_backbone(backbone)
  size, channels, kwargs = _RESOLUTION[backbone]
  size, channels = _IMAGE_SIZE.value or size, _CHANNELS.value or channels
  config.model.backbone = backbone
  config.model.backbone_kwargs = {**kwargs, **overrides}
  config.model.dtype = _DTYPE.value
  if backbone == "small_cnn":
    config.model.proj_hidden_dim = 256
    config.model.pred_hidden_dim = min(config.model.pred_hidden_dim, 256)
  config.num_views = num_views
  config.num_small_views = num_small_views
  config.global_batch_size = _BATCH.value
  return config, (size, size, channels)


def _build_step(config, image_shape, num_examples: int, objective_cls, mesh):
  """The jitted learning step on `mesh`, a fresh state and a synthetic global batch."""
  model = models.build_model(config.model, axis_name=sharding.DATA_AXIS)
  objective = objectives.build(config, num_examples)
  if objective_cls is not None:
    objective = objective_cls(**{f.name: getattr(objective, f.name)
                                 for f in dataclasses.fields(objective)})
  tx, schedule = train.make_optimizer(config, steps_per_epoch=1000)
  step = sharding.shard_step(
      lambda s, b: train.train_step(s, b, model=model, objective=objective, tx=tx,
                                    schedule=schedule, steps_per_epoch=1000, learn=True), mesh)
  state = train.create_train_state(config, model, objective, tx, image_shape, mesh)
  state = state.replace(step=jnp.asarray(1000, jnp.int32))  # a learning epoch
  b = config.global_batch_size
  rng = np.random.default_rng(0)
  host = {"images": rng.uniform(size=(b, config.num_views, *image_shape)).astype(np.float32),
          "index": rng.choice(num_examples, b, replace=False).astype(np.int32),
          "weight": np.ones(b, np.float32)}
  if config.num_small_views:
    small = config.augment.small_image_size * image_shape[0] // 224
    host["small_images"] = rng.uniform(
        size=(b, config.num_small_views, small, small, image_shape[-1])).astype(np.float32)
  return step, state, sharding.global_batch_from_host(host, mesh)


def _flops(lowered) -> float:
  cost = lowered.cost_analysis()
  return float(cost.get("flops", 0.0)) if cost else 0.0


def flops_on_cpu(config, image_shape, num_examples: int, objective_cls) -> float:
  """FLOPs of one device's step, counted by lowering it for one CPU device with that device's
  share of the batch (the accelerator's own count can be missing: see `time_step`)."""
  config = config.copy_and_resolve_references()
  config.global_batch_size //= jax.device_count()
  with jax.default_device(jax.devices("cpu")[0]):
    step, state, batch = _build_step(config, image_shape, num_examples, objective_cls,
                                     sharding.make_mesh(jax.devices("cpu")[:1]))
    return _flops(step.lower(state, batch))


def time_step(config, image_shape, num_examples: int, objective_cls=None,
              count_flops: bool = True):
  """(compile seconds, median step seconds, FLOPs per device-step, median process CPU seconds
  per step over all threads) of the learning step."""
  mesh = sharding.make_mesh()
  sharding.check_batch_divides(config.global_batch_size, mesh)
  step, state, batch = _build_step(config, image_shape, num_examples, objective_cls, mesh)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  # Counted on the lowered program: a GPU's compiled program hides its convolutions in cuDNN
  # calls that its cost analysis does not count (ResNet-50: 0.11 instead of 6 TFLOP per step).
  # Some backends count nothing at all (JAX 0.11 on a GPU): the same step is then lowered for
  # the CPU and counted there.
  flops = _flops(lowered) if count_flops else 0.0
  if count_flops and not flops and jax.default_backend() != "cpu":
    flops = flops_on_cpu(config, image_shape, num_examples, objective_cls)
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times, cpu_times = [], []
  for _ in range(_STEPS.value):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  return compile_s, statistics.median(times), flops, statistics.median(cpu_times)


def main(argv):
  del argv
  devices = jax.devices()
  views = [int(v) for v in _VIEWS.value]
  print(f"# {len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
        f"batch {_BATCH.value}, {_DTYPE.value}, median of {_STEPS.value} steps")
  clusters = [int(k) for k in _CLUSTERS.value]

  if "1" in _TABLES.value:
    print("\n| backbone | input | views | compile s | step ms | examples/s | views/s | "
          "TFLOP per device-step |" + (" % of peak |" if _PEAK.value else "")
          + (" CPU ms |" if _CPU_TIME.value else ""))
    print("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if _PEAK.value else "")
          + (" --- |" if _CPU_TIME.value else ""))
    for backbone in _BACKBONES.value:
      for num_views in views:
        config, shape = _config(backbone, clusters, num_views)
        compile_s, step_s, flops, cpu_s = time_step(config, shape, 1_281_167)
        row = (f"| {backbone} | {shape[0]}x{shape[1]}x{shape[2]} | {num_views} | "
               f"{compile_s:.1f} | {step_s * 1e3:.1f} | {_BATCH.value / step_s:,.0f} | "
               f"{num_views * _BATCH.value / step_s:,.0f} | "
               + (f"{flops / 1e12:.3f} |" if flops else "n/a |"))
        if _PEAK.value:
          # cost_analysis counts the per-device program; all devices run one each.
          row += (f" {100 * flops / step_s / (_PEAK.value * 1e12):.1f} |" if flops else " n/a |")
        if _CPU_TIME.value:
          row += f" {cpu_s * 1e3:,.0f} |"
        print(row, flush=True)

  config, shape = _config(_OVERHEAD_BACKBONE.value, clusters, views[-1])
  if "2" in _TABLES.value:
    print(f"\nClustering cost ({_OVERHEAD_BACKBONE.value}, {views[-1]} views, "
          f"K = {'+'.join(_CLUSTERS.value)}, D = {config.model.embed_dim}, N = 1,281,167)")
    print("| step | step ms | vs fixed targets |")
    print("| --- | --- | --- |")
    _, fixed, _, _ = time_step(config, shape, 1_281_167, FixedTargets, count_flops=False)
    _, coke, _, _ = time_step(config, shape, 1_281_167, count_flops=False)
    print(f"| fixed targets | {fixed * 1e3:.1f} | |")
    print(f"| CoKe | {coke * 1e3:.1f} | {100 * (coke / fixed - 1):+.1f}% |", flush=True)

  if "3" in _TABLES.value:
    print(f"\nLabel-table size ({_OVERHEAD_BACKBONE.value}, {views[-1]} views)")
    print("| N (examples) | label tables MB | step ms |")
    print("| --- | --- | --- |")
    for n in (10_000, 10_000_000):
      _, step_s, _, _ = time_step(config, shape, n, count_flops=False)
      table_mb = 2 * len(clusters) * n * 4 / 2**20
      print(f"| {n:,} | {table_mb:,.0f} | {step_s * 1e3:.1f} |", flush=True)


  if "4" in _TABLES.value:
    if _RECIPE.value == "imagenet":
      print(f"\nObjectives ({_OBJECTIVE_BACKBONE.value}, batch {_BATCH.value}, their ImageNet "
            "configs); CoKe's Table 6: 11.1 / 20.8 = 0.53 min per epoch (CoKe 1 view / SwAV)")
    else:
      print(f"\nObjectives (configs/digits.py:<objective>, batch {_BATCH.value})")
    print("| objective | views | step ms | images/s | first row / this |")
    print("| --- | --- | --- | --- | --- |")
    first = None
    for spec in _OBJECTIVES.value:
      name, _, views = spec.partition(":")
      large, _, small = (views or "2").partition("+")
      if _RECIPE.value == "imagenet":
        config, shape = _config(_OBJECTIVE_BACKBONE.value, clusters, int(large), name,
                                int(small or 0))
        num_examples = 1_281_167
      else:
        config, shape, num_examples = digits.get_config(name), (8, 8, 1), 1_438
        config.num_views, config.num_small_views = int(large), int(small or 0)
        config.global_batch_size = _BATCH.value
      _, step_s, _, _ = time_step(config, shape, num_examples, count_flops=False)
      first = first or step_s
      print(f"| {name} | {views} | {step_s * 1e3:,.0f} | {_BATCH.value / step_s:,.1f} | "
            f"{first / step_s:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
