"""Two-view tf.data pipeline and the hand-off to global jax arrays (DESIGN.md "Data flow").

Determinism: the example at global position g = step·B + row is a pure function of
(seed, g): epoch e = step // steps_per_epoch is a seeded permutation of the split
(`tf.random.experimental.index_shuffle`, dropping the remainder), and the two views use stateless
random ops seeded by (seed, g). Hence the global batches do not depend on the number of devices or
processes (each process keeps the rows [p·B/P, (p+1)·B/P) of every global batch), and a run resumed
at step s reads exactly what an uninterrupted run reads from step s on.
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


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def train_dataset(split: Split, data_config: ml_collections.ConfigDict, *, seed: int,
                  batch_size: int, start_step: int, num_steps: int, process_index: int = 0,
                  process_count: int = 1) -> tf.data.Dataset:
  """Process-local batches {view1, view2, index, <label>...} for global steps
  [start_step, num_steps).

  view1/view2: float32 [B/P, S, S, C + random_bits]; index (position in the split) and labels:
  int32 [B/P].
  """
  n, num_bits = len(split), data_config.random_bits
  per_epoch = steps_per_epoch(n, batch_size)
  local_batch = batch_size // process_count
  first_row = process_index * local_batch
  images = tf.constant(split.images)
  labels = {k: tf.constant(v) for k, v in split.labels.items()}
  bit_ints = tf.constant(features.random_bit_integers(n, num_bits, seed, "train"))

  def example(g):
    step, row = g // batch_size, g % batch_size
    position = (step % per_epoch) * batch_size + row
    index = tf.random.experimental.index_shuffle(
        position, seed=tf.stack([tf.constant(seed, tf.int64), step // per_epoch]),
        max_index=tf.constant(n - 1, tf.int64))
    image = tf.cast(tf.gather(images, index), tf.float32) / 255.0
    view_seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(seed + _AUGMENT_SALT, tf.int64), g]), 2)
    views = [features.append_bit_planes(augment.augment(image, s, data_config),
                                        tf.gather(bit_ints, index), num_bits)
             for s in tf.unstack(view_seeds)]
    return {"view1": views[0], "view2": views[1], "index": tf.cast(index, tf.int32),
            **{k: tf.gather(v, index) for k, v in labels.items()}}

  ds = tf.data.Dataset.range(start_step * batch_size, num_steps * batch_size)
  ds = ds.filter(lambda g: (g % batch_size >= first_row) & (g % batch_size < first_row +
                                                                 local_batch))
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(split: Split, data_config: ml_collections.ConfigDict, *, seed: int,
                 split_name: str, batch_size: int) -> tf.data.Dataset:
  """Un-augmented images WITH their bit planes, in split order, in batches of `batch_size` (the
  last one zero-padded; {'image', 'valid'})."""
  n, num_bits = len(split), data_config.random_bits
  padded = -(-n // batch_size) * batch_size
  images = np.concatenate([split.images, np.zeros((padded - n, *split.images.shape[1:]),
                                                  np.uint8)])
  bit_ints = np.concatenate([features.random_bit_integers(n, num_bits, seed, split_name),
                             np.zeros(padded - n, np.int32)])
  valid = np.arange(padded) < n

  def prepare(image, bits, is_valid):
    image = tf.cast(image, tf.float32) / 255.0
    return {"image": features.append_bit_planes(image, bits, num_bits), "valid": is_valid}

  ds = tf.data.Dataset.from_tensor_slices((images, bit_ints, valid))
  return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)


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
