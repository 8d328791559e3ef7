"""Two-view tf.data pipeline and the hand-off to global jax arrays (DESIGN.md "Data flow").

Determinism: the example at global position g = step·B + row is a pure function of
(seed, g): epoch e = step // steps_per_epoch is a seeded permutation of the split
(`tf.random.experimental.index_shuffle`, dropping the remainder), and the two views use stateless
random ops seeded by (seed, g). Hence the global batches do not depend on the number of devices or
processes, and a run resumed at step s reads exactly what an uninterrupted run reads from step s on.

Multi-host: each process reads only the rows of every global batch that its own devices hold
(`local_rows`). The mesh decides which rows those are — on TPU slices `jax.make_mesh` interleaves
processes — so they are computed from the sharding, never assumed to be the p-th contiguous block.
"""
from typing import Iterator, Mapping

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cl_jax.data import augment, features
from cl_jax.data.sources import Split

_AUGMENT_SALT = 0x5EED
_SCENE_SALT = 0x5CE7E
_EVAL_SALT = {"train": 0xE0, "test": 0xE1}


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def local_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
  """The rows of a global batch of `batch_size` that this process's devices hold under
  `batch_sharding(mesh)`, in increasing order: exactly what `to_global` expects this process to
  pass (`jax.make_array_from_process_local_data` maps the local rows onto the process's shards in
  the order of their global indices)."""
  shards = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
  return np.asarray(sorted({r for (index,) in shards for r in range(*index.indices(batch_size))}),
                    np.int64)


def train_dataset(split: Split, data_config: ml_collections.ConfigDict, *, seed: int,
                  batch_size: int, start_step: int, num_steps: int, rows=None,
                  split_name: str = "train") -> tf.data.Dataset:
  """Process-local batches {view1, view2, index, <label>...} for global steps
  [start_step, num_steps): the `rows` (increasing positions in [0, batch_size); default all,
  multi-host: `local_rows(mesh, batch_size)`) of every global batch. `split_name` picks the
  split's random bits (each split has its own, the ones evaluation uses).

  view1/view2: float32 [R, S, S, C + random_bits]; index (position in the split) and labels:
  int32 [R], R = len(rows).
  """
  n, num_bits = len(split), data_config.random_bits
  per_epoch = steps_per_epoch(n, batch_size)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  is_local_row = tf.constant(np.isin(np.arange(batch_size), rows))
  images = tf.constant(split.images)
  labels = {k: tf.constant(v) for k, v in split.labels.items()}
  bit_ints = tf.constant(features.random_bit_integers(n, num_bits, seed, split_name))
  scene, _ = features.make_scene(data_config, split, train=True)

  def example(g):
    step, row = g // batch_size, g % batch_size
    position = (step % per_epoch) * batch_size + row
    index = tf.random.experimental.index_shuffle(
        position, seed=tf.stack([tf.constant(seed, tf.int64), step // per_epoch]),
        max_index=tf.constant(n - 1, tf.int64))
    image = tf.cast(tf.gather(images, index), tf.float32) / 255.0
    example_seed = tf.stack([tf.constant(seed + _AUGMENT_SALT, tf.int64), g])
    read_seed = tf.random.experimental.stateless_fold_in(example_seed, _SCENE_SALT)
    out = {"index": tf.cast(index, tf.int32), **{k: tf.gather(v, index) for k, v in labels.items()}}
    for i, view_seed in enumerate(tf.unstack(tf.random.experimental.stateless_split(example_seed,
                                                                                    2))):
      view = image
      if scene is not None:
        view, scene_labels = scene(image, index, read_seed, view_seed)
        out.update(scene_labels)
      view = augment.augment(view, view_seed, data_config)
      out[f"view{i + 1}"] = features.append_bit_planes(view, tf.gather(bit_ints, index), num_bits)
    return out

  ds = tf.data.Dataset.range(start_step * batch_size, num_steps * batch_size)
  ds = ds.filter(lambda g: tf.gather(is_local_row, g % batch_size))
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(len(rows), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(split: Split, data_config: ml_collections.ConfigDict, *, seed: int,
                 split_name: str, batch_size: int):
  """(dataset, {label: number of classes}): un-augmented images WITH their bit planes and scene,
  in split order, in batches of `batch_size` (the last one zero-padded), with every label to
  probe: the split's, the scene's and `bits` ([k] 0/1, when random_bits > 0), and `valid`.
  Scenes are composed with seeds fixed per image."""
  n, num_bits = len(split), data_config.random_bits
  padded = -(-n // batch_size) * batch_size
  pad = lambda a: np.concatenate([a, np.zeros((padded - n, *a.shape[1:]), a.dtype)])
  bit_ints = features.random_bit_integers(n, num_bits, seed, split_name)
  columns = {"image": pad(split.images), "index": np.arange(padded, dtype=np.int32),
             "valid": np.arange(padded) < n, **{k: pad(v) for k, v in split.labels.items()}}
  if num_bits:
    columns["bits"] = pad(features.bit_labels(bit_ints, num_bits).astype(np.int32))
  bit_ints = pad(bit_ints)
  scene, scene_classes = features.make_scene(data_config, split, train=False)

  def prepare(columns, bits):
    image = tf.cast(columns.pop("image"), tf.float32) / 255.0
    if scene is not None:
      image_seed = tf.stack([tf.constant(seed + _EVAL_SALT[split_name], tf.int64),
                             tf.cast(columns["index"], tf.int64)])
      image, scene_labels = scene(image, columns["index"], image_seed, image_seed)
      columns.update(scene_labels)
    return {"image": features.append_bit_planes(image, bits, num_bits), **columns}

  ds = tf.data.Dataset.from_tensor_slices((columns, bit_ints))
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  return ds, {**split.num_classes, **scene_classes}


def label_classes(split: Split, data_config: ml_collections.ConfigDict) -> dict:
  """{label: number of classes} of the TRAINING examples (the online probes): the split's labels
  and those its scene adds."""
  return {**split.num_classes, **features.make_scene(data_config, split, train=True)[1]}


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Process-local numpy arrays → global jax arrays sharded on the mesh's `data` axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def global_batches(ds: tf.data.Dataset, mesh: Mesh) -> Iterator[dict]:
  for local in ds.as_numpy_iterator():
    yield to_global(local, mesh)
