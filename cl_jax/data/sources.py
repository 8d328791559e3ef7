"""Where examples come from: the embedded scikit-learn digits, or any tfds image dataset.

`data.class_subset` (a file of class names) restricts any of them to those classes, relabelled
0..K−1 in the file's order (configs/imagenet100_classes.txt: ImageNet-1k → ImageNet-100).

By default a source is loaded into memory as a `Split`: uint8 images [N, S, S, C] resized to
`data.image_size`, and integer labels (one array per label the dataset provides) — right for the
papers' small-scale data (digits, MNIST, CIFAR-10/100). With `data.streaming=True` a tfds split is
a `StreamingSplit` instead: nothing but its length and label metadata is held, and the pipeline
reads each example it needs by index (tfds random access over ArrayRecord), keeping the encoded
image (JPEG bytes for imagenet2012) until a view is decoded — ImageNet-size splits that do not fit
in host memory.
"""
import dataclasses
import functools
import hashlib
from typing import Mapping, Optional, Sequence

import numpy as np

from cl_jax import spec

EMBEDDED = "digits"
IDX = "mnist_idx"  # MNIST-format IDX files (train/t10k-images-idx3-ubyte, ...) in data.data_dir
PHOTOS = "photos"  # embedded backgrounds: crops of scikit-learn's two sample photographs
FOLDER = "folder"  # a folder of image files, data.data_dir/{train,test}/[<class>/]*.png|jpg
NPZ = "npz"        # arrays in a .npz file: train_images, test_images, train_<label>, ...
TRIFEATURE = "trifeature"  # generated: shape × texture × colour (cl_jax/data/trifeature.py)
TRIFEATURE_SIZES = {"train": 10_000, "test": 2_000}  # multiples of the 1,000 combinations
# The embedded default's fixed, stratified split (of 1,797 images: 1,347 train / 450 test).
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


class DataError(spec.UserError, ValueError):
  """A dataset that cannot be loaded, with a message that says how to fix it."""


def _digest(*parts) -> str:
  h = hashlib.blake2b(digest_size=16)
  for part in parts:
    h.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray                 # uint8 [N, S, S, C]
  labels: Mapping[str, np.ndarray]   # name → int32 [N]
  num_classes: Mapping[str, int]     # name → number of classes

  def __len__(self) -> int:
    return self.images.shape[0]

  @functools.cached_property
  def fingerprint(self) -> str:
    """A digest of the content (images, labels): caches of scenes and jitted programs key on
    it, so a split loaded again (a sweep's next run of a tfds dataset) reuses them."""
    return _digest(self.images.shape, self.images,
                   *[(k, v) for k in sorted(self.labels) for v in (self.labels[k],)],
                   sorted(self.num_classes.items()))


@dataclasses.dataclass(frozen=True)
class StreamingSplit:
  """A tfds split read example by example: `source` is its random-access data source (tfds
  `as_data_source`, images left encoded); example i of the split is record `indices[i]` (all
  records when `indices` is None). Labels are read with the record: `label_fields` maps a label
  name to its record feature, `relabel` a label name to a lookup old class → new class
  (class_subset, with −1 for dropped classes)."""
  source: Sequence
  indices: Optional[np.ndarray]
  label_fields: Mapping[str, str]
  relabel: Mapping[str, np.ndarray]
  num_classes: Mapping[str, int]
  image_format: str   # 'jpeg' (decoded and cropped in one op) or another tf.io.decode_image format
  channels: int
  origin: str = ""    # dataset, split and data_dir: with the labels, the split's `fingerprint`

  def __len__(self) -> int:
    return len(self.source) if self.indices is None else len(self.indices)

  @functools.cached_property
  def fingerprint(self) -> str:
    return _digest(self.origin, len(self), self.channels,
                   np.zeros(0) if self.indices is None else self.indices,
                   sorted(self.label_fields.items()),
                   [(k, self.relabel[k]) for k in sorted(self.relabel)])

  def read(self, positions: np.ndarray):
    """(encoded images [R] bytes, {label: int32 [R]}) of the split's examples at `positions`."""
    keys = [int(i) for i in (positions if self.indices is None else self.indices[positions])]
    records = self.source.__getitems__(keys) if keys else []
    images = np.array([r["image"] for r in records], dtype=object)
    labels = {}
    for name, field in self.label_fields.items():
      values = np.array([r[field] for r in records], np.int64)
      labels[name] = (self.relabel[name][values] if name in self.relabel else values
                      ).astype(np.int32)
    return images, labels


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (antialiased) resize of uint8 [N, H, W, C] images to [N, size, size, C]."""
  if images.shape[1:3] == (size, size):
    return images
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = tf.image.resize(tf.cast(images, tf.float32), (size, size), antialias=True)
  return np.asarray(tf.clip_by_value(tf.round(out), 0, 255), np.uint8)


def load_digits(split: str, image_size: int) -> Split:
  """scikit-learn's bundled 8×8 handwritten digits (values 0..16), scaled to uint8, resized."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  idx = {"train": train_idx, "test": test_idx}[split]
  return Split(images=resize(images[idx], image_size), labels={"label": labels[idx]},
               num_classes={"label": 10})


def load_photos(split: str, image_size: int, num_images: int = 2000) -> Split:
  """Random square crops (side 96–192 px) of the two photographs bundled with scikit-learn
  (china.jpg, flower.jpg), resized to `image_size`. Label (8 classes): which photograph and which
  quadrant of it the crop is centred in — a content label, harder than the photograph alone,
  which colour statistics give away. A fixed 80/20 train/test division of `num_images` seeded
  crops: the embedded background dataset."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  photos = datasets.load_sample_images().images  # 2 × [427, 640, 3] uint8
  rng = np.random.default_rng(0xF070)
  crops, labels = [], []
  for _ in range(num_images):
    which = int(rng.integers(2))
    side = int(rng.integers(96, 193))
    y, x = rng.integers(0, 427 - side), rng.integers(0, 640 - side)
    crop = Image.fromarray(photos[which][y:y + side, x:x + side])
    crops.append(np.asarray(crop.resize((image_size, image_size), Image.Resampling.LANCZOS)))
    quadrant = 2 * int(y + side / 2 >= 427 / 2) + int(x + side / 2 >= 640 / 2)
    labels.append(4 * which + quadrant)
  cut = num_images * 4 // 5
  part = slice(0, cut) if split == "train" else slice(cut, num_images)
  return Split(images=np.stack(crops[part]), labels={"label": np.array(labels[part], np.int32)},
               num_classes={"label": 8})


def _read_idx(path) -> np.ndarray:
  """An IDX file (optionally .gz): big-endian dims after a 4-byte magic; uint8 payload."""
  import gzip  # pylint: disable=g-import-not-at-top
  raw = path.read_bytes()
  if path.name.endswith(".gz"):
    raw = gzip.decompress(raw)
  ndim = raw[3]
  dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4").astype(int)
  return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def load_idx(directory, split: str, image_size: int) -> Split:
  """MNIST in the original IDX format from `directory` ({train,t10k}-{images-idx3,labels-idx1}
  -ubyte[.gz]). If only the t10k files are there, a fixed stratified 80/20 split of them serves
  as train/test."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  def find(prefix):
    for name in (prefix, prefix + ".gz"):
      if directory and (epath.Path(directory) / name).exists():
        return epath.Path(directory) / name
    return None

  if find("t10k-images-idx3-ubyte") is None:
    raise DataError(f"data.dataset='{IDX}' needs data.data_dir to be a folder with MNIST IDX files"
                    f" (t10k-images-idx3-ubyte[.gz], ...); got data.data_dir={directory!r}.")
  if find("train-images-idx3-ubyte"):
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"))
  else:
    from sklearn import model_selection  # pylint: disable=g-import-not-at-top
    images = _read_idx(find("t10k-images-idx3-ubyte"))
    labels = _read_idx(find("t10k-labels-idx1-ubyte"))
    train_idx, test_idx = model_selection.train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    idx = train_idx if split == "train" else test_idx
    images, labels = images[idx], labels[idx]
  return Split(images=resize(images[..., None], image_size),
               labels={"label": labels.astype(np.int32)}, num_classes={"label": 10})


def not_prepared_message(name: str, data_dir) -> str:
  return (f"tfds dataset '{name}' is not prepared in data_dir={data_dir or '~/tensorflow_datasets'}"
          " and this machine may not be able to download it. Prepare it where there is network "
          f"access with `tfds build {name} --data_dir=DIR` and pass "
          "--config.data.data_dir=DIR, or use the embedded default that needs no download: "
          f"--config.data.dataset={EMBEDDED}.")


def tfds_dataset(name: str, split: str, data_dir):
  """(builder, tf.data.Dataset of `split`, the split's name in tfds, {ClassLabel feature: number of
  classes}) for tfds `name`; a `DataError` naming the fix if the dataset is unknown, not
  prepared or has no image with class labels. `split` 'test' falls back to 'validation'
  (imagenet2012)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"data.dataset='{name}' is neither a source of cl_jax ({', '.join(LOCAL)}) "
                    "nor a known tfds dataset (e.g. mnist, cifar10, cifar100, imagenet2012)."
                    ) from e
  features = builder.info.features
  classes = {k: f.num_classes for k, f in features.items()
             if isinstance(f, tfds.features.ClassLabel)}
  if "image" not in features or not isinstance(features["image"], tfds.features.Image) or (
      not classes):
    raise DataError(f"tfds dataset '{name}' has no 'image' feature with class labels.")
  try:
    if split == "test" and "test" not in builder.info.splits:
      split = "validation"
    return builder, builder.as_dataset(split=split, shuffle_files=False), split, classes
  except AssertionError as e:  # tfds: "could not find data in ..."
    raise DataError(not_prepared_message(name, data_dir)) from e


def load_tfds(name: str, split: str, image_size: int, data_dir=None) -> Split:
  """A whole tfds split in memory. Labels: every ClassLabel feature (e.g. cifar100's `label`
  (100 fine classes) and `coarse_label` (20 superclasses))."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _, ds, _, label_classes = tfds_dataset(name, split, data_dir)

  def prepare(ex):
    image = ex["image"]
    if image.shape[:2] != (image_size, image_size):
      image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size),
                              antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return {"image": image, **{k: tf.cast(ex[k], tf.int32) for k in label_classes}}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  chunks = list(tfds.as_numpy(ds))
  return Split(images=np.concatenate([c["image"] for c in chunks]),
               labels={k: np.concatenate([c[k] for c in chunks]) for k in label_classes},
               num_classes=label_classes)


DIGIT_DATASETS = (EMBEDDED, IDX, "mnist")


def read_class_subset(path) -> list[str]:
  """Class names, one per line ('#' starts a comment), from a file such as
  configs/imagenet100_classes.txt (any epath: local or a bucket)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  lines = epath.Path(path).read_text().splitlines()
  return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def label_names(dataset: str, data_dir) -> list[str]:
  """The names of the `label` classes: tfds's ClassLabel names (WordNet IDs for imagenet2012);
  the class folders of a folder dataset; '0'..'K−1' for the other sources."""
  if dataset in LOCAL:
    split, names = _load_local(dataset, "train", 8, data_dir, 0)
    return names or [str(i) for i in range(split.num_classes.get("label", 0))]
  builder, *_ = tfds_dataset(dataset, "train", data_dir)
  return list(builder.info.features["label"].names)


def _subset_lookup(names: list[str], subset: list[str], path) -> np.ndarray:
  """Lookup old class → position of its name in `subset` (−1: not in the subset)."""
  unknown = [c for c in subset if c not in names]
  if unknown or len(set(subset)) != len(subset):
    raise DataError(f"data.class_subset={path}: " + (
        f"{len(unknown)} of its {len(subset)} names are not classes of this dataset (e.g. "
        f"{', '.join(unknown[:3])}; the dataset's classes look like {', '.join(names[:3])}, …)."
        if unknown else "it lists a class twice."))
  new_label = np.full(len(names), -1, np.int32)
  new_label[[names.index(c) for c in subset]] = np.arange(len(subset))
  return new_label


@dataclasses.dataclass(frozen=True)
class LabelPlan:
  """How the label fields a dataset stores become the labels a run sees — the one
  implementation of `data.class_subset` and `data.coarse_labels`, for splits in memory and
  streamed alike. Label `name` is stored field `fields[name]`, mapped through `lookups[name]`
  (old class → new class) when it has one; the examples kept are those whose field `keep_field`
  maps to ≥ 0 under `keep` (None: all)."""
  fields: Mapping[str, str]
  lookups: Mapping[str, np.ndarray]
  num_classes: Mapping[str, int]
  keep_field: Optional[str] = None
  keep: Optional[np.ndarray] = None

  def labels(self, stored: Mapping[str, np.ndarray]) -> dict:
    """{name: int32 labels} of examples whose stored fields are `stored`."""
    return {name: (self.lookups[name][stored[field]] if name in self.lookups else
                   np.asarray(stored[field])).astype(np.int32)
            for name, field in self.fields.items()}

  def kept(self, stored: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    """Boolean mask of the examples kept (None: all)."""
    return None if self.keep is None else self.keep[stored[self.keep_field]] >= 0


def label_plan(data_config, classes: Mapping[str, int], names) -> LabelPlan:
  """The `LabelPlan` of `data_config` for a dataset storing label fields `classes` ({field:
  number of classes}); `names()` gives the class names of its `label` (read only for a
  class_subset).

  class_subset keeps the listed classes of `label`, relabelled 0..K−1 in the file's order;
  coarse_labels makes label = the class and subclass = the fine label (Xue et al. 2023;
  docs/method.md §2.6): `coarse_label` (cifar100) or, for digits, digit ≥ 5. Both together:
  the subclass is the subset's relabelled fine class and the class is its coarse class."""
  dataset = data_config.dataset
  fields, lookups, num_classes = {k: k for k in classes}, {}, dict(classes)
  keep = None
  if data_config.get("class_subset"):
    if "label" not in classes:
      raise DataError(f"data.class_subset={data_config.class_subset} keeps classes of the "
                      f"'label', but '{dataset}' has no label.")
    keep = _subset_lookup(names(), read_class_subset(data_config.class_subset),
                          data_config.class_subset)
    lookups["label"], num_classes["label"] = keep, int(keep.max()) + 1
  if data_config.coarse_labels:
    fine = {"subclass": "label"}
    if "coarse_label" in classes:
      fields = {"label": "coarse_label", **fine}
      lookups = {"subclass": lookups["label"]} if "label" in lookups else {}
      num_classes = {"label": classes["coarse_label"], "subclass": num_classes["label"]}
    elif dataset in DIGIT_DATASETS:
      fields = {"label": "label", **fine}
      lookups = {"label": (np.arange(10) >= 5).astype(np.int32),
                 **({"subclass": lookups["label"]} if "label" in lookups else {})}
      num_classes = {"label": 2, "subclass": num_classes["label"]}
    else:
      raise DataError(f"data.coarse_labels=True, but '{dataset}' has no coarse labels: use a "
                      f"digit dataset ({', '.join(DIGIT_DATASETS)}) or one with a "
                      "'coarse_label' (cifar100).")
  return LabelPlan(fields, lookups, num_classes, "label" if keep is not None else None, keep)


def apply_label_plan(split: Split, plan: LabelPlan) -> Split:
  """The examples of an in-memory `split` that `plan` keeps, with its labels."""
  kept = plan.kept(split.labels)
  labels = plan.labels(split.labels)
  if kept is None:
    return Split(split.images, labels, plan.num_classes)
  return Split(split.images[kept], {k: v[kept] for k, v in labels.items()}, plan.num_classes)


def class_and_subclass(split: Split, dataset: str) -> Split:
  """Coarse `label` (the class) and fine `subclass` labels of an in-memory split (`label_plan`
  with data.coarse_labels)."""
  config = {"dataset": dataset, "coarse_labels": True}
  return apply_label_plan(split, label_plan(_Options(config), split.num_classes, None))


class _Options(dict):
  """A dict read like a data ConfigDict (`.field`, `.get`)."""
  __getattr__ = dict.get


def load_streaming(data_config, split: str) -> StreamingSplit:
  """tfds split `split` of `data_config.dataset` as a `StreamingSplit` (random access; images stay
  encoded), labelled by its `label_plan`: with a class_subset the stored labels of every record
  are read once to find the examples kept (the images are not decoded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, data_dir = data_config.dataset, data_config.data_dir
  builder, _, split, classes = tfds_dataset(name, split, data_dir)
  try:
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  except (NotImplementedError, ValueError) as e:
    raise DataError(
        f"data.streaming=True reads '{name}' by random access, which needs its files in the "
        f"ArrayRecord format, but data_dir={data_dir} holds another ({e.__class__.__name__}: "
        f"{str(e).splitlines()[0]}). Convert it once: `tfds convert_format "
        f"--dataset_dir=DIR/{name}/VERSION --out_file_format=array_record` (or build it with "
        f"`tfds build {name} --file_format=array_record`), or set data.streaming=False to load "
        "the split into memory.") from e
  plan = label_plan(data_config, classes,
                    lambda: list(builder.info.features["label"].names))
  indices = None
  if plan.keep is not None:
    stored = np.concatenate([np.array([r[plan.keep_field] for r in source.__getitems__(range(
        i, min(i + 1024, len(source))))], np.int64) for i in range(0, len(source), 1024)])
    indices = np.flatnonzero(plan.kept({plan.keep_field: stored}))
  image = builder.info.features["image"]
  return StreamingSplit(source=source, indices=indices, label_fields=plan.fields,
                        relabel=plan.lookups, num_classes=plan.num_classes,
                        image_format=image.encoding_format or "png",
                        channels=data_config.get("channels") or image.shape[-1] or 3,
                        origin=f"{name}/{split}@{data_dir}")


def load_trifeature(split: str, image_size: int) -> Split:
  """Trifeature at `image_size` px: 10,000 train / 2,000 test images (generator seeds 0 / 1),
  labels shape, texture, color (10 classes each, balanced and independent)."""
  from cl_jax.data import trifeature  # pylint: disable=g-import-not-at-top
  images, labels = trifeature.generate(TRIFEATURE_SIZES[split], image_size,
                                       seed=0 if split == "train" else 1)
  return Split(images, labels, {name: 10 for name in labels})


def _load_folder(data_dir, split, image_size, channels):
  from cl_jax.data import own_data  # pylint: disable=g-import-not-at-top
  return own_data.load_folder(data_dir, split, image_size, channels)


def _load_npz(data_dir, split, image_size, channels):
  from cl_jax.data import own_data  # pylint: disable=g-import-not-at-top
  return own_data.load_npz(data_dir, split, image_size, channels)


# The sources held in memory and decoded once per process: name → loader(data_dir, split,
# image_size, channels) → (Split with the stored labels, class names of `label` or None).
# Any other data.dataset is a tfds dataset.
LOCAL = {
    EMBEDDED: lambda d, split, size, c: (load_digits(split, size), None),
    PHOTOS: lambda d, split, size, c: (load_photos(split, size), None),
    IDX: lambda d, split, size, c: (load_idx(d, split, size), None),
    FOLDER: _load_folder,
    NPZ: _load_npz,
    TRIFEATURE: lambda d, split, size, c: (load_trifeature(split, size), None),
}


@functools.lru_cache(maxsize=8)
def _load_local(dataset: str, split: str, image_size: int, data_dir, channels: int):
  """(Split, label names) of a `LOCAL` source, decoded once per process: a sweep's runs share one
  copy (Split arrays are never written). tfds splits are not cached (tfds may be mocked in
  tests)."""
  loaded, names = LOCAL[dataset](data_dir, split, image_size, channels)
  for array in (loaded.images, *loaded.labels.values()):
    array.setflags(write=False)
  return loaded, names


def load(data_config, split: str):
  """The `split` ('train' or 'test') of `data_config.dataset`: a `Split` in memory at
  `data_config.image_size` with `data.channels` channels (0: as stored), or with
  `data.streaming` a `StreamingSplit`; labelled by its `label_plan`."""
  if data_config.get("streaming"):
    return load_streaming(data_config, split)
  channels = data_config.get("channels") or 0
  if data_config.dataset in LOCAL:
    loaded, names = _load_local(data_config.dataset, split, data_config.image_size,
                                data_config.data_dir, channels)
    names_of = lambda: names or [str(i) for i in range(loaded.num_classes["label"])]
  else:
    loaded = load_tfds(data_config.dataset, split, data_config.image_size, data_config.data_dir)
    names_of = lambda: label_names(data_config.dataset, data_config.data_dir)
  if channels and loaded.images.shape[-1] != channels:
    from cl_jax.data import own_data  # pylint: disable=g-import-not-at-top
    loaded = Split(own_data.to_channels(loaded.images, channels), loaded.labels,
                   loaded.num_classes)
  return apply_label_plan(loaded, label_plan(data_config, loaded.num_classes, names_of))
