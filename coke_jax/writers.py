"""Where a run's numbers go: TensorBoard and `<workdir>/metrics.jsonl`, never the console.

The console is for people (progress lines, evaluations, warnings: `absl.logging`);
every scalar of every step and epoch goes to TensorBoard (clu's SummaryWriter)
and, one JSON object per write, to `metrics.jsonl` for scripts. Only process 0
writes; the other processes get a writer that drops everything.
"""

import json
import os
from typing import Any, Mapping

from clu import metric_writers
import jax
import numpy as np
import tensorflow as tf


class JsonlWriter(metric_writers.MetricWriter):
  """Scalars as lines {"step": s, "tag": value, ...} appended to a file; the rest dropped."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if not scalars:
      return
    row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    with tf.io.gfile.GFile(self._path, "a") as f:
      f.write(json.dumps(row) + "\n")

  # Non-scalar summaries live in TensorBoard only.
  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass
  def flush(self): pass
  def close(self): pass


def create(workdir: str, filename: str = "metrics.jsonl") -> metric_writers.MetricWriter:
  """TensorBoard summaries and `<workdir>/<filename>` on process 0; a no-op elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  tf.io.gfile.makedirs(workdir)
  return metric_writers.MultiWriter([metric_writers.SummaryWriter(workdir),
                                     JsonlWriter(os.path.join(workdir, filename))])
