"""Test-wide setup: 8 virtual CPU devices (before JAX is imported) and quiet TensorFlow."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

# absltest helpers (create_tempdir) read absl flags, which pytest does not parse.
flags.FLAGS.mark_as_parsed()
