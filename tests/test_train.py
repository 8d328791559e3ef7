"""End to end: training runs, outputs, exact resumption, and errors before anything compiles."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from cl_jax import hosts, jit_cache, models, train, validate
from cl_jax import spec
from cl_jax.data import pipeline, sources
from configs import simclr_randbit
from tests import float_order
from tests.conftest import REPO, SMALL, subprocess_env

ONE_DEVICE = jax.devices()[:1]


def test_embedded_digits_end_to_end(digits_config, tmp_path):
  digits_config.evals.embeddings.at_end = True  # the one test that draws the t-SNE map
  result = train.train_and_evaluate(digits_config, str(tmp_path))  # all 8 fake devices
  assert result["step"] == 6
  with open(tmp_path / "eval.json") as f:
    assert json.load(f) == result
  assert set(result["linear_eval"]) == {"label", "bits"}
  assert 0.0 <= result["linear_eval"]["label"] <= 1.0
  assert set(result["online_probe"]) == {"label"} and 0 <= result["online_probe"]["label"] <= 1
  assert set(result["knn"]) == {"label"} and 0 <= result["knn"]["label"] <= 1
  assert set(result["metrics"]) == {"alignment", "uniformity", "effective_rank", "embedding_std"}
  assert (tmp_path / "embeddings.png").stat().st_size > 5000
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]  # max_to_keep=2


def _crash_after(num_batches, monkeypatch):
  """Training raises while fetching batch `num_batches` + 1 (until monkeypatch.undo())."""
  original = pipeline.TrainBatches.__iter__

  def crashing(self):
    for i, batch in enumerate(original(self)):
      if i == num_batches:
        raise RuntimeError("simulated crash")
      yield batch
  monkeypatch.setattr(pipeline.TrainBatches, "__iter__", crashing)


def test_resumed_run_equals_uninterrupted_run(digits_config, tmp_path, monkeypatch):
  uninterrupted = train.train_and_evaluate(digits_config, str(tmp_path / "a"), ONE_DEVICE)
  _crash_after(3, monkeypatch)  # steps 1-3 run, checkpoint at 2, crash fetching step 4
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(digits_config, str(tmp_path / "b"), ONE_DEVICE)
  assert os.listdir(tmp_path / "b" / "checkpoints") == ["2"]
  assert not (tmp_path / "b" / "eval.json").exists()
  monkeypatch.undo()
  resumed = train.train_and_evaluate(digits_config, str(tmp_path / "b"), ONE_DEVICE)
  assert resumed == uninterrupted  # exact equality of every accuracy


def test_incompatible_checkpoint_is_refused_and_left_untouched(digits_config, tmp_path):
  digits_config.train.num_steps = 2
  train.train_and_evaluate(digits_config, str(tmp_path), ONE_DEVICE)
  ckpt = tmp_path / "checkpoints"
  before = {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, ps in os.walk(ckpt) for p in ps}
  digits_config.loss.temperature = 0.5
  digits_config.data.random_bits = 3
  with pytest.raises(validate.ConfigError, match=r"(?s)different experiment.*"
                     r"data.random_bits: checkpoint 5 vs now 3.*loss.temperature"):
    train.train_and_evaluate(digits_config, str(tmp_path), ONE_DEVICE)
  after = {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, ps in os.walk(ckpt) for p in ps}
  assert after == before


@pytest.mark.parametrize("variant", ["mnist", "mnist_colab", "cifar10"])
def test_tfds_variants_end_to_end_on_mock_data(variant, tmp_path):
  config = simclr_randbit.get_config(variant)
  assert config.data.dataset == variant.split("_")[0]
  # The ResNet-18 of the cifar10 variant takes ~90 s to compile on 2 CPU cores: it is covered by
  # test_models.py; here the variant's RGB augmentations and tfds labels run end to end.
  config.model.encoder = "convnet"
  config.data.image_size = 16
  config.model.head_hidden_dim = 16
  config.model.embed_dim = 8
  config.train.batch_size = 16
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.evals.linear_eval.probe_steps = 5
  with tfds.testing.mock_data(num_examples=32):
    result = train.train_and_evaluate(config, str(tmp_path), ONE_DEVICE)
  assert set(result["linear_eval"]) == {"label", "bits"} and result["step"] == 2
  assert set(result["online_probe"]) == {"label"}


@pytest.mark.parametrize("field,value,message", [
    ("data.dataset", "no_such_dataset_xyz", "nor a known tfds dataset"),
    ("model.encoder", "vgg", "model.encoder='vgg' is not one of: convnet, resnet18"),
    ("loss.name", "triplet", "loss.name='triplet' is not one of: barlow_twins, byol, generalized, joint, moco, ntxent, ntxent_cross_view, simsiam, supcon, vicreg"),
    ("model.conv_padding", "FULL", "model.conv_padding='FULL' is not one of: SAME, VALID"),
    ("model.bn_momentum", 1.0, r"model.bn_momentum=1.0 must be in \[0, 1\)"),
    ("loss.kernel_l2", -1e-4, "loss.kernel_l2=-0.0001 must be >= 0"),
    ("evals.knn.k", 0, "evals.knn.k=0 must be a positive number of neighbours"),
    ("model.dtype", "float16", "model.dtype=.float16. is not one of: bfloat16, float32"),
    ("optim.name", "rmsprop", "optim.name='rmsprop' is not one of: adam, sgd, lars"),
    ("data.random_bits", -1, r"data.random_bits=-1 must be in \[0, 30\]"),
    ("data.random_bits", 31, r"data.random_bits=31 must be in \[0, 30\]"),
    ("train.batch_size", 0, "train.batch_size=0 must be > 0"),
    ("train.batch_size", 60, "train.batch_size=60 .* divisible by the number of devices, 8"),
    ("train.batch_size", 4096, "larger than the training set"),
    ("loss.temperature", 0.0, "loss.temperature=0.0 must be > 0"),
    ("data.image_size", 4, "data.image_size=4 is too small for model.encoder='convnet'"),
    ("evals.linear_eval.l2", -1.0, r"evals.linear_eval.l2=-1.0 must be >= 0: it is the L2 penalty"),
    ("evals.linear_eval.probe_steps", 0,
     "evals.linear_eval.probe_steps=0 must be a positive number of L-BFGS iterations"),
    ("train.checkpoint_every_steps", 0, "train.checkpoint_every_steps=0 must be > 0"),
])
def test_bad_input_fails_with_a_clear_message_before_compiling(digits_config, tmp_path,
                                                               monkeypatch, field, value,
                                                               message):
  spec.apply_overrides(digits_config, {field: value})
  monkeypatch.setattr(train, "create_train_state", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises((validate.ConfigError, sources.DataError), match=message):
    train.train_and_evaluate(digits_config, str(tmp_path))


def test_unwritable_workdir_fails_before_compiling(digits_config, tmp_path, monkeypatch):
  (tmp_path / "a_file").write_text("")  # a workdir below a file can never be created
  monkeypatch.setattr(train, "create_train_state", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(validate.ConfigError,
                     match=r"--workdir=.*a_file/run cannot be written to \(NotADirectoryError"):
    train.train_and_evaluate(digits_config, str(tmp_path / "a_file" / "run"))


def test_diverging_run_stops_at_the_first_nonfinite_step_and_keeps_the_last_good_checkpoint(
    digits_config, tmp_path):
  # SGD at lr 1e30: step 1's update is finite but enormous; step 2's forward overflows to NaN.
  digits_config.optim.update(name="sgd", learning_rate=1e30)
  digits_config.train.checkpoint_every_steps = 1
  with pytest.raises(train.NonFiniteError,
                     match=r"(?s)non-finite \(NaN or inf\) at step 2.*last good checkpoint, "
                           r"step 1 in .*checkpoints, is kept"):
    train.train_and_evaluate(digits_config, str(tmp_path), ONE_DEVICE)
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
  assert not (tmp_path / "eval.json").exists()
  manager = ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("state", "config"))
  saved = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  leaves = [np.asarray(x) for x in jax.tree.leaves(saved)]
  assert leaves and all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f")
  assert max(np.abs(x).max() for x in leaves if x.dtype.kind == "f") > 1e20  # really diverging


def test_unprepared_tfds_dataset_fails_before_compiling(digits_config, tmp_path, monkeypatch):
  digits_config.data.dataset = "mnist"
  digits_config.data.data_dir = str(tmp_path / "tfds")
  monkeypatch.setattr(train, "create_train_state", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(sources.DataError, match=r"(?s)not prepared.*tfds build mnist.*digits"):
    train.train_and_evaluate(digits_config, str(tmp_path))


def _main(workdir, *overrides):
  return [sys.executable, "-m", "cl_jax.main", "--config=configs/simclr_randbit.py",
          f"--workdir={workdir}", "--config.model.head_hidden_dim=32",
          "--config.model.embed_dim=16", "--config.evals.linear_eval.probe_steps=20",
          "--config.train.batch_size=64", "--config.train.log_every_steps=5", *overrides]


def _wait_for_checkpoint(run, step_dir, deadline_s=240):
  deadline = time.time() + deadline_s
  while not step_dir.exists() and run.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)


def test_command_line_overrides_sigkill_and_sigterm_resume(tmp_path):
  """The CLI applies overrides; a run killed with SIGKILL, or preempted with SIGTERM (saving the
  step it is at, exit 75), resumes to the same eval.json as an uninterrupted run."""
  env = subprocess_env()
  args = ["--config.train.num_steps=40", "--config.train.checkpoint_every_steps=10",
          "--config.data.random_bits=3", "--config.loss.temperature=0.3",
          *(f"--config.{name}={value}" for name, value in SMALL.items())]
  done = subprocess.run(_main(tmp_path / "a", *args), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "step 40/40" in done.stderr and "ETA" in done.stderr
  devices = hosts.cpu_device_count(SMALL["train.batch_size"], hosts.usable_cores())
  assert f"{devices} device(s) in all (cpu)" in done.stderr  # on CPU a device per core
  assert "Test accuracy at step 40 (linear eval | online probe | 200-NN)" in done.stderr
  uninterrupted = json.loads((tmp_path / "a" / "eval.json").read_text())
  assert set(uninterrupted["linear_eval"]) == {"label", "bits"}
  saved = json.loads((tmp_path / "a" / "checkpoints" / "40" / "config" / "metadata").read_text())
  assert saved["data"]["random_bits"] == 3 and saved["loss"]["temperature"] == 0.3

  run = subprocess.Popen(_main(tmp_path / "b", *args), cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_checkpoint(run, tmp_path / "b" / "checkpoints" / "20")
  run.send_signal(signal.SIGKILL)
  run.wait()
  assert not (tmp_path / "b" / "eval.json").exists(), "killed too late to test resumption"
  again = subprocess.run(_main(tmp_path / "b", *args), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from checkpoint at step" in again.stderr
  assert json.loads((tmp_path / "b" / "eval.json").read_text()) == uninterrupted

  # SIGTERM (preemption): periodic checkpoints off, so the only checkpoint is the one the signal
  # makes at the step the run was at.
  sigterm_args = [*args[:1], "--config.train.checkpoint_every_steps=1000", *args[2:]]
  run = subprocess.Popen(_main(tmp_path / "c", *sigterm_args), cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  for line in run.stderr:  # progress lines: signal once training is under way
    if "step 5/40" in line:
      break
  assert run.poll() is None, "finished before the signal"
  sent = time.time()
  run.send_signal(signal.SIGTERM)
  _, stderr = run.communicate(timeout=120)
  assert time.time() - sent < 60
  assert run.returncode == 75, stderr[-3000:]
  saved = os.listdir(tmp_path / "c" / "checkpoints")
  assert len(saved) == 1 and 0 < int(saved[0]) < 40, saved
  assert f"Preempted: saved a checkpoint at step {saved[0]}" in stderr
  assert "Traceback" not in stderr
  again = subprocess.run(_main(tmp_path / "c", *sigterm_args), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from checkpoint at step {saved[0]}" in again.stderr
  assert json.loads((tmp_path / "c" / "eval.json").read_text()) == uninterrupted


def test_command_line_bad_input_exits_with_one_paragraph(tmp_path):
  done = subprocess.run(_main(tmp_path, "--config.data.random_bits=99"), cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env=subprocess_env())
  assert done.returncode == 1
  assert done.stderr.strip().endswith(
      "error: data.random_bits=99 must be in [0, 30] (one constant input channel per bit).")
  assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["-m", "cl_jax.main"], ["-m", "cl_jax.analysis.sweep"],
                                     ["benchmarks/throughput.py"]])
def test_help_exits_zero_and_names_the_flags(command):
  """absl exits 1 after printing help; cl_jax.cli.run makes a requested help a success."""
  done = subprocess.run([sys.executable, *command, "--helpshort"], cwd=REPO, capture_output=True,
                        text=True, timeout=120,
                        env=subprocess_env())
  assert done.returncode == 0, done.stderr[-2000:]
  assert "--config" in done.stdout and "Try --helpfull" in done.stdout


def _group(config, seeds, temperatures):
  configs = []
  for seed, temperature in zip(seeds, temperatures):
    c = config.copy_and_resolve_references()
    c.seed, c.loss.temperature = seed, temperature
    configs.append(c)
  return configs


def _params(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return state["state"]["params"]


def _start_params(config):
  """The parameters a run of `config` starts from (train.create_train_state's initialisation)."""
  model = models.create_model(config.model, {"label": 10})
  size = config.data.image_size
  return train.create_train_state(model, optax.sgd(0.0), (1, size, size,
                                                          1 + config.data.random_bits),
                                  config.seed, train.create_mesh(ONE_DEVICE)).params


# The probes' accuracies over the 450 test digits, for parameters equal up to float order: a test
# image flips only where its margin lies within the features' rounding noise. Measured: none in
# the default environment, 2 images (0.0044) under SSE4_2 (tests/float_order.py); 2 % (9 images)
# leaves a 4.5× margin. The parameters are the sharp check (a run trained with another run's
# temperature moves them by 0.65 of their update, and its linear probe by 7 %).
PROBE_FLIPS = 0.02


def test_vmapped_group_equals_sequential_runs_and_resumes_exactly(digits_config, tmp_path,
                                                                  monkeypatch):
  """Three runs (seeds and temperatures differ) as one vmapped program on 8 devices give each
  run's sequential result up to float order (tests/float_order.py: parameters within
  TRAINED of their update, every probe within PROBE_FLIPS); a group killed mid-run resumes to
  exactly the uninterrupted group."""
  digits_config.evals.curve.every_steps = 3
  digits_config.evals = {k: digits_config.evals[k]  # the probes (no t-SNE maps: suite time)
                         for k in ("linear_eval", "online_probe", "knn", "curve")}
  # SGD: Adam's update ≈ lr · sign(g) would blow float-order differences of tiny gradients up to
  # a fraction of a step, hiding what this test looks for.
  digits_config.optim.update(name="sgd", learning_rate=0.05)
  configs = _group(digits_config, [0, 1, 2], [0.2, 0.2, 0.5])
  dirs = [str(tmp_path / "group" / f"run{r}") for r in range(3)]
  grouped = train.train_and_evaluate_runs(configs, dirs)
  for r, config in enumerate(configs):
    alone = train.train_and_evaluate(config, str(tmp_path / f"alone{r}"))
    float_order.assert_trained_close(_params(dirs[r], 6), _params(str(tmp_path / f"alone{r}"), 6),
                                     _start_params(config), err_msg=f"run {r}")
    assert grouped[r].keys() == alone.keys()
    for name in ("linear_eval", "online_probe", "knn"):
      for label, accuracy in alone[name].items():
        assert abs(grouped[r][name][label] - accuracy) <= PROBE_FLIPS, (r, name, label)
    assert [p["step"] for p in grouped[r]["curve"]] == [0, 3, 6]
  assert grouped[0]["linear_eval"] != grouped[1]["linear_eval"]  # really different runs

  _crash_after(3, monkeypatch)  # steps 1-3 run, checkpoint at 2, crash fetching step 4
  resumed_dirs = [str(tmp_path / "resumed" / f"run{r}") for r in range(3)]
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate_runs(configs, resumed_dirs)
  monkeypatch.undo()
  assert train.train_and_evaluate_runs(configs, resumed_dirs) == grouped


def test_group_refuses_configs_that_differ_beyond_seed_and_temperature(digits_config, tmp_path):
  other = digits_config.copy_and_resolve_references()
  other.data.random_bits = 2
  with pytest.raises(validate.ConfigError, match=r"differ only in seed, loss.temperature.*"
                     r"data.random_bits"):
    train.train_and_evaluate_runs([digits_config, other],
                                  [str(tmp_path / "a"), str(tmp_path / "b")])
  assert not (tmp_path / "a").exists()


def test_a_later_run_of_the_same_shape_reuses_the_jitted_programs(digits_config, tmp_path,
                                                                  monkeypatch):
  """A sweep's next run (another seed and temperature) calls the train step the first run jitted,
  without tracing it again, and its results equal those of the same run made first."""
  traces = []

  def counting_train_step(*args, **kwargs):
    traces.append(1)
    return original(*args, **kwargs)
  original = train.train_step
  monkeypatch.setattr(train, "train_step", counting_train_step)
  digits_config.evals = {"linear_eval": digits_config.evals.linear_eval}
  first, second = _group(digits_config, [0, 1], [0.2, 0.5])
  jit_cache.clear()
  alone = train.train_and_evaluate(second, str(tmp_path / "alone"), ONE_DEVICE)
  jit_cache.clear()
  train.train_and_evaluate(first, str(tmp_path / "first"), ONE_DEVICE)
  traced_by_first = len(traces)
  after_first = train.train_and_evaluate(second, str(tmp_path / "second"), ONE_DEVICE)
  jit_cache.clear()
  assert traced_by_first >= 1 and len(traces) == traced_by_first
  assert after_first == alone
  for a, b in zip(jax.tree.leaves(_params(str(tmp_path / "alone"), 6)),
                  jax.tree.leaves(_params(str(tmp_path / "second"), 6))):
    np.testing.assert_array_equal(a, b)


def test_programs_are_shared_only_by_configs_that_may_train_as_one_group(digits_config):
  """`training_programs` returns the same jitted functions for configs that differ only in the
  traced fields and the evaluators, and new ones for any other difference."""
  mesh, classes = train.create_mesh(ONE_DEVICE), {"label": 10}
  programs = lambda c: train.training_programs(c, mesh, classes, per_epoch=7, num_steps=6)
  other_seed, = _group(digits_config, [5], [0.7])
  other_seed.evals.linear_eval.probe_steps = 3
  wider = digits_config.copy_and_resolve_references()
  wider.model.embed_dim = 32
  assert programs(other_seed) is programs(digits_config)
  assert programs(wider) is not programs(digits_config)
  assert programs(wider).model.head.embed_dim == 32
  assert train.training_programs(digits_config, mesh, classes, per_epoch=7,
                                 num_steps=12) is not programs(digits_config)


def test_jit_cache_builds_once_per_key_and_keeps_the_latest():
  jit_cache.clear()
  built = []
  build = lambda key: lambda: built.append(key) or f"value {key}"
  assert jit_cache.get("a", build("a")) == jit_cache.get("a", build("a")) == "value a"
  for key in range(jit_cache.KEPT):
    jit_cache.get(key, build(key))
  assert jit_cache.get("a", build("a")) == "value a"
  assert built == ["a", *range(jit_cache.KEPT), "a"]  # "a", the oldest, was dropped
  jit_cache.clear()


def test_random_bits_still_suppress_the_digit_with_views_on_the_device(tmp_path):
  """Chen et al.'s random-bits finding on the embedded default with the device views (τ = 0.2,
  as docs/results.md): without bits the digit is learned, with 10 bits it is near chance while
  the bits are decodable. One vmapped group per bit count would be slower on CPU: two runs."""
  accuracies = {}
  for bits in (0, 10):
    config = simclr_randbit.get_config()
    config.data.random_bits = bits
    config.train.update(num_steps=250, batch_size=128)  # 0 bits: 0.982, 10 bits: 0.131
    config.evals = {"linear_eval": config.evals.linear_eval}
    # 2 devices, as cl_jax.main on 2 cores: 37 s here, 8 fake devices took 66 s in the suite.
    accuracies[bits] = train.train_and_evaluate(config, str(tmp_path / str(bits)),
                                                jax.devices()[:2])["linear_eval"]
  assert accuracies[0]["label"] >= 0.95, accuracies
  assert accuracies[10]["label"] <= 0.25 and accuracies[10]["bits"] >= 0.95, accuracies
