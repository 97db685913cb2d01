"""Test-wide setup, run before any test module (under pytest or `python -m tests.<name>`):
8 virtual CPU devices, set before JAX is imported, and quiet TensorFlow. A process that
names its own device count in XLA_FLAGS (a test's one-device subprocess) keeps it."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
