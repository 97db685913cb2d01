"""Test-wide setup, run before any test module (under pytest or `python -m tests.<name>`):
8 virtual CPU devices, set before JAX is imported, and quiet TensorFlow."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
