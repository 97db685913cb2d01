"""Test-wide setup, run before any test module (under pytest or `python -m tests.<name>`):
8 virtual CPU devices, set before JAX is imported, and quiet TensorFlow. A process that
names its own device count in XLA_FLAGS (a test's one-device subprocess) keeps it."""

import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole session, inherited by the main.py
# subprocesses: many tests compile the same smoke-config programs (new jit objects, the
# same HLO), and compiling dominated the suite's time. The cache is keyed on the program,
# so a hit runs the same executable (preemption_test's bit-exact resumes read it).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="coke_jax_tests_xla_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
