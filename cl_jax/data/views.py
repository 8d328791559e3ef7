"""The two SimCLR views, made on the device by jitted pure functions (docs/method.md §3,
docs/design.md "Data flow").

Every augmentation exists once, here; the host (tf.data) only reads, decodes and crops JPEGs at
decode time (`augment.decode_random_resized_crop`). Scenes (`features.Scene`) are composed on the
device too, before augmentation, with keys from `scene_keys`. Images are float in [0, 1],
[H, W, C]; a view is a pure function of (image, key), and the key of the example at global position
g = step·B + row is fold_in(view_key(seed), g), so batches depend on (seed, step) only — not on the
number of devices or processes — and a resumed run continues exactly.

Ops come from dm-pix where it has them (brightness, contrast, hue, grayscale, Gaussian blur;
saturation is dm-pix's in RGB form, `_saturate`); the crop window reproduces
`tf.image.sample_distorted_bounding_box` (the distribution the streaming path's JPEG crops use,
tests/test_views.py checks the two agree) and the resize is `jax.image.scale_and_translate` (Keys
cubic, as TF's bicubic).
"""
import dm_pix as pix
import jax
import jax.numpy as jnp

ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 100
_VIEW_SALT = 0x5EED
_SCENE_SALT = 0x5CE7E


def view_key(seed) -> jax.Array:
  """The key every training view of a run with `seed` derives from (seed may be traced)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), _VIEW_SALT)


def example_keys(key, step, batch_size: int) -> jax.Array:
  """[B, 2] keys of the two views of the examples at global positions step·B + row."""
  positions = step * batch_size + jnp.arange(batch_size)
  return jax.vmap(lambda g: jax.random.split(jax.random.fold_in(key, g)))(positions)


def scene_keys(key, step, batch_size: int) -> jax.Array:
  """[B, 3] keys (read, view 1, view 2) of the scenes of the examples at positions step·B + row:
  the read key is shared by both views, each view has its own."""
  positions = step * batch_size + jnp.arange(batch_size)
  return jax.vmap(lambda g: jax.random.split(
      jax.random.fold_in(jax.random.fold_in(key, g), _SCENE_SALT), 3))(positions)


def crop_window(key, height: int, width: int, area_range, aspect_range=ASPECT_RANGE):
  """(y, x, h, w) int32 of a random box, as `tf.image.sample_distorted_bounding_box` draws it
  without bounding boxes: aspect ratio r ~ U(aspect_range), height uniform over the integers whose
  box round(h·r) × h has a relative area in `area_range`, offsets uniform in [0, side − h); up to 100 attempts,
  else the whole image (the SimCLR/Inception crop)."""
  k_ratio, k_height, k_y, k_x = jax.random.split(key, 4)
  ratio = jax.random.uniform(k_ratio, (CROP_ATTEMPTS,), minval=aspect_range[0],
                             maxval=aspect_range[1])
  min_area, max_area = area_range[0] * height * width, area_range[1] * height * width
  h = jnp.round(jnp.sqrt(min_area / ratio))
  max_h = jnp.round(jnp.sqrt(max_area / ratio))
  max_h = jnp.where(jnp.round(max_h * ratio) > width,
                    jnp.floor((width + 0.5 - 1e-7) / ratio), max_h)
  max_h = jnp.where(jnp.round(max_h * ratio) > width, max_h - 1, max_h)
  max_h = jnp.minimum(max_h, height)
  h = jnp.minimum(h, max_h)
  h = h + jnp.floor(jax.random.uniform(k_height, (CROP_ATTEMPTS,)) * (max_h - h + 1))
  w = jnp.round(h * ratio)
  h = jnp.where(w * h < min_area, h + 1, h)
  w = jnp.round(h * ratio)
  h = jnp.where(w * h > max_area, h - 1, h)
  w = jnp.round(h * ratio)
  ok = ((w * h >= min_area) & (w * h <= max_area) & (w <= width) & (h <= height)
        & (w > 0) & (h > 0))
  first = jnp.argmax(ok)
  h = jnp.where(ok.any(), h[first], height).astype(jnp.int32)
  w = jnp.where(ok.any(), w[first], width).astype(jnp.int32)
  # Offsets as TF draws them: uniform over [0, side - h) — the last position is never drawn
  # unless the box spans the side.
  y = jnp.floor(jax.random.uniform(k_y) * (height - h)).astype(jnp.int32)
  x = jnp.floor(jax.random.uniform(k_x) * (width - w)).astype(jnp.int32)
  return y, x, h, w


def random_resized_crop(key, image, area_range):
  """A random `crop_window` of `image` resized back to its size (Keys cubic, clipped to [0, 1])."""
  height, width, _ = image.shape
  y, x, h, w = crop_window(key, height, width, area_range)
  scale = jnp.stack([height / h, width / w]).astype(jnp.float32)
  translation = -jnp.stack([y, x]).astype(jnp.float32) * scale
  out = jax.image.scale_and_translate(image, image.shape, (0, 1), scale, translation,
                                      method="cubic", antialias=False)
  return jnp.clip(out, 0.0, 1.0)


def color_jitter(key, image, strength):
  """Brightness (±0.8·s), contrast and saturation (factor in 1 ± 0.8·s) and hue (±0.2·s) in a
  random order, clipping to [0, 1] after each (SimCLR v1 `color_jitter_rand`).

  Under vmap the order is data, so every position would compute every op and select one. Only
  hue needs an HSV round trip; it is applied once, between the positions before it and those
  after it (at each, brightness, contrast or saturation is selected, or nothing). Saturation is
  `_saturate`, in RGB. Channels are sliced rather than reduced over (a reduction over a minor
  axis of 3 is slow on XLA:CPU)."""
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  b, c, s, h = 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength
  u = lambda k, lo, hi: jax.random.uniform(k, minval=lo, maxval=hi)
  brightness, contrast = u(k_b, -b, b), u(k_c, 1 - c, 1 + c)
  saturation, hue = u(k_s, 1 - s, 1 + s), u(k_h, -h, h)
  order = jax.random.permutation(k_order, 4)  # 0 brightness, 1 contrast, 2 saturation, 3 hue
  hue_at = jnp.argmax(order == 3)

  def brightness_contrast_or_saturation(image, op, active):
    op = jnp.where(active, op, -1)
    mean = image.mean(axis=(0, 1))  # pix.adjust_contrast's per-channel mean
    scale = jnp.where(op == 1, contrast, 1.0)
    shift = jnp.where(op == 0, brightness, jnp.where(op == 1, (1.0 - contrast) * mean, 0.0))
    out = jnp.where(op == 2, _saturate(image, saturation), scale * image + shift)
    return jnp.where(active, jnp.clip(out, 0.0, 1.0), image)

  for position in range(3):
    image = brightness_contrast_or_saturation(image, order[position], position < hue_at)
  image = jnp.clip(pix.adjust_hue(image, hue), 0.0, 1.0)
  for position in range(1, 4):
    image = brightness_contrast_or_saturation(image, order[position], position > hue_at)
  return image


def _saturate(image, factor):
  """`pix.adjust_saturation(image, factor)` without the HSV round trip. HSV → RGB gives each
  channel as c = V − V·S·k_c(H), so scaling S to S' = min(S·f, 1) with H and V kept moves it to
  c' = V − (V − c)·S'/S, where S'/S = min(f, V / (V − min)) (V = max over channels)."""
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  value = jnp.maximum(jnp.maximum(r, g), b)
  range_ = value - jnp.minimum(jnp.minimum(r, g), b)
  ratio = jnp.minimum(factor, value / jnp.where(range_ > 0, range_, 1.0))
  return value - (value - image) * ratio


def gaussian_blur(key, image, sigma_range=(0.1, 2.0)):
  """Separable Gaussian blur (zero padding), kernel side 2·max(side // 20, 1) + 1 ≈ side / 10,
  σ ~ U(0.1, 2)."""
  sigma = jax.random.uniform(key, minval=sigma_range[0], maxval=sigma_range[1])
  return pix.gaussian_blur(image, sigma, 2 * max(image.shape[0] // 20, 1) + 1)


def _maybe(key, prob: float, fn, image):
  if prob <= 0:
    return image
  return jnp.where(jax.random.uniform(key) < prob, fn(image), image)


def augment(key, image, data_config, *, cropped: bool = False):
  """One SimCLR view of a float [H, W, C] image in [0, 1].

  Config (`data.`): crop_area_min (random resized crop, area in (crop_area_min, 1)), flip
  (horizontal, p = ½), color_jitter (strength s, applied with p = 0.8, RGB only), grayscale_prob
  (RGB only), blur_prob. cropped=True: the image is already a random resized crop (streamed JPEGs
  are cropped while decoding), so only the other augmentations apply."""
  k_crop, k_flip, k_jit, k_jit_p, k_gray, k_blur, k_blur_p = jax.random.split(key, 7)
  if not cropped:
    image = random_resized_crop(k_crop, image, (data_config.crop_area_min, 1.0))
  if data_config.flip:
    image = _maybe(k_flip, 0.5, pix.flip_left_right, image)
  if image.shape[-1] == 3:
    if data_config.color_jitter > 0:
      image = _maybe(k_jit_p, 0.8, lambda x: color_jitter(k_jit, x, data_config.color_jitter),
                     image)
    image = _maybe(k_gray, data_config.grayscale_prob,
                   lambda x: pix.rgb_to_grayscale(x, keep_dims=True), image)
  return _maybe(k_blur_p, data_config.blur_prob, lambda x: gaussian_blur(k_blur, x), image)


def append_bit_planes(images, bit_integers, num_bits: int):
  """Random bits (Chen et al. 2021, docs/method.md §2.1): `num_bits` constant planes, plane i =
  (b >> i) & 1, concatenated after the channels of float images [..., H, W, C]; `bit_integers`
  has their leading shape [...]. Appended after augmentation, so both views carry the same bits."""
  if num_bits == 0:
    return images
  bits = (bit_integers[..., None] >> jnp.arange(num_bits)) & 1
  planes = jnp.broadcast_to(bits[..., None, None, :].astype(images.dtype),
                            (*images.shape[:-1], num_bits))
  return jnp.concatenate([images, planes], axis=-1)


def two_views(key, step, images1, images2, bit_integers, data_config, *, cropped: bool = False):
  """The global batch's (view1, view2), float32 [B, H, W, C + random_bits]: `augment` of
  images1/images2 ([B, H, W, C] in [0, 1]; the same images unless a scene composes each view) with
  the keys of positions step·B + row (`example_keys`), then the bit planes of `bit_integers` [B]."""
  keys = example_keys(key, step, images1.shape[0])
  views = []
  for i, images in enumerate((images1, images2)):
    augmented = jax.vmap(lambda k, x: augment(k, x, data_config, cropped=cropped))(keys[:, i],
                                                                                    images)
    views.append(append_bit_planes(augmented, bit_integers, data_config.random_bits))
  return tuple(views)
