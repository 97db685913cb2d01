"""Test-wide setup, run before any test module (under pytest or `python -m tests.<name>`):
8 virtual CPU devices and fast compilation, set before JAX is imported, and quiet
TensorFlow. A process that names its own device count in XLA_FLAGS (a test's one-device
subprocess) keeps it."""

import os
import tempfile

# Compile with LLVM's optimizations off: compiling, not running, is most of the suite's time
# (a float64 8-vs-1-device step test: 52 s of compilation and steps at the default level, 31 s
# at level 0, on the 2-core AMD EPYC, 2026-12-03). Every process of the suite, main.py
# subprocesses included (`xla_flags`), compiles at the same level, so runs that tests compare
# bit for bit run the same machine code. Not for benchmarks or real runs: the steps are slower.
COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a test's subprocess: `devices` virtual CPU devices, compiled as the suite's
  own processes are. None names no count: one device, unless the child imports `tests`
  (which then sets 8)."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()  # the caller's other flags
          if not f.startswith("--xla_force_host_platform_device_count")]
  count = [] if devices is None else [f"--xla_force_host_platform_device_count={devices}"]
  return " ".join(count + kept + ([] if COMPILE_FLAGS in kept else [COMPILE_FLAGS]))


_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if COMPILE_FLAGS not in _flags:
  _flags += " " + COMPILE_FLAGS
os.environ["XLA_FLAGS"] = _flags.strip()
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
