"""Streaming (data.streaming=True): tfds random access over ArrayRecord, on mock imagenet2012."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cl_jax import train, validate
from cl_jax.data import augment, pipeline, sources
from configs import moco_ifm, multidigit, simclr_randbit



@pytest.fixture(autouse=True)
def batched_reads_on_mock_sources(monkeypatch):
  """tfds 4.9.10's mock data source sets `__getitems__` as an unbound function (it then misses
  `self`); the real ArrayRecord source reads a batch of keys in parallel. Under the mock, read
  the keys one by one."""
  from tensorflow_datasets.core.data_sources import array_record  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(array_record.ArrayRecordDataSource, "__getitems__",
                      lambda self, keys: [self[k] for k in keys])


@pytest.fixture
def config():
  c = simclr_randbit.get_config()
  c.data.update(dataset="imagenet2012", streaming=True, image_size=16, random_bits=3,
                color_jitter=0.5, flip=True)
  c.model.update(head_hidden_dim=16, embed_dim=8)
  c.train.update(batch_size=16, num_steps=6, log_every_steps=2, checkpoint_every_steps=2)
  c.eval.batch_size = 24
  c.evals.linear_eval.probe_steps = 5
  c.evals.knn.k = 5
  return c


def _batches(split, data_config, rows=None, start=0, seed=0, steps=6):
  return list(pipeline.train_dataset(split, data_config, seed=seed, batch_size=16,
                                     start_step=start, num_steps=steps,
                                     rows=rows).as_numpy_iterator())


def test_streamed_batches_are_seeded_resumable_and_tiled_by_process_rows(config):
  with tfds.testing.mock_data(num_examples=64):
    split = sources.load(config.data, "train")
    assert isinstance(split, sources.StreamingSplit) and len(split) == 64
    full = _batches(split, config.data)
    resumed = _batches(split, config.data, start=4)
    interleaved = [_batches(split, config.data, rows=np.arange(p, 16, 2), start=3, steps=4)[0]
                   for p in range(2)]
    other_seed = _batches(split, config.data, seed=1, steps=1)
    records = [split.source[int(i)] for i in full[0]["index"]]
  for a, b in zip(full[4:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for p, local in enumerate(interleaved):
    for k in local:
      np.testing.assert_array_equal(local[k], full[3][k][p::2])
  assert not np.array_equal(other_seed[0]["index"], full[0]["index"])
  # One epoch (4 steps of 16) is a permutation of the 64 records; labels come with their record.
  assert sorted(np.concatenate([b["index"] for b in full[:4]])) == list(range(64))
  np.testing.assert_array_equal(full[0]["label"], [r["label"] for r in records])
  crop = full[0]["image1"]  # cropped while decoding; the device does the rest
  assert crop.shape == (16, 16, 16, 3) and crop.dtype == np.float32
  assert 0 <= crop.min() and crop.max() <= 1
  assert not np.allclose(full[0]["image1"], full[0]["image2"])


def test_digits_on_streamed_backgrounds(config):
  """The host decodes the background; the device composes the scene, the views and the bits."""
  import jax  # pylint: disable=g-import-not-at-top
  config.data.update(scene="digits_on_images", digit_dataset="digits", num_unique_digits=4,
                     digit_fraction=0.25)
  mesh = train.create_mesh()
  with tfds.testing.mock_data(num_examples=32):
    split = sources.load(config.data, "train")
    host = _batches(split, config.data, steps=1)[0]
    batch = jax.device_get(next(iter(pipeline.TrainBatches(
        split, config.data, seeds=[0], batch_size=16, start_step=0, num_steps=1, mesh=mesh))))
    test = pipeline.EvalBatches(sources.load(config.data, "test"), config.data, seeds=[0],
                                split_name="test", batch_size=16, mesh=mesh)
    classes, test = test.num_classes, jax.device_get(next(iter(test)))
    test = {k: v[0] for k, v in test.items()}  # the one run
  assert host["image"].shape == (16, 16, 16, 3) and "digit" not in host
  assert batch["view1"].shape == (1, 16, 16, 16, 3 + 3) and set(batch["digit"][0]) <= set(range(10))
  assert classes["digit"] == 10 and test["image"].shape == (16, 16, 16, 3 + 3)
  assert "digit" in test and test["valid"].all()


def test_jpeg_crop_is_decoded_in_one_op_equal_to_decode_then_crop():
  y, x = np.mgrid[:40, :56] / 8.0  # smooth, so that JPEG's error is small
  image = (127.5 + 120 * np.stack([np.sin(y), np.cos(x), np.sin(x + y)], -1)).astype(np.uint8)
  encoded = tf.io.encode_jpeg(image, quality=95)
  seed = tf.constant([3, 4], tf.int64)
  fused = augment.decode_random_resized_crop(encoded, seed, (0.2, 1.0), size=16,
                                             image_format="jpeg", channels=3)
  decoded = tf.io.decode_jpeg(encoded, channels=3)
  begin, size = augment.crop_window(tf.shape(decoded), seed, (0.2, 1.0))
  reference = tf.image.resize(tf.cast(tf.slice(decoded, begin, size), tf.float32) / 255.0,
                              (16, 16), method="bicubic", antialias=True)
  np.testing.assert_allclose(fused, tf.clip_by_value(reference, 0, 1), atol=2 / 255)
  png = augment.decode_random_resized_crop(tf.io.encode_png(image), seed, (0.2, 1.0), size=16,
                                           image_format="png", channels=3)
  np.testing.assert_allclose(png, fused, atol=0.06)  # the same window: equal up to JPEG's loss


def test_streamed_eval_batches_are_the_rows_of_the_whole_batch(config):
  with tfds.testing.mock_data(num_examples=40):
    split = sources.load(config.data, "test")
    make = lambda rows: list(pipeline.eval_dataset(split, config.data, batch_size=16,
                                                   rows=rows)[0].as_numpy_iterator())
    whole = make(None)
    halves = [make(np.arange(p, 16, 2)) for p in range(2)]
    labels = [int(split.source[i]["label"]) for i in range(40)]
  assert len(whole) == 3 and whole[-1]["valid"].sum() == 40 - 32
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in whole])[:40], labels)
  for p, half in enumerate(halves):
    for a, b in zip(half, whole):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k][p::2])


def test_streamed_class_subset_keeps_the_listed_classes_relabelled_in_file_order(config,
                                                                                tmp_path):
  with tfds.testing.mock_data(num_examples=120):
    names = sources.label_names("imagenet2012", None)
    everything = sources.load(config.data, "train")
    _, all_labels = everything.read(np.arange(120))
    subset = [names[y] for y in dict.fromkeys(all_labels["label"][[7, 3, 50, 11]])]
    (tmp_path / "classes.txt").write_text("# test subset\n" + "\n".join(subset) + "\n")
    config.data.class_subset = str(tmp_path / "classes.txt")
    kept = sources.load(config.data, "train")
    _, kept_labels = kept.read(np.arange(len(kept)))
  wanted = np.flatnonzero(np.isin(np.array(names)[all_labels["label"]], subset))
  assert 4 <= len(kept) == len(wanted) < 120
  np.testing.assert_array_equal(kept.indices, wanted)
  np.testing.assert_array_equal(kept_labels["label"],
                                [subset.index(names[y]) for y in all_labels["label"][wanted]])
  assert kept.num_classes == {"label": len(subset)}


def test_streamed_run_trains_and_evaluates(config, tmp_path):
  """End to end on 8 fake devices. (Exact resume follows from the batches being a function of
  (seed, step), tested above; the training loop's resume is tested in test_train.)"""
  with tfds.testing.mock_data(num_examples=48):
    result = train.train_and_evaluate(config, str(tmp_path))
  assert set(result["linear_eval"]) == {"label", "bits"} and result["step"] == 6
  assert set(result["online_probe"]) == {"label"} and set(result["knn"]) == {"label"}
  assert np.isfinite(result["metrics"]["alignment"])


def test_imagenet100_streams_and_bad_streaming_settings_are_refused(config):
  assert moco_ifm.get_config("imagenet100").data.streaming
  config.data.dataset = "digits"
  with pytest.raises(validate.ConfigError, match="data.streaming=True reads a tfds dataset"):
    validate.check_config(config, 1)
  scenes = multidigit.get_config()
  scenes.data.update(dataset="imagenet2012", streaming=True)
  with pytest.raises(validate.ConfigError, match="data.scene='multidigits' .* cannot stream"):
    validate.check_config(scenes, 1)


def test_tfrecord_dataset_names_the_conversion(config, monkeypatch):
  def tfrecord_only(self, *args, **kwargs):
    raise NotImplementedError("Random access data source for file format tfrecord is not "
                              "supported.")
  with tfds.testing.mock_data(num_examples=8):
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", tfrecord_only)
    with pytest.raises(sources.DataError, match="(?s)ArrayRecord.*tfds convert_format.*"
                       "data.streaming=False"):
      sources.load(config.data, "train")


def test_class_subset_with_coarse_labels_is_one_implementation_streamed_or_in_memory(config,
                                                                                     tmp_path):
  """label = the coarse class, subclass = the subset's fine class — the same labels whether the
  split streams or sits in memory (the streamed path once looked the fine lookup up on the
  coarse field)."""
  config.data.update(dataset="cifar100", coarse_labels=True)
  with tfds.testing.mock_data(num_examples=60):
    names = sources.label_names("cifar100", None)
    everything = sources.load(config.data, "train")
    _, stored = everything.read(np.arange(len(everything)))
    fine = [names[i] for i in dict.fromkeys(stored["subclass"][[4, 9, 30]])]
    (tmp_path / "classes.txt").write_text("\n".join(fine) + "\n")
    config.data.class_subset = str(tmp_path / "classes.txt")
    streamed = sources.load(config.data, "train")
    _, labels = streamed.read(np.arange(len(streamed)))
    config.data.streaming = False
    in_memory = sources.load(config.data, "train")
    config.data.class_subset = None
    whole = sources.load(config.data, "train")  # in memory, coarse labels, every class
  kept = np.isin(np.array(names)[stored["subclass"]], fine)
  assert streamed.num_classes == in_memory.num_classes == {"label": 20, "subclass": len(fine)}
  np.testing.assert_array_equal(labels["subclass"],
                                [fine.index(names[c]) for c in stored["subclass"][kept]])
  np.testing.assert_array_equal(labels["label"], stored["label"][kept])
  rows = np.isin(np.array(names)[whole.labels["subclass"]], fine)
  np.testing.assert_array_equal(in_memory.labels["label"], whole.labels["label"][rows])
  np.testing.assert_array_equal(in_memory.labels["subclass"],
                                [fine.index(names[c]) for c in whole.labels["subclass"][rows]])
