"""Rules for config values: `config_base.RULES` for the shared schema, `RULES` in each
objective module for its section; `config_base.validate` applies them."""

import math


class Rule:
  """A check of one value: `test(value)` is True when it is fine; `says` what fits, for the
  error message (and its --config example)."""

  def __init__(self, says: str, test, optional: bool = False):
    self.says, self.test, self.optional = says, test, optional

  def problem(self, value):
    if value is None:
      return None if self.optional else self.says
    try:
      return None if self.test(value) else self.says
    except TypeError:  # e.g. a tuple where a number belongs
      return self.says


def is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def is_real(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: int, optional=False) -> Rule:
  return Rule(f"an integer in [{lo}, {hi}]", lambda v: is_int(v) and lo <= v <= hi, optional)


def real(lo=None, hi=None, lo_open=False, hi_open=False, optional=False) -> Rule:
  """A finite number within the bounds (open or closed; None: unbounded)."""
  def test(v):
    return (is_real(v) and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))
  left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
  right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
  return Rule(f"a number {' and '.join(x for x in (left, right) if x)}".strip(), test, optional)


def positive(hi=None, optional=False) -> Rule:
  return real(0, hi, lo_open=True, optional=optional)


PROBABILITY = real(0, 1)


def interval(lo, hi) -> Rule:
  """(a, b) with lo < a <= b <= hi: a range to sample from."""
  return Rule(f"a pair (a, b) with {lo} < a <= b <= {hi}",
              lambda v: len(v) == 2 and all(map(is_real, v)) and lo < v[0] <= v[1] <= hi)


def each(rule: Rule, length=None, min_length=1) -> Rule:
  """A tuple of values that each pass `rule`: exactly `length` of them, or at least
  `min_length`."""
  count = f"{length}" if length else f"at least {min_length}"
  return Rule(f"a tuple of {count} values, each {rule.says}", lambda v: isinstance(
      v, (tuple, list)) and (len(v) == length if length else len(v) >= min_length) and all(
          rule.problem(x) is None for x in v))


def one_of(*words) -> Rule:
  return Rule(f"one of {list(words)}", lambda v: v in words)
