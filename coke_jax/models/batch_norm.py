"""The BatchNorm running-average rule every model here uses, and its use for several views.

Every BatchNorm layer updates its running statistics as r <- m r + (1 - m) s
with momentum m = BN_MOMENTUM and s the batch's mean or variance (PyTorch's
momentum 0.1 in its own convention).
"""

import jax

BN_MOMENTUM = 0.9


def sequential_update(running, per_view):
  """The running statistics after one update per view in turn, from updates made in parallel.

  The official code runs each view as its own forward pass, so the running
  statistics take one update per view, view after view. The trainer runs all
  views in one vmapped pass instead; each view's update starts from the same
  `running` (a pytree) and gives u_v = m r + (1 - m) s_v (`per_view`, the same
  pytree with a leading view axis). Folding r <- m r + (u_v - m running) over
  the views gives exactly the sequential result.
  """
  m = BN_MOMENTUM

  def fold(start, updates):
    r = start
    for u in updates:
      r = m * r + (u - m * start)
    return r

  return jax.tree_util.tree_map(fold, running, per_view)
