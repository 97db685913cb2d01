"""Backbones and heads; `build_model` turns `config.model` into a Flax module."""

from coke_jax.models.heads import SSLModel, MLPHead
from coke_jax.models import resnet
from coke_jax.models.small_cnn import SmallCNN

_BACKBONES = {"small_cnn": SmallCNN, "resnet18": resnet.resnet18, "resnet34": resnet.resnet34,
              "resnet50": resnet.resnet50}


def build_model(model_config, axis_name=None) -> SSLModel:
  """The backbone with its projection (and optional prediction) head.

  `axis_name` names the mesh axis over which BatchNorm averages its batch
  statistics (synchronized BN); None outside a sharded step.
  """
  name = model_config.backbone
  if name not in _BACKBONES:
    raise ValueError(f"config.model.backbone is {name!r}; known backbones: {sorted(_BACKBONES)}.")
  backbone = _BACKBONES[name](axis_name=axis_name, **dict(model_config.backbone_kwargs))
  projector = MLPHead(hidden_dim=model_config.proj_hidden_dim, out_dim=model_config.embed_dim,
                      num_layers=model_config.proj_layers, bn_on_output=True,
                      axis_name=axis_name)
  predictor = None
  if model_config.pred_hidden_dim:
    predictor = MLPHead(hidden_dim=model_config.pred_hidden_dim, out_dim=model_config.embed_dim,
                        num_layers=2, bn_on_output=False, axis_name=axis_name)
  return SSLModel(backbone=backbone, projector=projector, predictor=predictor)
