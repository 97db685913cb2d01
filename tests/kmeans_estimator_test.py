"""CoKeKMeans is a scikit-learn estimator: its own checks, clone, Pipeline, GridSearchCV."""

from absl.testing import absltest
import numpy as np
from sklearn import base as sk_base
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing
from sklearn.utils import estimator_checks

from coke_jax import kmeans

# Checks scikit-learn skips by itself here, and why: none is declared failed.
_SKIPPED_BY_SKLEARN = {
    # Only runs with SCIPY_ARRAY_API=1 and array-api-compat; CoKeKMeans declares no array API
    # support (its tag is False), so there is nothing to check.
    "check_array_api_input",
}


def _blobs(seed=0):
  """Three directions with a little noise, 20 rows each, and the direction of each row."""
  rng = np.random.default_rng(seed)
  directions = np.linalg.qr(rng.normal(size=(4, 4)))[0][:3]
  truth = np.repeat(np.arange(3), 20)
  return directions[truth] + 0.05 * rng.normal(size=(60, 4)), truth


class EstimatorChecksTest(absltest.TestCase):

  def test_passes_scikit_learn_estimator_checks(self):
    # About 45 checks, each fitting on its own shapes: one XLA compilation per shape
    # (~1 s on an idle 2-core CPU, 20 to 30 s for the suite).
    results = estimator_checks.check_estimator(kmeans.CoKeKMeans(n_clusters=3), on_fail=None)
    self.assertGreater(len(results), 40)
    failed = {r["check_name"]: repr(r["exception"]) for r in results
              if r["status"] == "failed"}
    self.assertEqual(failed, {})
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    self.assertLessEqual(skipped, _SKIPPED_BY_SKLEARN)
    for name in ("check_clustering", "check_fit1d", "check_estimators_nan_inf",
                 "check_estimators_empty_data_messages", "check_n_features_in_after_fitting",
                 "check_estimators_pickle", "check_fit_idempotent", "check_set_params"):
      self.assertIn(name, {r["check_name"] for r in results if r["status"] == "passed"})

  def test_tags(self):
    tags = kmeans.CoKeKMeans(3).__sklearn_tags__()
    self.assertEqual(tags.estimator_type, "clusterer")
    self.assertFalse(tags.input_tags.sparse)
    self.assertFalse(tags.input_tags.allow_nan)
    self.assertFalse(tags.non_deterministic)
    self.assertTrue(sk_base.is_clusterer(kmeans.CoKeKMeans(3)))


class ScikitLearnToolsTest(absltest.TestCase):

  def test_clone_and_set_params(self):
    model = kmeans.CoKeKMeans(3, min_size_ratio=0.9, n_epochs=4, seed=2)
    copy = sk_base.clone(model)
    self.assertIsNot(copy, model)
    self.assertEqual(copy.get_params(), model.get_params())
    self.assertIs(copy.set_params(center_update="epoch"), copy)
    self.assertEqual(copy.center_update, "epoch")
    self.assertEqual(model.center_update, "batch")
    self.assertIn("min_size_ratio=0.9", repr(model))

  def test_pipeline_and_grid_search(self):
    x, truth = _blobs()
    pipe = pipeline.make_pipeline(preprocessing.StandardScaler(with_mean=False),
                                  kmeans.CoKeKMeans(3, n_epochs=5, batch_size=10))
    labels = pipe.fit_predict(x)
    np.testing.assert_array_equal(labels, pipe[-1].labels_)
    self.assertEqual(pipe[-1].n_features_in_, 4)
    np.testing.assert_array_equal(pipe.predict(x), pipe[-1].predict(x / x.std(0)))
    search = model_selection.GridSearchCV(
        kmeans.CoKeKMeans(3, n_epochs=5, batch_size=10),
        {"min_size_ratio": [0.0, 0.9], "center_update": ["batch", "epoch"]},
        scoring="adjusted_rand_score", cv=model_selection.KFold(2, shuffle=True, random_state=0))
    search.fit(x, truth)
    self.assertLen(search.cv_results_["params"], 4)
    self.assertGreater(search.best_score_, 0.95)  # separated directions: every setting finds them
    self.assertEqual(search.best_estimator_.cluster_centers_.shape, (3, 4))


if __name__ == "__main__":
  absltest.main()
