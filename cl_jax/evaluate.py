"""Evaluation of a frozen encoder (docs/method.md §3 "Offline linear eval"), memory O(N·D / devices).

The computations; `cl_jax.evaluators` decides when they run and where their results go.

Features h (encoder output, BatchNorm in inference mode) of the un-augmented train and test
images — random-bit planes included — stay on the devices, their rows sharded over the mesh's
"data" axis (never gathered on one host). Per label:

- linear probe: h standardised with the train statistics, a multinomial logistic regression
  min_W,b mean_i CE(W h_i + b, y_i) + (l2/2)‖W‖² fitted by L-BFGS (optax.lbfgs) under jit on the
  sharded features (XLA partitions every product over the rows); reported: test top-1 accuracy;
- weighted k-NN (InstDisc): cosine similarity, the k nearest train rows vote exp(s / T);
- the online probe trained with the encoder, on the test images.

`bits`: one binary probe per random bit; the reported value is the mean over bits of the test
accuracy of predicting that bit (0.5 = not decodable, 1.0 = fully decodable).
"""
import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from cl_jax import jit_cache, losses, spec
from cl_jax.data import pipeline
from cl_jax.data.sources import Split


@dataclasses.dataclass
class Features:
  """Encoder features (and embeddings) of one split in split order, padded to whole eval
  batches."""
  h: jax.Array                      # [N_pad, D] float32, rows sharded over "data"
  z: jax.Array                      # [N_pad, E] the embedding z/‖z‖ the loss sees (head output)
  valid: jax.Array                  # [N_pad] bool, rows sharded: False for the padding
  labels: Mapping[str, jax.Array]   # name → [N_pad] int32 (bits: [N_pad, k]), rows sharded
  online: Mapping[str, jax.Array]   # name → [N_pad] the online probe's predicted class
  num_classes: Mapping[str, int]


def shard_rows(array: np.ndarray, mesh) -> jax.Array:
  """A host array that every process holds in full → a global array, rows sharded over "data"
  (each device gets only its rows)."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def extract_features(model, variables, split, data_config, *, seeds, split_name: str,
                     batch_size: int, mesh) -> list:
  """[`Features` of `split` for each run of a group]: `variables` carry a leading run axis (one
  entry per seed in `seeds`); the split is read once and every batch is encoded for all runs by
  one vmapped program, on the mesh, and concatenated on the devices.

  Each process reads only its devices' rows of every eval batch (`pipeline.EvalBatches`:
  scenes and bit planes are added on the device); images, labels and the valid mask are global
  arrays, so rows stay aligned with their labels whatever the order of processes in the mesh."""
  batch_size = spec.round_up(batch_size, mesh.devices.size)
  batches = pipeline.EvalBatches(split, data_config, seeds=seeds, split_name=split_name,
                                 batch_size=batch_size, mesh=mesh)
  label_names = ["valid", *batches.num_classes, *(["bits"] if data_config.random_bits else [])]
  outputs = []
  for batch in batches:
    outputs.append((*encode_runs(variables, batch["image"], model=model),
                    {k: batch[k] for k in label_names}))

  concatenate = jit_cache.get(("concatenate_runs", mesh), lambda: jax.jit(
      _concatenate_runs, out_shardings=NamedSharding(mesh, PartitionSpec("data"))))

  features = []
  for h, z, online, labels in concatenate(outputs):
    valid = labels.pop("valid")
    features.append(Features(h=h, z=z, valid=valid, labels=labels, online=online,
                             num_classes=batches.num_classes))
  return features


def _concatenate_runs(outputs: list) -> list:
  """Batches of trees [R, B, ...] → one tree per run, its batches concatenated."""
  out = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outputs)
  return [jax.tree.map(lambda a, r=r: a[r], out) for r in range(jax.tree.leaves(out)[0].shape[0])]


@functools.partial(jax.jit, static_argnames="model")
def encode_runs(variables, images, *, model):
  """(h, z/‖z‖, {label: online-probe prediction}) of `images` [R, B, ...] under each run's
  `variables` [R, ...] (BatchNorm in inference mode)."""
  def encode(v, x):
    h, z, logits = model.apply(v, x, train=False)
    return h, losses.l2_normalize(z), {name: jnp.argmax(l, axis=-1) for name, l in logits.items()}
  return jax.vmap(encode)(variables, images)


@jax.jit
def standardise(train_h, train_valid, test_h):
  """(train, test) features standardised with the mean and std of the valid train rows."""
  w = train_valid.astype(train_h.dtype)[:, None]
  mean = jnp.sum(w * train_h, 0) / jnp.sum(w)
  std = jnp.sqrt(jnp.sum(w * (train_h - mean) ** 2, 0) / jnp.sum(w)) + 1e-6
  return (train_h - mean) / std, (test_h - mean) / std


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_linear_classifier(x, y, valid, *, num_classes: int, l2: float, steps: int):
  """Logistic regression on the valid rows of standardised features x by `steps` L-BFGS
  iterations → (W, b). x may be sharded over rows: the objective's sums are then partitioned."""
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  weight = valid.astype(x.dtype) / jnp.sum(valid)

  def objective(p):
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(x @ p[0] + p[1], y)
    return jnp.sum(weight * ce) + 0.5 * l2 * jnp.sum(p[0] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(_, carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(p, updates), state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
  return params


@jax.jit
def accuracy(predictions, labels, valid) -> jax.Array:
  """Fraction of the valid rows where predictions == labels."""
  return jnp.sum((predictions == labels) & valid) / jnp.sum(valid)


def probe_accuracy(train_x, train_y, train_valid, test_x, test_y, test_valid, num_classes: int,
                   *, l2: float, steps: int) -> float:
  """Test accuracy of a linear classifier fitted on the standardised (sharded) train features."""
  w, b = fit_linear_classifier(train_x, train_y, train_valid, num_classes=num_classes, l2=l2,
                               steps=steps)
  return float(accuracy(jnp.argmax(test_x @ w + b, axis=1), test_y, test_valid))


def probe_all_labels(train: Features, test: Features, *, l2: float, steps: int) -> dict:
  """{label_name: test accuracy} of a linear probe per label (`steps` L-BFGS iterations, penalty
  (l2/2)·‖W‖²), plus `bits` (the mean over bits of one binary probe per bit) when the features
  come with random bits."""
  train_x, test_x = standardise(train.h, train.valid, test.h)
  probe = functools.partial(probe_accuracy, l2=l2, steps=steps)
  results = {name: probe(train_x, train.labels[name], train.valid, test_x, test.labels[name],
                         test.valid, n) for name, n in test.num_classes.items()}
  if "bits" in train.labels:
    k = train.labels["bits"].shape[1]
    results["bits"] = float(np.mean([probe(
        train_x, train.labels["bits"][:, i], train.valid, test_x, test.labels["bits"][:, i],
        test.valid, 2) for i in range(k)]))
  return results


def nothing_to_probe(context, evaluator: str) -> dict:
  """An evaluator's result on data without a label it can probe (unlabelled images): one log
  line, nothing written."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.info("Evaluator %s: '%s' has no label to probe at step %d; nothing written.",
               evaluator, context.config.data.dataset, context.step)
  return {}


def online_probe_accuracy(test: Features) -> dict:
  """{label: test accuracy of the online probe trained along with the encoder} — the metric of
  the randbits colab's table (its probe sees stop_gradient(h) of augmented training views).
  Labels the test data lacks (MultiDigits evaluates single-digit canvases) are skipped."""
  return {name: float(accuracy(p, test.labels[name], test.valid))
          for name, p in test.online.items() if name in test.labels}


def extract_train_and_test(model, variables, train: Split, test: Split, configs, mesh) -> list:
  """[(train Features, test Features) of each run]: `extract_features` of both splits for a
  group of runs (`variables` with a leading run axis, one config per run; the configs share
  their data, and the first one's eval.batch_size is used)."""
  extract = functools.partial(extract_features, model, variables, data_config=configs[0].data,
                              seeds=[c.seed for c in configs],
                              batch_size=configs[0].eval.batch_size, mesh=mesh)
  return list(zip(extract(train, split_name="train"), extract(test, split_name="test")))


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk"))
def knn_predict(train_x, train_y, train_valid, test_x, *, num_classes: int, k: int,
                temperature: float, chunk: int = 1024):
  """Weighted k-NN classifier (Wu et al. 2018 InstDisc; solo-learn's k-NN monitor): cosine
  similarities s_ij = x̂_i·x̂_j to the valid train rows, the k most similar vote for their class
  with weight exp(s_ij / temperature); the prediction is the class with the largest total vote.
  Test rows are processed `chunk` at a time (memory O(chunk · N_train / devices) when the train
  features are sharded)."""
  train_x, test_x = losses.l2_normalize(train_x), losses.l2_normalize(test_x)
  k = min(k, train_x.shape[0])
  pad = -test_x.shape[0] % chunk
  chunks = jnp.pad(test_x, ((0, pad), (0, 0))).reshape(-1, chunk, test_x.shape[1])

  def predict(x):
    similarity = jnp.where(train_valid[None, :], x @ train_x.T, -jnp.inf)
    similarity, neighbours = jax.lax.top_k(similarity, k)
    weights = jnp.where(jnp.isfinite(similarity), jnp.exp(similarity / temperature), 0.0)
    votes = jax.nn.one_hot(train_y[neighbours], num_classes) * weights[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)
  return jax.lax.map(predict, chunks).reshape(-1)[:test_x.shape[0]]


def knn_accuracies(train: Features, test: Features, *, k: int, temperature: float) -> dict:
  """{label: test accuracy of the weighted k-NN classifier} on the raw features h."""
  return {name: float(accuracy(knn_predict(
      train.h, train.labels[name], train.valid, test.h, num_classes=n, k=k,
      temperature=temperature), test.labels[name], test.valid))
          for name, n in test.num_classes.items()}


def host_sample(features: Features, max_rows: int, seed: int = 0):
  """(h [n, D], {label: [n] or [n, k]}) of up to `max_rows` valid rows (a fixed random subset),
  gathered to every host — for plots such as embeddings.png."""
  valid = np.flatnonzero(np.asarray(multihost_utils.process_allgather(features.valid,
                                                                       tiled=True)))
  if len(valid) > max_rows:
    valid = np.sort(np.random.default_rng(seed).choice(valid, max_rows, replace=False))
  h, labels = multihost_utils.process_allgather(
      take_rows((features.h, dict(features.labels)), valid), tiled=True)
  return np.asarray(h), {k: np.asarray(v) for k, v in labels.items()}


@jax.jit
def take_rows(tree, rows):
  """Every leaf's rows `rows`."""
  return jax.tree.map(lambda a: a[rows], tree)


def representation_metrics(z1: jax.Array, z2: jax.Array) -> dict:
  """Wang & Isola (2020) alignment and uniformity, the effective rank and the per-dimension std
  of the normalised embedding (docs/method.md §1.8), of the embeddings z of two views (N×d each)."""
  z = jnp.concatenate([z1, z2])
  return {"alignment": losses.alignment(z1, z2), "uniformity": losses.uniformity(z),
          "effective_rank": losses.effective_rank(z), "embedding_std": losses.embedding_std(z)}


def test_representation_metrics(model, variables, test: Split, config, mesh) -> dict:
  """`representation_metrics` of the head outputs z (BatchNorm in inference mode) for two
  augmented views of up to eval.batch_size test images — the same views in every run with the
  same seed."""
  num_devices = mesh.devices.size
  batch_size = min(config.eval.batch_size, len(test)) // num_devices * num_devices
  batch = jax.tree.map(lambda x: x[0], next(iter(pipeline.TrainBatches(
      test, config.data, seeds=[config.seed], batch_size=batch_size, start_step=0, num_steps=1,
      mesh=mesh, split_name="test"))))

  return {k: float(v) for k, v in _view_metrics(variables, batch["view1"], batch["view2"],
                                                model=model).items()}


@functools.partial(jax.jit, static_argnames="model")
def _view_metrics(variables, x1, x2, *, model) -> dict:
  z = model.apply(variables, jnp.concatenate([x1, x2]), train=False)[1]
  return representation_metrics(z[:len(x1)], z[len(x1):])
