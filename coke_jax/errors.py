"""Errors whose message tells the user what was wrong and what to do.

`main.py` prints these as one log line and exits with status 1, without a
traceback; any other exception is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
  """A config value, a flag or the data given does not work; the message names the fix."""


class ReplicaMismatchError(RuntimeError):
  """The devices' copies of the replicated train state disagree (`sharding.check_replicas`)."""
