"""What a pretraining run reports at its end (and every few epochs)."""

from typing import Any

import numpy as np

from coke_jax.evaluation import metrics


def evaluate(train_outputs: dict[str, np.ndarray], heldout_outputs: dict[str, np.ndarray],
             num_classes: int, objective, objective_state, config) -> dict[str, Any]:
  """Per head: held-out ACC/NMI/ARI of the nearest-center prediction (the SCAN protocol:
  no fine-tuning), and the train cluster sizes of the last epoch against the lower
  bound; plus weighted kNN top-1 of backbone features, train bank -> held-out.

  `*_outputs` are `Trainer.embed` results: features, proj and label per image.
  """
  labels = heldout_outputs["label"]
  num_train = len(train_outputs["label"])
  predictions = np.asarray(objective.predict(objective_state, heldout_outputs["proj"]))
  heads = {}
  for h, (k, head) in enumerate(zip(objective.num_clusters, objective_state)):
    sizes = np.bincount(np.asarray(head.prev_labels), minlength=k)
    heads[f"k{k}_{h}"] = {
        **metrics.clustering_metrics(predictions[h], labels),
        "train_min_size": int(sizes.min()),
        "train_max_size": int(sizes.max()),
        "train_size_bound": float(objective.min_size_frac(k) * num_train),
        "train_num_under_bound": int(np.sum(sizes < objective.min_size_frac(k) * num_train)),
    }
  knn = metrics.knn_accuracy(train_outputs["features"], train_outputs["label"],
                             heldout_outputs["features"], labels, num_classes,
                             k=config.knn_k, temperature=config.knn_temperature)
  return {"knn_top1": knn, "heads": heads}
