"""SimCLR augmentations as stateless tf ops (docs/method.md §3). Inputs and outputs are float in [0, 1].

All randomness comes from an explicit seed (a [2] int tensor), so a view is a pure function of
(image, seed): the pipeline is deterministic and resumable.
"""
import ml_collections
import tensorflow as tf


def _seeds(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


ASPECT_RANGE = (3 / 4, 4 / 3)


def crop_window(shape, seed, area_range):
  """(begin [3], size [3]) of a random box of relative area in `area_range` and aspect ratio in
  3/4..4/3 inside an image of `shape` [H, W, C] (the SimCLR/Inception crop)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ASPECT_RANGE, area_range=area_range, max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def random_resized_crop(image, seed, area_range):
  """Crop a random `crop_window`, then resize back to the input size (bicubic, as SimCLR)."""
  shape = tf.shape(image)
  begin, size = crop_window(shape, seed, area_range)
  crop = tf.slice(image, begin, size)
  out = tf.clip_by_value(tf.image.resize(crop, shape[:2], method="bicubic"), 0.0, 1.0)
  out.set_shape(image.shape)  # keep the static shape for the ops that follow
  return out


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


def color_jitter(image, seed, strength):
  """Brightness, contrast, saturation (0.8·s) and hue (0.2·s) in a random order, clipping to
  [0, 1] after each (SimCLR v1 `color_jitter_rand`)."""
  s_order, s_b, s_c, s_s, s_h = _seeds(seed, 5)
  b, c, sat, h = 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength
  ops = [
      lambda x: tf.image.stateless_random_brightness(x, b, s_b),
      lambda x: tf.image.stateless_random_contrast(x, 1 - c, 1 + c, s_c),
      lambda x: tf.image.stateless_random_saturation(x, 1 - sat, 1 + sat, s_s),
      lambda x: tf.image.stateless_random_hue(x, h, s_h),
  ]
  order = tf.argsort(tf.random.stateless_uniform([4], s_order))
  for i in range(4):
    image = tf.switch_case(order[i], [lambda op=op: op(image) for op in ops])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def gaussian_blur(image, seed, sigma_range=(0.1, 2.0)):
  """Separable Gaussian blur, kernel side ≈ image side / 10, σ ~ U(0.1, 2)."""
  side = image.shape[0]
  radius = max(side // 20, 1)
  sigma = tf.random.stateless_uniform([], seed, *sigma_range)
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
  kernel /= tf.reduce_sum(kernel)
  channels = image.shape[-1]
  kh = tf.tile(kernel[:, None, None, None], [1, 1, channels, 1])
  kw = tf.tile(kernel[None, :, None, None], [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(image[None], kh, [1, 1, 1, 1], "SAME")
  out = tf.nn.depthwise_conv2d(out, kw, [1, 1, 1, 1], "SAME")
  return out[0]


def _maybe(apply_prob, seed, fn, image):
  if apply_prob <= 0:
    return image
  return tf.cond(tf.random.stateless_uniform([], seed) < apply_prob, lambda: fn(image),
                 lambda: image)


def crop_seed(seed):
  """The seed `augment` crops with (for a crop done earlier, at decode time)."""
  return _seeds(seed, 7)[0]


def augment(image: tf.Tensor, seed: tf.Tensor, config: ml_collections.ConfigDict, *,
            cropped: bool = False) -> tf.Tensor:
  """One SimCLR view of a float [H, W, C] image in [0, 1].

  Config (`data.`): crop_area_min (random resized crop area (min, 1)), flip (horizontal, p=0.5),
  color_jitter (strength s; applied with p=0.8, RGB only), grayscale_prob (RGB only), blur_prob.
  cropped=True: the image is already the random resized crop of `crop_seed(seed)` (streaming
  decodes the crop directly from the JPEG), so only the other augmentations apply.
  """
  s_crop, s_flip, s_jit, s_jit_p, s_gray, s_blur, s_blur_p = _seeds(seed, 7)
  if not cropped:
    image = random_resized_crop(image, s_crop, (config.crop_area_min, 1.0))
  if config.flip:
    image = tf.image.stateless_random_flip_left_right(image, s_flip)
  if image.shape[-1] == 3:
    if config.color_jitter > 0:
      image = _maybe(0.8, s_jit_p, lambda x: color_jitter(x, s_jit, config.color_jitter), image)
    image = _maybe(config.grayscale_prob, s_gray,
                   lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), image)
  image = _maybe(config.blur_prob, s_blur_p, lambda x: gaussian_blur(x, s_blur), image)
  return image
