"""kNN, clustering metrics and pictures of a saved pretraining checkpoint (`--mode=eval`).

The same evaluation as at the end of pretraining, on any checkpoint of a run,
on any number of devices: restores the model's params and BN statistics and
the objective's params and state (not the optimizer state), then writes
`<workdir>/eval_metrics.json`, TensorBoard summaries and pictures to `workdir`.
"""

import json
import os
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import tensorflow as tf

from coke_jax import checkpointing
from coke_jax import sharding
from coke_jax import train
from coke_jax import writers
from coke_jax.data import sources
from coke_jax.evaluation import pictures
from coke_jax.evaluation import pretraining_eval
from coke_jax.evaluation import restore


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        pretrain_workdir: Optional[str], step: Optional[int] = None
                        ) -> dict[str, Any]:
  """Evaluates checkpoint `step` (None: the latest) of the run in `pretrain_workdir`.

  Without `pretrain_workdir`, evaluates the backbone of `config.model.init_from`
  (published torchvision-layout weights): kNN of its features only, since such a
  file has no clustering heads.
  """
  mesh = sharding.make_mesh()
  source = sources.get_source(config.dataset)
  trainer = train.Trainer(config, source, mesh)  # compiles nothing: its shapes and objective
  if pretrain_workdir is None:
    state = trainer.with_backbone_from_file(trainer.init_state())
    variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
    heads, step = [], 0
  else:
    abstract = jax.eval_shape(trainer.init_state)
    target = {"params": abstract.params, "batch_stats": abstract.batch_stats,
              "objective": abstract.objective}
    expected = checkpointing.fingerprint(config, source.num_train, trainer.objective)
    restored, step = restore.restore(
        pretrain_workdir, target, mesh, expected, step=step,
        compare=("dataset.name", "model", "objective", "num_train_examples"))
    variables = {"params": restored["params"]["model"], "batch_stats": restored["batch_stats"]}
    heads = trainer.objective.eval_heads(*pretraining_eval.local_copy(
        (restored["params"]["objective"], restored["objective"])))
  results, drawn = pretraining_eval.evaluate_model(trainer.model, variables, heads, source,
                                                   config, mesh, draw=True)
  results["step"] = step
  if pretrain_workdir is None:
    results["init_from"] = config.model.init_from
  writer = writers.create(workdir)
  writer.write_scalars(step, pretraining_eval.flat_scalars(results, "eval"))
  if jax.process_index() == 0:
    pictures.write(writer, workdir, step, drawn, tag=f"step{step}")
  pretraining_eval.write_cluster_sizes(writer, workdir, step, f"step{step}", heads)
  writer.flush()
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(workdir, "eval_metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  evaluated = (f"{restore.checkpoint_dir(pretrain_workdir)}/{step}" if pretrain_workdir
               else config.model.init_from)
  logging.info("%s: %s", evaluated, pretraining_eval.summary(results))
  return results
