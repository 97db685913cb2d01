"""Joining a multi-process job (TPU pod slices, SLURM, Open MPI) through jax.distributed."""

import glob
import os
from typing import Optional

from absl import logging
import jax

_GOOGLE_PCI_VENDOR = "0x1ae0"  # the PCI vendor id of TPU chips


def several_processes_launched() -> bool:
  """Whether SLURM or Open MPI started this command as one of several processes."""
  return any(int(os.environ.get(var, "1")) > 1
             for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))


def on_cloud_tpu_vm(pci_devices: str = "/sys/bus/pci/devices") -> bool:
  """Whether this machine has TPU chips (a Cloud TPU VM), read from sysfs without starting
  the TPU runtime, which jax.distributed.initialize must precede."""
  for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    with open(vendor) as f:
      if f.read().strip() == _GOOGLE_PCI_VENDOR:
        return True
  return False


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins the job's other processes; JAX detects whatever the arguments leave unset.

  Must run before anything touches a JAX device. Joins when an argument is
  given, when SLURM or Open MPI started several processes, or on a Cloud TPU
  VM, where JAX reads the pod slice's workers from the VM's metadata (a
  single-host TPU VM is a job of one process). Otherwise this is one process
  over the local devices.
  """
  explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  if any(v is not None for v in explicit.values()) or several_processes_launched():
    jax.distributed.initialize(**explicit)
  elif on_cloud_tpu_vm():
    try:
      jax.distributed.initialize()
    except ValueError as e:  # no pod metadata to read (e.g. TPU_SKIP_MDS_QUERY): one process
      logging.warning("A TPU VM without a detectable pod slice (%s): running as one process. "
                      "On a pod slice pass --coordinator_address (launch/tpu_pod.sh does).", e)
