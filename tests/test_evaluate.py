"""Evaluation pieces against naive references: the weighted k-NN classifier."""
import ml_collections
import numpy as np
import pytest

from cl_jax import evaluate


def naive_knn(train_x, train_y, test_x, num_classes, k, temperature):
  """InstDisc's weighted k-NN written as loops: cosine similarity, the k most similar train rows
  vote exp(s / T) for their class."""
  unit = lambda v: v / np.linalg.norm(v)
  predictions = []
  for x in test_x:
    sims = np.array([unit(x) @ unit(t) for t in train_x])
    votes = np.zeros(num_classes)
    for j in np.argsort(-sims)[:k]:
      votes[train_y[j]] += np.exp(sims[j] / temperature)
    predictions.append(int(np.argmax(votes)))
  return np.array(predictions)


@pytest.mark.parametrize("k,temperature,chunk", [(5, 0.07, 4), (200, 0.5, 1024), (1, 0.1, 7)])
def test_knn_matches_naive_loop(k, temperature, chunk):
  rng = np.random.default_rng(k)
  train_x = rng.normal(size=(60, 6)).astype(np.float32)
  train_y = rng.integers(0, 4, 60)
  test_x = rng.normal(size=(23, 6)).astype(np.float32)
  ours = evaluate.knn_predict(train_x, train_y, test_x, num_classes=4, k=k,
                              temperature=temperature, chunk=chunk)
  np.testing.assert_array_equal(ours, naive_knn(train_x, train_y, test_x, 4, k, temperature))


def test_knn_accuracies_recover_separable_classes():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 8)) * 5
  train_y, test_y = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
  train_x = centres[train_y] + rng.normal(size=(90, 8))
  test_x = centres[test_y] + rng.normal(size=(30, 8))
  config = ml_collections.ConfigDict({"knn_k": 10, "knn_temperature": 0.07})
  result = evaluate.knn_accuracies((train_x, {"label": train_y}), (test_x, {"label": test_y}),
                                   {"label": 3}, config)
  assert result == {"label": 1.0}
  shuffled = evaluate.knn_accuracies((train_x, {"label": rng.permutation(train_y)}),
                                     (test_x, {"label": test_y}), {"label": 3}, config)
  assert shuffled["label"] < 0.7
