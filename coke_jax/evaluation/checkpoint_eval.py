"""kNN, clustering metrics and pictures of a saved pretraining checkpoint (`--mode=eval`).

The same evaluation as at the end of pretraining, on any checkpoint of a run,
on any number of devices: restores the model's params and BN statistics and
the clustering state (not the optimizer state), then writes
`<workdir>/eval_metrics.json`, TensorBoard summaries and pictures to `workdir`.
"""

import json
import os
from typing import Any, Optional

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import tensorflow as tf

from coke_jax import models
from coke_jax import objectives
from coke_jax import sharding
from coke_jax.data import sources
from coke_jax.evaluation import pictures
from coke_jax.evaluation import pretraining_eval
from coke_jax.evaluation import restore


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, pretrain_workdir: str,
                        step: Optional[int] = None) -> dict[str, Any]:
  """Evaluates checkpoint `step` (None: the latest) of the run in `pretrain_workdir`."""
  mesh = sharding.make_mesh()
  source = sources.get_source(config.dataset)
  model = models.build_model(config.model)
  objective = objectives.build_objective(config, source.num_train)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((2, *source.image_shape)), train=False))
  target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {}),
            "objective": jax.eval_shape(objective.init, jax.random.PRNGKey(0))}
  restored, step = restore.restore(
      pretrain_workdir, target, mesh, config, source.num_train, step=step,
      compare=("dataset.name", "model", "objective.name", "objective.num_clusters",
               "num_train_examples"))
  variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
  results, drawn = pretraining_eval.evaluate_model(model, variables, objective,
                                                   restored["objective"], source, config, mesh,
                                                   draw=True)
  results["step"] = step
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)
  writer.write_scalars(step, pretraining_eval.flat_scalars(results, "eval"))
  if jax.process_index() == 0:
    pictures.write(writer, workdir, step, drawn, tag=f"step{step}")
  pretraining_eval.write_cluster_sizes(writer, workdir, step, f"step{step}", objective,
                                       restored["objective"])
  writer.flush()
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(workdir, "eval_metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  logging.info("Checkpoint %s/%d: %s", restore.checkpoint_dir(pretrain_workdir), step,
               pretraining_eval.summary(results))
  return results
