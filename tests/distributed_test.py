"""When main.py joins a multi-process job: flags, SLURM / Open MPI, a Cloud TPU VM."""

import os
from unittest import mock

from absl.testing import absltest

from coke_jax import distributed


def _fake_pci(root, vendors):
  for i, vendor in enumerate(vendors):
    os.makedirs(os.path.join(root, f"0000:00:0{i}.0"))
    with open(os.path.join(root, f"0000:00:0{i}.0", "vendor"), "w") as f:
      f.write(vendor + "\n")
  return root


class InitializeTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.init = self.enter_context(mock.patch("jax.distributed.initialize"))
    self.enter_context(mock.patch.dict(os.environ, clear=False))
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
      os.environ.pop(var, None)

  def test_tpu_chips_are_found_by_their_pci_vendor(self):
    gpu_box = _fake_pci(self.create_tempdir().full_path, ["0x10de", "0x8086"])
    tpu_vm = _fake_pci(self.create_tempdir().full_path, ["0x8086", "0x1ae0", "0x1ae0"])
    self.assertFalse(distributed.on_cloud_tpu_vm(gpu_box))
    self.assertTrue(distributed.on_cloud_tpu_vm(tpu_vm))
    self.assertFalse(distributed.on_cloud_tpu_vm(os.path.join(gpu_box, "missing")))

  def test_one_process_without_flags_launcher_or_tpu(self):
    with mock.patch.object(distributed, "on_cloud_tpu_vm", return_value=False):
      distributed.initialize()
    self.init.assert_not_called()

  def test_flags_and_launchers_join(self):
    distributed.initialize("10.0.0.1:1234", 4, 2)
    self.init.assert_called_once_with(coordinator_address="10.0.0.1:1234", num_processes=4,
                                      process_id=2)
    self.init.reset_mock()
    os.environ["SLURM_NTASKS"] = "8"
    distributed.initialize()
    self.init.assert_called_once_with(coordinator_address=None, num_processes=None,
                                      process_id=None)
    self.init.reset_mock()
    os.environ["SLURM_NTASKS"] = "1"  # one task: nothing to join
    with mock.patch.object(distributed, "on_cloud_tpu_vm", return_value=False):
      distributed.initialize()
    self.init.assert_not_called()

  def test_a_tpu_vm_joins_its_pod_slice_without_flags(self):
    with mock.patch.object(distributed, "on_cloud_tpu_vm", return_value=True):
      distributed.initialize()
      self.init.assert_called_once_with()
      self.init.side_effect = ValueError("coordinator_address should be defined.")
      with self.assertLogs(level="WARNING") as logs:
        distributed.initialize()  # no metadata to read: one process, with a warning
    self.assertIn("running as one process", "\n".join(logs.output))


if __name__ == "__main__":
  absltest.main()
