"""Global training and evaluation batches, made on the device; tf.data where data is streamed
(docs/design.md "Data flow").

Determinism: the example at global position g = step·B + row is a pure function of
(seed, g): epoch e = step // steps_per_epoch is a seeded permutation of the split
(`tf.random.experimental.index_shuffle`, dropping the remainder), and its scene and two views use
keys from (seed, g) (`views.example_keys`, `views.scene_keys`; the host's JPEG crops stateless tf
ops seeded by (seed, g)). Hence the global batches do not depend on the number of devices or
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

from cl_jax import jit_cache
from cl_jax.data import augment, features, sources, views

_HOST_SALT = 0x5EED  # streamed crops (host)
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
  """The host's part of the training views (streamed splits; `TrainBatches` makes the rest on the
  device): process-local batches {image or image1/image2, bit_integer, index, <label>...} for
  global steps [start_step, num_steps), the `rows` (increasing positions in [0, batch_size);
  default all, multi-host: `local_rows(mesh, batch_size)`) of every global batch.

  Without a scene (`cropped_at_decode`): image1/image2, float32 [R, S, S, C] in [0, 1], the random
  resized crop of each view decoded from the JPEG (crop_window of the view's seed, the same
  distribution as `views.crop_window`). Otherwise: image, the un-augmented image (the scene is
  composed on the device). index (position in the split), bit_integer and labels: int32 [R],
  R = len(rows). `split_name` picks the split's random bits (each split has its own, the ones
  evaluation uses)."""
  n = len(split)
  per_epoch = steps_per_epoch(n, batch_size)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  is_local_row = tf.constant(np.isin(np.arange(batch_size), rows))
  bit_ints = tf.constant(features.random_bit_integers(n, data_config.random_bits, seed, split_name))
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
    out = {**element, "index": tf.cast(index, tf.int32), "bit_integer": tf.gather(bit_ints, index)}
    if not crop_at_decode:
      out["image"] = image_of(element)
      out.pop("encoded", None)
      return out
    encoded = out.pop("encoded")
    example_seed = tf.stack([tf.constant(seed + _HOST_SALT, tf.int64), g])
    view_seeds = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
    for i, view_seed in enumerate(view_seeds):
      out[f"image{i + 1}"] = augment.decode_random_resized_crop(
          encoded, view_seed, area, size=data_config.image_size,
          image_format=split.image_format, channels=split.channels)
    return out

  ds = tf.data.Dataset.range(start_step * batch_size, num_steps * batch_size)
  ds = ds.filter(lambda g: tf.gather(is_local_row, g % batch_size))
  ds = with_records(ds.map(position))
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(len(rows), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def cropped_at_decode(split, data_config) -> bool:
  """Whether the host crops the views while decoding (streamed JPEGs without a scene)."""
  return isinstance(split, sources.StreamingSplit) and data_config.get("scene", "none") == "none"


def resident(split) -> bool:
  """Whether training reads `split` from device memory (every split held in host memory)."""
  return isinstance(split, sources.Split)


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

  Resident (`resident`): the split (and the scene's arrays) live on every device; a jitted
  function gathers the step's examples (positions (step mod steps_per_epoch)·B … +B of the run's
  `epoch_order`), composes their scenes and makes the two views (`device_batch`). Streamed:
  tf.data (`train_dataset`, one per run) reads and decodes on the host (cropping at decode when
  there is no scene), and the same jitted functions finish the batch on the device. The keys come
  from (seed, global position), so both ways give batches that are a function of (seed, step)
  only. `image_shape`: [H, W, C + random_bits] of one view."""

  def __init__(self, split, data_config, *, seeds, batch_size: int, start_step: int,
               num_steps: int, mesh: Mesh, split_name: str = "train"):
    self.split, self.seeds, self.mesh = split, list(seeds), mesh
    self.batch_size, self.start_step, self.num_steps = batch_size, start_step, num_steps
    self.per_epoch = steps_per_epoch(len(split), batch_size)
    self._keys = jnp.stack([views.view_key(seed) for seed in self.seeds])
    bits = np.stack([features.random_bit_integers(len(split), data_config.random_bits, seed,
                                                  split_name) for seed in self.seeds])
    scene = features.make_scene(data_config, split, train=True)
    self._shared = {"scene": {k: replicate(v, mesh) for k, v in scene.arrays.items()}
                    if scene else {}}
    cropped = cropped_at_decode(split, data_config)
    make = functools.partial(device_batch, batch_size=batch_size, per_epoch=self.per_epoch,
                             data_config=data_config, scene=scene, cropped=cropped)
    # The jitted function is kept for the next TrainBatches of the same data (`jit_cache`),
    # keyed by the data's content (`features.scene_key`), not by the split object.
    key = ("train_batches", features.scene_key(data_config, split, True), batch_size,
           self.per_epoch, mesh, cropped, resident(split))
    self._host = None
    if resident(split):
      self._shared["labels"] = {k: replicate(v, mesh) for k, v in split.labels.items()}
      if scene is None or scene.uses_image:
        self._shared["images"] = replicate(split.images, mesh)
      self._bits, self._orders = replicate(bits, mesh), {}
      self._make = jit_cache.get(key, lambda: jax.jit(
          jax.vmap(make, in_axes=(None, None, 0, 0, None, 0)),
          out_shardings=run_batch_sharding(mesh)))
      example = (self._shared, None, self._bits, self._order(start_step // self.per_epoch),
                 start_step, self._keys)
    else:
      self._host = [train_dataset(split, data_config, seed=seed, batch_size=batch_size,
                                  start_step=start_step, num_steps=num_steps,
                                  rows=local_rows(mesh, batch_size), split_name=split_name)
                    for seed in self.seeds]
      run_batches = jax.vmap(make, in_axes=(None, 0, None, None, None, 0))
      self._make = jit_cache.get(key, lambda: jax.jit(
          lambda shared, batches, step, keys: run_batches(
              shared, jax.tree.map(lambda *x: jnp.stack(x), *batches), None, None, step, keys),
          out_shardings=run_batch_sharding(mesh)))
      spec = {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype.as_numpy_dtype)
              for k, v in self._host[0].element_spec.items()}
      example = (self._shared, [spec] * len(self.seeds), start_step, self._keys)
    self.image_shape = jax.eval_shape(self._make, *example)["view1"].shape[2:]

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
      yield self._make(self._shared, None, self._bits, self._order(step // self.per_epoch), step,
                       self._keys)

  def _host_batches(self):
    for step, *local in zip(range(self.start_step, self.num_steps),
                            *(ds.as_numpy_iterator() for ds in self._host)):
      yield self._make(self._shared, [to_global(run, self.mesh) for run in local], step,
                       self._keys)

  def close(self):
    """Stop tf.data's threads now (left to the garbage collector, they held up the next run of a
    sweep)."""
    if getattr(self, "_batches", None) is not None:
      self._batches.close()


def device_batch(shared, host_batch, bit_integers, order, step, key, *, batch_size: int,
                 per_epoch: int, data_config, scene, cropped: bool):
  """The global batch {view1, view2, index, <label>...} of `step` of one run, on the device.

  Resident (`host_batch` None): the examples at positions (step mod per_epoch)·B … +B of the
  epoch's `order`, read from `shared` {images (when needed), labels, scene}; `bit_integers` [N]
  are the run's. Streamed: `host_batch` from `train_dataset` (image, or image1/image2 already
  cropped). Then the scene of each view (`features.Scene`, keys `views.scene_keys`), the views
  (`views.two_views`) and the bit planes."""
  if host_batch is None:
    index = jax.lax.dynamic_slice_in_dim(order, (step % per_epoch) * batch_size, batch_size)
    batch = {"index": index, "bit_integer": bit_integers[index],
             **{k: v[index] for k, v in shared["labels"].items()}}
    if "images" in shared:
      batch["image"] = shared["images"][index].astype(jnp.float32) / 255.0
  else:
    batch = dict(host_batch)
  if cropped:
    images1, images2 = batch.pop("image1"), batch.pop("image2")
  else:
    images1 = images2 = batch.pop("image", None)
  if scene is not None:
    keys = views.scene_keys(key, step, batch_size)
    compose = functools.partial(features.compose_batch, scene, shared["scene"], images1,
                                batch["index"], keys[:, 0])
    (images1, scene_labels), (images2, _) = compose(keys[:, 1]), compose(keys[:, 2])
    batch.update(scene_labels)
  view1, view2 = views.two_views(key, step, images1, images2, batch.pop("bit_integer"),
                                 data_config, cropped=cropped)
  return {"view1": view1, "view2": view2, **batch}


def eval_dataset(split, data_config: ml_collections.ConfigDict, *, batch_size: int, rows=None):
  """(dataset, {label: number of classes}): the un-augmented images and their `index` in split
  order, in batches of `batch_size` (the split padded to whole batches), with the split's labels
  and `valid` (False for the padding); the scene, the random bits and their planes follow on the
  device (`EvalBatches`). Only the `rows` of every batch are produced (default all; multi-host:
  `local_rows(mesh, batch_size)`), so a streamed split is read once over all processes."""
  n = len(split)
  padded = -(-n // batch_size) * batch_size
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  is_local_row = tf.constant(np.isin(np.arange(batch_size), rows))
  with_records, image_of = _example_reader(split, data_config, len(rows))

  def prepare(element):
    image = image_of(element)
    element.pop("encoded", None)
    return {**element, "index": tf.cast(element["index"], tf.int32), "image": image}

  ds = tf.data.Dataset.range(padded).filter(lambda p: tf.gather(is_local_row, p % batch_size))
  ds = ds.map(lambda p: {"index": tf.minimum(p, n - 1), "valid": p < n})
  ds = with_records(ds).map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(len(rows)), dict(split.num_classes)


def eval_keys(seed, split_name: str, index) -> jax.Array:
  """[B] keys of the evaluation scenes of the images at `index` [B]: fixed per (seed, split,
  image), so an image is composed the same way at every evaluation of every run with `seed`."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _EVAL_SALT[split_name])
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


class EvalBatches:
  """Global evaluation batches of `split` for a group of runs with `seeds`, in split order (padded
  to whole batches of `batch_size`): {image [R, B, H, W, C + random_bits], valid, index,
  <label>... [R, B], bits [R, B, k]}, each run's rows sharded over "data". `eval_dataset` is read
  once on the host for the whole group; on the device each run's scene is composed with its
  `eval_keys` and its random bits (`features.random_bit_integers` of its seed and the split) are
  appended as planes and as the `bits` labels (when random_bits > 0). `num_classes`:
  {label: number of classes} of the split's and the scene's labels."""

  def __init__(self, split, data_config, *, seeds, split_name: str, batch_size: int,
               mesh: Mesh):
    self.mesh = mesh
    num_bits = data_config.random_bits
    scene = features.make_scene(data_config, split, train=False)
    self._dataset, self.num_classes = eval_dataset(split, data_config, batch_size=batch_size,
                                                   rows=local_rows(mesh, batch_size))
    self._arrays = {k: replicate(v, mesh) for k, v in scene.arrays.items()} if scene else {}
    self._bits = replicate(np.stack([features.random_bit_integers(len(split), num_bits, seed,
                                                                  split_name) for seed in seeds]),
                           mesh)
    self._seeds = replicate(np.asarray(seeds, np.int32), mesh)
    if scene:
      self.num_classes.update(scene.num_classes)

    def finish(arrays, bit_integers, seed, batch):  # one run
      batch = dict(batch)
      image, index = batch.pop("image"), batch["index"]
      if scene is not None:
        keys = eval_keys(seed, split_name, index)
        image, labels = features.compose_batch(
            scene, arrays, image if scene.uses_image else None, index, keys, keys)
        batch.update(labels)
      bit_integer = bit_integers[index]
      if num_bits:
        batch["bits"] = (bit_integer[:, None] >> jnp.arange(num_bits)) & 1
      batch["image"] = views.append_bit_planes(image, bit_integer, num_bits)
      return batch
    self._finish = jit_cache.get(  # kept for the next evaluation, as TrainBatches' function
        ("eval_batches", features.scene_key(data_config, split, False), split_name, mesh),
        lambda: jax.jit(jax.vmap(finish, in_axes=(None, 0, 0, None)),
                        out_shardings=run_batch_sharding(mesh)))

  def __iter__(self):
    for local in self._dataset.as_numpy_iterator():
      yield self._finish(self._arrays, self._bits, self._seeds, to_global(local, self.mesh))


def image_channels(split, data_config: ml_collections.ConfigDict) -> int:
  """The channels C of the images a run reads from `split` (its scene composed; bit planes
  apart)."""
  scene = features.make_scene(data_config, split, train=False)
  stored = split.channels if isinstance(split, sources.StreamingSplit) else split.images.shape[-1]
  if scene is None:
    return stored
  size = data_config.image_size
  image = jax.ShapeDtypeStruct((size, size, stored), jnp.float32) if scene.uses_image else None
  key = jax.random.PRNGKey(0)
  composed, _ = jax.eval_shape(scene.compose, scene.arrays, image, jnp.int32(0), key, key)
  return composed.shape[-1]


def label_classes(split, data_config: ml_collections.ConfigDict) -> dict:
  """{label: number of classes} of the TRAINING examples (the online probes): the split's labels
  and those its scene adds."""
  scene = features.make_scene(data_config, split, train=True)
  return {**split.num_classes, **(scene.num_classes if scene else {})}


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Process-local numpy arrays → global jax arrays sharded on the mesh's `data` axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
