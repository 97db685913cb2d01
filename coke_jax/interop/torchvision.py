"""Backbone weights in PyTorch's names and layouts: ResNets as torchvision's, ViT-S/16 as timm's.

`to_torch(variables)` turns a flax backbone's {"params", "batch_stats"} into a
flat state dict {name: numpy array} as `torchvision.models.resnet50()
.state_dict()` (without `fc`) or timm's `vit_small_patch16_224` (without
`head`) would hold it; `from_torch(state_dict, target)` is its exact inverse
and checks every name and shape first. The architecture (ResNet basic or
bottleneck blocks, either stem, any width; ViT of any depth) is read off the
flax tree, so the same functions serve every backbone of `coke_jax.models`
except `small_cnn`, which has no PyTorch counterpart.

Layouts:
  conv kernel     flax [H, W, I, O]  torch [O, I, H, W]
  dense kernel    flax [I, O]        torch [O, I]
  BatchNorm       scale, bias, mean, var -> weight, bias, running_mean,
                  running_var, plus num_batches_tracked (int64, which flax does
                  not keep; torch only reads it when momentum is None)
  LayerNorm       scale, bias -> weight, bias
  attention       flax query/key/value kernels [D, heads, D / heads] ->
                  timm's fused `attn.qkv.weight` [3 D, D] (rows q, k, v, each
                  head after head); out [heads, D / heads, D] -> `attn.proj`
Block names: the flax ResNet's `stage{s}_block{b}` with Conv_i / BatchNorm_i
in call order is torchvision's `layer{s}.{b}` with conv{i+1} / bn{i+1}, the
last pair of a block with a projection shortcut being `downsample.0/1`.
"""

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from coke_jax import errors

# Keys of heads that a published checkpoint may hold beside the backbone and that the
# backbone never reads: torchvision's classifier `fc` (also MoCo's MLP head, `fc.0`, `fc.2`),
# SwAV's `projection_head` and `prototypes`, timm's classifier `head`.
RESNET_HEADS = ("fc.", "projection_head.", "prototypes.")
VIT_HEADS = ("head.",)

# num_batches_tracked may be absent: PyTorch before 0.4.1 did not save it.
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)

_Path = tuple[str, ...]  # ("params", "stage1_block0", "Conv_0", "kernel")


class Rule(NamedTuple):
  """One torch tensor made of one or more flax leaves, and back."""
  key: str
  paths: Sequence[_Path]                                  # the flax leaves, () for none
  to_torch: Callable[..., np.ndarray]                     # flax leaves -> torch tensor
  from_torch: Callable[[np.ndarray], Sequence[np.ndarray]]  # torch tensor -> flax leaves


def _get(tree, path: _Path):
  for part in path:
    tree = tree[part]
  return tree


def _conv(key: str, path: _Path) -> Rule:
  return Rule(key, [path], lambda k: np.transpose(k, (3, 2, 0, 1)),
              lambda w: [np.transpose(w, (2, 3, 1, 0))])


def _copy(key: str, path: _Path) -> Rule:
  return Rule(key, [path], lambda x: x, lambda x: [x])


def _dense(key: str, path: _Path) -> Rule:
  return Rule(key, [path], lambda k: k.T, lambda w: [w.T])


def _batch_norm(prefix: str, module: _Path, num_batches_tracked: int) -> list[Rule]:
  return [
      _copy(f"{prefix}.weight", ("params", *module, "scale")),
      _copy(f"{prefix}.bias", ("params", *module, "bias")),
      _copy(f"{prefix}.running_mean", ("batch_stats", *module, "mean")),
      _copy(f"{prefix}.running_var", ("batch_stats", *module, "var")),
      Rule(f"{prefix}.num_batches_tracked", [],
           lambda: np.asarray(num_batches_tracked, np.int64), lambda _: []),
  ]


def _resnet_rules(variables, num_batches_tracked: int) -> list[Rule]:
  params = variables["params"]
  rules = [_conv("conv1.weight", ("params", "Conv_0", "kernel")),
           *_batch_norm("bn1", ("BatchNorm_0",), num_batches_tracked)]
  stage = 1
  while f"stage{stage}_block0" in params:
    block = 0
    while f"stage{stage}_block{block}" in params:
      name = f"stage{stage}_block{block}"
      prefix = f"layer{stage}.{block}"
      # A bottleneck block starts with a 1x1 conv, a basic block with a 3x3.
      num_convs = 3 if params[name]["Conv_0"]["kernel"].shape[0] == 1 else 2
      for i in range(num_convs):
        rules.append(_conv(f"{prefix}.conv{i + 1}.weight", ("params", name, f"Conv_{i}",
                                                            "kernel")))
        rules += _batch_norm(f"{prefix}.bn{i + 1}", (name, f"BatchNorm_{i}"),
                             num_batches_tracked)
      if f"Conv_{num_convs}" in params[name]:
        rules.append(_conv(f"{prefix}.downsample.0.weight",
                           ("params", name, f"Conv_{num_convs}", "kernel")))
        rules += _batch_norm(f"{prefix}.downsample.1", (name, f"BatchNorm_{num_convs}"),
                             num_batches_tracked)
      block += 1
    stage += 1
  return rules


def _layer_norm(prefix: str, module: _Path) -> list[Rule]:
  return [_copy(f"{prefix}.weight", ("params", *module, "scale")),
          _copy(f"{prefix}.bias", ("params", *module, "bias"))]


def _qkv(prefix: str, variables, attention: _Path) -> list[Rule]:
  """timm's fused q, k, v projection from flax's three [D, heads, D / heads] kernels."""
  kernels = [("params", *attention, part, "kernel") for part in ("query", "key", "value")]
  biases = [("params", *attention, part, "bias") for part in ("query", "key", "value")]
  dim, num_heads, head_dim = _get(variables, kernels[0]).shape
  return [
      Rule(f"{prefix}.qkv.weight", kernels,
           lambda *qkv: np.concatenate([x.reshape(dim, dim).T for x in qkv]),
           lambda w: [x.T.reshape(dim, num_heads, head_dim) for x in np.split(w, 3)]),
      Rule(f"{prefix}.qkv.bias", biases,
           lambda *qkv: np.concatenate([x.reshape(dim) for x in qkv]),
           lambda b: [x.reshape(num_heads, head_dim) for x in np.split(b, 3)]),
  ]


def _vit_rules(variables) -> list[Rule]:
  params = variables["params"]
  rules = [_copy("cls_token", ("params", "cls")),
           _copy("pos_embed", ("params", "pos_embedding")),
           _conv("patch_embed.proj.weight", ("params", "Conv_0", "kernel")),
           _copy("patch_embed.proj.bias", ("params", "Conv_0", "bias"))]
  block = 0
  while f"block{block}" in params:
    name, prefix = f"block{block}", f"blocks.{block}"
    attention = (name, "MultiHeadDotProductAttention_0")
    out_kernel = ("params", *attention, "out", "kernel")
    out_shape = _get(variables, out_kernel).shape  # [heads, D / heads, D]
    rules += [
        *_layer_norm(f"{prefix}.norm1", (name, "LayerNorm_0")),
        *_qkv(f"{prefix}.attn", variables, attention),
        Rule(f"{prefix}.attn.proj.weight", [out_kernel],
             lambda k: k.reshape(-1, k.shape[-1]).T,
             lambda w, shape=out_shape: [w.T.reshape(shape)]),
        _copy(f"{prefix}.attn.proj.bias", ("params", *attention, "out", "bias")),
        *_layer_norm(f"{prefix}.norm2", (name, "LayerNorm_1")),
        _dense(f"{prefix}.mlp.fc1.weight", ("params", name, "Dense_0", "kernel")),
        _copy(f"{prefix}.mlp.fc1.bias", ("params", name, "Dense_0", "bias")),
        _dense(f"{prefix}.mlp.fc2.weight", ("params", name, "Dense_1", "kernel")),
        _copy(f"{prefix}.mlp.fc2.bias", ("params", name, "Dense_1", "bias")),
    ]
    block += 1
  return rules + _layer_norm("norm", ("LayerNorm_0",))


def architecture(variables) -> str:
  """"resnet" or "vit", read off a flax backbone's variables; a ConfigError for anything else."""
  params = variables.get("params", {}) if hasattr(variables, "get") else {}
  if "stage1_block0" in params and "Conv_0" in params:
    return "resnet"
  if "block0" in params and "cls" in params:
    return "vit"
  raise errors.ConfigError(
      f"These backbone variables (top-level params {sorted(params)[:8]}) are neither a "
      "coke_jax ResNet nor a ViT; only resnet18/34/50 (torchvision) and vit_s16 (timm) have "
      "PyTorch counterparts.")


def rules(variables, num_batches_tracked: int = 0) -> list[Rule]:
  """The state dict's entries in torchvision's (timm's) order, for these flax variables."""
  if architecture(variables) == "resnet":
    return _resnet_rules(variables, num_batches_tracked)
  return _vit_rules(variables)


def head_prefixes(variables) -> tuple[str, ...]:
  return RESNET_HEADS if architecture(variables) == "resnet" else VIT_HEADS


def to_torch(variables, num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """The backbone's {"params", "batch_stats"} as a PyTorch state dict of numpy arrays.

  `num_batches_tracked` fills every BatchNorm's counter (torch counts its
  training forward passes; the exporter writes the pretraining step).
  """
  variables = _to_numpy(variables)
  return {rule.key: np.asarray(rule.to_torch(*[_get(variables, p) for p in rule.paths]), order="C")
          for rule in rules(variables, num_batches_tracked)}


def expected_shapes(target) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of `to_torch(target)`; `target` may hold jax.ShapeDtypeStructs."""
  # Zero-stride views: the layout functions run on them without allocating the weights.
  abstract = _tree_map(lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape), target)
  return {rule.key: (tuple(out.shape), out.dtype) for rule in rules(abstract)
          for out in [np.asarray(rule.to_torch(*[_get(abstract, p) for p in rule.paths]))]}


def check_state_dict(state_dict: dict[str, Any], target, source: str = "the state dict"):
  """Raises one ConfigError naming every missing, unexpected and mis-shaped key, or nothing.

  Heads (`head_prefixes`) are neither expected nor unexpected; a missing
  `num_batches_tracked` is accepted (older PyTorch did not save it).
  """
  expected = expected_shapes(target)
  heads = head_prefixes(target)
  missing = [k for k in expected if k not in state_dict and not k.endswith(_OPTIONAL_SUFFIXES)]
  unexpected = [k for k in state_dict if k not in expected and not k.startswith(heads)]
  misshaped = [f"{k}: file {tuple(np.shape(state_dict[k]))}, model {expected[k][0]}"
               for k in expected if k in state_dict
               and tuple(np.shape(state_dict[k])) != expected[k][0]]
  if not (missing or unexpected or misshaped):
    return
  parts = []
  for title, keys in (("missing", missing), ("unexpected", unexpected),
                      ("with another shape", misshaped)):
    if keys:
      shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
      parts.append(f"{len(keys)} {title}: {shown}")
  raise errors.ConfigError(
      f"{source} does not fit this backbone ({architecture(target)}, {len(expected)} tensors "
      f"expected); nothing was loaded. {'; '.join(parts)}. Check config.model.backbone and "
      "backbone_kwargs (cifar_stem, width) against the checkpoint's architecture.")


def from_torch(state_dict: dict[str, Any], target, source: str = "the state dict"):
  """The flax {"params", "batch_stats"} of a PyTorch state dict, in `target`'s structure.

  `target` (arrays or jax.ShapeDtypeStructs) gives the tree and the dtypes;
  the result holds numpy arrays cast to those dtypes. Every key and shape is
  checked before anything is converted (`check_state_dict`), so a file that
  does not fit raises one ConfigError and returns nothing.
  """
  check_state_dict(state_dict, target, source)
  abstract = _tree_map(lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape), target)
  leaves = {}
  for rule in rules(abstract):
    if not rule.paths:
      continue
    for path, leaf in zip(rule.paths, rule.from_torch(np.asarray(state_dict[rule.key]))):
      leaves[path] = leaf

  def build(node, path):
    if isinstance(node, dict) or hasattr(node, "items"):
      return {k: build(v, (*path, k)) for k, v in node.items()}
    if path not in leaves:  # a leaf no rule fills is a bug in the rules, not in the file
      raise AssertionError(f"No state dict entry maps to the flax leaf {'/'.join(path)}.")
    return np.asarray(leaves[path], dtype=node.dtype, order="C")

  return build(target, ())


def _tree_map(fn, tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _tree_map(fn, v) for k, v in tree.items()}
  return fn(tree)


def _to_numpy(tree):
  return _tree_map(np.asarray, tree)
