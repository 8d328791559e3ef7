"""The host's image ops (tf): decoding, and the random resized crop of streamed JPEGs, which must
happen while decoding (`tf.image.decode_and_crop_jpeg` decodes only the crop's blocks).

Every other augmentation — and the crop of in-memory images and scenes — is made on the device by
`cl_jax.data.views`, whose `crop_window` draws from the same distribution as `crop_window` here
(tests/test_views.py). All randomness comes from an explicit seed (a [2] int tensor).
"""
import tensorflow as tf

from cl_jax.data.views import ASPECT_RANGE


def crop_window(shape, seed, area_range):
  """(begin [3], size [3]) of a random box of relative area in `area_range` and aspect ratio in
  3/4..4/3 inside an image of `shape` [H, W, C] (the SimCLR/Inception crop)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ASPECT_RANGE, area_range=area_range, max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _decode(encoded, image_format: str, channels: int):
  return tf.io.decode_image(encoded, channels=channels, expand_animations=False) \
      if image_format != "jpeg" else tf.io.decode_jpeg(encoded, channels=channels)


def _resize_to(image_uint8, size: int, channels: int):
  out = tf.image.resize(tf.cast(image_uint8, tf.float32) / 255.0, (size, size), method="bicubic",
                        antialias=True)
  out = tf.clip_by_value(out, 0.0, 1.0)
  out.set_shape((size, size, channels))
  return out


def decode_random_resized_crop(encoded, seed, area_range, *, size: int, image_format: str,
                               channels: int):
  """A random resized crop of an ENCODED image at full resolution, resized to size×size, float in
  [0, 1]. JPEGs are decoded and cropped in one op (`tf.image.decode_and_crop_jpeg`: only the
  crop's blocks are decoded); other formats are decoded whole, then cropped."""
  if image_format == "jpeg":
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, crop_size = crop_window(shape, seed, area_range)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=channels)
  else:
    image = _decode(encoded, image_format, channels)
    begin, crop_size = crop_window(tf.shape(image), seed, area_range)
    crop = tf.slice(image, begin, crop_size)
  return _resize_to(crop, size, channels)


def decode_center(encoded, *, size: int, image_format: str, channels: int):
  """The central square (side = the shorter side) of an ENCODED image, resized to size×size,
  float in [0, 1] — the un-augmented view for evaluation (identical to resizing for square
  images)."""
  shape = tf.image.extract_jpeg_shape(encoded) if image_format == "jpeg" else None
  if shape is None:
    image = _decode(encoded, image_format, channels)
    shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  window = tf.stack([(shape[0] - side) // 2, (shape[1] - side) // 2, side, side])
  if image_format == "jpeg":
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=channels)
  else:
    crop = tf.slice(image, [window[0], window[1], 0], [side, side, -1])
  return _resize_to(crop, size, channels)
