"""The benchmarks keep starting and writing their JSON (smoke tests, not timings)."""
import json
import subprocess
import sys

from tests.conftest import REPO, subprocess_env


def test_throughput_benchmark_writes_its_json(tmp_path):
  out = tmp_path / "throughput.json"
  done = subprocess.run(
      [sys.executable, "benchmarks/throughput.py", "--config=configs/simclr_randbit.py",
       "--steps=3", f"--out={out}", "--config.model.head_hidden_dim=16",
       "--config.model.embed_dim=8", "--config.train.batch_size=64",
       "--config.evals.linear_eval.probe_steps=5", "--profile=4", "--runs=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=subprocess_env())
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  for key in ("train_steps_per_s", "train_steps_per_s_with_data", "device_views_batches_per_s",
              "host_pipeline_batches_per_s", "vmapped_run_steps_per_s", "eval_s", "compile_s"):
    assert result[key] > 0, key
  assert result["global_batch"] == 64 and result["runs"] == 2 and result["views_on_device"]
  # the profile: the step's 4 most expensive XLA operations, sorted, within the total
  ops = result["step_profile"]
  assert len(ops) == 4 and all(ms > 0 and calls > 0 for _, ms, calls in ops), ops
  assert [ms for _, ms, _ in ops] == sorted((ms for _, ms, _ in ops), reverse=True)
  assert sum(ms for _, ms, _ in ops) <= result["step_profile_ms"]
  assert 0.5 * result["step_profile_ms"] < sum(result["step_profile_by_kind"].values()) <= (
      result["step_profile_ms"] + 0.05)


def test_conv_layers_benchmark_writes_its_json(tmp_path):
  out = tmp_path / "conv_layers.json"
  done = subprocess.run(
      [sys.executable, "benchmarks/conv_layers.py", "--batch=4", "--steps=1", "--rounds=1",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=subprocess_env())
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  for layer in ("conv0", "conv1", "conv2"):
    for variant in ("im2col", "native"):
      assert set(result[layer][variant]) == {"fwd", "fwd_dW", "fwd_dW_dx"}
      assert all(ms > 0 for ms in result[layer][variant].values())


def test_own_data_benchmark_writes_its_json(tmp_path):
  out = tmp_path / "own_data.json"
  done = subprocess.run(
      [sys.executable, "benchmarks/own_data.py", "--images=60", f"--out={out}"], cwd=REPO,
      capture_output=True, text=True, timeout=300, env=subprocess_env())
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["folder_images"] == 60 and result["folder_decode_s"] > 0
  assert result["encode_images_per_s"] > 0 and result["extract_features_images_per_s"] > 0
