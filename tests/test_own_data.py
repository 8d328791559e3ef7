"""A researcher's own data and encoder: image folders and .npz arrays as datasets, `cl_jax.load`
and `Run.encode`, evaluation of a finished run on another dataset, and their bad inputs."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import cl_jax
from cl_jax import evaluate, run as runs, spec, train
from cl_jax.data import features, own_data, pipeline, sources
from configs import simclr_randbit
from tests.conftest import REPO, shrink, subprocess_env

ONE_DEVICE = jax.devices()[:1]


def _digits(split, n):
  data = sources.load_digits(split, 16)
  return data.images[:n, ..., 0], data.labels["label"][:n]


def write_folder(root, labelled=True, n=(60, 30), mode="RGB"):
  """Digits as PNG files (sizes 12-20 px, `mode`), in class folders c0..c9 when labelled."""
  for split, count in zip(("train", "test"), n):
    images, labels = _digits(split, count)
    for i, (image, label) in enumerate(zip(images, labels)):
      folder = root / split / (f"c{label}" if labelled else "")
      folder.mkdir(parents=True, exist_ok=True)
      side = 12 + 4 * (i % 3)
      picture = Image.fromarray(image).resize((side, side)).convert(mode)
      picture.save(folder / f"{i}.png")
  return root


def write_npz(path, n=(80, 40), **overrides):
  arrays = {}
  for split, count in zip(("train", "test"), n):
    images, labels = _digits(split, count)
    arrays.update({f"{split}_images": images, f"{split}_label": labels,
                   f"{split}_parity": labels % 2})
  arrays.update(overrides)
  np.savez(path, **arrays)
  return path


def _config(dataset="digits", data_dir=None, num_steps=2):
  config = shrink(simclr_randbit.get_config(), num_steps)
  config.data.update(dataset=dataset, data_dir=data_dir)
  config.train.batch_size = 16
  config.evals = {k: config.evals[k] for k in ("linear_eval", "online_probe", "knn")}
  return config


def test_labelled_folder_trains_and_probes_its_classes(tmp_path):
  root = write_folder(tmp_path / "data", mode="RGBA")
  split = sources.load(_config("folder", str(root)).data, "train")
  assert split.images.shape == (60, 16, 16, 3)  # RGBA → RGB, every size → 16 px
  assert sources.label_names("folder", str(root)) == sorted(f"c{d}" for d in range(10))
  want = sorted(f"c{d}" for d in range(10)).index
  _, labels = _digits("train", 60)
  files = sorted((p.parent.name, p.name) for p in (root / "train").glob("*/*.png"))
  np.testing.assert_array_equal(np.sort(split.labels["label"]),
                                np.sort([want(f"c{d}") for d in labels]))
  assert len(files) == 60
  result = train.train_and_evaluate(_config("folder", str(root)), str(tmp_path / "run"),
                                    ONE_DEVICE)
  assert set(result["linear_eval"]) == {"label", "bits"}
  assert set(result["knn"]) == {"label"} and set(result["online_probe"]) == {"label"}


def test_unlabelled_grey_folder_trains_and_only_the_bits_are_probed(tmp_path, caplog):
  root = write_folder(tmp_path / "data", labelled=False, mode="L")
  config = _config("folder", str(root))
  split = sources.load(config.data, "test")
  assert split.images.shape == (30, 16, 16, 1) and not split.labels
  with caplog.at_level("INFO"):
    result = train.train_and_evaluate(config, str(tmp_path / "run"), ONE_DEVICE)
  assert result["linear_eval"].keys() == {"bits"}  # random bits are still probed
  assert "knn" not in result and "online_probe" not in result
  assert "has no label to probe" in caplog.text


def test_npz_with_two_labels_trains_and_probes_both(tmp_path):
  path = write_npz(tmp_path / "data.npz")
  config = _config("npz", str(path))
  config.data.channels = 3  # grey arrays repeated to RGB
  split = sources.load(config.data, "test")
  assert split.images.shape == (40, 16, 16, 3) and split.num_classes == {"label": 10,
                                                                         "parity": 2}
  result = train.train_and_evaluate(config, str(tmp_path / "run"), ONE_DEVICE)
  assert set(result["linear_eval"]) == {"label", "parity", "bits"}
  assert set(result["knn"]) == {"label", "parity"}


def test_float_npz_equals_uint8_and_random_bits_compose(tmp_path):
  uint8 = write_npz(tmp_path / "uint8.npz")
  images = {s: _digits(s, n)[0] / 255.0 for s, n in (("train", 80), ("test", 40))}
  floats = write_npz(tmp_path / "float.npz", train_images=images["train"],
                     test_images=images["test"])
  a = sources.load(_config("npz", str(uint8)).data, "train")
  b = sources.load(_config("npz", str(floats)).data, "train")
  np.testing.assert_array_equal(a.images, b.images)
  config = _config("npz", str(uint8))
  batch = next(iter(pipeline.TrainBatches(a, config.data, seeds=[0], batch_size=16, start_step=0,
                                          num_steps=1, mesh=train.create_mesh(ONE_DEVICE))))
  assert batch["view1"].shape[-1] == 1 + config.data.random_bits


def test_class_subset_and_coarse_labels_apply_to_own_data(tmp_path):
  root = write_folder(tmp_path / "data")
  (tmp_path / "classes.txt").write_text("c7\nc2\nc5\n")
  config = _config("folder", str(root))
  config.data.class_subset = str(tmp_path / "classes.txt")
  split = sources.load(config.data, "train")
  assert split.num_classes == {"label": 3} and set(np.unique(split.labels["label"])) <= {0, 1, 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step run of the embedded default (shared by the tests that read a finished run)."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  train.train_and_evaluate(_config(), str(workdir), ONE_DEVICE)
  return workdir


def test_encode_equals_the_evaluators_features(trained):
  config = _config()
  run = cl_jax.load(str(trained))
  assert run.step == 2 and run.channels == 1 and run.config.data.random_bits == 5
  test = sources.load(config.data, "test")
  mesh = train.create_mesh()
  variables = jax.tree.map(lambda a: a[None], run.variables)
  want, = evaluate.extract_features(run.model, variables, test, config.data, seeds=[0],
                                    split_name="test", batch_size=config.eval.batch_size,
                                    mesh=mesh)
  valid = np.asarray(want.valid)
  h = run.encode(test.images, bits="test")
  z = run.encode(test.images[..., 0] / 255.0, features="embedding", bits="test")
  np.testing.assert_array_equal(h, np.asarray(want.h)[valid])
  np.testing.assert_array_equal(z, np.asarray(want.z)[valid])
  # Another size: resized as the sources resize; without bits the planes are zero.
  big = sources.load_digits("test", 32).images
  assert run.encode(big).shape == h.shape
  assert not np.allclose(run.encode(test.images), h)


def test_evaluate_mode_on_another_dataset_writes_its_own_file(trained, tmp_path):
  workdir = trained
  before = (workdir / "eval.json").read_bytes()
  other = _config("npz", str(write_npz(tmp_path / "data.npz")))
  other.data.image_size = 28  # resized to the trained 16 px
  other.evals.linear_eval.probe_steps = 10
  result = runs.evaluate_checkpoint(other, str(workdir), ONE_DEVICE)
  assert result["step"] == 2 and result["dataset"] == "npz"
  assert set(result["linear_eval"]) == {"label", "parity", "bits"}
  assert json.loads((workdir / "eval_npz.json").read_text()) == result
  assert (workdir / "eval.json").read_bytes() == before


def test_the_same_content_loaded_again_shares_its_scene_and_programs():
  config = _config()
  config.data.update(scene="digit_sizes", digit_size=4, other_digit_size=6)
  a = sources.load_digits("train", 16)
  b = sources.Split(a.images.copy(), dict(a.labels), dict(a.num_classes))  # another object
  assert features.scene_key(config.data, a, True) == features.scene_key(config.data, b, True)
  assert features.make_scene(config.data, a, True) is features.make_scene(config.data, b, True)
  c = sources.Split(a.images[::-1].copy(), dict(a.labels), dict(a.num_classes))
  assert features.scene_key(config.data, a, True) != features.scene_key(config.data, c, True)


def _bad_folder(tmp_path, case):
  root = tmp_path / "data"
  if case == "missing":
    return str(tmp_path / "nowhere")
  root.mkdir()
  if case == "empty":
    return str(root)
  write_folder(root, n=(6, 4))
  if case == "no_images":
    for p in (root / "test").glob("*/*.png"):
      p.unlink()
  if case == "corrupt":
    next((root / "train").iterdir()).joinpath("broken.png").write_bytes(b"not a png")
  return str(root)


@pytest.mark.parametrize("case,message", [
    ("missing", r"data_dir=.*nowhere' does not exist or is not a folder"),
    ("empty", r"has no train/ folder"),
    ("no_images", r"test holds no .png, .jpg or .jpeg images in its class folders"),
    ("corrupt", r"broken.png is not a readable image"),
])
def test_bad_folders_are_refused_in_one_sentence(tmp_path, case, message, monkeypatch):
  config = _config("folder", _bad_folder(tmp_path, case))
  monkeypatch.setattr(train, "create_train_state", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(sources.DataError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"), ONE_DEVICE)
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("overrides,message", [
    (dict(train_images=None), r"has no 'train_images' array"),
    (dict(train_label=np.zeros(79, np.int64)), r"train_label has 79 labels but train_images "
                                               "has 80 images"),
    (dict(test_parity=np.zeros(40, np.float32)), r"test_parity must be a 1-D integer array"),
    (dict(train_images=np.array([np.zeros((8, 8)), np.zeros((9, 9))], dtype=object)),
     r"object array: images of different sizes"),
])
def test_bad_npz_files_are_refused_in_one_sentence(tmp_path, overrides, message):
  arrays = {k: v for k, v in overrides.items() if v is not None}
  path = tmp_path / "data.npz"
  write_npz(path, **arrays)
  if overrides.get("train_images", 0) is None:
    data = dict(np.load(path))
    del data["train_images"]
    np.savez(path, **data)
  with pytest.raises(sources.DataError, match=message):
    sources.load(_config("npz", str(path)).data, "train")


def test_evaluate_mode_refuses_what_it_cannot_evaluate(trained, tmp_path):
  with pytest.raises(spec.ConfigError, match=r"holds no checkpoint"):
    runs.evaluate_checkpoint(_config(), str(tmp_path / "empty"), ONE_DEVICE)
  workdir = str(trained)
  before = sorted(os.listdir(workdir))
  changed = _config()
  changed.model.embed_dim = 32
  changed.loss.temperature = 0.5
  with pytest.raises(spec.ConfigError, match=r"only the data .* may differ.*loss.temperature: "
                     r"checkpoint 0.2 vs now 0.5; model.embed_dim: checkpoint 16 vs now 32"):
    runs.evaluate_checkpoint(changed, workdir, ONE_DEVICE)
  rgb = _config()
  rgb.data.channels = 3
  with pytest.raises(spec.ConfigError, match=r"gives 3-channel images, but the encoder .* takes "
                     r"1-channel images: set data.channels=1"):
    runs.evaluate_checkpoint(rgb, workdir, ONE_DEVICE)
  assert sorted(os.listdir(workdir)) == before  # nothing written


def test_unknown_config_override_names_the_closest_fields(tmp_path):
  done = subprocess.run([sys.executable, "-m", "cl_jax.main", "--config=configs/simclr_randbit.py",
                         f"--workdir={tmp_path}", "--config.eval.l2=-1"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=subprocess_env())
  assert done.returncode == 1
  assert "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
      "error: --config.eval.l2: configs/simclr_randbit.py has no field 'eval.l2'; the closest "
      "existing fields: evals.curve.l2, evals.linear_eval.l2.")
  assert not os.listdir(tmp_path)


def test_to_channels_converts_grey_rgb_and_rgba():
  rgb = np.array([[[[255, 0, 0]]]], np.uint8)
  assert own_data.to_channels(rgb, 1)[0, 0, 0, 0] == 76  # 0.299 · 255
  rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 7)], -1)
  np.testing.assert_array_equal(own_data.to_channels(rgba, 3), rgb)
  np.testing.assert_array_equal(own_data.to_channels(rgb[..., :1], 3), [[[[255, 255, 255]]]])


def test_a_mistyped_override_names_the_closest_field_and_valid_ones_pass():
  from cl_jax import cli  # pylint: disable=g-import-not-at-top
  argv = ["--config=configs/simclr_randbit.py", "--config.train.num_step=5"]
  assert cli.config_override_error(argv).startswith(
      "--config.train.num_step: configs/simclr_randbit.py has no field 'train.num_step'; the "
      "closest existing fields: train.num_steps, ")
  assert cli.config_override_error(["--config=configs/supcon_joint.py:cifar100",
                                    "--config.loss.beta=0.5", "--config.data.data_dir=x"]) is None
