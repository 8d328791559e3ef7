"""Two-view tf.data pipeline and the hand-off to global jax arrays (docs/design.md "Data flow").

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

from cl_jax.data import augment, features, sources

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


def read_records(split: sources.StreamingSplit, index: tf.Tensor):
  """Encoded images [R] and {label: [R]} of the examples at positions `index` [R] of a streamed
  split, read in one call (tfds random access) inside tf.data."""
  names = list(split.label_fields)

  def read(positions):
    images, labels = split.read(positions)
    return [images.astype(bytes) if len(images) else np.zeros([0], bytes),
            *[labels[k] for k in names]]

  encoded, *values = tf.numpy_function(read, [index], [tf.string] + [tf.int32] * len(names),
                                       stateful=False)
  encoded.set_shape(index.shape)
  for v in values:
    v.set_shape(index.shape)
  return encoded, dict(zip(names, values))


def _example_reader(split, data_config, read_in_batches_of: int):
  """(with_records, image_of): `with_records` maps a dataset of {"index": [position]} elements to
  one whose elements also carry the example's labels (and, streamed, its encoded image);
  `image_of(element)` is the un-augmented float image [S, S, C] in [0, 1]. In memory: gathers
  from the decoded split. Streamed: the records of `read_in_batches_of` consecutive elements are
  read in one call."""
  if isinstance(split, sources.StreamingSplit):
    decode = dict(size=data_config.image_size, image_format=split.image_format, channels=split.channels)

    def with_records(ds):
      def read(element):
        encoded, labels = read_records(split, element["index"])
        return {**element, "encoded": encoded, **labels}
      return ds.batch(read_in_batches_of).map(read, num_parallel_calls=tf.data.AUTOTUNE,
                                              deterministic=True).unbatch()
    return with_records, lambda e: augment.decode_center(e["encoded"], **decode)

  images = tf.constant(split.images)
  labels = {k: tf.constant(v) for k, v in split.labels.items()}
  return ((lambda ds: ds.map(lambda e: {**e, **{k: tf.gather(v, e["index"])
                                                for k, v in labels.items()}})),
          lambda e: tf.cast(tf.gather(images, e["index"]), tf.float32) / 255.0)


def train_dataset(split, data_config: ml_collections.ConfigDict, *, seed: int,
                  batch_size: int, start_step: int, num_steps: int, rows=None,
                  split_name: str = "train") -> tf.data.Dataset:
  """Process-local batches {view1, view2, index, <label>...} for global steps
  [start_step, num_steps): the `rows` (increasing positions in [0, batch_size); default all,
  multi-host: `local_rows(mesh, batch_size)`) of every global batch. `split` is a `Split` (in
  memory) or a `StreamingSplit` (each process reads only its rows' records; JPEG views are decoded
  and cropped in one op). `split_name` picks the split's random bits (each split has its own, the
  ones evaluation uses).

  view1/view2: float32 [R, S, S, C + random_bits]; index (position in the split) and labels:
  int32 [R], R = len(rows).
  """
  n, num_bits = len(split), data_config.random_bits
  per_epoch = steps_per_epoch(n, batch_size)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  is_local_row = tf.constant(np.isin(np.arange(batch_size), rows))
  bit_ints = tf.constant(features.random_bit_integers(n, num_bits, seed, split_name))
  scene, _ = features.make_scene(data_config, split, train=True)
  with_records, image_of = _example_reader(split, data_config, len(rows))
  crop_at_decode = isinstance(split, sources.StreamingSplit) and scene is None
  area = (data_config.crop_area_min, 1.0)

  def position(g):
    step, row = g // batch_size, g % batch_size
    p = (step % per_epoch) * batch_size + row
    index = tf.random.experimental.index_shuffle(
        p, seed=tf.stack([tf.constant(seed, tf.int64), step // per_epoch]),
        max_index=tf.constant(n - 1, tf.int64))
    return {"g": g, "index": index}

  def example(element):
    g, index = element.pop("g"), element["index"]
    image = None if crop_at_decode else image_of(element)
    encoded = element.pop("encoded", None)
    example_seed = tf.stack([tf.constant(seed + _AUGMENT_SALT, tf.int64), g])
    read_seed = tf.random.experimental.stateless_fold_in(example_seed, _SCENE_SALT)
    out = {**element, "index": tf.cast(index, tf.int32)}
    view_seeds = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
    for i, view_seed in enumerate(view_seeds):
      if crop_at_decode:
        view = augment.decode_random_resized_crop(
            encoded, augment.crop_seed(view_seed), area, size=data_config.image_size,
            image_format=split.image_format, channels=split.channels)
      else:
        view = image
        if scene is not None:
          view, scene_labels = scene(image, index, read_seed, view_seed)
          out.update(scene_labels)
      view = augment.augment(view, view_seed, data_config, cropped=crop_at_decode)
      out[f"view{i + 1}"] = features.append_bit_planes(view, tf.gather(bit_ints, index), num_bits)
    return out

  ds = tf.data.Dataset.range(start_step * batch_size, num_steps * batch_size)
  ds = ds.filter(lambda g: tf.gather(is_local_row, g % batch_size))
  ds = with_records(ds.map(position))
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(len(rows), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, data_config: ml_collections.ConfigDict, *, seed: int, split_name: str,
                 batch_size: int, rows=None):
  """(dataset, {label: number of classes}): un-augmented images WITH their bit planes and scene,
  in split order, in batches of `batch_size` (the split padded to whole batches), with every
  label to probe: the split's, the scene's and `bits` ([k] 0/1, when random_bits > 0), and
  `valid` (False for the padding). Only the `rows` of every batch are produced (default all;
  multi-host: `local_rows(mesh, batch_size)`), so a streamed split is read once over all
  processes. Scenes are composed with seeds fixed per image."""
  n, num_bits = len(split), data_config.random_bits
  padded = -(-n // batch_size) * batch_size
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  is_local_row = tf.constant(np.isin(np.arange(batch_size), rows))
  bit_ints = tf.constant(features.random_bit_integers(n, num_bits, seed, split_name))
  scene, scene_classes = features.make_scene(data_config, split, train=False)
  with_records, image_of = _example_reader(split, data_config, len(rows))

  def prepare(element):
    index = element["index"]
    image = image_of(element)
    element.pop("encoded", None)
    if scene is not None:
      image_seed = tf.stack([tf.constant(seed + _EVAL_SALT[split_name], tf.int64),
                             tf.cast(index, tf.int64)])
      image, scene_labels = scene(image, index, image_seed, image_seed)
      element.update(scene_labels)
    bits = tf.gather(bit_ints, index)
    if num_bits:
      element["bits"] = tf.bitwise.bitwise_and(
          tf.bitwise.right_shift(bits[None], tf.range(num_bits)), 1)
    return {**element, "index": tf.cast(index, tf.int32),
            "image": features.append_bit_planes(image, bits, num_bits)}

  ds = tf.data.Dataset.range(padded).filter(lambda p: tf.gather(is_local_row, p % batch_size))
  ds = ds.map(lambda p: {"index": tf.minimum(p, n - 1), "valid": p < n})
  ds = with_records(ds).map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(len(rows)), {**split.num_classes, **scene_classes}


def label_classes(split, data_config: ml_collections.ConfigDict) -> dict:
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
