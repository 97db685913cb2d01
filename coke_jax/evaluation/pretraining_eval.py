"""What a pretraining run reports every few epochs and at its end, and its pictures.

Protocol (no label is used before this point, nothing is fitted on held-out):
- clustering, per head of the objective (`Objective.eval_heads`): the argmax of
  the head's scores for each held-out image against its class (ACC, NMI, ARI,
  AMI, majority-vote accuracy; the SCAN protocol of CoKe supp. Tables 9/10, no
  fine-tuning);
- weighted kNN (k = 20 and 200, T = 0.07, cosine; NPID/DINO, appendix B.3) of
  backbone features, train bank -> held-out queries;
- the training assignment's cluster sizes against the head's lower bound where
  it has one (Table 1): the objective's own labels of the last epoch if it
  keeps them (CoKe), else the heads' predictions on the training images.
"""

from typing import Any, Optional

from absl import logging
import flax
import jax
import numpy as np

from coke_jax import sharding
from coke_jax.data import input_pipeline
from coke_jax.evaluation import features
from coke_jax.evaluation import metrics
from coke_jax.evaluation import pictures
from coke_jax.objectives import EvalHead

# Pictures show this many clusters per head, each with this many exemplars.
NUM_CLUSTERS_SHOWN = 10
EXEMPLARS_PER_CLUSTER = 8


def local_copy(tree):
  """This host's copy of (replicated) objective params and state, for `eval_heads`."""
  return sharding.host_copy(tree)


def cluster_sizes(head: EvalHead, train_outputs: Optional[dict[str, np.ndarray]] = None
                  ) -> Optional[np.ndarray]:
  """[K] sizes of the head's training assignment: its own labels, else its predictions on
  `train_outputs` (the eval-mode training images); None if it has neither."""
  if head.train_labels is not None:
    labels = head.train_labels
  elif train_outputs is not None:
    labels = np.argmax(head.scores(train_outputs), axis=-1)
  else:
    return None
  return np.bincount(np.asarray(labels), minlength=head.num_clusters)


def evaluate(train_outputs: dict[str, np.ndarray], heldout_outputs: dict[str, np.ndarray],
             num_classes: int, heads: list[EvalHead], config) -> dict[str, Any]:
  """Held-out clustering per head, the train cluster sizes, and kNN of backbone features.

  `*_outputs` hold `features`, `proj` and `label` per image (`features.embed`).
  Returns {"knn_top1": top-1 at k = knn_k[0], "knn": {"k20": {"top1", "top5"}, ...},
  "heads": {"k10_0": {"acc", "nmi", "ari", "ami", "majority_acc", "train_min_size",
  "train_max_size", and with a bound "train_size_bound", "train_num_under_bound"}}}.
  Images labeled -1 (unlabeled: a flat image folder, STL-10's unlabeled split)
  are left out of the label-based scores; with no labeled held-out image the
  heads report their cluster sizes only, and "knn"/"knn_top1" are absent.
  """
  labeled = heldout_outputs["label"] >= 0
  labels = heldout_outputs["label"][labeled]
  train_labeled = train_outputs["label"] >= 0
  heldout = {k: v[labeled] for k, v in heldout_outputs.items()}
  results = {}
  for head in heads:
    result = {}
    if len(labels):
      result = metrics.clustering_metrics(np.argmax(head.scores(heldout), -1), labels)
    sizes = cluster_sizes(head, train_outputs)
    result.update(train_min_size=int(sizes.min()), train_max_size=int(sizes.max()))
    if head.size_bound is not None:
      result.update(train_size_bound=float(head.size_bound),
                    train_num_under_bound=int(np.sum(sizes < head.size_bound)))
    results[head.name] = result
  if not len(labels) or not train_labeled.any():
    logging.warning("No labeled %s images: only cluster sizes are reported (no ACC, NMI, ARI "
                    "or kNN).", "held-out" if not len(labels) else "training")
    return {"heads": results}
  ks = tuple(config.knn_k) if isinstance(config.knn_k, (tuple, list)) else (config.knn_k,)
  knn = metrics.knn_accuracy(train_outputs["features"][train_labeled],
                             train_outputs["label"][train_labeled],
                             heldout_outputs["features"][labeled], labels, num_classes, ks=ks,
                             temperature=config.knn_temperature)
  num_bank = int(train_labeled.sum())
  return {"knn_top1": knn[f"k{min(ks[0], num_bank)}"]["top1"], "knn": knn, "heads": results}


def size_charts(heads: list[EvalHead], tag: str,
                train_outputs: Optional[dict[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
  """Per head, the chart of its training cluster sizes (against its bound, if any)."""
  charts = {}
  for head in heads:
    sizes = cluster_sizes(head, train_outputs)
    if sizes is not None:
      charts[f"cluster_sizes/{head.name}"] = pictures.cluster_size_chart(
          sizes, head.size_bound, f"head {head.name}, {tag}")
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


def exemplar_grids(source, split: str, outputs: dict[str, np.ndarray], heads: list[EvalHead],
                   batch_size: int) -> dict[str, np.ndarray]:
  """Per head, the `split` images scoring highest for a fixed sample of its clusters
  (for centers: the nearest images, CoKe supp. Figure 2)."""
  if not heads:
    return {}
  chosen, plans = set(), []
  for head in heads:
    ids = pictures.sample_clusters(head.num_clusters, NUM_CLUSTERS_SHOWN)
    scores = head.scores(outputs)[:, ids]                                  # [M, shown]
    order = np.argsort(-scores, axis=0, kind="stable")[:EXEMPLARS_PER_CLUSTER]
    chosen.update(order.reshape(-1).tolist())
    plans.append((head.name, scores, ids))
  images = _images_at(source, split, np.asarray(sorted(chosen)), batch_size)
  rows = np.asarray(sorted(images))
  stack = np.stack([images[r] for r in rows])
  # Only the chosen rows are drawn; each head's top examples are among them.
  return {f"exemplars/{name}": pictures.exemplar_grid(stack, scores[rows], ids,
                                                      EXEMPLARS_PER_CLUSTER)
          for name, scores, ids in plans}


def evaluate_model(model, variables, heads: list[EvalHead], source, config, mesh,
                   draw: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Embeds both splits with `variables` ({"params", "batch_stats"}) and evaluates them.

  Returns (the `evaluate` results, the exemplar and size pictures if `draw` on
  process 0, else {}).
  """
  apply_fn = features.ModelOutputs(model)
  train_outputs = features.embed(apply_fn, variables, source, "train", config.eval_batch_size,
                                 mesh)
  heldout_outputs = features.embed(apply_fn, variables, source, "heldout",
                                   config.eval_batch_size, mesh)
  results = evaluate(train_outputs, heldout_outputs, source.num_classes, heads, config)
  drawn = {}
  if draw and jax.process_index() == 0:
    drawn = exemplar_grids(source, "heldout", heldout_outputs, heads, config.eval_batch_size)
    # Heads without labels of their own: their sizes are known only now.
    drawn.update(size_charts([h for h in heads if h.train_labels is None], "predicted",
                             train_outputs))
  return results, drawn


def write_cluster_sizes(writer, workdir: str, step: int, tag: str, heads: list[EvalHead]):
  """The last epoch's cluster sizes of the heads that keep their training labels:
  TensorBoard histograms and size charts (PNGs too). `tag` names the PNG files and
  titles the charts, e.g. "epoch0012"."""
  heads = [h for h in heads if h.train_labels is not None]
  writer.write_histograms(step, {f"cluster_sizes/{h.name}": cluster_sizes(h).astype(np.float32)
                                 for h in heads})
  if jax.process_index() == 0:
    pictures.write(writer, workdir, step, size_charts(heads, tag), tag=tag)


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
    else:
      bound = (f" (bound {head['train_size_bound']:.1f})" if "train_size_bound" in head
               else "")
      parts.append(f"{name}: cluster sizes {head['train_min_size']} to "
                   f"{head['train_max_size']}{bound}")
  return ", ".join(parts)
