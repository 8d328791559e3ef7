"""The device views (cl_jax/data/views.py) against TensorFlow's ops and the configured ranges."""
import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from cl_jax.data import augment, views

N = 2000


def tf_windows(height, width, area_range, n=N) -> np.ndarray:
  """[n, 4] (y, x, h, w) from TensorFlow's sampler — the streaming path's JPEG crops."""
  out = []
  for i in range(n):
    begin, size = augment.crop_window(tf.constant([height, width, 1]),
                                      tf.constant([7, i], tf.int64), area_range)
    out.append([begin[0], begin[1], size[0], size[1]])
  return np.asarray(out, np.float64)


def jax_windows(height, width, area_range, n=N) -> np.ndarray:
  sample = jax.jit(jax.vmap(lambda k: jnp.stack(views.crop_window(k, height, width, area_range))))
  return np.asarray(sample(jax.random.split(jax.random.PRNGKey(3), n)), np.float64)


@pytest.mark.parametrize("side, area_range", [(16, (0.5, 1.0)), (32, (0.08, 1.0))])
def test_crop_window_has_tensorflows_distribution_within_the_configured_ranges(side,
                                                                               area_range):
  ours, theirs = jax_windows(side, side, area_range), tf_windows(side, side, area_range)
  describe = {"area": lambda w: w[:, 2] * w[:, 3] / side**2, "aspect": lambda w: w[:, 3] / w[:, 2],
              "y": lambda w: w[:, 0], "x": lambda w: w[:, 1]}
  for name, f in describe.items():
    p = stats.ks_2samp(f(ours), f(theirs)).pvalue
    assert p > 1e-3, f"{name}: Kolmogorov–Smirnov p = {p:.2g} against tf's sampler"
  area, aspect = describe["area"](ours), describe["aspect"](ours)
  assert area.min() >= area_range[0] - 1e-6 and area.max() <= 1.0
  assert area.max() - area.min() > 0.5 * (1 - area_range[0])  # the range is really covered
  # Rounding the width to whole pixels widens the aspect range by at most half a pixel.
  tolerance = 0.5 / ours[:, 2]
  assert np.all(aspect >= 3 / 4 - tolerance) and np.all(aspect <= 4 / 3 + tolerance)
  assert np.all(ours[:, 0] + ours[:, 2] <= side) and np.all(ours[:, 1] + ours[:, 3] <= side)


def test_random_resized_crop_is_the_bicubic_resize_of_its_window():
  y, x = np.mgrid[:32, :32] / 5.0
  image = (0.5 + 0.4 * np.stack([np.sin(y), np.cos(x), np.sin(x + y)], -1)).astype(np.float32)
  for i in range(5):
    key = jax.random.PRNGKey(i)
    top, left, h, w = (int(v) for v in views.crop_window(key, 32, 32, (0.2, 1.0)))
    ours = np.asarray(views.random_resized_crop(key, jnp.asarray(image), (0.2, 1.0)))
    reference = tf.clip_by_value(tf.image.resize(image[top:top + h, left:left + w], (32, 32),
                                                 method="bicubic"), 0, 1).numpy()
    # TF's resize sees only the crop; ours also reads the pixels just outside it, so the two
    # differ only within two source pixels of the window's edge.
    border = int(np.ceil(2 * 32 / min(h, w))) + 1
    inner = (slice(border, 32 - border),) * 2
    np.testing.assert_allclose(ours[inner], reference[inner], atol=2e-4)


def data_config(**overrides):
  fields = dict(image_size=16, random_bits=0, crop_area_min=1.0, flip=False, color_jitter=0.0,
                grayscale_prob=0.0, blur_prob=0.0)
  return ml_collections.ConfigDict({**fields, **overrides})


def test_flips_at_rate_one_half_and_full_area_crop_is_the_identity():
  image = jnp.asarray(np.random.default_rng(0).random((16, 16, 1)), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), N)
  out = jax.jit(jax.vmap(lambda k: views.augment(k, image, data_config(flip=True))))(keys)
  flipped = np.all(np.isclose(out, image[:, ::-1]), axis=(1, 2, 3))
  kept = np.all(np.isclose(out, image), axis=(1, 2, 3))
  assert np.all(flipped ^ kept)
  assert stats.binomtest(int(flipped.sum()), N, 0.5).pvalue > 1e-3


def test_colour_ops_are_tensorflows():
  image = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
  pairs = [(pix.adjust_brightness(image, 0.2), tf.image.adjust_brightness(image, 0.2)),
           (pix.adjust_contrast(image, 1.3), tf.image.adjust_contrast(image, 1.3)),
           (pix.adjust_saturation(image, 0.6), tf.image.adjust_saturation(image, 0.6)),
           (pix.adjust_hue(image, 0.07), tf.image.adjust_hue(image, 0.07)),
           (pix.rgb_to_grayscale(image, keep_dims=True),
            tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3]))]
  for ours, theirs in pairs:
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_saturation_in_rgb_is_dm_pixs_hsv_round_trip():
  """`_saturate` equals pix.adjust_saturation (TensorFlow's op, checked above) on random pixels,
  black and grey ones (S = 0, where the ratio is 0/0) and where S·f passes 1 (clipped)."""
  rng = np.random.default_rng(7)
  image = rng.random((16, 16, 3)).astype(np.float32)
  image[0] = 0.0                 # black
  image[1] = image[1, :, :1]     # grey
  image[2, :, 0] = 0.0           # saturated (min 0): S = 1, any f > 1 clips
  for factor in (0.0, 0.2, 0.6, 1.0, 1.4, 1.8, 5.0):
    # Two formulas for one value, in [0, 1]: they differ by rounding (≤ 5e-7 measured), a wrong
    # formula by ~0.1.
    np.testing.assert_allclose(views._saturate(jnp.asarray(image), factor),
                               pix.adjust_saturation(image, factor), atol=1e-5)


def test_colour_jitter_is_the_four_dm_pix_ops_in_its_random_order():
  """The vmapped jitter (hue applied once between the positions before and after it) equals
  applying dm-pix's brightness,
  contrast, saturation and hue ops one by one in the permutation its key draws."""
  def one_by_one(key, image, strength):
    k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
    b, h = 0.8 * strength, 0.2 * strength
    u = lambda k, lo, hi: jax.random.uniform(k, minval=lo, maxval=hi)
    ops = [lambda x: pix.adjust_brightness(x, u(k_b, -b, b)),
           lambda x: pix.adjust_contrast(x, u(k_c, 1 - b, 1 + b)),
           lambda x: pix.adjust_saturation(x, u(k_s, 1 - b, 1 + b)),
           lambda x: pix.adjust_hue(x, u(k_h, -h, h))]
    for op in np.asarray(jax.random.permutation(k_order, 4)):
      image = jnp.clip(ops[int(op)](image), 0.0, 1.0)
    return image

  image = jnp.asarray(np.random.default_rng(5).random((12, 12, 3)), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(4), 40)
  ours = jax.jit(jax.vmap(lambda k: views.color_jitter(k, image, 0.8)))(keys)
  expected = np.stack([one_by_one(k, image, 0.8) for k in keys])
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  orders = {tuple(np.asarray(jax.random.permutation(jax.random.split(k, 5)[0], 4))) for k in keys}
  assert len(orders) > 10  # many orders exercised


def test_colour_jitter_stays_in_range_and_changes_the_views():
  image = jnp.asarray(np.random.default_rng(2).random((16, 16, 3)), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(1), 64)
  config = data_config(color_jitter=0.5, grayscale_prob=0.2)
  out = np.asarray(jax.vmap(lambda k: views.augment(k, image, config))(keys))
  assert out.min() >= 0 and out.max() <= 1
  changed = np.abs(out - np.asarray(image)).mean(axis=(1, 2, 3)) > 1e-3
  assert 0.7 < changed.mean() < 0.98  # jitter p = 0.8, grayscale p = 0.2: ≈ 84 % changed
  gray = np.all(np.isclose(out[..., 0], out[..., 1]) & np.isclose(out[..., 1], out[..., 2]),
                axis=(1, 2))
  assert 0.05 < gray.mean() < 0.45


def test_blur_is_the_separable_gaussian_with_sigma_in_range():
  image = np.random.default_rng(3).random((20, 20, 1)).astype(np.float32)
  key = jax.random.PRNGKey(5)
  sigma = float(jax.random.uniform(key, minval=0.1, maxval=2.0))
  radius = 1  # 20 px // 20
  t = np.arange(-radius, radius + 1)
  kernel = np.exp(-t**2 / (2 * sigma**2))
  kernel /= kernel.sum()
  padded = np.pad(image[..., 0], radius)
  rows = sum(kernel[i] * padded[i:i + 20, radius:radius + 20] for i in range(2 * radius + 1))
  padded = np.pad(rows, ((0, 0), (radius, radius)))
  reference = sum(kernel[i] * padded[:, i:i + 20] for i in range(2 * radius + 1))
  np.testing.assert_allclose(views.gaussian_blur(key, image)[..., 0], reference, atol=1e-5)


def test_bit_planes_are_the_integers_bits_after_the_channels():
  images = jnp.zeros((3, 4, 4, 2))
  out = np.asarray(views.append_bit_planes(images, jnp.array([0, 5, 6]), 3))
  assert out.shape == (3, 4, 4, 5)
  np.testing.assert_array_equal(out[:, 2, 1, 2:], [[0, 0, 0], [1, 0, 1], [0, 1, 1]])
  assert views.append_bit_planes(images, jnp.array([0, 5, 6]), 0) is images
