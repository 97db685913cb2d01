"""pytest setup; the devices and environment are set in tests/__init__.py, imported first."""

from absl import flags

# absltest helpers (create_tempdir) read absl flags, which pytest does not parse.
flags.FLAGS.mark_as_parsed()
