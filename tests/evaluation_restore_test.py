"""Evaluation reads only what it needs from a pretraining checkpoint, on any device count."""

import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import jax
import numpy as np

from coke_jax import checkpointing
from coke_jax import models
from coke_jax import sharding
from coke_jax import train
from coke_jax.data import sources
from coke_jax.evaluation import linear_probe
from coke_jax.evaluation import restore
import tests
from tests import testing

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs on ONE device (--xla_force_host_platform_device_count=1): restores the backbone
# and the clustering state of a checkpoint written on 8 devices and saves them as .npz.
_ONE_DEVICE = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from coke_jax import models, sharding
    from coke_jax.data import sources
    from coke_jax.evaluation import linear_probe, restore
    from tests import testing
    assert jax.device_count() == 1, jax.devices()
    pretrain_dir, out = sys.argv[1], sys.argv[2]
    # Another optimizer and another projection head than pretraining: neither is read.
    config = testing.smoke_config(**{"optimizer.name": "lars", "model.proj_hidden_dim": 8})
    source = sources.get_source(config.dataset)
    mesh = sharding.make_mesh()
    frozen, step = linear_probe.restore_backbone(models.build_model(config.model), source,
                                                 config, mesh, pretrain_dir)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(frozen)}
    np.savez(out, step=step, **flat)
""")


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


class RestoreTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Pretrain on the 8 virtual devices for a few steps: 6 per epoch, stop mid-epoch 1.
    cls.config = testing.smoke_config(num_epochs=2, checkpoint_every_steps=100)
    cls.pretrain_dir = tempfile.mkdtemp(prefix="restore_pretrain_")
    cls.state = train.train_and_evaluate(cls.config, cls.pretrain_dir, stop_at_step=8)
    assert jax.device_count() == 8

  def test_one_device_restores_the_backbone_saved_on_eight(self):
    out = os.path.join(self.create_tempdir().full_path, "restored.npz")
    env = {**os.environ, "XLA_FLAGS": tests.xla_flags(1),
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": _REPO}
    result = subprocess.run([sys.executable, "-c", _ONE_DEVICE, self.pretrain_dir, out], cwd=_REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    restored = dict(np.load(out))
    self.assertEqual(int(restored.pop("step")), 8)
    expected = _flat({"params": self.state.params["model"]["backbone"],
                      "batch_stats": self.state.batch_stats["backbone"]})
    self.assertEqual(set(restored), set(expected))
    for key, value in expected.items():
      np.testing.assert_array_equal(restored[key], value, err_msg=key)

  def test_restores_objective_state_and_not_the_optimizer(self):
    source = sources.get_source(self.config.dataset)
    trainer = train.Trainer(self.config, source, sharding.make_mesh())
    shapes = jax.eval_shape(trainer.init_state)
    target = {"objective": shapes.objective, "params": shapes.params}
    expected = checkpointing.fingerprint(self.config, source.num_train, trainer.objective)
    restored, step = restore.restore(self.pretrain_dir, target, sharding.make_mesh(), expected,
                                     compare=("model", "objective"))
    self.assertEqual(step, 8)
    self.assertEqual(set(restored), {"objective", "params"})
    self.assertEqual(type(restored["objective"][0]).__name__, "HeadState")
    for key, value in _flat({"o": self.state.objective, "p": self.state.params}).items():
      got = _flat({"o": restored["objective"], "p": restored["params"]})[key]
      np.testing.assert_array_equal(got, value, err_msg=key)

  def test_other_backbone_is_refused_with_the_difference(self):
    config = testing.smoke_config(**{"model.backbone_kwargs.widths": (8, 32)})
    source = sources.get_source(config.dataset)
    with self.assertRaisesRegex(checkpointing.IncompatibleCheckpointError,
                                r"model.backbone_kwargs: checkpoint .*\[8, 16\].*\[8, 32\]"):
      linear_probe.restore_backbone(models.build_model(config.model), source, config,
                                    sharding.make_mesh(), self.pretrain_dir)

  def test_missing_checkpoint_is_explained(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(restore.MissingCheckpointError, "--pretrain_workdir"):
      restore.restore(empty, {}, sharding.make_mesh(), {}, compare=())
    with self.assertRaisesRegex(restore.MissingCheckpointError, r"step 7.*holds steps \[8\]"):
      restore.restore(self.pretrain_dir, {}, sharding.make_mesh(), {}, compare=(), step=7)


if __name__ == "__main__":
  absltest.main()
