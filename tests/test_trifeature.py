"""Trifeature: balanced, independent labels; each feature decodable from the pixels; a function of
its seed; loaded as a data source and trained on end to end."""
import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cl_jax import train
from cl_jax.data import sources, trifeature
from configs import trifeature as trifeature_config

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def generated():
  return trifeature.generate(2000, 32, seed=0)


def test_labels_are_balanced_and_independent(generated):
  _, labels = generated
  shape, texture, color = (labels[k] for k in ("shape", "texture", "color"))
  for values in (shape, texture, color):
    assert np.bincount(values, minlength=10).tolist() == [200] * 10
  # Every one of the 1,000 combinations exactly twice: the joint distribution is the product.
  combos = np.bincount(shape * 100 + texture * 10 + color, minlength=1000)
  assert combos.min() == combos.max() == 2


def test_generation_is_a_function_of_the_seed(generated):
  images, labels = generated
  again, labels_again = trifeature.generate(2000, 32, seed=0)
  np.testing.assert_array_equal(again, images)
  assert all(np.array_equal(labels[k], labels_again[k]) for k in labels)
  other, _ = trifeature.generate(2000, 32, seed=1)
  assert not np.array_equal(other, images)


@pytest.mark.parametrize("feature,features_of", [
    # colour: the mean RGB of the shape's pixels; shape and texture: the pixels themselves
    ("color", lambda x: x.reshape(len(x), -1, 3).sum(1) / np.maximum(
        (x.reshape(len(x), -1, 3).max(-1) > 0).sum(1, keepdims=True), 1)),
    ("shape", lambda x: (x.max(-1) > 0).reshape(len(x), -1)),
    ("texture", lambda x: np.abs(np.fft.fft2(x.max(-1) / 255.0)).reshape(len(x), -1)),
])
def test_each_feature_is_decodable_from_the_pixels(generated, feature, features_of):
  """A sanity check that the three features exist: a linear probe on simple pixel features
  decodes each one far above chance (0.1) on held-out images."""
  images, labels = generated
  x = features_of(images.astype(np.float32))
  x = (x - x[:1500].mean(0)) / (x[:1500].std(0) + 1e-6)
  probe = LogisticRegression(max_iter=300, C=0.1).fit(x[:1500], labels[feature][:1500])
  accuracy = probe.score(x[1500:], labels[feature][1500:])
  assert accuracy > {"color": 0.9, "shape": 0.3, "texture": 0.9}[feature], accuracy


def test_trifeature_trains_with_the_shape_supervising_and_probes_every_feature(tmp_path, small):
  """configs/trifeature.py:collapse end to end (16 px, a few steps): the joint loss with the
  shape as class, probe curves of h and z and a final probe of h for all three features."""
  config = small(trifeature_config.get_config("collapse"), num_steps=4)
  config.data.image_size = 16
  config.evals.curve.every_steps = config.evals.curve_z.every_steps = 2
  result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert config.loss.name == "joint" and config.loss.supervised_label == "shape"
  for curve in ("curve", "curve_z"):
    assert [point["step"] for point in result[curve]] == [0, 2, 4]
    assert set(result[curve][0]) == {"step", "shape", "texture", "color"}
  assert result["curve"] != result["curve_z"]  # h and z are probed apart
  assert set(result["linear_eval"]) == {"shape", "texture", "color"}
  split = sources.load(config.data, "test")
  assert split.images.shape == (2000, 16, 16, 3) and split.num_classes == {
      "shape": 10, "texture": 10, "color": 10}
