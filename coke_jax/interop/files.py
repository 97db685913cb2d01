"""Reading and writing PyTorch state dicts: safetensors always, `.pth` when torch is installed.

`load_backbone(path, target)` is what a trainer or an evaluation calls to
start from published weights (torchvision, MoCo, SwAV, CoKe's own PyTorch
release): it reads the file, unwraps a training checkpoint's `state_dict`
(or `model`), strips the usual prefixes of data-parallel and two-encoder
training code, and converts the rest with `torchvision.from_torch`, which
checks every key and shape before anything is converted.
`save_backbone(path, variables)` writes the other way.

safetensors (https://github.com/huggingface/safetensors) needs neither torch
nor pickle: a JSON header of names, dtypes and shapes and the raw bytes.
`.pth` files are pickles; they are read with `torch.load(weights_only=True)`,
which refuses to run code from the file.
"""

import os
from typing import Any, Optional

from absl import logging
import numpy as np

from coke_jax import errors
from coke_jax.interop import torchvision

# What MoCo (`module.encoder_q.`), CoKe's official code (`module.encoder.`),
# DistributedDataParallel (`module.`) and detection/segmentation toolboxes
# (`backbone.`) put before torchvision's names, longest first.
PREFIXES = ("module.encoder_q.", "module.encoder.", "module.", "backbone.")

_TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar")
_SAFETENSORS_SUFFIX = ".safetensors"


def _kind(path: str) -> str:
  name = os.path.basename(path).lower()
  if name.endswith(_SAFETENSORS_SUFFIX):
    return "safetensors"
  if name.endswith(_TORCH_SUFFIXES):
    return "torch"
  raise errors.ConfigError(
      f"{path}: unknown weight file type; use a .safetensors file, or (with PyTorch installed) "
      f"one of {', '.join(_TORCH_SUFFIXES)}.")


def _import_torch(path: str, reading: bool):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    if reading:
      hint = ("convert it where torch is installed: python -c \"import torch, "
              "safetensors.torch as st; st.save_file({k: v.contiguous() "
              "for k, v in torch.load('in.pth', map_location='cpu', weights_only=True).items()}, "
              "'in.safetensors')\" and pass in.safetensors")
    else:
      hint = ("write NAME.safetensors and convert it where torch is installed: python -c "
              "\"import torch, safetensors.torch as st; "
              "torch.save(st.load_file('NAME.safetensors'), 'NAME.pth')\"")
    raise errors.ConfigError(
        f"{'Reading' if reading else 'Writing'} {path} needs PyTorch, which is not installed "
        f"here (it is no dependency of coke_jax). Install it (pip install torch), or {hint}."
    ) from None
  return torch


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The {name: array} of a safetensors or PyTorch file, as written (prefixes kept)."""
  if not os.path.exists(path):
    raise errors.ConfigError(f"No weight file at {path}.")
  if _kind(path) == "safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors.numpy.load_file(path))
  torch = _import_torch(path, reading=True)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle errors have many types; the message says which
    raise errors.ConfigError(
        f"{path} could not be read with torch.load(weights_only=True): {e}. A checkpoint that "
        "pickles other objects than tensors (an argparse Namespace, an AMP state) must be "
        "unpacked where its code is trusted: torch.save(torch.load(path, weights_only=False)"
        "['state_dict'], 'weights.pth').") from e
  for wrapper in ("state_dict", "model"):  # training checkpoints of MoCo, SwAV; DeiT, timm
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    found = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise errors.ConfigError(
        f"{path} holds no state dict of tensors (found {found}); pass a file with a "
        "model's state_dict(), or a checkpoint with one under 'state_dict' or 'model'.")
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in obj.items()}


def write_state_dict(path: str, state_dict: dict[str, np.ndarray],
                     metadata: Optional[dict[str, str]] = None):
  """Writes {name: array} as safetensors (with string `metadata`) or, with torch, `.pth`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  state_dict = {k: np.asarray(v, order="C") for k, v in state_dict.items()}
  if _kind(path) == "safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    safetensors.numpy.save_file(state_dict, path, metadata=metadata)
    return
  torch = _import_torch(path, reading=False)
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)


def strip_prefixes(state_dict: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """Removes `PREFIXES` (repeatedly: `module.backbone.` too) and returns (state, dropped keys).

  Once keys carry a prefix, only those keys are the backbone: the others
  (MoCo's momentum encoder `module.encoder_k.*` and queue) are dropped.
  """
  dropped = []
  while True:
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
      return state_dict, dropped
    dropped += [k for k in state_dict if not k.startswith(prefix)]
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_backbone(path: str, target_variables) -> dict[str, Any]:
  """The flax backbone {"params", "batch_stats"} of a torchvision-layout weight file.

  Args:
    path: a .safetensors file, or .pth / .pth.tar / .pt with PyTorch installed:
      a state dict, or a checkpoint holding one under "state_dict" or "model".
    target_variables: the backbone's {"params", "batch_stats"} (ResNet) or
      {"params"} (ViT), with arrays or jax.ShapeDtypeStructs as leaves, e.g.
      `jax.eval_shape(backbone.init, rng, images, train=False)`; gives the
      architecture, the structure and the dtypes.
  Returns:
    The same structure with numpy arrays (host memory; place them with
    jax.device_put). Heads in the file (`fc`, SwAV's `projection_head` and
    `prototypes`, timm's `head`) are ignored.
  Raises:
    errors.ConfigError: the file cannot be read, or its keys or shapes do not
      fit the target; one message lists every missing, unexpected and
      mis-shaped key, and nothing is returned.
  """
  state_dict, dropped = strip_prefixes(read_state_dict(path))
  if dropped:
    logging.info("%s: %d entries outside the backbone's prefix ignored (%s).", path,
                 len(dropped), ", ".join(dropped[:5]))
  return torchvision.from_torch(state_dict, target_variables, source=path)


def save_backbone(path: str, variables, num_batches_tracked: int = 0,
                  metadata: Optional[dict[str, str]] = None) -> dict[str, np.ndarray]:
  """Writes the backbone in torchvision's (timm's) names and layouts; returns the state dict."""
  state_dict = torchvision.to_torch(variables, num_batches_tracked)
  write_state_dict(path, state_dict, metadata)
  return state_dict
