"""The launch/ scripts' dry runs print the commands they would run, with flags main.py knows."""

import os
import re
import shlex
import subprocess

from absl.testing import absltest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TPU = {"TPU_NAME": "coke-pod", "ZONE": "us-central2-b"}


def _dry_run(script, *args, **env):
  out = subprocess.run(["bash", os.path.join(_REPO, "launch", script), *args],
                       capture_output=True, text=True, timeout=60, cwd="/",
                       env={"PATH": os.environ["PATH"], "DRY_RUN": "1", **env})
  return out


def _main_flags() -> set[str]:
  with open(os.path.join(_REPO, "main.py")) as f:
    return set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', f.read()))


class LaunchDryRunTest(absltest.TestCase):

  def _main_args(self, line):
    """The arguments after main.py in a printed command; each flag must be one of main.py's."""
    words = shlex.split(line)
    args = words[words.index("main.py") + 1:]
    for arg in args:
      name = arg.split("=", 1)[0].lstrip("-")
      self.assertTrue(name.startswith("config.") or name in _main_flags(), arg)
    return args

  def test_local_one_process_and_one_per_gpu(self):
    out = _dry_run("local.sh", "configs/digits.py", "/tmp/run dir", "--config.num_epochs=3")
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(self._main_args(out.stdout.strip()),
                     ["--config=configs/digits.py", "--workdir=/tmp/run dir",
                      "--config.num_epochs=3"])

    out = _dry_run("local.sh", "configs/digits.py", "/tmp/w", PROCESSES="4", PORT="5000")
    lines = out.stdout.strip().splitlines()
    self.assertLen(lines, 4)
    for i, line in enumerate(lines):
      self.assertIn(f"CUDA_VISIBLE_DEVICES={i} ", line)
      self.assertEqual(self._main_args(line)[2:], [
          "--coordinator_address=127.0.0.1:5000", "--num_processes=4", f"--process_id={i}"])

  def test_tpu_pod_steps(self):
    commands = {}
    for step in ("create", "copy", "install", "logs", "stop", "delete"):
      out = _dry_run("tpu_pod.sh", step, **_TPU)
      self.assertEqual(out.returncode, 0, out.stderr)
      commands[step] = out.stdout.strip().splitlines()
      for line in commands[step]:
        if line.startswith("gcloud"):
          self.assertIn("--zone=us-central2-b", line)
    self.assertIn("gcloud compute tpus tpu-vm create coke-pod --accelerator-type=v4-32",
                  commands["create"][0])
    self.assertIn("--worker=all", commands["copy"][-1])
    self.assertIn("--worker=0", commands["logs"][0])

    out = _dry_run("tpu_pod.sh", "train", "configs/coke_two_view.py", "gs://bucket/run",
                   "--config.num_epochs=800", **_TPU)
    self.assertEqual(out.returncode, 0, out.stderr)
    describe, ssh = out.stdout.strip().splitlines()
    self.assertIn("networkEndpoints[0].ipAddress", describe)
    self.assertIn("--worker=all", ssh)
    remote = next(w for w in shlex.split(ssh) if w.startswith("--command="))
    self.assertEqual(self._main_args(remote.split(" > ")[0]), [
        "--config=configs/coke_two_view.py", "--workdir=gs://bucket/run",
        "--config.num_epochs=800", "--coordinator_address=WORKER0_IP:8476"])

  def test_slurm_per_gpu_and_per_node(self):
    out = _dry_run("slurm.sbatch", "configs/coke_two_view.py", "/shared/run")
    self.assertEqual(out.returncode, 0, out.stderr)
    line, = out.stdout.strip().splitlines()
    self.assertTrue(line.startswith("srun --kill-on-bad-exit=1 python3 main.py"), line)
    self.assertEqual(self._main_args(line),
                     ["--config=configs/coke_two_view.py", "--workdir=/shared/run"])

    out = _dry_run("slurm.sbatch", "configs/coke_two_view.py", "/shared/run",
                   SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="4")
    self.assertEqual(out.stdout.strip().splitlines()[0], "export JAX_LOCAL_DEVICE_IDS=0,1,2,3")

  def test_missing_arguments_are_usage_errors(self):
    for script, env in (("local.sh", {}), ("slurm.sbatch", {}), ("tpu_pod.sh", _TPU)):
      out = _dry_run(script, **env)
      self.assertEqual(out.returncode, 2, script)
      self.assertIn("usage:", out.stderr)
    out = _dry_run("tpu_pod.sh", "train", "configs/digits.py", **_TPU)
    self.assertEqual(out.returncode, 2)
    out = _dry_run("tpu_pod.sh", "create")
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("set TPU_NAME", out.stderr)


if __name__ == "__main__":
  absltest.main()
