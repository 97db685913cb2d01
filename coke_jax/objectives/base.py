"""The interface every training objective implements, and what the trainer hands it.

An objective (CoKe, SwAV, Self-Classifier, ...) owns four things the trainer
only carries around: its learnable parameters beyond the model (prototypes,
classifier heads; optimized with the model by the same optimizer), its other
state (label tables, centers, duals, queues, memory banks, EMA copies), its
per-step computations and its evaluation heads. The trainer, checkpoints,
evaluation, pictures and the linear probe see them only through the methods
of `Objective` below and never name an objective or its state.

Per step, inside the sharded step on this device's rows of the global batch:

  loss(params, state, outputs, batch, ctx) -> (loss, (state, metrics))
      the global loss (the same value on every device; couple rows only through
      `sharding.batch_sum`/`batch_mean`/`gather`), differentiated w.r.t. `params`
      and the model's params; it may return an updated `state`.
  update(params, state, outputs, batch, ctx) -> (params, state, metrics)
      after the optimizer step, with `ctx.model_variables` the new model
      variables and `outputs` under stop-gradient: clustering updates, queues,
      banks, EMA copies; `params` may be projected (SwAV's unit-norm prototypes).
  trainable(params, ctx) -> a pytree of bools like `params`, or None (all)
      parameters whose update and optimizer state stay unchanged this step.

Per epoch end: `end_epoch(params, state, epoch, rng) -> (state, metrics)`.
At the start: `init(rng, model_variables, output_shapes) -> (params, state)`.
Evaluation: `eval_heads(params, state) -> [EvalHead]`.

`outputs` holds the model's outputs for every view, [V, b, ...]: `features`
(backbone), `proj` (unit-norm projection), optionally `pred` (unit-norm
prediction head), and for multi-crop the same keys with `_small` [S, b, ...].
`batch` holds `images` (and `small_images`), `index` [b] (the example's stable
id) and `weight` [b] (0 for padding rows, which must count nowhere); never the
labels. Metrics are scalars, the same on every device.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class StepContext(NamedTuple):
  """What the trainer tells an objective about the current step (all traced)."""
  step: jax.Array          # global step, scan epochs included (int32)
  epoch: jax.Array         # the data epoch of this step; the first scan_epochs are scans
  train_step: jax.Array    # optimizer steps taken before this one (0 during the scan)
  rng: jax.Array           # a PRNG key for this step, the same on every device
  # forward(variables, batch) -> (outputs, batch_stats): the model's training-mode pass over
  # every view of `batch`, as the trainer runs it (per-view BatchNorm statistics), for an
  # objective that runs a second network (an EMA copy) on the same images.
  forward: Callable
  # The model's {"params", "batch_stats"}: in `loss` those at the start of the step (not
  # differentiated), in `update` the new ones after the optimizer step.
  model_variables: Any = None


class EvalHead(NamedTuple):
  """A clustering head as evaluation sees it: scores = outputs[input] @ kernel + bias.

  The predicted cluster of an image is the argmax of its scores; the exemplars
  of cluster k are the images with the highest score for k.
  """
  name: str                              # e.g. "k10_0": K and the head's position
  input: str                             # which model output the head reads: "proj" or "features"
  kernel: np.ndarray                     # [D, K]
  bias: Optional[np.ndarray] = None      # [K]
  train_labels: Optional[np.ndarray] = None  # [N] the last training epoch's assignment, if kept
  size_bound: Optional[float] = None     # the lower bound on a cluster's size, if any (CoKe)

  @property
  def num_clusters(self) -> int:
    return self.kernel.shape[-1]

  def scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """[B, K] scores of a batch of (host) model outputs."""
    s = np.asarray(outputs[self.input], np.float32) @ np.asarray(self.kernel, np.float32)
    return s if self.bias is None else s + np.asarray(self.bias, np.float32)


def head_name(num_clusters: int, position: int) -> str:
  return f"k{num_clusters}_{position}"


@dataclasses.dataclass(frozen=True)
class Objective:
  """The defaults of the interface (see the module docstring); subclasses override them.

  Subclasses are frozen dataclasses of static settings (no arrays), built from
  the objective's config section by their module's `build(config, num_examples)`.
  """

  # Forward-only epochs before the first learning step (CoKe's initialization scan, Sec. 3.3).
  scan_epochs = 0

  def init(self, rng: jax.Array, model_variables=None, output_shapes=None) -> tuple[Any, Any]:
    """(params, state) of a fresh run.

    `model_variables` are the model's initial {"params", "batch_stats"} (an EMA copy
    starts from them); `output_shapes` the shapes of one image's model outputs
    ({"features": [F], "proj": [D], ...}: a head on the features needs F).
    """
    del rng, model_variables, output_shapes
    return {}, ()

  def loss(self, params, state, outputs, batch, ctx: StepContext):
    raise NotImplementedError

  def update(self, params, state, outputs, batch, ctx: StepContext):
    del outputs, batch, ctx
    return params, state, {}

  def trainable(self, params, ctx: StepContext):
    del params, ctx
    return None

  def end_epoch(self, params, state, epoch: jax.Array, rng: jax.Array):
    del params, epoch, rng
    return state, {}

  def eval_heads(self, params, state) -> list[EvalHead]:
    del params, state
    return []

  def fingerprint(self) -> dict[str, Any]:
    """Settings that fix the shapes and meaning of `params` and `state` (checkpoint guard)."""
    return {}


def linear_head(name: str, input_key: str, weights: jax.Array, **kwargs) -> EvalHead:
  """An EvalHead scoring by similarity to the rows of `weights` [K, D] (centers, prototypes)."""
  return EvalHead(name=name, input=input_key, kernel=np.asarray(weights, np.float32).T, **kwargs)


def per_view_mean(x: jax.Array) -> jax.Array:
  """Mean over the view axis of a [V, b, ...] array."""
  return jnp.mean(x, axis=0)
