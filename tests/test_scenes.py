"""Feature-control scenes (docs/method.md §2.2–2.5): placement rules, labels, determinism, sharing."""
import functools
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cl_jax.data import features, pipeline, sources
from tests import float_order

SEED_A, SEED_B = 12, 34


@functools.lru_cache(maxsize=None)
def _jitted(scene):
  return jax.jit(scene.compose)


def compose(scene, image, index, read_seed, view_seed):
  """(image as numpy, {label: int}) of one example composed with keys from the two seeds."""
  image = None if image is None else jnp.asarray(image, jnp.float32)
  out, labels = _jitted(scene)(scene.arrays, image, jnp.int32(index),
                               jax.random.PRNGKey(read_seed), jax.random.PRNGKey(view_seed))
  return np.asarray(out), {k: int(v) for k, v in labels.items()}


def patches(num=20, size=8):
  """Synthetic 'digits': image i is a constant patch of value 10·(i+1) (uint8); label i % 10."""
  images = np.stack([np.full((size, size, 1), 10 * (i + 1), np.uint8) for i in range(num)])
  return images, (np.arange(num) % 10).astype(np.int32)


def image_label(value):
  """The synthetic image index encoded by a pixel value in [0, 1]."""
  return int(round(value * 255 / 10)) - 1


def test_digits_on_images_draws_one_pool_digit_on_the_3x3_grid():
  pool, labels = patches(num=5)
  scene = features.digits_on_images(pool, labels, image_size=32, digit_fraction=0.25)
  assert scene.num_classes == {"digit": 10} and scene.uses_image
  background = np.zeros((32, 32, 3))
  image, out = compose(scene, background, 0, SEED_A, SEED_B)
  drawn = image_label(image[5, 5, 0])  # inside the top-left copy (corner 0.15·32 ≈ 5)
  assert out["digit"] == labels[drawn]
  for y in (5, 14, 24):  # corners at 0.15/0.45/0.75 of 32, digits of side 8
    for x in (5, 14, 24):
      np.testing.assert_allclose(image[y:y + 8, x:x + 8], (drawn + 1) * 10 / 255, atol=1e-6)
  assert np.count_nonzero(image[..., 0]) == 9 * 64
  # Same read seed → same digit, whatever the view seed; other read seeds draw other digits.
  again, _ = compose(scene, background, 0, SEED_A, 99)
  np.testing.assert_array_equal(again, image)
  drawn_digits = {compose(scene, background, 0, s, SEED_B)[1]["digit"] for s in range(40)}
  assert drawn_digits == set(labels[:5].tolist())


def test_digit_fraction_sets_the_digit_side_as_in_the_colab():
  """The colab's 28-px digits on 224-px images: an eighth of the side; the nine copies then cover
  9/64 ≈ 14% of the image (a quarter of the side: 9/16 ≈ 56%)."""
  pool, labels = patches(num=2, size=28)
  for size, fraction, side in ((224, 1 / 8, 28), (64, 1 / 8, 8), (64, 1 / 4, 16)):
    assert features.digit_side(size, fraction) == side
    scene = features.digits_on_images(pool, labels, image_size=size, digit_fraction=fraction)
    image = compose(scene, np.zeros((size, size, 3)), 0, SEED_A, SEED_B)[0]
    covered = np.count_nonzero(image[..., 0]) / size**2
    assert covered == pytest.approx(9 * fraction**2)
    corner = int(round(0.45 * size))  # the middle copy
    assert np.all(image[corner:corner + side, corner:corner + side, 0] > 0)


def test_digits_on_images_blends_by_pixelwise_max():
  pool, labels = patches(num=1)
  scene = features.digits_on_images(pool, labels, image_size=32, digit_fraction=0.25)
  image = compose(scene, np.full((32, 32, 3), 0.5), 0, SEED_A, SEED_B)[0]
  assert image.min() == pytest.approx(0.5)  # digit value 10/255 < 0.5 never darkens


@pytest.mark.parametrize("placement", ["grid", "random"])
def test_multidigits_places_distinct_non_overlapping_digits_with_their_labels(placement):
  images, labels = patches()
  scene = features.multidigits(images, labels, image_size=48, digit_size=8, num_digits=4,
                               placement=placement)
  assert scene.num_classes == {"digit_1": 10, "digit_2": 10, "digit_3": 10}
  for s in range(10):
    canvas, out = compose(scene, None, 3, s, SEED_B)
    canvas = canvas[..., 0]
    # Non-overlapping: exactly 4 full 8×8 patches of non-zero pixels (values never mix).
    assert np.count_nonzero(canvas) == 4 * 64
    found = []
    for v in set(np.unique(canvas)) - {0.0}:
      copies = np.count_nonzero(canvas == v) // 64
      found += [image_label(v)] * copies
      if placement == "grid" and copies == 1:  # cell-aligned
        ys, xs = np.nonzero(canvas == v)
        assert ys.min() % 8 == 0 and xs.min() % 8 == 0
    assert 3 in found  # the indexed digit is on the canvas
    assert sorted(labels[found].tolist()) == sorted(
        [labels[3]] + [int(out[f"digit_{k}"]) for k in (1, 2, 3)])


def test_multidigits_rejects_canvases_that_cannot_hold_the_digits():
  images, labels = patches()
  with pytest.raises(ValueError, match="do not fit"):
    features.multidigits(images, labels, 16, 8, num_digits=5, placement="grid")


@pytest.mark.parametrize("other_size", [4, 8, 16])
def test_digit_sizes_two_digits_in_different_halves(other_size):
  images, labels = patches(size=8)
  images[0] = 250  # a value no other image of the split has
  scene = features.digit_sizes(images, labels, image_size=32, digit_size=8,
                               other_digit_size=other_size)
  assert scene.num_classes == {"other_digit": 10}
  for s in range(8):
    canvas, out = compose(scene, None, 0, s, SEED_B)
    canvas = canvas[..., 0]
    first = np.isclose(canvas, 250 / 255, atol=1e-5)
    assert first.sum() == 64  # the indexed digit at its fixed size
    other = (canvas > 0) & ~first  # (the other digit is never image 0: value 250 vs ≤ 200)
    ys, xs = np.nonzero(other)
    assert ys.max() - ys.min() + 1 == other_size and xs.max() - xs.min() + 1 == other_size
    assert other.sum() == other_size**2  # no overlap
    halves = {int(x >= 16) for x in np.nonzero(first)[1]} | {int(x >= 16) for x in xs}
    assert halves == {0, 1} and len({int(x >= 16) for x in xs}) == 1
    assert labels[image_label(canvas[ys[0], xs[0]])] == out["other_digit"]


def test_backgrounds_shared_vs_replaced_across_views():
  rng = np.random.default_rng(0)
  pool = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  digits = np.zeros((40, 8, 8, 1), np.uint8)
  shared = features.backgrounds(pool, digits, 16, 8, shared=True)
  assert shared.num_classes == {"background": 6}
  v1, l1 = compose(shared, None, 7, SEED_A, SEED_A)
  v2, l2 = compose(shared, None, 7, SEED_A, SEED_B)
  np.testing.assert_array_equal(v1, v2)
  assert l1 == l2
  np.testing.assert_allclose(v1, pool[l1["background"]] / 255, atol=1e-6)
  # Fixed per image across reads, and different images get different backgrounds.
  assert compose(shared, None, 7, SEED_B, SEED_B)[1] == l1
  assert len({compose(shared, None, i, SEED_A, SEED_A)[1]["background"] for i in range(30)}) == 6
  replaced = features.backgrounds(pool, digits, 16, 8, shared=False)
  assert replaced.num_classes == {}
  views = {compose(replaced, None, 7, SEED_A, s)[0].tobytes() for s in range(20)}
  assert len(views) > 1  # every view draws its own background


def _config(**scene):
  return ml_collections.ConfigDict(dict(
      dataset="digits", data_dir=None, image_size=32, random_bits=2, coarse_labels=False,
      crop_area_min=0.8, flip=False, color_jitter=0.0, grayscale_prob=0.0, blur_prob=0.0,
      **scene))


def _train_batch(split, config, seed=0, devices=None, batch_size=16):
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  batches = pipeline.TrainBatches(split, config, seeds=[seed], batch_size=batch_size,
                                  start_step=0, num_steps=1, mesh=train.create_mesh(devices))
  return jax.device_get(jax.tree.map(lambda x: x[0], next(iter(batches))))


@pytest.mark.parametrize("scene", [
    dict(scene="multidigits", digit_size=8, num_digits=3, eval_num_digits=1, placement="grid"),
    dict(scene="digit_sizes", digit_size=8, other_digit_size=12),
    dict(scene="backgrounds", digit_size=12, num_backgrounds=8, shared_background=True),
])
def test_scenes_on_the_device_are_deterministic_labelled_and_device_count_free(scene):
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(**scene)
  split = sources.load_digits("train", 16)
  a, b = _train_batch(split, config), _train_batch(split, config)
  one_device = _train_batch(split, config, devices=jax.devices()[:1])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(a[k], one_device[k], rtol=0, atol=float_order.PIXELS)
  channels = 3 if scene["scene"] == "backgrounds" else 1
  assert a["view1"].shape == (16, 32, 32, channels + 2)  # the bit planes follow the scene
  classes = pipeline.label_classes(split, config)
  assert set(classes) <= set(a)
  assert not np.array_equal(a["view1"][..., :channels], a["view2"][..., :channels])
  batches = pipeline.EvalBatches(split, config, seeds=[0], split_name="train", batch_size=64,
                                 mesh=train.create_mesh())
  batch = jax.device_get(jax.tree.map(lambda x: x[0], next(iter(batches))))  # the one run
  assert set(batches.num_classes) <= set(batch)
  assert batch["image"].shape[1:] == (32, 32, channels + 2)
  again = jax.device_get(next(iter(pipeline.EvalBatches(
      split, config, seeds=[0], split_name="train", batch_size=64, mesh=train.create_mesh()))))
  np.testing.assert_array_equal(batch["image"], again["image"][0])  # fixed per image
  if scene["scene"] == "multidigits":  # evaluation canvases hold a single digit
    assert batches.num_classes == {"label": 10}
    assert np.all(np.count_nonzero(batch["image"][..., 0] > 0.05, axis=(1, 2)) <= 64)
    # Training canvases hold the indexed digit and two others, with their labels.
    assert {"digit_1", "digit_2"} <= set(a)


def test_digits_on_photos_source_and_unique_digit_pool():
  config = _config(scene="digits_on_images", digit_dataset="digits", num_unique_digits=3,
                   digit_fraction=0.25)
  config.dataset = "photos"
  split = sources.load(config, "test")
  assert split.images.shape == (400, 32, 32, 3) and dict(split.num_classes) == {"label": 8}
  assert set(split.labels["label"].tolist()) == set(range(8))
  digits = _train_batch(split, config, batch_size=128)["digit"]
  pool_labels = sources.load_digits("train", 8).labels["label"][:3]
  assert set(digits.tolist()) == set(pool_labels.tolist())


@pytest.mark.parametrize("name,labels", [
    ("digits_on_images", {"label", "digit"}), ("multidigit", {"label"}),
    ("digit_sizes", {"label", "other_digit"}), ("backgrounds", {"label", "background"})])
def test_feature_configs_train_end_to_end(name, labels, tmp_path, small):
  import jax
  from cl_jax import train
  config = small(importlib.import_module(f"configs.{name}").get_config(), 3)
  for evaluator in ("embeddings", "metrics"):  # tested on the default config (test_train)
    del config.evals[evaluator]
  result = train.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  assert set(result["linear_eval"]) == labels
  for k in config.evals.get("kmeans", {}).get("clusters", ()):
    assert (tmp_path / f"local_features_k{k}.png").stat().st_size > 1000


@pytest.mark.parametrize("name,field,value,message", [
    ("multidigit", "num_digits", 20, r"data.num_digits=20 must be in \[1, 4\]"),
    ("multidigit", "placement", "spiral", "data.placement='spiral' is not one of: grid, random"),
    ("digit_sizes", "other_digit_size", 20, r"data.other_digit_size=20 must be in \[1, 16\]"),
    ("digits_on_images", "num_unique_digits", 5000, "exceeds the 1347 training digits"),
    ("digits_on_images", "digit_fraction", 0.5, r"data.digit_fraction=0.5 must be in \(0, 0.25\]"),
])
def test_feature_config_errors(name, field, value, message, tmp_path, small):
  import jax
  from cl_jax import train, validate
  config = small(importlib.import_module(f"configs.{name}").get_config(), 3)
  config.data[field] = value
  with pytest.raises((validate.ConfigError, sources.DataError), match=message):
    train.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])


def test_scene_outside_its_config_names_the_config(tmp_path):
  from cl_jax import train, validate
  from configs import simclr_randbit
  config = simclr_randbit.get_config()
  config.data.scene = "digit_sizes"
  with pytest.raises(validate.ConfigError, match="needs data.digit_size, .*digit_sizes.py"):
    train.train_and_evaluate(config, str(tmp_path))
