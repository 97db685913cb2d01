"""A small CNN for 8x8 (digits) and other tiny images."""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from coke_jax import clustering
from coke_jax.models.batch_norm import BN_MOMENTUM


class SmallCNN(nn.Module):
  """Stages of two 3x3 conv-BN-ReLU layers; every stage after the first halves the resolution.

  `stem_stride` 2 makes the first layer halve it too: a quarter of the compute of every later
  layer, for images larger than digits' 8x8 (Fashion-MNIST's 28x28 then runs at 14, 7, 4).
  Ends with global average pooling: [B, H, W, C] -> [B, widths[-1]].
  """
  widths: Sequence[int] = (32, 64, 128)
  stem_stride: int = 1
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    for stage, width in enumerate(self.widths):
      for layer in range(2):
        stride = (self.stem_stride if stage == 0 else 2) if layer == 0 else 1
        x = nn.Conv(width, (3, 3), strides=stride, use_bias=False, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                         axis_name=self.axis_name, dtype=self.dtype)(x)
        x = nn.relu(x)
    return jnp.mean(clustering.full_precision(x), axis=(1, 2))
