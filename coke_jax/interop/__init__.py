"""Backbone weights to and from PyTorch: torchvision's ResNets, timm's ViT-S/16 (docs/interop.md).

  state_dict = interop.to_torch(variables)              # flax -> {torchvision name: array}
  variables = interop.from_torch(state_dict, target)    # and back, every key and shape checked
  variables = interop.load_backbone("r50.pth", target)  # a file, prefixes stripped
  interop.save_backbone("backbone.safetensors", variables)
"""

from coke_jax.interop.files import load_backbone
from coke_jax.interop.files import read_state_dict
from coke_jax.interop.files import save_backbone
from coke_jax.interop.files import strip_prefixes
from coke_jax.interop.files import write_state_dict
from coke_jax.interop.torchvision import check_state_dict
from coke_jax.interop.torchvision import from_torch
from coke_jax.interop.torchvision import to_torch

__all__ = ["check_state_dict", "from_torch", "load_backbone", "read_state_dict", "save_backbone",
           "strip_prefixes", "to_torch", "write_state_dict"]
