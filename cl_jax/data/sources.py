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
from typing import Mapping, Optional, Sequence

import numpy as np

from cl_jax import spec

EMBEDDED = "digits"
IDX = "mnist_idx"  # MNIST-format IDX files (train/t10k-images-idx3-ubyte, ...) in data.data_dir
PHOTOS = "photos"  # embedded backgrounds: crops of scikit-learn's two sample photographs
# The embedded default's fixed, stratified split (of 1,797 images: 1,347 train / 450 test).
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


class DataError(spec.UserError, ValueError):
  """A dataset that cannot be loaded, with a message that says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray                 # uint8 [N, S, S, C]
  labels: Mapping[str, np.ndarray]   # name → int32 [N]
  num_classes: Mapping[str, int]     # name → number of classes

  def __len__(self) -> int:
    return self.images.shape[0]


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

  def __len__(self) -> int:
    return len(self.source) if self.indices is None else len(self.indices)

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


def _resize(images: np.ndarray, size: int) -> np.ndarray:
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
  return Split(images=_resize(images[idx], image_size), labels={"label": labels[idx]},
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
  return Split(images=_resize(images[..., None], image_size),
               labels={"label": labels.astype(np.int32)}, num_classes={"label": 10})


def not_prepared_message(name: str, data_dir) -> str:
  return (f"tfds dataset '{name}' is not prepared in data_dir={data_dir or '~/tensorflow_datasets'}"
          " and this machine may not be able to download it. Prepare it where there is network "
          f"access with `tfds build {name} --data_dir=DIR` and pass "
          "--config.data.data_dir=DIR, or use the embedded default that needs no download: "
          f"--config.data.dataset={EMBEDDED}.")


def tfds_dataset(name: str, split: str, data_dir):
  """(builder, tf.data.Dataset of `split`) for tfds `name`; a `DataError` naming the fix if the
  dataset is unknown or not prepared. `split` 'test' falls back to 'validation' (imagenet2012)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"data.dataset='{name}' is neither '{EMBEDDED}' (embedded) nor a known "
                    f"tfds dataset (e.g. mnist, cifar10, cifar100, imagenet2012).") from e
  try:
    if split == "test" and "test" not in builder.info.splits:
      split = "validation"
    return builder, builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:  # tfds: "could not find data in ..."
    raise DataError(not_prepared_message(name, data_dir)) from e


def load_tfds(name: str, split: str, image_size: int, data_dir=None) -> Split:
  """A whole tfds split in memory. Labels: every ClassLabel feature (e.g. cifar100's `label`
  (100 fine classes) and `coarse_label` (20 superclasses))."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder, ds = tfds_dataset(name, split, data_dir)
  label_names = {k: f.num_classes for k, f in builder.info.features.items()
                 if isinstance(f, tfds.features.ClassLabel)}
  if "image" not in builder.info.features or not label_names:
    raise DataError(f"tfds dataset '{name}' has no 'image' feature with class labels.")

  def prepare(ex):
    image = ex["image"]
    if image.shape[:2] != (image_size, image_size):
      image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size),
                              antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return {"image": image, **{k: tf.cast(ex[k], tf.int32) for k in label_names}}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  chunks = list(tfds.as_numpy(ds))
  return Split(images=np.concatenate([c["image"] for c in chunks]),
               labels={k: np.concatenate([c[k] for c in chunks]) for k in label_names},
               num_classes=label_names)


def load_streaming(data_config, split: str) -> StreamingSplit:
  """tfds split `split` of `data_config.dataset` as a `StreamingSplit` (random access; images stay
  encoded). `data.class_subset` keeps the listed classes, relabelled in the file's order: the
  labels of every record are read once to find them (the images are not decoded).
  `data.coarse_labels`: label = `coarse_label`, subclass = `label` (cifar100)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, data_dir = data_config.dataset, data_config.data_dir
  builder, _ = tfds_dataset(name, split, data_dir)
  if split == "test" and "test" not in builder.info.splits:
    split = "validation"
  features = builder.info.features
  classes = {k: f.num_classes for k, f in features.items()
             if isinstance(f, tfds.features.ClassLabel)}
  if "image" not in features or not isinstance(features["image"], tfds.features.Image) or (
      not classes):
    raise DataError(f"tfds dataset '{name}' has no 'image' feature with class labels.")
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
  fields = {k: k for k in classes}
  if data_config.coarse_labels:
    if "coarse_label" not in classes:
      raise DataError(f"data.coarse_labels=True, but '{name}' has no 'coarse_label' feature.")
    fields = {"label": "coarse_label", "subclass": "label"}
    classes = {"label": classes["coarse_label"], "subclass": classes["label"]}
  indices, relabel = None, {}
  if data_config.get("class_subset"):
    subset = read_class_subset(data_config.class_subset)
    names = list(features["label"].names)
    new_label = _subset_lookup(names, subset, data_config.class_subset)
    old = np.concatenate([np.array([r["label"] for r in source.__getitems__(range(
        i, min(i + 1024, len(source))))], np.int64) for i in range(0, len(source), 1024)])
    indices = np.flatnonzero(new_label[old] >= 0)
    relabel = {"label": new_label}
    classes = {**classes, "label": len(subset)}
  image = features["image"]
  return StreamingSplit(source=source, indices=indices, label_fields=fields, relabel=relabel,
                        num_classes=classes, image_format=image.encoding_format or "png",
                        channels=image.shape[-1] or 3)


DIGIT_DATASETS = (EMBEDDED, IDX, "mnist")


def read_class_subset(path) -> list[str]:
  """Class names, one per line ('#' starts a comment), from a file such as
  configs/imagenet100_classes.txt (any epath: local or a bucket)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  lines = epath.Path(path).read_text().splitlines()
  return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def label_names(dataset: str, data_dir) -> list[str]:
  """The names of the `label` classes: tfds's ClassLabel names (WordNet IDs for imagenet2012);
  '0'..'9' for the digit sources; '0'..'7' for the embedded photos."""
  if dataset in (EMBEDDED, IDX):
    return [str(i) for i in range(10)]
  if dataset == PHOTOS:
    return [str(i) for i in range(8)]
  builder, _ = tfds_dataset(dataset, "train", data_dir)
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


def restrict_to_classes(split: Split, names: list[str], subset: list[str], path) -> Split:
  """The examples of `split` whose `label` is one of `subset`, relabelled 0..K−1 in the order of
  `subset` (the file's order), e.g. ImageNet-1k → ImageNet-100."""
  new_label = _subset_lookup(names, subset, path)
  keep = new_label[split.labels["label"]] >= 0
  labels = {k: v[keep] for k, v in split.labels.items()}
  labels["label"] = new_label[split.labels["label"][keep]]
  return Split(split.images[keep], labels, {**split.num_classes, "label": len(subset)})


def class_and_subclass(split: Split, dataset: str) -> Split:
  """Coarse `label` (the class) and fine `subclass` labels for class-collapse studies (Xue et al.
  2023; docs/method.md §2.6): digits → label = (digit ≥ 5), subclass = digit; datasets with a
  `coarse_label` (cifar100) → label = the 20 superclasses, subclass = the 100 classes."""
  if "coarse_label" in split.labels:
    return Split(split.images, {"label": split.labels["coarse_label"],
                                "subclass": split.labels["label"]},
                 {"label": split.num_classes["coarse_label"],
                  "subclass": split.num_classes["label"]})
  if dataset in DIGIT_DATASETS:
    digit = split.labels["label"]
    return Split(split.images, {"label": (digit >= 5).astype(np.int32), "subclass": digit},
                 {"label": 2, "subclass": 10})
  raise DataError(f"data.coarse_labels=True, but '{dataset}' has no coarse labels: use a digit "
                  f"dataset ({', '.join(DIGIT_DATASETS)}) or one with a 'coarse_label' "
                  "(cifar100).")


@functools.lru_cache(maxsize=8)
def _load_local(dataset: str, split: str, image_size: int, data_dir) -> Split:
  """The embedded and IDX sources, decoded once per process: a sweep's runs share one copy
  (Split arrays are never written). tfds splits are not cached (tfds may be mocked in tests)."""
  loaded = {EMBEDDED: lambda: load_digits(split, image_size),
            PHOTOS: lambda: load_photos(split, image_size),
            IDX: lambda: load_idx(data_dir, split, image_size)}[dataset]()
  for array in (loaded.images, *loaded.labels.values()):
    array.setflags(write=False)
  return loaded


def load(data_config, split: str):
  """The `split` ('train' or 'test') of `data_config.dataset`: a `Split` in memory at
  `data_config.image_size`, or with `data.streaming` a `StreamingSplit`."""
  if data_config.get("streaming"):
    return load_streaming(data_config, split)
  if data_config.dataset in (EMBEDDED, PHOTOS, IDX):
    loaded = _load_local(data_config.dataset, split, data_config.image_size,
                         data_config.data_dir)
  else:
    loaded = load_tfds(data_config.dataset, split, data_config.image_size, data_config.data_dir)
  if data_config.get("class_subset"):
    loaded = restrict_to_classes(loaded, label_names(data_config.dataset, data_config.data_dir),
                                 read_class_subset(data_config.class_subset),
                                 data_config.class_subset)
  if data_config.coarse_labels:
    return class_and_subclass(loaded, data_config.dataset)
  return loaded
