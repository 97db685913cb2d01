"""What a pretraining run reports every few epochs and at its end, and its pictures.

Protocol (no label is used before this point, nothing is fitted on held-out):
- clustering, per head: the nearest-center prediction of each held-out image
  against its class (ACC, NMI, ARI, majority-vote accuracy; the SCAN protocol
  of supp. Tables 9/10, no fine-tuning);
- weighted kNN (k = 20 and 200, T = 0.07, cosine; NPID/DINO, appendix B.3) of
  backbone features, train bank -> held-out queries;
- the training assignment of the last epoch against the lower bound (Table 1).
"""

from typing import Any, Optional

from absl import logging
import flax
import jax
import numpy as np

from coke_jax.data import input_pipeline
from coke_jax.evaluation import features
from coke_jax.evaluation import metrics
from coke_jax.evaluation import pictures

# Pictures show this many clusters per head, each with this many exemplars.
NUM_CLUSTERS_SHOWN = 10
EXEMPLARS_PER_CLUSTER = 8


def _local(x) -> np.ndarray:
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def cluster_sizes(objective, objective_state) -> list[Optional[np.ndarray]]:
  """Per head, the sizes [K] of the last completed epoch's training assignment.

  Read from the objective's label table `prev_labels` (y^{t-1}); None for a
  head without one (an objective that keeps no labels).
  """
  sizes = []
  for k, head in zip(objective.num_clusters, objective_state):
    labels = getattr(head, "prev_labels", None)
    sizes.append(None if labels is None else np.bincount(_local(labels), minlength=k))
  return sizes


def head_names(objective) -> list[str]:
  return [f"k{k}_{h}" for h, k in enumerate(objective.num_clusters)]


def evaluate(train_outputs: dict[str, np.ndarray], heldout_outputs: dict[str, np.ndarray],
             num_classes: int, objective, objective_state, config) -> dict[str, Any]:
  """Held-out clustering per head, the train cluster sizes, and kNN of backbone features.

  `*_outputs` hold `features`, `proj` and `label` per image (`features.embed`).
  Returns {"knn_top1": top-1 at k = knn_k[0], "knn": {"k20": {"top1", "top5"}, ...},
  "heads": {"k10_0": {"acc", "nmi", "ari", "majority_acc", "train_min_size", ...}}}.
  Images labeled -1 (unlabeled: a flat image folder, STL-10's unlabeled split)
  are left out of the label-based scores; with no labeled held-out image the
  heads report their cluster sizes only, and "knn"/"knn_top1" are absent.
  """
  labeled = heldout_outputs["label"] >= 0
  labels = heldout_outputs["label"][labeled]
  train_labeled = train_outputs["label"] >= 0
  # This host's copy of the (replicated) state, so that the prediction runs locally on any host.
  objective_state = jax.tree_util.tree_map(_local, objective_state)
  predictions = np.asarray(objective.predict(objective_state, heldout_outputs["proj"][labeled]))
  heads = {}
  for h, (name, k, sizes) in enumerate(zip(head_names(objective), objective.num_clusters,
                                           cluster_sizes(objective, objective_state))):
    heads[name] = metrics.clustering_metrics(predictions[h], labels) if len(labels) else {}
    if sizes is not None:
      bound = size_bound(objective, k)
      heads[name].update(train_min_size=int(sizes.min()), train_max_size=int(sizes.max()),
                         train_size_bound=float(bound),
                         train_num_under_bound=int(np.sum(sizes < bound)))
  if not len(labels) or not train_labeled.any():
    logging.warning("No labeled %s images: only cluster sizes are reported (no ACC, NMI, ARI "
                    "or kNN).", "held-out" if not len(labels) else "training")
    return {"heads": heads}
  ks = tuple(config.knn_k) if isinstance(config.knn_k, (tuple, list)) else (config.knn_k,)
  knn = metrics.knn_accuracy(train_outputs["features"][train_labeled],
                             train_outputs["label"][train_labeled],
                             heldout_outputs["features"][labeled], labels, num_classes, ks=ks,
                             temperature=config.knn_temperature)
  num_bank = int(train_labeled.sum())
  return {"knn_top1": knn[f"k{min(ks[0], num_bank)}"]["top1"], "knn": knn, "heads": heads}


def size_bound(objective, k: int) -> float:
  """gamma = gamma' N / K of the head with K clusters, N the label table's length (STL-10:
  train+unlabeled, not the labeled images evaluation embeds)."""
  return objective.min_size_frac(k) * objective.num_examples


def size_charts(objective, objective_state, tag: str) -> dict[str, np.ndarray]:
  """Per head, the chart of the last epoch's cluster sizes against the lower bound."""
  charts = {}
  for name, k, sizes in zip(head_names(objective), objective.num_clusters,
                            cluster_sizes(objective, objective_state)):
    if sizes is not None:
      charts[f"cluster_sizes/{name}"] = pictures.cluster_size_chart(
          sizes, size_bound(objective, k), f"head {name}, {tag}")
  return charts


def _images_at(source, split: str, rows: np.ndarray, batch_size: int) -> dict[int, np.ndarray]:
  """{row: image} of the un-augmented `split` (one pass over it, this host only)."""
  wanted, found, start = set(int(r) for r in rows), {}, 0
  for batch in input_pipeline.eval_batches(source, split, batch_size):
    for i in range(len(batch["images"])):
      if start + i in wanted and batch["weight"][i] > 0:
        found[start + i] = batch["images"][i]
    start += len(batch["images"])
    if len(found) == len(wanted):
      break
  return found


def exemplar_grids(source, split: str, outputs: dict[str, np.ndarray], objective,
                   objective_state, batch_size: int) -> dict[str, np.ndarray]:
  """Per head, the `split` images nearest to a fixed sample of its centers (supp. Figure 2)."""
  proj = outputs["proj"]
  chosen, plans = set(), []
  for name, k, head in zip(head_names(objective), objective.num_clusters, objective_state):
    centers = _local(head.prev_centers)
    ids = pictures.sample_clusters(k, NUM_CLUSTERS_SHOWN)
    order = np.argsort(-(proj @ centers[ids].T), axis=0, kind="stable")[:EXEMPLARS_PER_CLUSTER]
    chosen.update(order.reshape(-1).tolist())
    plans.append((name, centers, ids))
  images = _images_at(source, split, np.asarray(sorted(chosen)), batch_size)
  rows = np.asarray(sorted(images))
  stack = np.stack([images[r] for r in rows])
  # Only the chosen rows are drawn; each head's top examples are among them.
  return {f"exemplars/{name}": pictures.exemplar_grid(stack, proj[rows], centers, ids,
                                                      EXEMPLARS_PER_CLUSTER)
          for name, centers, ids in plans}


def evaluate_model(model, variables, objective, objective_state, source, config, mesh,
                   draw: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Embeds both splits with `variables` ({"params", "batch_stats"}) and evaluates them.

  Returns (the `evaluate` results, the exemplar pictures if `draw` on process 0, else {}).
  """
  apply_fn = features.ModelOutputs(model)
  train_outputs = features.embed(apply_fn, variables, source, "train", config.eval_batch_size,
                                 mesh)
  heldout_outputs = features.embed(apply_fn, variables, source, "heldout",
                                   config.eval_batch_size, mesh)
  results = evaluate(train_outputs, heldout_outputs, source.num_classes, objective,
                     objective_state, config)
  drawn = {}
  if draw and jax.process_index() == 0:
    drawn = exemplar_grids(source, "heldout", heldout_outputs, objective, objective_state,
                           config.eval_batch_size)
  return results, drawn


def write_cluster_sizes(writer, workdir: str, step: int, tag: str, objective, objective_state):
  """The last epoch's cluster sizes per head: TensorBoard histograms and size charts (PNGs too).

  `tag` names the PNG files and titles the charts, e.g. "epoch0012".
  """
  sizes = cluster_sizes(objective, objective_state)
  writer.write_histograms(step, {f"cluster_sizes/{name}": s.astype(np.float32)
                                 for name, s in zip(head_names(objective), sizes)
                                 if s is not None})
  if jax.process_index() == 0:
    pictures.write(writer, workdir, step, size_charts(objective, objective_state, tag), tag=tag)


def flat_scalars(results: dict, prefix: str) -> dict[str, float]:
  """{"eval/knn/k20/top1": ..., "eval/heads/k10_0/nmi": ...} for clu's write_scalars."""
  flat = flax.traverse_util.flatten_dict(results, sep="/")
  return {f"{prefix}/{k}": v for k, v in flat.items() if isinstance(v, (int, float))}


def summary(results: dict) -> str:
  """One log line: kNN and each head's ACC/NMI."""
  parts = ["knn top-1 " + " ".join(f"{k} {v['top1']:.4f}" for k, v in results["knn"].items())
           ] if "knn" in results else []
  for name, head in results["heads"].items():
    if "acc" in head:
      parts.append(f"{name}: acc {head['acc']:.4f} nmi {head['nmi']:.4f} ari {head['ari']:.4f}")
    elif "train_min_size" in head:
      parts.append(f"{name}: cluster sizes {head['train_min_size']} to {head['train_max_size']} "
                   f"(bound {head['train_size_bound']:.1f})")
  return ", ".join(parts)
