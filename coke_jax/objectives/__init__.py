"""Training objectives, each a plug-in on the interface of `base.Objective`.

One module per objective; each has `default_config()`, its `config.objective`
section (every key with its default and `name`), and `build(config,
num_examples)`, the objective built from it. Adding an objective is a new
module here and an entry in `_MODULES`; the trainer, checkpoints and
evaluation need no change.
"""

from ml_collections import config_dict

from coke_jax import errors
from coke_jax.objectives import c2bin
from coke_jax.objectives import coke
from coke_jax.objectives import local_aggregation
from coke_jax.objectives import self_classifier
from coke_jax.objectives import swav
from coke_jax.objectives.base import EvalHead, Objective, StepContext
from coke_jax.objectives.coke import CoKe

_MODULES = {"coke": coke, "swav": swav, "self_classifier": self_classifier, "c2bin": c2bin,
            "local_aggregation": local_aggregation}
NAMES = tuple(_MODULES)


def _module(name: str):
  if name not in _MODULES:
    raise errors.ConfigError(
        f"The objective {name!r} does not exist; known objectives: {sorted(_MODULES)}. Name "
        "it in the config file's argument, e.g. --config=configs/digits.py:swav.")
  return _MODULES[name]


def default_config(name: str) -> config_dict.ConfigDict:
  """The `config.objective` section of objective `name`, with every key and its default."""
  return _module(name).default_config()


def rules(name: str) -> dict:
  """What each key of objective `name`'s section may hold (its module's `RULES`)."""
  return getattr(_module(name), "RULES", {})


def build(config, num_examples: int) -> Objective:
  """The objective of `config.objective`, for a training set of `num_examples`."""
  name = config.objective.name
  expected = set(default_config(name))
  if set(config.objective) != expected:
    raise errors.ConfigError(
        f"config.objective.name is {name!r}, but config.objective holds the settings of "
        f"another objective (keys {sorted(set(config.objective) ^ expected)} differ). The "
        "config file builds the objective's section: choose the objective by the config "
        "file's argument, e.g. --config=configs/digits.py:swav, not by --config.objective.name.")
  return _module(name).build(config, num_examples)
