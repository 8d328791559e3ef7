"""Competing features that both views share (docs/method.md §2).

Random bits (Chen et al. 2021, §2.1): every image gets an integer b ∈ [0, 2^k) that is FIXED per
image. Bit i = (b >> i) & 1 (least-significant first) becomes a constant H×W plane; the k planes
are concatenated after the image channels AFTER augmentation (on the device:
`views.append_bit_planes`), so both views carry identical bits that augmentation never touches,
and evaluation images carry them too. The input then has C + k channels. We draw b from a seeded generator indexed by the image's position in its split (the
colab hashes the image bytes; docs/method.md §2.1 allows any stable per-image hash).
"""
import numpy as np
import tensorflow as tf

from cl_jax import spec

MAX_RANDOM_BITS = 30
_SPLIT_SALT = {"train": 0, "test": 1}


def random_bit_integers(num_images: int, num_bits: int, seed: int, split: str) -> np.ndarray:
  """b ∈ [0, 2^num_bits) for each image of `split` — a fixed function of (seed, split, index)."""
  rng = np.random.default_rng([seed, _SPLIT_SALT[split], 0xB175])
  return rng.integers(0, 2**num_bits, size=num_images, dtype=np.int64).astype(np.int32)


def bit_labels(bit_integers: np.ndarray, num_bits: int) -> np.ndarray:
  """[N] integers → [N, num_bits] 0/1 labels, bit i = (b >> i) & 1."""
  return (bit_integers[:, None] >> np.arange(num_bits)) & 1


# ------------------------------------------------------------------------------------------------
# Scenes: images composed per read from digits and backgrounds (docs/method.md §2.2–2.5). A scene is a
# function (image, index, read_seed, view_seed) → (image, {label: value}) applied to each view
# BEFORE augmentation. Whatever it derives from `read_seed` or `index` is shared by both views
# (the competing feature); only `view_seed` may differ between views. Evaluation calls it with
# seeds fixed per image, so every test image is composed the same way in every run.

GRID_OFFSETS = (0.15, 0.45, 0.75)  # top-left corners of the 3×3 digit grid (fraction of side)


def place(canvas: tf.Tensor, patch: tf.Tensor, y, x) -> tf.Tensor:
  """Pixel-wise max of `canvas` [H, W, C] and `patch` [h, w, 1 or C] placed at (y, x)."""
  height, width, channels = canvas.shape
  if patch.shape[-1] != channels:
    patch = tf.tile(patch, [1, 1, channels])
  return tf.maximum(canvas, tf.image.pad_to_bounding_box(patch, y, x, height, width))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  if image.shape[0] == size:
    return image
  return tf.clip_by_value(tf.image.resize(image, (size, size), antialias=True), 0.0, 1.0)


def _uniform_int(seed, maxval):
  return tf.random.stateless_uniform([], seed, 0, maxval, dtype=tf.int32)


def digit_side(image_size: int, digit_fraction: float) -> int:
  """Side in px of the digits on an `image_size` image: round(digit_fraction · image_size)."""
  return int(round(digit_fraction * image_size))


def digits_on_images(digit_pool: np.ndarray, digit_labels: np.ndarray, image_size: int,
                     digit_fraction: float):
  """Channel addition (Chen et al. 2021; digits_on_tf_flowers colab): each read of a background
  picks one digit of the pool (uniformly, from `read_seed`), replicates it on the 3×3 grid with
  top-left corners at 0.15/0.45/0.75 of the side and blends it by pixel-wise max. The digit side
  is `digit_fraction` of the image side (the colab: 28-px digits on 224-px images, 1/8).
  Label `digit`: the drawn digit's class."""
  side = digit_side(image_size, digit_fraction)
  pool = tf.constant(digit_pool.astype(np.float32) / 255.0)
  pool = tf.image.resize(pool, (side, side), antialias=True) if pool.shape[1] != side else pool
  pool_labels = tf.constant(digit_labels.astype(np.int32))
  corners = [int(round(o * image_size)) for o in GRID_OFFSETS]
  corners = [min(c, image_size - side) for c in corners]

  def scene(image, index, read_seed, view_seed):
    del index, view_seed
    j = _uniform_int(read_seed, pool.shape[0])
    digit = tf.clip_by_value(tf.gather(pool, j), 0.0, 1.0)
    for y in corners:
      for x in corners:
        image = place(image, digit, y, x)
    return image, {"digit": tf.gather(pool_labels, j)}
  return scene, {"digit": 10}


def _other(images, labels, read_seed, salt):
  """A random image (and its label) of the split, drawn from the read's seed."""
  seed = tf.random.experimental.stateless_fold_in(read_seed, salt)
  j = _uniform_int(seed, images.shape[0])
  return tf.cast(tf.gather(images, j), tf.float32) / 255.0, tf.gather(labels, j)


def multidigits(images: np.ndarray, labels: np.ndarray, image_size: int, digit_size: int,
                num_digits: int, placement: str):
  """MultiDigits (Chen et al. 2021; layout details ours): a black canvas of `image_size` with
  `num_digits` digits of side `digit_size` that never overlap. Digit 0 is the indexed image
  (its label stays the example's `label`); the others are random digits of the split.
  placement 'grid': distinct random cells of a grid of digit-sized cells; 'random': distinct
  random cells of a grid of 1.5×digit-sized cells, each digit jittered uniformly inside its cell.
  Labels `digit_k` (k ≥ 1) for the added digits."""
  cell = digit_size if placement == "grid" else (3 * digit_size) // 2
  per_side = image_size // cell
  if per_side * per_side < num_digits:
    raise ValueError(f"{num_digits} digits of {digit_size} px do not fit on a {image_size} px "
                     f"canvas with placement '{placement}'.")
  images_t, labels_t = tf.constant(images), tf.constant(labels.astype(np.int32))
  channels = images.shape[-1]

  def scene(image, index, read_seed, view_seed):
    del index, view_seed
    cells = tf.random.experimental.index_shuffle(
        tf.range(num_digits, dtype=tf.int64), tf.cast(read_seed, tf.int64),
        per_side * per_side - 1)
    jitter = tf.random.stateless_uniform([num_digits, 2], tf.random.experimental
                                         .stateless_fold_in(read_seed, 7), 0,
                                         cell - digit_size + 1, dtype=tf.int32)
    canvas = tf.zeros((image_size, image_size, channels))
    extra = {}
    for k in range(num_digits):
      digit = image
      if k > 0:
        digit, extra[f"digit_{k}"] = _other(images_t, labels_t, read_seed, k)
      y = tf.cast(cells[k] // per_side, tf.int32) * cell + jitter[k, 0]
      x = tf.cast(cells[k] % per_side, tf.int32) * cell + jitter[k, 1]
      canvas = place(canvas, resize(digit, digit_size), y, x)
    return canvas, extra
  return scene, {f"digit_{k}": 10 for k in range(1, num_digits)}


def digit_sizes(images: np.ndarray, labels: np.ndarray, image_size: int, digit_size: int,
                other_digit_size: int):
  """Two digits on one canvas (Chen et al. 2021): the indexed digit at `digit_size` (label
  `label`) and a random other digit at `other_digit_size` (label `other_digit`). Each gets one
  half of the canvas (which half is random), at a random position inside it: no overlap."""
  half = image_size // 2
  if max(digit_size, other_digit_size) > half:
    raise ValueError(f"Digits of {digit_size} and {other_digit_size} px do not fit side by side "
                     f"on a {image_size} px canvas (at most {half} px each).")
  images_t, labels_t = tf.constant(images), tf.constant(labels.astype(np.int32))
  channels = images.shape[-1]

  def scene(image, index, read_seed, view_seed):
    del index, view_seed
    other, other_label = _other(images_t, labels_t, read_seed, 1)
    u = tf.random.stateless_uniform([5], tf.random.experimental.stateless_fold_in(read_seed, 2))
    first_left = u[0] < 0.5
    canvas = tf.zeros((image_size, image_size, channels))
    for digit, size, left, uy, ux in ((image, digit_size, first_left, u[1], u[2]),
                                      (other, other_digit_size, ~first_left, u[3], u[4])):
      y = tf.cast(uy * (image_size - size + 1), tf.int32)
      x = tf.cast(ux * (half - size + 1), tf.int32) + tf.where(left, 0, half)
      canvas = place(canvas, resize(digit, size), y, x)
    return canvas, {"other_digit": other_label}
  return scene, {"other_digit": 10}


def backgrounds(backgrounds_pool: np.ndarray, image_size: int, digit_size: int, shared: bool):
  """Digits on class-irrelevant backgrounds (Xue et al. 2023; construction ours): the indexed
  digit (side `digit_size`, centred with a random offset of the read) blended by max onto one of
  the pool's backgrounds. shared=True: the background is fixed per image (a hash of its index) and
  both views show it — an easy feature shared by the views; label `background`. shared=False:
  every view draws its own background (augmentation that changes it)."""
  pool = tf.constant(backgrounds_pool.astype(np.float32) / 255.0)
  size = pool.shape[0]

  def scene(image, index, read_seed, view_seed):
    if shared:
      which = tf.random.experimental.index_shuffle(tf.cast(index, tf.int64), [0xBAC, 0],
                                                   2**31 - 2) % size
    else:
      which = tf.cast(_uniform_int(view_seed, size), tf.int64)
    canvas = tf.gather(pool, which)
    offset = tf.random.stateless_uniform([2], read_seed, 0, image_size - digit_size + 1,
                                         dtype=tf.int32)
    canvas = place(canvas, resize(image, digit_size), offset[0], offset[1])
    return canvas, ({"background": tf.cast(which, tf.int32)} if shared else {})
  return scene, ({"background": size} if shared else {})


# data.scene → the data fields it reads (checked before anything loads) and the config file that
# defines them. The size rules that depend on data.image_size are in validate.check_scene_sizes.
SCENE_FIELDS = {
    "none": {},
    "digits_on_images": {"digit_dataset": spec.Field(), "num_unique_digits": spec.positive(),
                         "digit_fraction": spec.Field()},
    "multidigits": {"digit_size": spec.positive(), "num_digits": spec.Field(),
                    "eval_num_digits": spec.Field(), "placement": spec.one_of("grid", "random")},
    "digit_sizes": {"digit_size": spec.Field(), "other_digit_size": spec.Field()},
    "backgrounds": {"digit_size": spec.Field(), "num_backgrounds": spec.positive(),
                    "shared_background": spec.Field()},
}
SCENE_CONFIGS = {"digits_on_images": "digits_on_images.py", "multidigits": "multidigit.py",
                 "digit_sizes": "digit_sizes.py", "backgrounds": "backgrounds.py"}


def make_scene(data_config, split, train: bool):
  """(scene function or None, {label: number of classes} it adds) for `data.scene`; `split` is the
  data being read (its images are the backgrounds for digits_on_images, the digits otherwise)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  name = data_config.get("scene", "none")
  if name == "none":
    return None, {}
  size = data_config.image_size
  if name == "digits_on_images":
    digits = sources.load(ml_collections.ConfigDict(dict(
        dataset=data_config.digit_dataset,
        image_size=digit_side(size, data_config.digit_fraction),
        data_dir=data_config.data_dir,
        coarse_labels=False)), "train")
    u = data_config.num_unique_digits
    if u > len(digits):
      raise sources.DataError(f"data.num_unique_digits={u} exceeds the {len(digits)} training "
                              f"digits of '{data_config.digit_dataset}'.")
    return digits_on_images(digits.images[:u], digits.labels["label"][:u], size,
                            data_config.digit_fraction)
  digit_labels = split.labels["label"]
  if name == "multidigits":
    n = data_config.num_digits if train else data_config.eval_num_digits
    return multidigits(split.images, digit_labels, size, data_config.digit_size, n,
                       data_config.placement)
  if name == "digit_sizes":
    return digit_sizes(split.images, digit_labels, size, data_config.digit_size,
                       data_config.other_digit_size)
  photos = sources.load_photos("train", size)
  return backgrounds(photos.images[:data_config.num_backgrounds], size, data_config.digit_size,
                     data_config.shared_background)
