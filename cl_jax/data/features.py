"""Competing features that both views share (docs/method.md §2).

Random bits (Chen et al. 2021, §2.1): every image gets an integer b ∈ [0, 2^k) that is FIXED per
image. Bit i = (b >> i) & 1 (least-significant first) becomes a constant H×W plane; the k planes
are concatenated after the image channels AFTER augmentation (on the device:
`views.append_bit_planes`), so both views carry identical bits that augmentation never touches,
and evaluation images carry them too. The input then has C + k channels. We draw b from a seeded generator indexed by the image's position in its split (the
colab hashes the image bytes; docs/method.md §2.1 allows any stable per-image hash).
"""
import collections
import dataclasses
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

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
# Scenes: images composed per read from digits and backgrounds (docs/method.md §2.2–2.5), on the
# device, before augmentation (docs/design.md "Data flow"). A `Scene` composes ONE example; its
# arrays (digit pools, backgrounds) live on every device. Whatever it derives from `read_key` or
# `index` is shared by both views (the competing feature); only `view_key` may differ between
# views, and labels derive from `read_key` and `index` only. Evaluation composes each image with
# keys fixed per image, so every test image is composed the same way in every run with that seed.

GRID_OFFSETS = (0.15, 0.45, 0.75)  # top-left corners of the 3×3 digit grid (fraction of side)
_BACKGROUND_HASH = 0xBAC


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
  """compose(arrays, image, index, read_key, view_key) → (image [S, S, C] float in [0, 1],
  {label: int32 scalar}): a pure JAX function of one example. `arrays`: the host arrays it reads,
  held once on every device; `image`: the example's own image [S, S, C] when `uses_image`, else
  None (the scene reads the example's digit from `arrays` by `index`). `num_classes`: the labels
  it adds."""
  compose: Callable
  arrays: Mapping[str, np.ndarray]
  num_classes: Mapping[str, int]
  uses_image: bool = False


def compose_batch(scene: Scene, arrays, images, index, read_keys, view_keys):
  """`scene.compose` of a batch: images [B, S, S, C] or None, index [B], keys [B]."""
  return jax.vmap(scene.compose, in_axes=(None, 0, 0, 0, 0))(arrays, images, index, read_keys,
                                                             view_keys)


def resized(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
  """uint8 images [N, h, w, C] → float32 [N, size, size, C] in [0, 1]; bilinear with
  antialiasing when the size changes (done once, on the host, in chunks)."""
  if images.shape[1] == size:
    return images.astype(np.float32) / 255.0
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return np.concatenate([np.clip(tf.image.resize(
      images[i:i + chunk].astype(np.float32) / 255.0, (size, size), antialias=True).numpy(), 0, 1)
                         for i in range(0, len(images), chunk)])


def place(canvas: jax.Array, patch: jax.Array, y, x) -> jax.Array:
  """Pixel-wise max of `canvas` [H, W, C] and `patch` [h, w, 1 or C] with its top-left corner at
  (y, x) (ints, may be traced; the patch must fit)."""
  patch = jnp.broadcast_to(patch, (*patch.shape[:2], canvas.shape[-1]))
  region = jax.lax.dynamic_slice(canvas, (y, x, 0), patch.shape)
  return jax.lax.dynamic_update_slice(canvas, jnp.maximum(region, patch), (y, x, 0))


def digit_side(image_size: int, digit_fraction: float) -> int:
  """Side in px of the digits on an `image_size` image: round(digit_fraction · image_size)."""
  return int(round(digit_fraction * image_size))


def digits_on_images(digit_pool: np.ndarray, digit_labels: np.ndarray, image_size: int,
                     digit_fraction: float) -> Scene:
  """Channel addition (Chen et al. 2021; digits_on_tf_flowers colab): each read of a background
  picks one digit of the pool (uniformly, from `read_key`), replicates it on the 3×3 grid with
  top-left corners at 0.15/0.45/0.75 of the side and blends it by pixel-wise max. The digit side
  is `digit_fraction` of the image side (the colab: 28-px digits on 224-px images, 1/8).
  Label `digit`: the drawn digit's class."""
  side = digit_side(image_size, digit_fraction)
  corners = [min(int(round(o * image_size)), image_size - side) for o in GRID_OFFSETS]

  def compose(arrays, image, index, read_key, view_key):
    del index, view_key
    j = jax.random.randint(read_key, (), 0, arrays["digits"].shape[0])
    for y in corners:
      for x in corners:
        image = place(image, arrays["digits"][j], y, x)
    return image, {"digit": arrays["labels"][j]}
  arrays = {"digits": resized(digit_pool, side), "labels": digit_labels.astype(np.int32)}
  return Scene(compose, arrays, {"digit": 10}, uses_image=True)


def multidigits(images: np.ndarray, labels: np.ndarray, image_size: int, digit_size: int,
                num_digits: int, placement: str) -> Scene:
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

  def compose(arrays, image, index, read_key, view_key):
    del image, view_key
    digits = arrays["digits"]
    k_cells, k_jitter, k_others = jax.random.split(read_key, 3)
    cells = jax.random.permutation(k_cells, per_side * per_side)[:num_digits]
    jitter = jax.random.randint(k_jitter, (num_digits, 2), 0, cell - digit_size + 1)
    which = jnp.concatenate([jnp.reshape(index, (1,)), jax.random.randint(
        k_others, (num_digits - 1,), 0, digits.shape[0])])
    canvas = jnp.zeros((image_size, image_size, digits.shape[-1]))
    for k in range(num_digits):
      canvas = place(canvas, digits[which[k]], cells[k] // per_side * cell + jitter[k, 0],
                     cells[k] % per_side * cell + jitter[k, 1])
    return canvas, {f"digit_{k}": arrays["labels"][which[k]] for k in range(1, num_digits)}
  arrays = {"digits": resized(images, digit_size), "labels": labels.astype(np.int32)}
  return Scene(compose, arrays, {f"digit_{k}": 10 for k in range(1, num_digits)})


def digit_sizes(images: np.ndarray, labels: np.ndarray, image_size: int, digit_size: int,
                other_digit_size: int) -> Scene:
  """Two digits on one canvas (Chen et al. 2021): the indexed digit at `digit_size` (label
  `label`) and a random other digit at `other_digit_size` (label `other_digit`). Each gets one
  half of the canvas (which half is random), at a random position inside it: no overlap."""
  half = image_size // 2
  if max(digit_size, other_digit_size) > half:
    raise ValueError(f"Digits of {digit_size} and {other_digit_size} px do not fit side by side "
                     f"on a {image_size} px canvas (at most {half} px each).")

  def compose(arrays, image, index, read_key, view_key):
    del image, view_key
    k_other, k_place = jax.random.split(read_key)
    other = jax.random.randint(k_other, (), 0, arrays["labels"].shape[0])
    u = jax.random.uniform(k_place, (5,))
    first_left = u[0] < 0.5
    canvas = jnp.zeros((image_size, image_size, arrays[f"size_{digit_size}"].shape[-1]))
    for j, size, left, uy, ux in ((index, digit_size, first_left, u[1], u[2]),
                                  (other, other_digit_size, ~first_left, u[3], u[4])):
      y = (uy * (image_size - size + 1)).astype(jnp.int32)
      x = (ux * (half - size + 1)).astype(jnp.int32) + jnp.where(left, 0, half)
      canvas = place(canvas, arrays[f"size_{size}"][j], y, x)
    return canvas, {"other_digit": arrays["labels"][other]}
  arrays = {f"size_{s}": resized(images, s) for s in {digit_size, other_digit_size}}
  return Scene(compose, {**arrays, "labels": labels.astype(np.int32)}, {"other_digit": 10})


def backgrounds(backgrounds_pool: np.ndarray, images: np.ndarray, image_size: int,
                digit_size: int, shared: bool) -> Scene:
  """Digits on class-irrelevant backgrounds (Xue et al. 2023; construction ours): the indexed
  digit (side `digit_size`, at a random offset of the read) blended by max onto one of the
  pool's backgrounds. shared=True: the background is fixed per image (a hash of its index) and
  both views show it — an easy feature shared by the views; label `background`. shared=False:
  every view draws its own background (augmentation that changes it)."""
  num_backgrounds = len(backgrounds_pool)

  def compose(arrays, image, index, read_key, view_key):
    del image
    key = jax.random.fold_in(jax.random.PRNGKey(_BACKGROUND_HASH), index) if shared else view_key
    which = jax.random.randint(key, (), 0, num_backgrounds)
    y, x = jax.random.randint(read_key, (2,), 0, image_size - digit_size + 1)
    canvas = place(arrays["backgrounds"][which], arrays["digits"][index], y, x)
    return canvas, ({"background": which} if shared else {})
  arrays = {"backgrounds": resized(backgrounds_pool, image_size),
            "digits": resized(images, digit_size)}
  return Scene(compose, arrays, {"background": num_backgrounds} if shared else {})


# ------------------------------------------------------------------------------------------------
# The scene registry: data.scene → one `SceneType` entry.

@dataclasses.dataclass(frozen=True)
class SceneType:
  """A scene as the rest of cl_jax sees it. `build(data_config, split, train)` → its `Scene`
  (`split`: the data read — the backgrounds for digits_on_images, the digits otherwise; `train`
  False for evaluation); `fields`: the data fields it reads (checked before anything loads);
  `config_file`: the config file that defines them; `check_sizes(data_config)`: the rules
  relating those fields to data.image_size (raise `spec.ConfigError`); `streams`: whether it can
  compose a streamed split's images (it reads nothing else of the split)."""
  build: Callable
  fields: Mapping[str, spec.Field]
  config_file: Optional[str] = None
  check_sizes: Callable = lambda data: None
  streams: bool = False


def _check_digits_on_images(data):
  size = data.image_size
  if size < 8:
    raise spec.ConfigError(f"data.image_size={size}: digits on images need at least 8 px.")
  side = digit_side(size, data.digit_fraction)
  if not 0 < data.digit_fraction <= 0.25 or side < 2:
    raise spec.ConfigError(
        f"data.digit_fraction={data.digit_fraction} must be in (0, 0.25] (the 3×3 grid of copies "
        f"at 0.15/0.45/0.75 of the side fits up to 1/4) and give digits of at least 2 px on "
        f"data.image_size={size} (got {side} px).")


def _check_multidigits(data):
  cell = data.digit_size if data.placement == "grid" else (3 * data.digit_size) // 2
  fits = (data.image_size // cell) ** 2
  for field in ("num_digits", "eval_num_digits"):
    if not 1 <= data[field] <= fits:
      raise spec.ConfigError(f"data.{field}={data[field]} must be in [1, {fits}]: that many "
                             f"{data.digit_size} px digits fit on a {data.image_size} px canvas "
                             f"with placement '{data.placement}'.")


def _check_digit_sizes(data):
  for field in ("digit_size", "other_digit_size"):
    if not 1 <= data[field] <= data.image_size // 2:
      raise spec.ConfigError(f"data.{field}={data[field]} must be in [1, {data.image_size // 2}] "
                             f"(two digits side by side on a {data.image_size} px canvas).")


def _check_backgrounds(data):
  if not 1 <= data.digit_size <= data.image_size:
    raise spec.ConfigError(f"data.digit_size={data.digit_size} must be in [1, "
                           f"{data.image_size}].")


def _build_digits_on_images(data_config, split, train):
  del split, train  # the split's images are the backgrounds, read per example
  import ml_collections  # pylint: disable=g-import-not-at-top
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  digits = sources.load(ml_collections.ConfigDict(dict(
      dataset=data_config.digit_dataset,
      image_size=digit_side(data_config.image_size, data_config.digit_fraction),
      data_dir=data_config.data_dir, coarse_labels=False)), "train")
  u = data_config.num_unique_digits
  if u > len(digits):
    raise sources.DataError(f"data.num_unique_digits={u} exceeds the {len(digits)} training "
                            f"digits of '{data_config.digit_dataset}'.")
  return digits_on_images(digits.images[:u], digits.labels["label"][:u], data_config.image_size,
                          data_config.digit_fraction)


def _build_backgrounds(data_config, split, train):
  del train
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  photos = sources.load_photos("train", data_config.image_size)
  return backgrounds(photos.images[:data_config.num_backgrounds], split.images,
                     data_config.image_size, data_config.digit_size,
                     data_config.shared_background)


SCENES = {
    "none": SceneType(build=lambda data_config, split, train: None, fields={}, streams=True),
    "digits_on_images": SceneType(
        build=_build_digits_on_images,
        fields={"digit_dataset": spec.Field(), "num_unique_digits": spec.positive(),
                "digit_fraction": spec.Field()},
        config_file="digits_on_images.py", check_sizes=_check_digits_on_images, streams=True),
    "multidigits": SceneType(
        build=lambda data_config, split, train: multidigits(
            split.images, split.labels["label"], data_config.image_size, data_config.digit_size,
            data_config.num_digits if train else data_config.eval_num_digits,
            data_config.placement),
        fields={"digit_size": spec.positive(), "num_digits": spec.Field(),
                "eval_num_digits": spec.Field(), "placement": spec.one_of("grid", "random")},
        config_file="multidigit.py", check_sizes=_check_multidigits),
    "digit_sizes": SceneType(
        build=lambda data_config, split, train: digit_sizes(
            split.images, split.labels["label"], data_config.image_size, data_config.digit_size,
            data_config.other_digit_size),
        fields={"digit_size": spec.Field(), "other_digit_size": spec.Field()},
        config_file="digit_sizes.py", check_sizes=_check_digit_sizes),
    "backgrounds": SceneType(
        build=_build_backgrounds,
        fields={"digit_size": spec.Field(), "num_backgrounds": spec.positive(),
                "shared_background": spec.Field()},
        config_file="backgrounds.py", check_sizes=_check_backgrounds),
}


def scene_fields() -> dict:
  """data.scene → the data fields it reads (for `spec.check_choice`)."""
  return {name: scene.fields for name, scene in SCENES.items()}


def scene_config_files() -> dict:
  """data.scene → the config file that defines its fields."""
  return {name: scene.config_file for name, scene in SCENES.items() if scene.config_file}


_RECENT_SCENES = collections.OrderedDict()  # scene_key → scene


def scene_key(data_config, split, train: bool) -> str:
  """What determines a scene: the data config and the split's content (`fingerprint`), not the
  split object — a split loaded again (each run of a sweep over a tfds or folder dataset) gets
  the same scene, and the jitted programs kept under this key (`jit_cache`) serve it."""
  return f"{split.fingerprint}/{train}/{data_config.to_json()}"


def make_scene(data_config, split, train: bool) -> Optional[Scene]:
  """The `Scene` of `data.scene` (None for 'none'); `split` is the data being read (its images are
  the backgrounds for digits_on_images, the digits otherwise). The last few are kept
  (`scene_key`): training, the label classes and every evaluation of a run ask for the same
  scenes, and building one loads and resizes its digits."""
  if data_config.get("scene", "none") == "none":
    return None
  key = scene_key(data_config, split, train)
  if key not in _RECENT_SCENES:
    _RECENT_SCENES[key] = SCENES[data_config.scene].build(data_config, split, train)
    while len(_RECENT_SCENES) > 4:
      _RECENT_SCENES.popitem(last=False)
  _RECENT_SCENES.move_to_end(key)
  return _RECENT_SCENES[key]
