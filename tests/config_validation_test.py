"""The whole config schema against bad values: each is refused with one line naming the key,
or the run trains (or stops with one of main.py's one-line errors), never a traceback.

Every leaf of every objective's smoke config is set to the values a typo or a wrong unit
gives: integers 0, -1 and 10**12; reals 0, -1, NaN and 1e30; numeric tuples (), zeros, -1s,
huge values and NaNs; strings a wrong word. A value is refused when setting it fails (the
config's type check, which main.py reports as one flag error) or when `config_base.validate`
raises one ConfigError. What `validate` accepts must run: the accepted values of each
objective go into one smoke run per value slot (all first accepted values of every key
together, then all second ones, and so on; strings one at a time, since most stop early), so
the walk compiles a handful of programs instead of one per value. The walk's generic keys
run under CoKe; each other objective walks its own section.
"""

import math
import tempfile

from absl.testing import absltest
import flax

from coke_jax import config_base
from coke_jax import errors
from coke_jax import objectives
from coke_jax import train
from coke_jax.data import sources
from coke_jax.evaluation import restore
from tests import testing

# What main.py reports as one line (its _USER_ERRORS).
_USER_ERRORS = (errors.ConfigError, sources.MissingDataError, restore.MissingCheckpointError,
                FloatingPointError)


def _bad_values(value):
  if isinstance(value, bool) or value is None:
    return []
  if isinstance(value, int):
    return [0, -1, 10**12]
  if isinstance(value, float):
    return [0.0, -1.0, math.nan, 1e30]
  if isinstance(value, str):
    return ["nope"]
  if isinstance(value, tuple) and value and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
    kind, n = type(value[0]), len(value)
    out = [(), (kind(0),) * n, (kind(-1),) * n, (10**12 if kind is int else 1e30,) * n]
    return out + ([(math.nan,) * n] if kind is float else [])
  return []


def _set(config, key, value):
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value


def _walk(objective: str):
  """(refused: [(key, value, message)], accepted: {key: [values]}) for `objective`'s keys
  (all keys for CoKe, the objective section for the others)."""
  flat = flax.traverse_util.flatten_dict(testing.smoke_config(objective).to_dict(), sep=".")
  refused, accepted = [], {}
  for key, default in flat.items():
    if objective != "coke" and not key.startswith("objective."):
      continue
    for bad in _bad_values(default):
      config = testing.smoke_config(objective)
      try:
        with config.unlocked():
          _set(config, key, bad)
      except TypeError:  # the config's own type check: a flag error in main.py
        continue
      try:
        config_base.validate(config)
      except errors.ConfigError as e:
        refused.append((key, bad, str(e)))
        continue
      accepted.setdefault(key, []).append(bad)
  return refused, accepted


class ConfigValidationTest(absltest.TestCase):

  def _check_objective(self, objective: str):
    refused, accepted = _walk(objective)
    self.assertNotEmpty(refused)
    for key, bad, message in refused:
      with self.subTest(key=key, value=bad):
        self.assertNotIn("\n", message)
        self.assertTrue(key in message or repr(bad) in message, message)
    runs = []
    slots = max(len(values) for values in accepted.values())
    for slot in range(slots):
      settings = {k: v[slot] for k, v in accepted.items()
                  if len(v) > slot and not isinstance(v[slot], str)}
      if settings:
        runs.append(settings)
    runs += [{k: v[0]} for k, v in accepted.items() if isinstance(v[0], str)]
    for settings in runs:
      with self.subTest(settings=settings):
        config = testing.smoke_config(objective)
        with config.unlocked():
          for key, value in settings.items():
            _set(config, key, value)
        try:
          train.train_and_evaluate(config, tempfile.mkdtemp(), stop_at_step=1)
        except _USER_ERRORS as e:
          self.assertNotIn("\n", str(e))

  def test_coke_and_every_shared_key(self):
    self._check_objective("coke")

  def test_the_other_objectives_sections(self):
    for name in objectives.NAMES:
      if name != "coke":
        with self.subTest(objective=name):
          self._check_objective(name)

  def test_messages(self):
    for key, value, says in (
        ("global_batch_size", 0, "an integer in [1, 16777216]"),
        ("optimizer.learning_rate", math.nan, "a finite number"),
        ("augment.scale_range", (), "a pair (a, b) with 0 < a <= b <= 4"),
        ("dataset.split_seed", -1, "an integer in [0, 2147483647]"),
        ("optimizer.name", "adamw", "one of ['lars', 'sgd', 'adam']"),
        ("objective.min_size_ratio", 1.5, "a number >= 0 and <= 1")):
      config = testing.smoke_config()
      with config.unlocked():
        _set(config, key, value)
      with self.assertRaises(errors.ConfigError) as e:
        config_base.validate(config)
      self.assertEqual(str(e.exception), f"config.{key} is {value!r}; it must be {says}. Set "
                       f"--config.{key}=<{says}> (configs/digits.py shows working values).")

  def test_settings_that_must_fit_the_data(self):
    with self.assertRaisesRegex(errors.ConfigError, r"global_batch_size is 4096, more than the "
                                r"1438 training examples"):
      train.train_and_evaluate(testing.smoke_config(global_batch_size=4096), tempfile.mkdtemp())
    with self.assertRaisesRegex(errors.ConfigError, "more steps than the step counter holds"):
      train.train_and_evaluate(testing.smoke_config(num_epochs=1 << 24, global_batch_size=8),
                            tempfile.mkdtemp())


if __name__ == "__main__":
  absltest.main()
