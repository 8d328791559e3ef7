"""Data: embedded source, random bits (docs/method.md §2.1), two-view pipeline determinism and slicing."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cl_jax import train
from cl_jax.data import features, pipeline, sources
from tests import float_order


def device_batches(split, data_config, *, seed=0, batch_size=64, start_step=0, num_steps=1,
                   devices=None, split_name="train") -> list:
  """The global training batches of steps [start_step, num_steps), as host numpy arrays."""
  batches = pipeline.TrainBatches(split, data_config, seeds=[seed], batch_size=batch_size,
                                  start_step=start_step, num_steps=num_steps,
                                  mesh=train.create_mesh(devices), split_name=split_name)
  return [jax.device_get(jax.tree.map(lambda x: x[0], b)) for b in batches]


def decode_bits(images: np.ndarray, num_channels: int, num_bits: int) -> np.ndarray:
  """Integer encoded by the constant bit planes after the first `num_channels` channels."""
  planes = images[..., num_channels:]
  # Each plane must be constant over H×W and hold 0 or 1.
  assert np.all(planes == planes[:, :1, :1, :])
  assert set(np.unique(planes)) <= {0.0, 1.0}
  return (planes[:, 0, 0, :].astype(np.int64) << np.arange(num_bits)).sum(-1)


@pytest.fixture
def data_config(digits_config):
  digits_config.data.random_bits = 7
  return digits_config.data


def test_digits_source_is_fixed_stratified_split():
  train, test = sources.load_digits("train", 16), sources.load_digits("test", 16)
  assert train.images.shape == (1347, 16, 16, 1) and test.images.shape == (450, 16, 16, 1)
  assert train.images.dtype == np.uint8 and train.images.max() == 255
  # Stratified: every class in both splits in the same proportions (±1 image).
  assert np.all(np.abs(np.bincount(test.labels["label"]) -
                       np.bincount(train.labels["label"]) / 3) <= 1.5)
  np.testing.assert_array_equal(sources.load_digits("train", 16).images, train.images)


def test_bits_identical_in_both_views_and_decode_to_the_image_integer(data_config):
  split = sources.load(data_config, "train")
  expected = features.random_bit_integers(len(split), 7, seed=0, split="train")
  for batch in device_batches(split, data_config, num_steps=3):
    np.testing.assert_array_equal(batch["view1"][..., 1:], batch["view2"][..., 1:])
    np.testing.assert_array_equal(decode_bits(batch["view1"], 1, 7), expected[batch["index"]])
    # The image channel was augmented independently in the two views.
    assert np.abs(batch["view1"][..., 0] - batch["view2"][..., 0]).mean() > 0.02
    np.testing.assert_array_equal(batch["label"], split.labels["label"][batch["index"]])


def test_bits_fixed_per_image_across_epochs(data_config):
  split = sources.load(data_config, "train")
  per_epoch = pipeline.steps_per_epoch(len(split), 64)
  seen = {}
  repeats = 0
  for batch in device_batches(split, data_config, num_steps=3 * per_epoch):
    for i, b in zip(batch["index"], decode_bits(batch["view1"], 1, 7)):
      repeats += i in seen
      assert seen.setdefault(i, b) == b
  assert repeats > len(split)  # images really were seen again in later epochs


def test_epochs_are_permutations_and_differ(data_config):
  split = sources.load(data_config, "train")
  per_epoch = pipeline.steps_per_epoch(len(split), 64)
  idx = np.concatenate([b["index"] for b in device_batches(split, data_config,
                                                          num_steps=2 * per_epoch)])
  idx = idx.reshape(2, -1)
  assert len(set(idx[0])) == idx.shape[1] and len(set(idx[1])) == idx.shape[1]
  assert not np.array_equal(idx[0], idx[1])
  # The host pipeline (scenes, streaming) reads the same order.
  host = pipeline.train_dataset(split, data_config, seed=0, batch_size=64, start_step=0,
                                num_steps=2 * per_epoch)
  np.testing.assert_array_equal(
      np.concatenate([b["index"] for b in host.as_numpy_iterator()]), idx.reshape(-1))


def test_pipeline_resumes_exactly_and_is_seeded(data_config):
  split = sources.load(data_config, "train")
  make = lambda seed, start: device_batches(split, data_config, seed=seed, batch_size=32,
                                           start_step=start, num_steps=8)
  full, resumed, other = make(0, 0), make(0, 5), make(1, 0)
  for a, b in zip(full[5:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(full[0]["index"], other[0]["index"])
  # One device or eight: the same global batches.
  one_device = device_batches(split, data_config, batch_size=32, start_step=5, num_steps=8,
                              devices=jax.devices()[:1])
  for a, b in zip(resumed, one_device):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=0, atol=float_order.PIXELS)  # 8 devices vs 1


def test_process_rows_tile_the_global_batch(data_config):
  """The host pipeline (scenes, streamed splits): any partition of the rows (e.g. an interleaved TPU mesh: process p holds rows p, p+4, ...)
  reads exactly those rows of the one global batch."""
  split = sources.load(data_config, "train")
  make = lambda rows: next(pipeline.train_dataset(
      split, data_config, seed=0, batch_size=32, start_step=2, num_steps=3,
      rows=rows).as_numpy_iterator())
  whole = make(None)
  for parts in ([np.arange(8 * p, 8 * p + 8) for p in range(4)],
                [np.arange(p, 32, 4) for p in range(4)]):
    for rows in parts:
      local = make(rows)
      for k in whole:
        np.testing.assert_array_equal(local[k], whole[k][rows])


def test_local_rows_follow_the_mesh_order():
  devices = jax.devices()
  assert list(pipeline.local_rows(train.create_mesh(devices), 16)) == list(range(16))
  # One process holds every device here, so any device order gives all rows; the per-device
  # slices follow the mesh order.
  reversed_mesh = train.create_mesh(devices[::-1])
  sharding = pipeline.batch_sharding(reversed_mesh)
  assert sharding.addressable_devices_indices_map((16,))[devices[-1]] == (slice(0, 2),)
  assert list(pipeline.local_rows(reversed_mesh, 16)) == list(range(16))


def eval_batches(split, data_config, seeds, devices=None):
  """The evaluation batches of `split` for runs with `seeds`, as host numpy arrays [R, B, ...]."""
  return [jax.device_get(b) for b in pipeline.EvalBatches(
      split, data_config, seeds=seeds, split_name="test", batch_size=96,
      mesh=train.create_mesh(devices))]


def test_eval_images_are_unaugmented_with_their_bits(data_config):
  split = sources.load(data_config, "test")
  ds, num_classes = pipeline.eval_dataset(split, data_config, batch_size=100)
  assert num_classes == {"label": 10}
  assert not {"bits", "bit_integer"} & set(next(ds.as_numpy_iterator()))  # seed-free on the host
  batches = eval_batches(split, data_config, seeds=[0, 3])
  cat = lambda k: np.concatenate([b[k] for b in batches], axis=1)
  images, valid = cat("image"), cat("valid")[0]
  assert images.shape[:2] == (2, 480) and valid.sum() == len(split)
  for run, seed in enumerate([0, 3]):
    bit_integers = features.random_bit_integers(len(split), 7, seed, "test")
    np.testing.assert_allclose(images[run][valid][..., :1], split.images / 255.0, atol=1e-6)
    np.testing.assert_array_equal(decode_bits(images[run][valid], 1, 7), bit_integers)
    np.testing.assert_array_equal(cat("bits")[run][valid], features.bit_labels(bit_integers, 7))
    np.testing.assert_array_equal(cat("label")[run][valid], split.labels["label"])
  # One device or eight: the same batches.
  one_device = eval_batches(split, data_config, seeds=[0, 3], devices=jax.devices()[:1])
  for a, b in zip(batches, one_device):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_zero_bits_adds_no_channel(data_config):
  data_config.random_bits = 0
  split = sources.load(data_config, "train")
  batch, = device_batches(split, data_config, batch_size=8)
  assert batch["view1"].shape == (8, 16, 16, 1)


def test_rgb_augmentations_stay_in_range():
  import ml_collections
  config = ml_collections.ConfigDict(dict(image_size=32, random_bits=3, crop_area_min=0.08, flip=True,
                                          color_jitter=0.5, grayscale_prob=0.2, blur_prob=0.5))
  rng = np.random.default_rng(0)
  split = sources.Split(images=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                        labels={"label": np.zeros(40, np.int32)}, num_classes={"label": 1})
  batch, = device_batches(split, config, batch_size=40)
  assert batch["view1"].shape == (40, 32, 32, 6)
  assert batch["view1"].min() >= 0.0 and batch["view1"].max() <= 1.0
  assert np.abs(batch["view1"][..., :3] - batch["view2"][..., :3]).mean() > 0.05


def test_tfds_source_reads_labels_and_resizes():
  with tfds.testing.mock_data(num_examples=12):
    split = sources.load_tfds("cifar100", "train", image_size=16)
  assert split.images.shape == (12, 16, 16, 3) and split.images.dtype == np.uint8
  assert dict(split.num_classes) == {"label": 100, "coarse_label": 20}


def test_unprepared_tfds_dataset_names_the_fixes(tmp_path):
  with pytest.raises(sources.DataError, match=r"(?s)tfds build mnist.*data_dir.*digits"):
    sources.load_tfds("mnist", "train", 28, data_dir=str(tmp_path))
  with pytest.raises(sources.DataError, match="nor a known tfds dataset"):
    sources.load_tfds("no_such_dataset_xyz", "train", 28)


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_source_reads_mnist_format_files(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
  labels = np.repeat(np.arange(10), 5).astype(np.uint8)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
  train = sources.load_idx(str(tmp_path), "train", 28)
  test = sources.load_idx(str(tmp_path), "test", 28)
  assert len(train) == 40 and len(test) == 10  # stratified 80/20 of the t10k files
  assert sorted(test.labels["label"]) == list(range(10))
  whole = {(img.tobytes(), int(lab)) for img, lab in zip(images, labels)}
  got = {(img[..., 0].tobytes(), int(lab)) for s in (train, test)
         for img, lab in zip(s.images, s.labels["label"])}
  assert got == whole  # pixels and labels travel together, nothing lost
  with pytest.raises(sources.DataError, match="needs data.data_dir"):
    sources.load_idx(str(tmp_path / "missing"), "train", 28)


def test_augmented_views_of_the_test_split_carry_the_test_bits(data_config):
  """test_representation_metrics draws two augmented views of test images: their bit planes must
  be the test images' bits, the same ones evaluation probes (not the train split's)."""
  split = sources.load(data_config, "test")
  views, = device_batches(split, data_config, split_name="test")
  eval_bits = np.concatenate([b["bits"][0] for b in eval_batches(split, data_config, [0])])
  k = data_config.random_bits
  want = (eval_bits[views["index"]].astype(np.int64) << np.arange(k)).sum(-1)
  for view in ("view1", "view2"):
    np.testing.assert_array_equal(decode_bits(views[view], 1, k), want)
  train_salted, = device_batches(split, data_config)
  assert not np.array_equal(decode_bits(train_salted["view1"], 1, k), want)


def test_class_subset_keeps_the_listed_classes_relabelled_in_file_order(data_config, tmp_path):
  subset = tmp_path / "classes.txt"
  subset.write_text("# two digits\n7\n3  # a comment\n")
  full = sources.load(data_config, "train")
  data_config.class_subset = str(subset)
  kept = sources.load(data_config, "train")
  original = full.labels["label"]
  np.testing.assert_array_equal(kept.images, full.images[(original == 7) | (original == 3)])
  np.testing.assert_array_equal(kept.labels["label"],
                                np.where(original == 7, 0, 1)[(original == 7) | (original == 3)])
  assert kept.num_classes == {"label": 2}
  subset.write_text("7\neleven\n")
  with pytest.raises(sources.DataError, match=r"class_subset=.*1 of its 2 names are not classes"):
    sources.load(data_config, "train")


def test_imagenet100_subset_of_mock_imagenet2012():
  """configs/moco_ifm.py:imagenet100 needs no manual step: a prepared imagenet2012 restricted to
  the 100 CMC classes, relabelled 0..99 in the list's order (tfds mock data)."""
  from configs import moco_ifm  # pylint: disable=g-import-not-at-top
  config = moco_ifm.get_config("imagenet100").data
  config.image_size = 8
  config.streaming = False  # in memory here; test_streaming.py covers the streamed subset
  names = sources.read_class_subset(config.class_subset)
  assert len(names) == 100 and names[:2] == ["n02869837", "n01749939"]
  with tfds.testing.mock_data(num_examples=300):
    all_names = sources.label_names("imagenet2012", None)
    full = sources.load_tfds("imagenet2012", "train", 8)
    kept = sources.load(config, "train")
  wanted = np.isin(np.array(all_names)[full.labels["label"]], names)
  assert 0 < len(kept) == wanted.sum() < len(full)
  expected = [names.index(all_names[y]) for y in full.labels["label"][wanted]]
  np.testing.assert_array_equal(kept.labels["label"], expected)
  np.testing.assert_array_equal(kept.images, full.images[wanted])
  assert kept.num_classes == {"label": 100}
