"""Eval-mode network outputs over a whole split, data-parallel over the device mesh.

Every process feeds its rows of each global batch (`input_pipeline.eval_batches`)
and receives the whole batch's outputs back (replicated), so kNN, clustering
metrics and pictures can run on any host. Padding rows (weight 0) are dropped.
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import numpy as np

from coke_jax import sharding
from coke_jax.data import input_pipeline


@dataclasses.dataclass(frozen=True)
class ModelOutputs:
  """`apply_fn` for an `SSLModel`: its eval-mode `features`, `proj` (and `pred`)."""
  model: nn.Module

  def __call__(self, variables, images):
    return self.model.apply(variables, images, train=False)


@functools.partial(jax.jit, static_argnames=("apply_fn", "out_sharding"))
def _step(variables, batch, *, apply_fn, out_sharding):
  out = dict(apply_fn(variables, batch["images"]))
  out.update(label=batch["label"], weight=batch["weight"])
  return jax.lax.with_sharding_constraint(out, out_sharding)


def embed(apply_fn: Callable, variables, source, split: str, batch_size: int,
          mesh) -> dict[str, np.ndarray]:
  """`apply_fn(variables, images) -> dict of [b, ...]` over the un-augmented `split`.

  Returns the outputs concatenated in the split's order, plus `label` [N]. The
  batch is split over `mesh` (`batch_size` must divide over its devices) and
  `variables` should already be replicated on it. `apply_fn` must be hashable
  and compare equal across calls (e.g. `ModelOutputs(model)`), so the compiled
  step is reused by every evaluation of a run.
  """
  sharding.check_batch_divides(batch_size, mesh, jax.process_count())
  outs = []
  for host_batch in input_pipeline.eval_batches(source, split, batch_size, jax.process_index(),
                                                jax.process_count()):
    out = _step(variables, sharding.global_batch_from_host(host_batch, mesh), apply_fn=apply_fn,
                out_sharding=sharding.replicated(mesh))
    out = sharding.host_copy(out)
    keep = out.pop("weight") > 0
    outs.append({k: v[keep] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
