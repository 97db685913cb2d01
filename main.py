"""Pretrain: `python main.py --config=configs/digits.py --workdir=/tmp/coke_digits`.

The config file's argument names the objective (CoKe without one):
`--config=configs/digits.py:swav`, `--config=configs/digits.py:self_classifier`.
Override any config value with --config.key=value (unknown keys are an error).
Running again with the same --workdir resumes from its latest checkpoint.

Evaluate a pretraining run's checkpoint (read-only) into another workdir:
  --mode=eval         kNN, clustering metrics and pictures (same config as pretraining)
  --mode=linear_eval  linear probe (config with a `linear_eval` section,
                      e.g. configs/linear_eval_digits.py)
  python main.py --mode=linear_eval --config=configs/linear_eval_digits.py \
      --pretrain_workdir=/tmp/coke_digits --workdir=/tmp/coke_digits_linear

Multi-host (TPU pod slices, SLURM, Open MPI): start the same command once per
process; see launch/ and docs/pods.md. Exit status: 0 finished, 1 error (the
last log line says what to do), 75 preempted (SIGTERM: a checkpoint was
written; run the same command again to resume).
"""

import ast
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from coke_jax import checkpointing
from coke_jax import distributed
from coke_jax import errors
from coke_jax import train
from coke_jax import workdir_lock
from coke_jax.data import sources
from coke_jax.evaluation import checkpoint_eval
from coke_jax.evaluation import linear_probe
from coke_jax.evaluation import restore

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                               "summaries and final_metrics.json (shared by all hosts: a GCS "
                               "bucket or a shared filesystem). Default: workdirs/<config "
                               "name>, or workdirs/<config name>_<mode> in the eval modes.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "linear_eval"],
                          "train: pretrain (and evaluate at the end); eval / linear_eval: "
                          "evaluate the checkpoint in --pretrain_workdir.")
_PRETRAIN_WORKDIR = flags.DEFINE_string("pretrain_workdir", None,
                                        "The pretraining run's --workdir (eval modes).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for jax.distributed (launch/tpu_pod.sh "
    "passes worker 0's). Not needed under SLURM or Open MPI, whose layout JAX reads itself.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
flags.mark_flags_as_required(["config"])

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL of sysexits.h: try again (resume) later.
# Errors whose message says what was wrong and what to do: shown without a traceback.
_USER_ERRORS = (errors.ConfigError, sources.MissingDataError, restore.MissingCheckpointError,
                FloatingPointError, errors.ReplicaMismatchError)


_LIBRARIES = ("/orbax/", "/tensorflow/", "/tensorflow_datasets/")


class _QuietLibraries:
  """Drops INFO records that would drown the progress lines (Orbax's and TF's internals), the
  errors these libraries log from their threads when a write fails (full or read-only disk),
  the tracebacks of their other errors and the abandoned tasks of a failed restore, and
  shows clu's ReportProgress note ("Setting work unit notes: 2.1 steps/s, ... ETA: 3m") as
  "Progress: ..."."""

  def filter(self, record) -> bool:
    library = any(part in record.pathname for part in _LIBRARIES)
    if "/asyncio/" in record.pathname and "/orbax/" in record.getMessage():
      return False  # "Task exception was never retrieved": reads a failed restore abandoned
    if record.levelno > 20:
      if library and (workdir_lock.write_failure_text(record.getMessage()) or (
          record.exc_info and workdir_lock.write_failure(record.exc_info[1]))):
        return False  # a failed write: main.py's one line says it (WorkdirNotWritableError)
      if library:  # the one line stays; the thread's traceback goes
        record.exc_info, record.exc_text = None, None
      return True
    if "/clu/" in record.pathname and str(record.msg).startswith("Setting work unit notes: "):
      record.msg = "Progress: " + str(record.msg)[len("Setting work unit notes: "):]
      return True
    return not library


def _one_line(error: Exception) -> str:
  """A flag or config error's message on one line: a KeyError's repr (ml_collections wraps
  it in an AttributeError, quoted again) unquoted, an exception in the config file's code
  its last line."""
  text = str(error.args[0]) if error.args else str(error)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      break
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = [re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", lines[-1])]
  return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad flag, config file or --config.key one line, status 1.

  absl's own parser reports only `flags.Error`s so; ml_collections raises a
  mistyped --config.key as an AttributeError (with the nearest key, a
  traceback around it) and defers a config file it cannot load to the
  config's first use (a traceback in main).
  """
  try:
    argv = flags.FLAGS(argv)
    _CONFIG.value.keys()  # the deferred error of a config file that did not load
  except flags.Error as e:
    message = _one_line(e)
    if "Traceback" not in str(e):  # a flag's value, not the config file's code
      message += ". Pass --helpfull to see the flags."
    _exit_on_bad_flag(message)
  except (KeyError, AttributeError) as e:
    message = _one_line(e)
    unknown = re.match(r"'([^']*)'", message)
    given = [arg for arg in argv if unknown and arg.startswith("--config.") and
             unknown.group(1) in re.split(r"[.=]", arg[len("--config."):])[:-1]]
    _exit_on_bad_flag(f"{' '.join(given) or '--config.*'}: no such config key {message} "
                      "(coke_jax/config_base.py lists every key).")
  except OSError as e:
    path = flags.FLAGS["config"].serialize().partition("=")[2].partition(":")[0]
    problem = ("there is no such file" if not os.path.exists(path) else
               f"it did not load ({_one_line(e.__cause__ or e)})")
    _exit_on_bad_flag(f"--config={path}: {problem}. Give the path of a config file, e.g. "
                      "--config=configs/digits.py (relative paths start at the directory "
                      "main.py runs in).")
  return argv


def _exit_on_bad_flag(message: str):
  if not re.match(r"\w+Error: ", message):
    message = f"ConfigError: {message}"
  sys.stderr.write(message + "\n")
  sys.exit(1)


def default_workdir(config_path: str, mode: str) -> str:
  name = os.path.splitext(os.path.basename(config_path))[0]
  return os.path.join("workdirs", name if mode == "train" else f"{name}_{mode}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # tf.data runs on the host; keep TensorFlow off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
  logging.info("JAX process %d/%d, %d local / %d global devices (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  if jax.process_index() > 0:  # one host's log tells the story; the others report problems only
    logging.set_verbosity(logging.WARNING)
  if _MODE.value != "train" and not (_PRETRAIN_WORKDIR.value or _CONFIG.value.model.init_from):
    raise app.UsageError(f"--mode={_MODE.value} needs --pretrain_workdir (the pretraining run's "
                         "--workdir, which holds its checkpoints) or --config.model.init_from="
                         "<weights in torchvision's layout>.")
  workdir = _WORKDIR.value or default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]), _MODE.value)
  logging.info("Workdir: %s", workdir)
  try:
    with workdir_lock.hold(workdir):  # one run per workdir; also the first write to it
      if _MODE.value == "train":
        train.train_and_evaluate(_CONFIG.value, workdir)
      elif _MODE.value == "eval":
        checkpoint_eval.evaluate_checkpoint(_CONFIG.value, workdir, _PRETRAIN_WORKDIR.value)
      else:
        linear_probe.train_and_evaluate(_CONFIG.value, workdir, _PRETRAIN_WORKDIR.value)
  except checkpointing.Preempted as e:
    logging.warning("%s", e)
    return PREEMPTED_EXIT_CODE
  except _USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    return 1
  except Exception as e:  # a write to the workdir (metrics, events, pictures) that failed
    failure = workdir_lock.write_failure(e)
    if failure is None:
      raise
    logging.error("WorkdirNotWritableError: %s", workdir_lock.not_writable(workdir, failure))
    return 1
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
