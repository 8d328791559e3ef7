"""A researcher's own images as a dataset: a folder of image files, or arrays in a .npz file.

  --config.data.dataset=folder --config.data.data_dir=PATH
      PATH/train/<class>/*.png|jpg|jpeg  (labelled: `label` = the class folder, in sorted order)
      PATH/train/*.png|jpg|jpeg          (unlabelled)
      and the same under PATH/test/.
  --config.data.dataset=npz --config.data.data_dir=FILE.npz
      train_images, test_images: [N, H, W] or [N, H, W, C], uint8 or float in [0, 1];
      train_<name>, test_<name>: integer labels [N], any number (train_label, train_color, ...).

Both become an in-memory `sources.Split` like MNIST's: decoded once per process (a sweep's runs
share it), resized to `data.image_size` with the bilinear, antialiased filter of the other sources,
with `data.channels` channels (0: 1 when every image is grayscale, else 3; RGBA loses its alpha).
Paths go through etils.epath, so PATH may be a bucket (gs://...). Every problem is a
`sources.DataError` naming the file or field, raised before anything compiles.
"""
import concurrent.futures
import io
import os
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")


def _error(message: str):
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.DataError(message)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.resize(images, size)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [N, H, W, C] with C ∈ {1, 3, 4} → [N, H, W, channels]: grey is repeated to RGB, RGB
  becomes grey by ITU-R 601 luma (as PIL's convert("L")), an alpha channel is dropped."""
  if images.shape[-1] == 4:
    images = images[..., :3]
  if images.shape[-1] == channels:
    return images
  if channels == 3:
    return np.repeat(images, 3, axis=-1)
  luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def _image_files(folder) -> list:
  return sorted(p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))


def folder_layout(directory) -> dict:
  """{split: [(path, class name or None), ...]} of the folder dataset at `directory`, checked."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not directory:
    raise _error("data.dataset='folder' needs data.data_dir: a folder with train/ (and test/) "
                 "subfolders of images, or of one subfolder of images per class.")
  root = epath.Path(directory)
  if not root.is_dir():
    raise _error(f"data.data_dir={directory!r} does not exist or is not a folder: "
                 "data.dataset='folder' reads PATH/train/[<class>/]*.png|jpg|jpeg and PATH/test/.")
  layout = {}
  for split in SPLITS:
    folder = root / split
    if not folder.is_dir():
      raise _error(f"data.data_dir={directory!r} has no {split}/ folder: data.dataset='folder' "
                   f"needs {split}/ with the {split} images (in one subfolder per class when "
                   "labelled).")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    loose = _image_files(folder)
    if classes and loose:
      raise _error(f"{folder} holds both images ({loose[0].name}, ...) and class folders "
                   f"({classes[0].name}, ...): put every image in a class folder (labelled) or "
                   "none (unlabelled).")
    files = ([(p, c.name) for c in classes for p in _image_files(c)] if classes else
             [(p, None) for p in loose])
    if not files:
      raise _error(f"{folder} holds no .png, .jpg or .jpeg images"
                   f"{' in its class folders' if classes else ''}.")
    layout[split] = files
  labelled = {split: files[0][1] is not None for split, files in layout.items()}
  if len(set(labelled.values())) > 1:
    raise _error(f"data.data_dir={directory!r}: train/ is {'' if labelled['train'] else 'un'}"
                 f"labelled (class folders) but test/ is {'' if labelled['test'] else 'un'}"
                 "labelled; use the same layout for both.")
  return layout


def _decode(path, size: int):
  """One image file → (uint8 [size, size, C], C ∈ {1, 3, 4}); a DataError naming a bad file."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
      image.load()
      if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else
                              "L" if image.getbands() in (("L",), ("I",), ("1",)) else "RGB")
      if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
      array = np.asarray(image, np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise _error(f"{path} is not a readable image ({type(e).__name__}: {e}); remove it or "
                 "replace it with a PNG or JPEG file.") from None
  return array if array.ndim == 3 else array[..., None]


def load_folder(directory, split: str, image_size: int, channels: int):
  """`split` of the folder dataset at `directory` as a `sources.Split` (module docstring), and
  the class names of `label` (None when unlabelled). Decoded by a pool of threads (PIL releases
  the GIL while it decodes)."""
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  layout = folder_layout(directory)
  files = layout[split]
  with concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) * 4)) as pool:
    decoded = list(pool.map(lambda f: _decode(f[0], image_size), files))
  widths = {a.shape[-1] for a in decoded}
  channels = channels or (1 if widths == {1} else 3)
  images = np.stack([to_channels(a[None], channels)[0] for a in decoded])
  if files[0][1] is None:
    return sources.Split(images, {}, {}), None
  names = sorted({c for _, c in layout["train"]})
  unknown = sorted({c for _, c in files} - set(names))
  if unknown:
    raise _error(f"{directory}/{split} has class folders that train/ lacks: "
                 f"{', '.join(unknown[:5])}; every test class must be a training class.")
  label = np.array([names.index(c) for _, c in files], np.int32)
  return sources.Split(images, {"label": label}, {"label": len(names)}), names


def load_npz(path, split: str, image_size: int, channels: int):
  """`split` of the arrays in the .npz file at `path` as a `sources.Split` (module docstring);
  every integer array `<split>_<name>` is a label with max + 1 classes (over both splits)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top
  if not path or not epath.Path(path).is_file():
    raise _error(f"data.dataset='npz' needs data.data_dir to be a .npz file with train_images "
                 f"and test_images (and integer labels train_<name>, test_<name>); got "
                 f"data.data_dir={path!r}, which is not a file.")
  try:
    arrays = dict(np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False))
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise _error(f"{path} holds an object array: images of different sizes (or non-numeric "
                   "data) cannot be stacked; resize every image to one size before saving, "
                   "or use data.dataset='folder'.") from None
    raise _error(f"{path} is not a readable .npz file ({e}).") from None
  except (OSError, EOFError) as e:
    raise _error(f"{path} is not a readable .npz file ({type(e).__name__}: {e}).") from None
  for s in SPLITS:
    if f"{s}_images" not in arrays:
      raise _error(f"{path} has no '{s}_images' array (it has: {', '.join(sorted(arrays))}); "
                   "data.dataset='npz' needs train_images and test_images, [N, H, W] or "
                   "[N, H, W, C].")
  images = arrays[f"{split}_images"]
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise _error(f"{path}: {split}_images has shape {images.shape}; expected [N, H, W] or "
                 "[N, H, W, C] with C = 1, 3 or 4.")
  if np.issubdtype(images.dtype, np.floating):
    if images.size and (images.min() < 0 or images.max() > 1):
      raise _error(f"{path}: {split}_images is float with values in [{images.min():.3g}, "
                   f"{images.max():.3g}]; float images must be in [0, 1] (or save uint8).")
    images = np.round(images * 255).astype(np.uint8)
  elif images.dtype != np.uint8:
    raise _error(f"{path}: {split}_images has dtype {images.dtype}; use uint8 (0..255) or "
                 "float in [0, 1].")
  label_names = sorted({k.split("_", 1)[1] for k in arrays
                        if k.startswith(SPLITS) and not k.endswith("_images") and "_" in k})
  labels, num_classes = {}, {}
  for name in label_names:
    for s in SPLITS:
      key = f"{s}_{name}"
      if key not in arrays:
        raise _error(f"{path} has {SPLITS[1 - SPLITS.index(s)]}_{name} but no {key}: every "
                     "label needs an array for both splits.")
      values = arrays[key]
      if not np.issubdtype(values.dtype, np.integer) or values.ndim != 1:
        raise _error(f"{path}: {key} must be a 1-D integer array of class indices; it is "
                     f"{values.dtype} with shape {values.shape}.")
      if len(values) != len(arrays[f"{s}_images"]):
        raise _error(f"{path}: {key} has {len(values)} labels but {s}_images has "
                     f"{len(arrays[f'{s}_images'])} images.")
      if values.size and values.min() < 0:
        raise _error(f"{path}: {key} has negative class indices; use 0..K−1.")
    labels[name] = arrays[f"{split}_{name}"].astype(np.int32)
    num_classes[name] = int(max(arrays[f"{s}_{name}"].max(initial=-1) for s in SPLITS)) + 1
  images = to_channels(_resize(images, image_size), channels or (
      1 if images.shape[-1] == 1 else 3))
  return sources.Split(images, labels, num_classes), None


def label_names(num_classes: Optional[int]) -> list:
  """Class names of a label without names: '0'..'K−1'."""
  return [str(i) for i in range(num_classes or 0)]
