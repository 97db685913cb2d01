"""Backbones and heads; `build_model` turns `config.model` into a Flax module."""

from absl import logging
import jax
import jax.numpy as jnp

from coke_jax import errors
from coke_jax import interop
from coke_jax.models import batch_norm
from coke_jax.models import resnet
from coke_jax.models import vit
from coke_jax.models.heads import ACTIVATIONS, MLPHead, SSLModel
from coke_jax.models.small_cnn import SmallCNN

BACKBONES = {
    "small_cnn": SmallCNN,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "vit_s16": vit.vit_small16,
}
# The backbone_kwargs each backbone takes. A config file sets those of its backbone; when
# --config.model.backbone switches to another, the ones that belong to another backbone are
# dropped with a warning, so the new one starts from its defaults.
BACKBONE_KWARGS = {
    "small_cnn": ("widths", "stem_stride"),
    "resnet18": ("cifar_stem", "zero_init_last_bn", "width"),
    "resnet34": ("cifar_stem", "zero_init_last_bn", "width"),
    "resnet50": ("cifar_stem", "zero_init_last_bn", "width"),
    "vit_s16": (),
}
_warned_dropped = set()


def backbone_kwargs(model_config) -> dict:
  """`model_config.backbone_kwargs` that its backbone takes; another backbone's are dropped
  (one warning naming them), a key no backbone takes is a ConfigError."""
  name = model_config.backbone
  kwargs = dict(model_config.backbone_kwargs)
  known = {k for keys in BACKBONE_KWARGS.values() for k in keys}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise errors.ConfigError(
        f"config.model.backbone_kwargs has {unknown}, which no backbone takes; "
        f"{name} takes {list(BACKBONE_KWARGS[name])}. Remove or rename them in the config file.")
  dropped = sorted(set(kwargs) - set(BACKBONE_KWARGS[name]))
  if dropped and (name, tuple(dropped)) not in _warned_dropped:
    _warned_dropped.add((name, tuple(dropped)))
    logging.warning("config.model.backbone is %r: ignoring config.model.backbone_kwargs %s, "
                    "which belong to another backbone (%s takes %s).", name,
                    {k: kwargs[k] for k in dropped}, name, list(BACKBONE_KWARGS[name]))
  return {k: v for k, v in kwargs.items() if k not in dropped}


# float64 is a verification mode (the device-count equivalence tests run the whole step in it,
# where reassociation error is about 1e-16); it needs JAX's x64 mode.
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def build_model(model_config, axis_name=None) -> SSLModel:
  """The backbone with its projection (and optional prediction) head.

  `axis_name` names the mesh axis over which BatchNorm averages its batch
  statistics (synchronized BN); None outside a sharded step. `model.dtype`
  sets the compute dtype; parameters stay float32, and the embeddings the
  clustering sees are cast to float32 (heads.SSLModel). With "float64" (a
  verification mode) the trainer stores the whole state in float64 too.
  """
  name = model_config.backbone
  if name not in BACKBONES:
    raise errors.ConfigError(
        f"config.model.backbone is {name!r}; known backbones: {sorted(BACKBONES)}.")
  if model_config.dtype not in _DTYPES:
    raise errors.ConfigError(
        f"config.model.dtype is {model_config.dtype!r}; use one of {sorted(_DTYPES)}.")
  if model_config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise errors.ConfigError(
        "config.model.dtype is 'float64', which needs JAX's 64-bit mode: set JAX_ENABLE_X64=1 "
        "(float64 is meant for numerical checks; train in float32 or bfloat16).")
  dtype = _DTYPES[model_config.dtype]
  kwargs = backbone_kwargs(model_config)
  if model_config.remat:
    if name == "small_cnn":
      raise errors.ConfigError(
          "config.model.remat is only supported for resnet* and vit_s16 backbones.")
    kwargs["remat"] = True
  backbone = BACKBONES[name](axis_name=axis_name, dtype=dtype, **kwargs)
  if model_config.proj_activation not in ACTIVATIONS:
    raise errors.ConfigError(
        f"config.model.proj_activation is {model_config.proj_activation!r}; use one of "
        f"{sorted(ACTIVATIONS)}.")
  projector = MLPHead(hidden_dim=model_config.proj_hidden_dim, out_dim=model_config.embed_dim,
                      num_layers=model_config.proj_layers,
                      bn_on_output=model_config.proj_bn_on_output,
                      activation=model_config.proj_activation, axis_name=axis_name, dtype=dtype)
  predictor = None
  if model_config.pred_hidden_dim:
    predictor = MLPHead(hidden_dim=model_config.pred_hidden_dim, out_dim=model_config.embed_dim,
                        num_layers=2, bn_on_output=False, axis_name=axis_name, dtype=dtype)
  return SSLModel(backbone=backbone, projector=projector, predictor=predictor)


def abstract_variables(model: SSLModel, image_shape) -> dict:
  """The shapes of the model's {"params", "batch_stats"}, without computing anything."""
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((2, *image_shape)), train=False))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def backbone_from_file(model: SSLModel, image_shape, path: str) -> dict:
  """The backbone's {"params", "batch_stats"} (numpy) from a torchvision-layout file."""
  shapes = abstract_variables(model, image_shape)
  target = {k: v["backbone"] for k, v in shapes.items() if "backbone" in v}
  return interop.load_backbone(path, target)
