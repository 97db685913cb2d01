"""Projection and prediction MLPs and the model that joins them to a backbone."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coke_jax import clustering
from coke_jax.models.batch_norm import BN_MOMENTUM


# The hidden layers' nonlinearity: ReLU (CoKe, SwAV) or leaky ReLU with torch's default
# slope 0.01 (Self-Classifier, seed Sec. 7.2).
ACTIVATIONS = {"relu": nn.relu, "leaky_relu": nn.leaky_relu}


class MLPHead(nn.Module):
  """Linear-BN-activation blocks then a linear output (BN on it as in CoKe's official head)."""
  hidden_dim: int
  out_dim: int
  num_layers: int = 2
  bn_on_output: bool = True
  activation: str = "relu"
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                axis_name=self.axis_name, dtype=self.dtype)
    dense = lambda width: nn.Dense(width, dtype=self.dtype)
    for _ in range(self.num_layers - 1):
      x = ACTIVATIONS[self.activation](norm()(dense(self.hidden_dim)(x)))
    x = dense(self.out_dim)(x)
    return norm()(x) if self.bn_on_output else x


class SSLModel(nn.Module):
  """Backbone -> projection (-> prediction); returns unit-norm embeddings.

  Outputs: `features` [B, F] backbone features (what linear and kNN evaluation
  use), `proj` [B, D] and optionally `pred` [B, D], L2-normalized in float32 (float64 when the model computes in float64).
  """
  backbone: nn.Module
  projector: nn.Module
  predictor: Optional[nn.Module] = None

  def __call__(self, images, train: bool) -> dict[str, jax.Array]:
    features = self.backbone(images, train)
    z = self.projector(features, train)
    out = {"features": features,
           "proj": clustering.l2_normalize(clustering.full_precision(z))}
    if self.predictor is not None:
      out["pred"] = clustering.l2_normalize(clustering.full_precision(self.predictor(z, train)))
    return out
