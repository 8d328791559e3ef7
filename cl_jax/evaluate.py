"""Linear evaluation of a frozen encoder (SPEC §3 "Offline linear eval").

Features h (encoder output, BatchNorm in inference mode) of the un-augmented train and test
images — random-bit planes included — are standardised with the train statistics, and a
multinomial logistic regression  min_W,b mean_i CE(W h_i + b, y_i) + (l2/2)‖W‖²  is fitted by
L-BFGS (optax.lbfgs) for each label. Reported: test top-1 accuracy.

`bits`: one binary probe per random bit; the reported value is the mean over bits of the test
accuracy of predicting that bit (0.5 = not decodable, 1.0 = fully decodable).
"""
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from cl_jax import losses
from cl_jax.data import pipeline
from cl_jax.data.sources import Split


def extract_features(model, variables, split: Split, data_config, *, seed: int, split_name: str,
                     batch_size: int, mesh):
  """(features [N, D], {label: [N] or [N, k]}, {label: number of classes}, {label: [N]}):
  encoder features h of `split` (in split order, computed on the mesh), the labels to probe them
  with, and the online probes' predicted classes (argmax of their logits).

  Every process holds each whole eval batch and feeds its devices' rows (`pipeline.local_rows`),
  so the global array — and the gathered features — are in batch order whatever the order of
  processes in the mesh, the order the labels are in."""
  num_devices = mesh.devices.size
  batch_size = -(-batch_size // num_devices) * num_devices

  @jax.jit
  def encode(v, x):
    h, _, logits = model.apply(v, x, train=False)
    return h, {name: jnp.argmax(l, axis=-1) for name, l in logits.items()}

  ds, num_classes = pipeline.eval_dataset(split, data_config, seed=seed, split_name=split_name,
                                          batch_size=batch_size)
  rows = pipeline.local_rows(mesh, batch_size)
  feats, labels, predictions = [], {}, {}
  for batch in ds.as_numpy_iterator():
    x = pipeline.to_global({"image": batch["image"][rows]}, mesh)["image"]
    h, predicted = multihost_utils.process_allgather(encode(variables, x), tiled=True)
    valid = batch["valid"]
    feats.append(np.asarray(h)[valid])
    for name in [*num_classes, *(["bits"] if "bits" in batch else [])]:
      labels.setdefault(name, []).append(batch[name][valid])
    for name, p in predicted.items():
      predictions.setdefault(name, []).append(np.asarray(p)[valid])
  concat = lambda d: {k: np.concatenate(v) for k, v in d.items()}
  return np.concatenate(feats), concat(labels), num_classes, concat(predictions)


def online_probe_accuracy(labels, predictions) -> dict:
  """{label: test accuracy of the online probe trained along with the encoder} — the metric of
  the randbits colab's table (its probe sees stop_gradient(h) of augmented training views)."""
  return {name: float(np.mean(p == labels[name])) for name, p in predictions.items()}


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_linear_classifier(x, y, *, num_classes: int, l2: float, steps: int):
  """Logistic regression on standardised features by `steps` L-BFGS iterations → (W, b)."""
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))

  def objective(p):
    logits = x @ p[0] + p[1]
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(p[0] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(_, carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(p, updates), state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
  return params


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, l2: float,
                   steps: int) -> float:
  """Test accuracy of a linear classifier fitted on (train_x, train_y)."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  w, b = fit_linear_classifier(jnp.asarray((train_x - mean) / std), jnp.asarray(train_y),
                               num_classes=num_classes, l2=l2, steps=steps)
  predictions = np.argmax(((test_x - mean) / std) @ np.asarray(w) + np.asarray(b), axis=1)
  return float(np.mean(predictions == test_y))


def extract_train_and_test(model, variables, train: Split, test: Split, config, mesh):
  """`extract_features` of the train and test splits → ((train_h, train_y), (test_h, test_y),
  num_classes, {label: online-probe test accuracy})."""
  extract = functools.partial(extract_features, model, variables, data_config=config.data,
                              seed=config.seed, batch_size=config.eval.batch_size, mesh=mesh)
  train_h, train_y, _, _ = extract(train, split_name="train")
  test_h, test_y, num_classes, online = extract(test, split_name="test")
  return (train_h, train_y), (test_h, test_y), num_classes, online_probe_accuracy(test_y, online)


def probe_all_labels(train_features, test_features, num_classes, eval_config) -> dict:
  """{label_name: test accuracy} of a linear probe per label, plus `bits` (the mean over bits of
  one binary probe per bit) when the features come with random bits."""
  (train_h, train_y), (test_h, test_y) = train_features, test_features
  probe = functools.partial(probe_accuracy, l2=eval_config.l2, steps=eval_config.probe_steps)
  results = {name: probe(train_h, train_y[name], test_h, test_y[name], num_classes[name])
             for name in num_classes}
  if "bits" in train_y:
    k = train_y["bits"].shape[1]
    results["bits"] = float(np.mean([probe(train_h, train_y["bits"][:, i], test_h,
                                           test_y["bits"][:, i], 2) for i in range(k)]))
  return results


def linear_eval(model, variables, train: Split, test: Split, config, mesh) -> Mapping[str, float]:
  """{label_name: test accuracy} for every label of the (possibly scene-composed) data, plus
  `bits` when random_bits > 0."""
  train_features, test_features, num_classes, _ = extract_train_and_test(
      model, variables, train, test, config, mesh)
  return probe_all_labels(train_features, test_features, num_classes, config.eval)


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk"))
def knn_predict(train_x, train_y, test_x, *, num_classes: int, k: int, temperature: float,
                chunk: int = 1024):
  """Weighted k-NN classifier (Wu et al. 2018 InstDisc; solo-learn's k-NN monitor): cosine
  similarities s_ij = x̂_i·x̂_j to the train features, the k most similar vote for their class
  with weight exp(s_ij / temperature); the prediction is the class with the largest total vote.
  Test rows are processed `chunk` at a time (memory O(chunk · N_train))."""
  train_x, test_x = losses.l2_normalize(train_x), losses.l2_normalize(test_x)
  k = min(k, train_x.shape[0])
  pad = -test_x.shape[0] % chunk
  chunks = jnp.pad(test_x, ((0, pad), (0, 0))).reshape(-1, chunk, test_x.shape[1])

  def predict(x):
    similarity, neighbours = jax.lax.top_k(x @ train_x.T, k)
    votes = jax.nn.one_hot(train_y[neighbours], num_classes) * jnp.exp(
        similarity / temperature)[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)
  return jax.lax.map(predict, chunks).reshape(-1)[:test_x.shape[0]]


def knn_accuracies(train_features, test_features, num_classes, eval_config) -> dict:
  """{label: test accuracy of the weighted k-NN classifier} on the raw features h."""
  (train_h, train_y), (test_h, test_y) = train_features, test_features
  return {name: float(np.mean(np.asarray(knn_predict(
      train_h, train_y[name], test_h, num_classes=n, k=eval_config.knn_k,
      temperature=eval_config.knn_temperature)) == test_y[name]))
          for name, n in num_classes.items()}


def representation_metrics(z1: jax.Array, z2: jax.Array) -> dict:
  """Wang & Isola (2020) alignment and uniformity, and the effective rank (SPEC §1.8), of the
  embeddings z of two views (N×d each)."""
  z = jnp.concatenate([z1, z2])
  return {"alignment": losses.alignment(z1, z2), "uniformity": losses.uniformity(z),
          "effective_rank": losses.effective_rank(z)}


def test_representation_metrics(model, variables, test: Split, config, mesh) -> dict:
  """`representation_metrics` of the head outputs z (BatchNorm in inference mode) for two
  augmented views of up to eval.batch_size test images — the same views in every run with the
  same seed."""
  num_devices = mesh.devices.size
  batch_size = min(config.eval.batch_size, len(test)) // num_devices * num_devices
  ds = pipeline.train_dataset(test, config.data, seed=config.seed, batch_size=batch_size,
                              start_step=0, num_steps=1, split_name="test",
                              rows=pipeline.local_rows(mesh, batch_size))
  batch = next(pipeline.global_batches(ds, mesh))

  @jax.jit
  def metrics(v, x1, x2):
    z = model.apply(v, jnp.concatenate([x1, x2]), train=False)[1]
    return representation_metrics(z[:batch_size], z[batch_size:])

  return {k: float(v) for k, v in metrics(variables, batch["view1"], batch["view2"]).items()}
