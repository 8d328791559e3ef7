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
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cl_jax.data import augment, features, sources, views

_HOST_SALT = 0x5EED  # scenes and streamed crops (host)
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
  """The host's part of the training views (scenes and streamed splits; `TrainBatches` makes the
  rest on the device): process-local batches {image1, image2, bit_integer, index, <label>...} for
  global steps [start_step, num_steps), the `rows` (increasing positions in [0, batch_size);
  default all, multi-host: `local_rows(mesh, batch_size)`) of every global batch.

  image1/image2: float32 [R, S, S, C] in [0, 1], not yet augmented: the composed scene of each
  view (the same image unless the scene draws something per view), or for a streamed split
  without scene the random resized crop decoded from the JPEG (crop_window of the view's key, the
  same distribution as `views.crop_window`). index (position in the split), bit_integer and
  labels: int32 [R], R = len(rows). `split_name` picks the split's random bits (each split has its
  own, the ones evaluation uses)."""
  n = len(split)
  per_epoch = steps_per_epoch(n, batch_size)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  is_local_row = tf.constant(np.isin(np.arange(batch_size), rows))
  bit_ints = tf.constant(features.random_bit_integers(n, data_config.random_bits, seed, split_name))
  scene, _ = features.make_scene(data_config, split, train=True)
  with_records, image_of = _example_reader(split, data_config, len(rows))
  crop_at_decode = cropped_at_decode(split, data_config)
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
    example_seed = tf.stack([tf.constant(seed + _HOST_SALT, tf.int64), g])
    read_seed = tf.random.experimental.stateless_fold_in(example_seed, _SCENE_SALT)
    out = {**element, "index": tf.cast(index, tf.int32), "bit_integer": tf.gather(bit_ints, index)}
    view_seeds = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
    for i, view_seed in enumerate(view_seeds):
      if crop_at_decode:
        view = augment.decode_random_resized_crop(
            encoded, view_seed, area, size=data_config.image_size,
            image_format=split.image_format, channels=split.channels)
      else:
        view = image
        if scene is not None:
          view, scene_labels = scene(image, index, read_seed, view_seed)
          out.update(scene_labels)
      out[f"image{i + 1}"] = view
    return out

  ds = tf.data.Dataset.range(start_step * batch_size, num_steps * batch_size)
  ds = ds.filter(lambda g: tf.gather(is_local_row, g % batch_size))
  ds = with_records(ds.map(position))
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(len(rows), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def cropped_at_decode(split, data_config) -> bool:
  """Whether the host crops the views while decoding (streamed JPEGs without a scene)."""
  return isinstance(split, sources.StreamingSplit) and data_config.get("scene", "none") == "none"


def resident(split, data_config) -> bool:
  """Whether training reads `split` from device memory: in memory and without a scene."""
  return isinstance(split, sources.Split) and data_config.get("scene", "none") == "none"


def epoch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """[steps_per_epoch · B] int32: the split positions epoch `epoch` reads, in order — the seeded
  permutation `tf.random.experimental.index_shuffle(p, [seed, epoch], n − 1)` of positions p,
  without the remainder (the contract `train_dataset` follows too)."""
  positions = tf.range(steps_per_epoch(num_examples, batch_size) * batch_size, dtype=tf.int64)
  order = tf.random.experimental.index_shuffle(
      positions, seed=tf.constant([seed, epoch], tf.int64),
      max_index=tf.constant(num_examples - 1, tf.int64))
  return order.numpy().astype(np.int32)


def replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array that every process holds in full → a global array replicated on every device."""
  return jax.make_array_from_callback(array.shape, NamedSharding(mesh, PartitionSpec()),
                                      lambda index: array[index])


def run_batch_sharding(mesh: Mesh) -> NamedSharding:
  """[runs, B, ...] arrays: every run's batch sharded over "data" like a single run's."""
  return NamedSharding(mesh, PartitionSpec(None, "data"))


class TrainBatches:
  """Global training batches {view1, view2, index, <label>...} of a group of runs that differ only
  in their seed, stacked on a leading run axis ([R, B, ...], each run's batch sharded over the
  mesh's `data` axis), for the global steps [start_step, num_steps), made on the device
  (docs/design.md "Data flow").

  Resident (`resident`): the split lives on every device; a jitted function gathers the step's
  examples (positions (step mod steps_per_epoch)·B … +B of the run's `epoch_order`) and makes the
  two views (`views.two_views`). Otherwise tf.data (`train_dataset`, one per run) composes the
  scenes / decodes the streamed crops on the host, and the same jitted `views.two_views` augments
  them on the device. The views' keys come from (seed, global position), so both ways give
  batches that are a function of (seed, step) only. `image_shape`: [H, W, C + random_bits] of one
  view."""

  def __init__(self, split, data_config, *, seeds, batch_size: int, start_step: int,
               num_steps: int, mesh: Mesh, split_name: str = "train"):
    self.split, self.seeds, self.mesh = split, list(seeds), mesh
    self.batch_size, self.start_step, self.num_steps = batch_size, start_step, num_steps
    self.per_epoch = steps_per_epoch(len(split), batch_size)
    bits = np.stack([features.random_bit_integers(len(split), data_config.random_bits, seed,
                                                  split_name) for seed in self.seeds])
    self._keys = jnp.stack([views.view_key(seed) for seed in self.seeds])
    out = run_batch_sharding(mesh)
    self._host = None
    if resident(split, data_config):
      self._shared = {k: replicate(v, mesh) for k, v in {"images": split.images,
                                                          **split.labels}.items()}
      self._bits = replicate(bits, mesh)
      self._orders = {}
      make = functools.partial(resident_batch, batch_size=batch_size, per_epoch=self.per_epoch,
                               data_config=data_config)
      self._make = jax.jit(jax.vmap(make, in_axes=(None, 0, 0, None, 0)), out_shardings=out)
      size = data_config.image_size
      self.image_shape = (size, size, split.images.shape[-1] + data_config.random_bits)
    else:
      self._host = [train_dataset(split, data_config, seed=seed, batch_size=batch_size,
                                  start_step=start_step, num_steps=num_steps,
                                  rows=local_rows(mesh, batch_size), split_name=split_name)
                    for seed in self.seeds]
      spec = self._host[0].element_spec["image1"].shape
      self.image_shape = (*spec[1:-1], spec[-1] + data_config.random_bits)
      finish = jax.vmap(functools.partial(finish_host_batch, data_config=data_config,
                                          cropped=cropped_at_decode(split, data_config)),
                        in_axes=(0, None, 0))
      self._make = jax.jit(lambda batches, step, keys: finish(
          jax.tree.map(lambda *x: jnp.stack(x), *batches), step, keys), out_shardings=out)

  def _order(self, epoch: int) -> jax.Array:
    if epoch not in self._orders:  # [R, steps_per_epoch · B]; only the current epoch is kept
      self._orders = {epoch: replicate(np.stack([
          epoch_order(seed, epoch, len(self.split), self.batch_size) for seed in self.seeds]),
          self.mesh)}
    return self._orders[epoch]

  def __iter__(self):
    self._batches = self._resident_batches() if self._host is None else self._host_batches()
    return self._batches

  def _resident_batches(self):
    for step in range(self.start_step, self.num_steps):
      yield self._make(self._shared, self._bits, self._order(step // self.per_epoch), step,
                       self._keys)

  def _host_batches(self):
    for step, *local in zip(range(self.start_step, self.num_steps),
                            *(ds.as_numpy_iterator() for ds in self._host)):
      yield self._make([to_global(run, self.mesh) for run in local], step, self._keys)

  def close(self):
    """Stop tf.data's threads now (left to the garbage collector, they held up the next run of a
    sweep by ~10 s)."""
    if getattr(self, "_batches", None) is not None:
      self._batches.close()


def resident_batch(data, bit_integers, order, step, key, *, batch_size: int, per_epoch: int,
                   data_config):
  """The global batch of `step` of one run from the device-resident split `data` {images uint8,
  labels} and the run's `bit_integers` [N]: the examples at positions (step mod per_epoch)·B … +B
  of the epoch's `order`, their two views and labels."""
  index = jax.lax.dynamic_slice_in_dim(order, (step % per_epoch) * batch_size, batch_size)
  images = data["images"][index].astype(jnp.float32) / 255.0
  view1, view2 = views.two_views(key, step, images, images, bit_integers[index], data_config)
  labels = {k: v[index] for k, v in data.items() if k != "images"}
  return {"view1": view1, "view2": view2, "index": index, **labels}


def finish_host_batch(batch, step, key, *, data_config, cropped: bool):
  """The two views of a global batch from `train_dataset` (image1/image2 not yet augmented)."""
  batch = dict(batch)
  view1, view2 = views.two_views(key, step, batch.pop("image1"), batch.pop("image2"),
                                 batch.pop("bit_integer"), data_config, cropped=cropped)
  return {"view1": view1, "view2": view2, **batch}


def eval_dataset(split, data_config: ml_collections.ConfigDict, *, seed: int, split_name: str,
                 batch_size: int, rows=None):
  """(dataset, {label: number of classes}): un-augmented images (scene composed) and their
  `bit_integer` (the planes are appended on the device: `views.append_bit_planes`), in split order, in batches of `batch_size` (the split padded to whole batches), with every
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
    return {**element, "index": tf.cast(index, tf.int32), "image": image, "bit_integer": bits}

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
