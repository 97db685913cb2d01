"""ViT-S/16 (Dosovitskiy et al., 2021), the backbone the CoKe paper names as future work."""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp


class _EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(y, y)
    x = x + y
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype)(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype)(nn.gelu(y))
    return x + y


class ViT(nn.Module):
  """Returns the final [CLS] token [B, hidden_dim]. Has no BatchNorm (axis_name is unused)."""
  patch_size: int = 16
  hidden_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_dim: int = 1536
  remat: bool = False
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train  # no dropout or batch statistics
    p = self.patch_size
    x = nn.Conv(self.hidden_dim, (p, p), strides=p, padding="VALID", dtype=self.dtype)(
        x.astype(self.dtype))
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, c))
    x = x + pos.astype(x.dtype)
    block_cls = nn.remat(_EncoderBlock) if self.remat else _EncoderBlock
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_dim, self.dtype, name=f"block{i}")(x)
    return nn.LayerNorm(dtype=self.dtype)(x)[:, 0].astype(jnp.float32)


def vit_small16(**kw):
  return ViT(patch_size=16, hidden_dim=384, depth=12, num_heads=6, mlp_dim=1536, **kw)
