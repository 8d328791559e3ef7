"""Evaluation against naive references: the sharded linear probe and the weighted k-NN."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cl_jax import evaluate, train
from tests import float_order


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
def test_knn_matches_naive_loop_and_ignores_padding(k, temperature, chunk):
  rng = np.random.default_rng(k)
  train_x = rng.normal(size=(64, 6)).astype(np.float32)
  train_y = rng.integers(0, 4, 64)
  valid = np.arange(64) < 60  # the last 4 rows are padding
  test_x = rng.normal(size=(23, 6)).astype(np.float32)
  ours = evaluate.knn_predict(train_x, train_y, valid, test_x, num_classes=4, k=k,
                              temperature=temperature, chunk=chunk)
  expected = naive_knn(train_x[:60], train_y[:60], test_x, 4, min(k, 60), temperature)
  np.testing.assert_array_equal(ours, expected)


def _features(h, labels, num_classes, mesh, n_valid=None, z=None):
  valid = np.arange(len(h)) < (len(h) if n_valid is None else n_valid)
  z = np.zeros((len(h), 2)) if z is None else z
  return evaluate.Features(
      h=evaluate.shard_rows(h.astype(np.float32), mesh),
      z=evaluate.shard_rows(z.astype(np.float32), mesh), valid=evaluate.shard_rows(valid, mesh),
      labels={k: evaluate.shard_rows(v, mesh) for k, v in labels.items()}, online={},
      num_classes=num_classes)


def naive_probe_accuracy(train_x, train_y, test_x, test_y, num_classes, l2, steps):
  """The probe as cl_jax computed it before features were sharded: numpy standardisation on one
  host, L-BFGS on one device, numpy predictions."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  x = jnp.asarray((train_x - mean) / std)

  def objective(p):
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(x @ p[0] + p[1], train_y)
    return ce.mean() + 0.5 * l2 * jnp.sum(p[0] ** 2)
  opt, value_and_grad = optax.lbfgs(), optax.value_and_grad_from_state(objective)

  def step(_, carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(params, updates), state
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  params, _ = jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, (p, opt.init(p))))(params)
  predictions = np.argmax(((test_x - mean) / std) @ np.asarray(params[0]) + np.asarray(params[1]),
                          axis=1)
  return float(np.mean(predictions == test_y))


def test_sharded_probe_and_knn_equal_the_single_device_computation():
  """8 devices hold 1/8 of the rows each; the probe and the k-NN give what one device (and the
  former host-side probe) gives on the same features, and padding rows count for nothing."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 12)) * 1.5
  train_y, test_y = rng.integers(0, 3, 96), rng.integers(0, 3, 40)
  train_x = centres[train_y] + rng.normal(size=(96, 12))
  test_x = centres[test_y] + rng.normal(size=(40, 12))
  config = ml_collections.ConfigDict({"l2": 1e-3, "probe_steps": 30, "knn_k": 10,
                                      "knn_temperature": 0.07})
  expected = naive_probe_accuracy(train_x[:90], train_y[:90], test_x[:37], test_y[:37], 3,
                                  config.l2, config.probe_steps)
  results = {}
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = train.create_mesh(devices)
    tr = _features(train_x, {"label": train_y}, {"label": 3}, mesh, n_valid=90)
    te = _features(test_x, {"label": test_y}, {"label": 3}, mesh, n_valid=37)
    assert len(tr.h.sharding.device_set) == len(devices)
    results[len(devices)] = (
        evaluate.probe_all_labels(tr, te, l2=config.l2, steps=config.probe_steps),
        evaluate.knn_accuracies(tr, te, k=config.knn_k, temperature=config.knn_temperature))
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(results[8][0]["label"], results[1][0]["label"], atol=1 / 37 + 1e-6)
  np.testing.assert_allclose(results[1][0]["label"], expected, atol=1 / 37 + 1e-6)
  assert results[8][1] == results[1][1]
  assert 0.6 < results[1][0]["label"] <= 1.0


def test_linear_evaluator_probes_the_encoder_output_or_the_embedding():
  """features="encoder" probes h, features="embedding" probes z: a label only z carries is
  decodable from the embedding and at chance from the encoder."""
  from cl_jax.evaluators import linear  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  mesh = train.create_mesh(jax.devices()[:1])
  splits = []
  for n in (200, 100):
    y = rng.integers(0, 2, n)
    z = np.stack([2.0 * y - 1.0, np.zeros(n)], 1) + 0.3 * rng.normal(size=(n, 2))
    splits.append(_features(rng.normal(size=(n, 8)), {"label": y}, {"label": 2}, mesh, z=z))
  context = types.SimpleNamespace(features=lambda: splits)
  cfg = lambda features: ml_collections.ConfigDict(dict(features=features, l2=1e-3,
                                                        probe_steps=50))
  assert linear.evaluate(context, cfg("embedding"))["label"] > 0.95
  assert linear.evaluate(context, cfg("encoder"))["label"] < 0.65
  assert [linear.title(cfg(f)) for f in ("encoder", "embedding")] == ["linear eval",
                                                                      "linear eval of z"]


def test_group_features_equal_each_run_extracted_alone(digits_config):
  """A vmapped group's evaluation reads the data once and encodes it for every run: each run's
  features, labels (its own random bits) and online predictions equal its extraction alone."""
  from cl_jax import models, train  # pylint: disable=g-import-not-at-top
  from cl_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  config = digits_config
  config.data.random_bits = 3
  split = sources.load(config.data, "test")
  model = models.create_model(config.model, pipeline.label_classes(split, config.data))
  shape = (1, config.data.image_size, config.data.image_size, 1 + 3)
  runs = [model.init(jax.random.PRNGKey(s), jnp.zeros(shape), train=False) for s in (0, 1)]
  mesh = train.create_mesh()
  extract = lambda variables, seeds: evaluate.extract_features(
      model, jax.tree.map(lambda *a: jnp.stack(a), *variables), split, config.data, seeds=seeds,
      split_name="test", batch_size=96, mesh=mesh)
  group = extract(runs, [0, 5])
  for run, (variables, seed) in enumerate(zip(runs, (0, 5))):
    alone, = extract([variables], [seed])
    # vmap over the runs batches the convolutions: float order only (tests/float_order.py)
    float_order.assert_close((group[run].h, group[run].z), (alone.h, alone.z))
    np.testing.assert_allclose(np.linalg.norm(alone.z, axis=1), 1.0, rtol=1e-5)  # z/‖z‖
    np.testing.assert_array_equal(group[run].valid, alone.valid)
    for name in alone.labels:
      np.testing.assert_array_equal(group[run].labels[name], alone.labels[name])
    for name in alone.online:
      np.testing.assert_array_equal(group[run].online[name], alone.online[name])
  assert not np.array_equal(group[0].labels["bits"], group[1].labels["bits"])  # their own bits
  assert not np.allclose(group[0].h, group[1].h)
