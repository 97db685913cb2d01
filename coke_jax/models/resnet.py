"""ResNet-18/34/50 (He et al., 2016) with the ImageNet stem or the CIFAR stem.

The function is torchvision's `resnet18/34/50` (v1.5: the stride of a
bottleneck sits on its 3x3 convolution) so that weights move between the two
unchanged (`coke_jax.interop.torchvision`): every k x k convolution is padded
by k // 2 on each side (torchvision's `padding=1` for 3x3, 3 for the 7x7 stem,
0 for 1x1), the 3x3 stride-2 max-pool by 1 on each side with -inf, and
BatchNorm uses torchvision's epsilon 1e-5 and momentum (0.1 in PyTorch's
convention, `BN_MOMENTUM` here). XLA's "SAME" would pad a stride-2 layer on an
even input by (0, 1), shifting every feature map by half a pixel against
torchvision's.

The CIFAR stem is the common adaptation for 32x32 inputs (a 3x3 stride-1
`conv1`, no max-pool), torchvision's model with `conv1` replaced and
`maxpool` set to the identity.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from coke_jax.models.batch_norm import BN_MOMENTUM

BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default
# Checkpoints of the ResNets before they padded as torchvision does (XLA's "SAME", until
# 2026-12-02) hold weights of another function: checkpointing.FORMAT 2 refuses them.


def _padding(kernel_size: int):
  """torchvision's symmetric padding of a k x k window: k // 2 on each side of H and W."""
  return [(kernel_size // 2, kernel_size // 2)] * 2


def _conv(features: int, kernel_size: int, stride: int, dtype) -> nn.Conv:
  return nn.Conv(features, (kernel_size, kernel_size), strides=stride,
                 padding=_padding(kernel_size), use_bias=False, dtype=dtype)


class _Block(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1-3x3-1x1, 4x expansion) residual block."""
  width: int
  stride: int
  bottleneck: bool
  norm: callable
  zero_init_last_bn: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    conv = lambda w, k, s=1: _conv(w, k, s, self.dtype)
    last_norm = lambda: self.norm(scale_init=nn.initializers.zeros if self.zero_init_last_bn
                                  else nn.initializers.ones)
    out_width = self.width * (4 if self.bottleneck else 1)
    if self.bottleneck:
      y = nn.relu(self.norm()(conv(self.width, 1)(x)))
      y = nn.relu(self.norm()(conv(self.width, 3, self.stride)(y)))
      y = last_norm()(conv(out_width, 1)(y))
    else:
      y = nn.relu(self.norm()(conv(self.width, 3, self.stride)(x)))
      y = last_norm()(conv(self.width, 3)(y))
    if x.shape[-1] != out_width or self.stride != 1:
      x = self.norm()(conv(out_width, 1, self.stride)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Returns globally average-pooled features [B, 512 or 2048]."""
  stage_sizes: Sequence[int]
  bottleneck: bool
  cifar_stem: bool = False     # 3x3 stride-1 conv, no max-pool (for 32x32 inputs)
  zero_init_last_bn: bool = False
  width: int = 64
  remat: bool = False          # recompute each block's activations in the backward pass
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                     epsilon=BN_EPSILON, axis_name=self.axis_name,
                                     dtype=self.dtype, **kw)
    x = x.astype(self.dtype)
    if self.cifar_stem:
      x = nn.relu(norm()(_conv(self.width, 3, 1, self.dtype)(x)))
    else:
      x = nn.relu(norm()(_conv(self.width, 7, 2, self.dtype)(x)))
      # Padding with -inf (what nn.max_pool pads with) never wins the max, as in torch.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_padding(3))
    block_cls = nn.remat(_Block) if self.remat else _Block
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        # Explicit names keep checkpoints interchangeable with and without remat.
        x = block_cls(self.width * 2**stage, stride, self.bottleneck, norm,
                      self.zero_init_last_bn, self.dtype, name=f"stage{stage + 1}_block{block}")(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


def resnet18(**kw):
  return ResNet(stage_sizes=(2, 2, 2, 2), bottleneck=False, **kw)


def resnet34(**kw):
  return ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=False, **kw)


def resnet50(**kw):
  return ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=True, **kw)
