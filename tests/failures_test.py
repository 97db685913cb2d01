"""Bad input stops main.py with one clear message and a non-zero status, and loses no checkpoint.

Also the two run monitors: NaN/inf (stop, never save a bad state) and a
collapsing clustering (warn in the log and the metrics).
"""

import errno
import hashlib
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint

from coke_jax import checkpointing
from coke_jax import errors
from coke_jax import models
from coke_jax import monitor
from coke_jax import objectives
from coke_jax import sharding
from coke_jax import train
from coke_jax import workdir_lock
from coke_jax.data import sources
from coke_jax.evaluation import restore
from tests import main_runs
from tests import testing


def _files(directory: str) -> dict[str, str]:
  """Every file under `directory` with the hash of its bytes."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _chmod_tree(directory: str, dir_mode: int, file_mode: int):
  for root, dirs, names in os.walk(directory, topdown=False):
    for name in names:
      os.chmod(os.path.join(root, name), file_mode)
    for name in dirs:
      os.chmod(os.path.join(root, name), dir_mode)
  os.chmod(directory, dir_mode)


class MainFailuresTest(absltest.TestCase):
  """Each case starts main.py in a workdir holding a smoke checkpoint at step 2."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.base = tempfile.mkdtemp()
    train.train_and_evaluate(testing.smoke_config(), cls.base, stop_at_step=2)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.base)
    super().tearDownClass()

  def _fail(self, *flags, config="configs/smoke.py", expect_status=1, prepare=None, prefix=()):
    """Runs main.py on a copy of the base workdir (after `prepare(workdir)`, under the
    command `prefix`); returns its log, checking that no checkpoint changed."""
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    shutil.copytree(self.base, workdir)
    before = _files(os.path.join(workdir, "checkpoints"))
    if prepare:
      prepare(workdir)
    run = main_runs.MainRun([f"--config={config}", f"--workdir={workdir}", *flags],
                            os.path.join(os.path.dirname(workdir), "main.log"), prefix=prefix)
    self.addCleanup(run.stop)
    self.assertEqual(run.wait(), expect_status, run.output()[-3000:])
    after = _files(os.path.join(workdir, "checkpoints"))
    self.assertEqual({k: v for k, v in after.items() if k in before}, before)
    return run.output(), workdir

  def test_mistyped_config_key(self):
    out, _ = self._fail("--config.optimiser.name=sgd")
    self.assertIn('Did you mean "optimizer" instead of "optimiser"?', out)
    self.assertNotIn("Traceback", out)

  def test_flag_and_config_file_errors_are_one_line(self):
    out, _ = self._fail("--config.num_epoch=3")
    self.assertIn('ConfigError: --config.num_epoch=3: no such config key \'num_epoch\' Did you '
                  'mean "num_epochs" instead of "num_epoch"?', out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail(config="configs/nope.py")
    self.assertIn("ConfigError: --config=configs/nope.py: there is no such file.", out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail(config="configs/smoke.py:nope")
    self.assertIn("ConfigError: The objective 'nope' does not exist", out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail("--mode=tune")
    self.assertIn("flag --mode=tune: value should be one of", out)

  def test_a_value_out_of_its_range_is_one_line(self):
    # tests/config_validation_test.py walks every key in-process; these go through main.py.
    out, _ = self._fail("--config.global_batch_size=0")
    self.assertIn("ConfigError: config.global_batch_size is 0; it must be an integer in [1, "
                  "16777216]. Set --config.global_batch_size=", out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail("--mode=eval", f"--pretrain_workdir={self.base}",
                        "--config.dataset.image_size=-8")
    self.assertIn("ConfigError: config.dataset.image_size is -8; it must be an integer in [1, "
                  "4096]", out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail("--config.objective.min_size_ratio=1.5")
    self.assertIn("ConfigError: config.objective.min_size_ratio is 1.5; it must be a number >= 0 "
                  "and <= 1.", out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail("--config.optimizer.learning_rate=nan")
    self.assertIn("ConfigError: config.optimizer.learning_rate is nan; it must be a finite "
                  "number.", out)
    self.assertNotIn("Traceback", out)

  def test_a_workdir_held_by_a_live_run_is_refused(self):
    # This test's process holds the lock, as a running main.py would; main.py is the second.
    held = []

    def hold(workdir):
      lock = workdir_lock.hold(workdir)
      lock.__enter__()
      held.append(lock)
      self.addCleanup(lock.__exit__, None, None, None)

    out, workdir = self._fail(prepare=hold)
    self.assertIn(f"WorkdirInUseError: The workdir {workdir} is in use by another run (process "
                  f"{os.getpid()} on ", out)
    self.assertNotIn("Traceback", out)

  def test_a_read_only_workdir_is_one_line(self):
    prefix = ()
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it
      if not shutil.which("setpriv"):
        self.skipTest("running as root without setpriv (util-linux)")
      prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                "--")

    def read_only(workdir):
      _chmod_tree(workdir, 0o555, 0o444)
      self.addCleanup(_chmod_tree, workdir, 0o755, 0o644)

    out, workdir = self._fail(prepare=read_only, prefix=prefix)
    self.assertIn(f"WorkdirNotWritableError: Cannot write to the workdir {workdir} "
                  "(PermissionError: Permission denied", out)
    self.assertNotIn("Traceback", out)

  def test_a_failed_checkpoint_save_is_one_error_and_keeps_the_earlier_ones(self):
    # A full disk, as Orbax would meet it when it writes step 4's files.
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    shutil.copytree(self.base, workdir)
    before = _files(os.path.join(workdir, "checkpoints"))
    save = orbax.checkpoint.CheckpointManager.save

    def full_disk(manager, step, *args, **kwargs):
      if step >= 4:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(workdir, "x"))
      return save(manager, step, *args, **kwargs)

    with mock.patch.object(orbax.checkpoint.CheckpointManager, "save", full_disk):
      with self.assertRaises(checkpointing.CheckpointSaveError) as e:
        train.train_and_evaluate(testing.smoke_config(), workdir, stop_at_step=6)
    self.assertRegex(str(e.exception), r"^Could not write the checkpoint of step 4 to .*"
                     r"checkpoints \(OSError: No space left on device: .*/x\)\. The "
                     r"earlier checkpoints are kept \(steps \[2\]\)\. Free space")
    self.assertNotIn("\n", str(e.exception))
    self.assertEqual(_files(os.path.join(workdir, "checkpoints")), before)

  def test_batch_not_dividing_over_devices(self):
    out, _ = self._fail("--config.global_batch_size=250")
    self.assertIn("config.global_batch_size=250 does not divide over 8 devices", out)
    self.assertIn("--config.global_batch_size=248", out)
    self.assertIn("ConfigError: ", out)
    self.assertNotIn("Traceback", out)
    out, _ = self._fail("--config.eval_batch_size=100")
    self.assertIn("config.eval_batch_size=100 does not divide over 8 devices", out)

  def test_evaluating_a_workdir_without_checkpoints(self):
    empty = self.create_tempdir().full_path
    out, _ = self._fail("--mode=eval", f"--pretrain_workdir={empty}")
    self.assertIn("MissingCheckpointError: ", out)
    self.assertIn(empty, out)
    self.assertNotIn("Traceback", out)

  def test_data_dir_without_dataset(self):
    data_dir = self.create_tempdir().full_path
    out, _ = self._fail(f"--config.dataset.data_dir={data_dir}", config="configs/coke_two_view.py")
    self.assertIn(f"MissingDataError: The TFDS dataset 'imagenet2012' is not prepared in "
                  f"data_dir={data_dir!r}", out)
    self.assertIn("tfds build imagenet2012", out)
    self.assertNotIn("Traceback", out)

  def test_the_designs_two_view_command_needs_no_workdir_to_say_what_data_is_missing(self):
    # `python main.py --config=configs/coke_two_view.py`, with an empty data_dir so that a
    # machine holding ImageNet does not start training here.
    data_dir = self.create_tempdir().full_path
    run = main_runs.MainRun(["--config=configs/coke_two_view.py",
                             f"--config.dataset.data_dir={data_dir}"],
                            os.path.join(self.create_tempdir().full_path, "main.log"))
    self.addCleanup(run.stop)
    self.assertEqual(run.wait(), 1, run.output()[-3000:])
    out = run.output()
    self.assertIn("Workdir: workdirs/coke_two_view", out)
    self.assertIn("MissingDataError: The TFDS dataset 'imagenet2012' is not prepared", out)
    self.assertIn("tfds build imagenet2012", out)

  def test_incompatible_checkpoint(self):
    out, _ = self._fail("--config.objective.num_clusters=(10, 20)")
    self.assertIn("IncompatibleCheckpointError", out)
    self.assertRegex(out, r"objective: checkpoint .*'num_clusters': \[10, 16\].* vs config "
                          r".*'num_clusters': \[10, 20\]")
    self.assertIn("neither loaded nor overwritten", out)
    self.assertNotIn("Traceback", out)

  def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(self):
    # Epoch 0 (steps 1-6) takes no gradient step; step 7's huge update makes step 8 NaN.
    out, workdir = self._fail("--config.optimizer.learning_rate=1e30")
    self.assertIn("NaN or inf in the metrics (loss, gradient norm or duals) of step 8", out)
    self.assertIn("(latest: step 4)", out)
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "checkpoints"))), ["2", "4"])


def _checkpointer(workdir, config, num_train):
  return checkpointing.Checkpointer.for_training(workdir, config, num_train,
                                                 objectives.build(config, num_train))


class IncompatibleCheckpointTest(absltest.TestCase):
  """Another N (the dataset split), model, batch size or seed is refused like another K (above)."""

  def test_other_num_examples_or_model(self):
    workdir = self.create_tempdir().full_path
    config = testing.smoke_config()
    num_train = sources.get_source(config.dataset).num_train
    saver = _checkpointer(workdir, config, num_train)
    saver.save(0, {"params": jnp.ones(3)})  # the settings are checked before the state
    saver.wait()
    for key, value, diff in (
        ("dataset.holdout_fraction", 0.3, "num_train_examples: checkpoint 1438 vs config"),
        ("model.embed_dim", 32, "'embed_dim': 16"),
        ("model.backbone", "resnet18", "'backbone': 'small_cnn'"),
        ("global_batch_size", 128, "global_batch_size: checkpoint 256 vs config 128"),
        ("seed", 1, "seed: checkpoint 0 vs config 1")):
      other = testing.smoke_config(**{key: value})
      num_train = sources.get_source(other.dataset).num_train
      with self.assertRaisesRegex(checkpointing.IncompatibleCheckpointError, diff):
        _checkpointer(workdir, other, num_train)


def _damage(checkpoint_dir: str, how: str):
  """Truncates or overwrites the array files of one checkpoint, or removes its state."""
  if how == "missing":
    shutil.rmtree(os.path.join(checkpoint_dir, "state"))
    return
  for root, _, names in os.walk(os.path.join(checkpoint_dir, "state")):
    for name in names:
      if os.sep + "d" in root:  # TensorStore's data files
        path = os.path.join(root, name)
        if how == "truncated":
          os.truncate(path, os.path.getsize(path) // 2)
        else:
          with open(path, "r+b") as f:
            f.write(b"\x5a" * os.path.getsize(path))


class DamagedCheckpointTest(absltest.TestCase):
  """A damaged newest checkpoint is moved aside and the next older one resumed, bit-exactly."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = testing.smoke_config()
    cls.base = tempfile.mkdtemp()
    train.train_and_evaluate(cls.config, cls.base, stop_at_step=6)  # checkpoints 4 and 6
    cls.uninterrupted = os.path.join(tempfile.mkdtemp(), "w")
    shutil.copytree(cls.base, cls.uninterrupted)
    train.train_and_evaluate(cls.config, cls.uninterrupted, stop_at_step=8)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.base)
    shutil.rmtree(os.path.dirname(cls.uninterrupted))
    super().tearDownClass()

  def _damaged_copy(self, how, steps=(6,)):
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    shutil.copytree(self.base, workdir)
    for step in steps:
      _damage(os.path.join(workdir, "checkpoints", str(step)), how)
    return workdir

  def test_resume_moves_the_damaged_one_aside_and_continues_from_the_older(self):
    for how in ("truncated", "corrupted", "missing"):
      with self.subTest(how):
        workdir = self._damaged_copy(how)
        with self.assertLogs(level="WARNING") as logs:
          train.train_and_evaluate(self.config, workdir, stop_at_step=8)
        self.assertRegex("\n".join(logs.output),
                         r"checkpoints/6 is damaged \(.+\); moved it to .*damaged_checkpoints/6")
        self.assertTrue(os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "6", "meta")))
        testing.assert_trees_equal(testing.restore_latest(workdir, self.config),
                                   testing.restore_latest(self.uninterrupted, self.config))

  def test_no_intact_checkpoint_is_one_error_and_loses_nothing(self):
    workdir = self._damaged_copy("truncated", steps=(4, 6))
    with self.assertRaisesRegex(checkpointing.DamagedCheckpointError,
                                r"No intact checkpoint .*steps \[6, 4\].*start from step 0"):
      train.train_and_evaluate(self.config, workdir, stop_at_step=8)
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "damaged_checkpoints"))), ["4", "6"])

  def test_evaluation_reads_the_newest_intact_checkpoint_and_moves_nothing(self):
    workdir = self._damaged_copy("truncated")
    source = sources.get_source(self.config.dataset)
    trainer = train.Trainer(self.config, source, sharding.make_mesh())
    target = {"params": jax.eval_shape(trainer.init_state).params}
    expected = checkpointing.fingerprint(self.config, source.num_train, trainer.objective)
    with self.assertLogs(level="WARNING") as logs:
      restored, step = restore.restore(workdir, target, sharding.make_mesh(), expected,
                                       compare=("model",))
    self.assertEqual(step, 4)
    self.assertIn("checkpoints/6 is damaged", "\n".join(logs.output))
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "checkpoints"))), ["4", "6"])
    older = os.path.join(self.create_tempdir().full_path, "w")
    shutil.copytree(self.base, older)
    shutil.rmtree(os.path.join(older, "checkpoints", "6"))
    testing.assert_trees_equal(restored["params"],
                               testing.restore_latest(older, self.config).params)


  def _main(self, *flags):
    run = main_runs.MainRun(["--config=configs/smoke.py", *flags],
                            os.path.join(self.create_tempdir().full_path, "main.log"))
    self.addCleanup(run.stop)
    return run.wait(), run.output()

  def test_main_eval_warns_once_and_evaluates_the_older_one(self):
    workdir = self._damaged_copy("truncated")
    status, out = self._main("--mode=eval", f"--pretrain_workdir={workdir}",
                             f"--workdir={self.create_tempdir().full_path}")
    self.assertEqual(status, 0, out[-3000:])
    self.assertEqual(out.count("is damaged ("), 1, out[-3000:])
    self.assertIn("checkpoints/4", out)
    self.assertNotIn("Traceback", out)

  def test_main_without_an_intact_checkpoint_is_one_line(self):
    workdir = self._damaged_copy("corrupted", steps=(4, 6))
    status, out = self._main(f"--workdir={workdir}")
    self.assertEqual(status, 1, out[-3000:])
    self.assertIn("DamagedCheckpointError: No intact checkpoint in ", out)
    self.assertNotIn("Traceback", out)


class BackboneKwargsTest(absltest.TestCase):
  """Each backbone's settings are its own: switching model.backbone starts from its defaults."""

  def test_another_backbones_kwargs_are_dropped_with_a_warning(self):
    config = testing.smoke_config(**{"model.backbone": "resnet18"})  # keeps widths=(8, 16)
    with self.assertLogs(level="WARNING") as logs:
      model = models.build_model(config.model)
    self.assertIn("ignoring config.model.backbone_kwargs {'widths': (8, 16)}", logs.output[0])
    self.assertEqual(type(model.backbone).__name__, "ResNet")
    self.assertEqual(model.backbone.width, 64)
    shapes = models.abstract_variables(model, (8, 8, 1))
    self.assertIn("backbone", shapes["params"])

  def test_a_key_no_backbone_takes_is_a_config_error(self):
    config = testing.smoke_config(**{"model.backbone_kwargs.widht": 3})
    with self.assertRaisesRegex(errors.ConfigError, r"\['widht'\], which no backbone takes"):
      models.build_model(config.model)


class NonFiniteCheckTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mesh = sharding.make_mesh()
    self.checkpoints = _checkpointer(self.create_tempdir().full_path, testing.smoke_config(),
                                     100)

  def test_names_the_first_bad_step(self):
    check = monitor.NonFiniteCheck(self.mesh)
    check.note(1, {"loss": jnp.float32(1.0)})
    check.check(1, self.checkpoints)
    check.note(2, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(np.inf)})
    check.note(3, {"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(1.0)})
    check.note(4, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)})
    with self.assertRaisesRegex(FloatingPointError, "of step 2; .*no checkpoint yet"):
      check.check(4, self.checkpoints)

  def test_checks_the_state_before_a_save(self):
    check = monitor.NonFiniteCheck(self.mesh)
    check.note(5, {"loss": jnp.float32(1.0)})
    state = {"params": jnp.ones(3), "labels": jnp.zeros(3, jnp.int32)}
    check.check(5, self.checkpoints, state)
    state["params"] = jnp.array([1.0, -np.inf, 0.0])
    with self.assertRaisesRegex(FloatingPointError, "in the train state at step 5"):
      check.check(5, self.checkpoints, state)


def _epoch_stats(share, smallest, bound, head="k10_0"):
  return {f"largest_share/{head}": share, f"min_size/{head}": smallest, f"bound/{head}": bound,
          f"num_empty/{head}": 0}


class CollapseMonitorTest(absltest.TestCase):

  def _monitor(self, state=None):
    return monitor.CollapseMonitor(testing.smoke_config().collapse, state)  # 0.5, 0.5, 3 epochs

  def test_one_cluster_too_large_warns_at_once(self):
    collapse = self._monitor()
    self.assertEqual(collapse.end_epoch(1, _epoch_stats(0.4, 50, 70)), {"k10_0": 0.0})
    with self.assertLogs(level="WARNING") as logs:
      self.assertEqual(collapse.end_epoch(2, _epoch_stats(0.6, 50, 70)), {"k10_0": 1.0})
    self.assertIn("epoch 2, head k10_0: one cluster holds 60.0% of the examples", logs.output[0])
    self.assertEqual(collapse.state["num_warnings"], 1)

  def test_small_cluster_warns_after_patience_and_resets(self):
    collapse = self._monitor()
    small, fine = _epoch_stats(0.2, 30, 70), _epoch_stats(0.2, 40, 70)  # 30 < 0.5 * 70 <= 40
    self.assertEqual([collapse.end_epoch(e, small)["k10_0"] for e in range(2)], [0.0, 0.0])
    self.assertEqual(collapse.end_epoch(2, fine)["k10_0"], 0.0)  # recovered: count restarts
    self.assertEqual([collapse.end_epoch(e, small)["k10_0"] for e in range(3, 6)], [0.0, 0.0, 1.0])
    self.assertIn("below 0.5 x the size bound (70.0) for 3 epochs",
                  collapse.state["recent_warnings"][-1])

  def test_loss_at_uniform_predictions_warns_after_patience(self):
    collapse = self._monitor()
    stats = {**_epoch_stats(0.2, 40, 0.0), "loss_vs_uniform/k10_0": 0.995}
    self.assertEqual([collapse.end_epoch(e, stats)["k10_0"] for e in range(3)], [0.0, 0.0, 1.0])
    self.assertIn("the loss has stayed at 99.5% of that of uniform predictions (ln K) for 3",
                  collapse.state["recent_warnings"][-1])
    learning = {**_epoch_stats(0.2, 40, 0.0), "loss_vs_uniform/k10_0": 0.6}
    self.assertEqual(collapse.end_epoch(3, learning)["k10_0"], 0.0)

  def test_state_survives_a_checkpoint(self):
    workdir = self.create_tempdir().full_path
    config = testing.smoke_config()
    collapse = self._monitor()
    for epoch in range(2):
      collapse.end_epoch(epoch, _epoch_stats(0.2, 30, 70))
    saver = _checkpointer(workdir, config, 100)
    state = {"x": jnp.ones(2)}
    saver.save(1, state, collapse.state)
    saver.wait()
    _, restored = _checkpointer(workdir, config, 100).restore_or(state)
    resumed = self._monitor(restored)
    self.assertEqual(resumed.end_epoch(2, _epoch_stats(0.2, 30, 70))["k10_0"], 1.0)


if __name__ == "__main__":
  absltest.main()
