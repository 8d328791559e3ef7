"""A sweep spread over shards: the deal of groups, SLURM's variables, claims, and two shards in
two processes against the unsharded sweep."""
import json
import os
import subprocess
import sys
import time

import pytest

from cl_jax import spec, train
from cl_jax.analysis import shards, sweep
from configs import simclr_randbit
from tests.conftest import REPO, SMALL, subprocess_env


def _runs(tmp_path, points):
  """[(config, run_dir)] of grid points {name: overrides} × seeds 0, 1."""
  runs = []
  for name, overrides in points.items():
    runs += sweep.run_configs(simclr_randbit.get_config(), overrides, 2, tmp_path / name)
  return runs


def test_groups_are_dealt_whole_heaviest_first_and_deterministically(tmp_path):
  points = {f"b{b}_s{s}_t{t}": {"data.random_bits": b, "train.num_steps": s, "loss.temperature": t}
            for b in (0, 5) for s, t in ((100, 0.1), (400, 0.2), (100, 0.5))}
  runs = _runs(tmp_path, points)
  groups = {}
  for config, run_dir in runs:
    groups.setdefault(train.group_key(config), []).append((config, run_dir))
  groups = list(groups.values())
  # τ and seed vary within a group: (bits, 100 steps) holds τ 0.1 and 0.5 × 2 seeds
  assert [len(g) for g in groups] == [4, 2, 4, 2]
  costs = [shards.group_cost([c for c, _ in g]) for g in groups]
  assert costs[1] == costs[3] == 2 * costs[0] == 2 * costs[2]  # 400 steps × 2 runs = 2× 100 × 4
  dealt = shards.assign(groups, 3)
  assert dealt == [2, 0, 2, 1]  # the two heavy groups first, then both light ones to shard 2
  assert [sum(c for c, s in zip(costs, dealt) if s == k) for k in range(3)] == [costs[1]] * 3
  assert shards.assign(list(reversed(groups)), 3) == dealt[::-1]  # by cost and name, not order
  assert shards.assign(groups, 1) == [0] * 4


def test_runs_that_train_one_by_one_are_dealt_one_by_one(tmp_path):
  """With --parallel_runs=1 (the CPU default) each run is its own program, so the 9 runs of a
  group key balance over 2 shards; with 3 they go in groups of 3."""
  runs = sweep.run_configs(simclr_randbit.get_config(), {}, 9, tmp_path / "p")
  one_by_one = sweep.pending_groups(runs, 1)
  assert [len(g) for g in one_by_one] == [1] * 9
  assert sorted(shards.assign(one_by_one, 2)) == [0] * 5 + [1] * 4
  threes = sweep.pending_groups(runs, 3)
  assert [[d.name for _, d in g] for g in threes] == [[f"seed{s}" for s in range(i, i + 3)]
                                                     for i in (0, 3, 6)]
  (tmp_path / "p" / "seed4").mkdir(parents=True)
  (tmp_path / "p" / "seed4" / "eval.json").write_text("{}")
  assert [len(g) for g in sweep.pending_groups(runs, 3)] == [3, 3, 2]  # finished runs drop out


@pytest.mark.parametrize("flags,env,expected", [
    ((None, None), {}, (1, 0)),
    ((4, 2), {}, (4, 2)),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
                    "SLURM_ARRAY_TASK_COUNT": "3"}, (3, 2)),
    ((3, 1), {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
              "SLURM_ARRAY_TASK_COUNT": "3"}, (3, 1)),
])
def test_slurm_array_variables_give_the_shard_the_flags_would(flags, env, expected):
  assert shards.from_flags_or_slurm(*flags, environ=env) == expected


@pytest.mark.parametrize("flags,env,message", [
    ((2, 2), {}, r"--shard_index=2 must be in \[0, 1\]"),
    ((2, -1), {}, r"--shard_index=-1 must be in \[0, 1\]"),
    ((0, None), {}, r"--num_shards=0 must be >= 1"),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"},
     r"SLURM_ARRAY_TASK_ID='x' is not an integer"),
])
def test_bad_shards_are_refused(flags, env, message):
  with pytest.raises(spec.ConfigError, match=message):
    shards.from_flags_or_slurm(*flags, environ=env)


def test_a_live_claim_is_respected_and_a_stale_one_taken_over(tmp_path):
  run = tmp_path / "point" / "seed0"
  first = shards.Claims(timeout_s=60, owner={"host": "a", "pid": 1})
  second = shards.Claims(timeout_s=60, owner={"host": "b", "pid": 2})
  assert first.take(run)
  assert not second.take(run)  # live: held by a
  assert second.holder(run)["host"] == "a"
  claim = json.loads((run / shards.CLAIM).read_text())
  (run / shards.CLAIM).write_text(json.dumps({**claim, "time": time.time() - 120}))  # a died
  assert second.take(run) and json.loads((run / shards.CLAIM).read_text())["host"] == "b"
  assert shards.Claims(timeout_s=60, reclaim=True, owner={"host": "c", "pid": 3}).take(run)
  (run / "eval.json").write_text("{}")
  assert not shards.Claims(reclaim=True).take(run)  # finished runs are never claimed
  first.close()
  second.close()


SWEEP_OVERRIDES = {**SMALL, "train.num_steps": 4, "train.log_every_steps": 2,
                   "train.checkpoint_every_steps": 1000, "evals.linear_eval.probe_steps": 5,
                   **{f"evals.{name}.at_end": False for name in ("knn", "metrics", "embeddings")}}


def _sweep_command(sweep_file, workdir, *flags):
  return [sys.executable, "-m", "cl_jax.analysis.sweep", "--config=configs/simclr_randbit.py",
          f"--sweep={sweep_file}", f"--workdir={workdir}", *flags]


def test_two_shards_cover_the_grid_once_and_equal_the_unsharded_sweep(tmp_path):
  """Two shard processes on one device each, started together, then --collect: every run
  trained once, by the shard its group was dealt to, and every eval.json equals the unsharded
  sweep's on one device."""
  sweep_file = tmp_path / "sweep.json"
  sweep_file.write_text(json.dumps({"axes": {"bits": {"0": {"data.random_bits": 0},
                                                      "3": {"data.random_bits": 3}}},
                                    "overrides": SWEEP_OVERRIDES, "seeds": 1}))
  env = {**subprocess_env(), "JAX_NUM_CPU_DEVICES": "1"}
  unsharded = subprocess.run(_sweep_command(sweep_file, tmp_path / "one"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
  assert unsharded.returncode == 0, unsharded.stderr[-3000:]
  jobs = [subprocess.Popen(_sweep_command(sweep_file, tmp_path / "sharded", "--num_shards=2",
                                          f"--shard_index={i}"),
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True) for i in range(2)]
  for job in jobs:
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
  collect = subprocess.run(_sweep_command(sweep_file, tmp_path / "sharded", "--collect"),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert collect.returncode == 0, collect.stderr[-3000:]
  trained_by = {}
  for i in range(2):
    report = json.loads((tmp_path / "sharded" / "shards" / f"shard{i}.json").read_text())
    for run in report["trained"]:
      trained_by.setdefault(run, []).append(i)
  assert trained_by == {"0/seed0": [0], "3/seed0": [1]}  # equal costs: in name order
  for point in ("0", "3"):
    a = json.loads((tmp_path / "one" / point / "seed0" / "eval.json").read_text())
    b = json.loads((tmp_path / "sharded" / point / "seed0" / "eval.json").read_text())
    assert a == b
    assert not (tmp_path / "sharded" / point / "seed0" / shards.CLAIM).exists()
  rows = json.loads((tmp_path / "sharded" / "results.json").read_text())
  assert [r["name"] for r in rows] == ["0", "3"]
  summary = json.loads((tmp_path / "sharded" / "sweep.json").read_text())
  assert summary["shards"] == 2 and summary["wall_seconds_all_shards"] > 0


def test_collect_before_the_end_exits_1_naming_the_missing_runs_and_writes_nothing(tmp_path):
  sweep_file = tmp_path / "sweep.json"
  sweep_file.write_text(json.dumps({"axes": {"bits": {"0": {"data.random_bits": 0},
                                                      "3": {"data.random_bits": 3}}},
                                    "overrides": SWEEP_OVERRIDES, "seeds": 1}))
  (tmp_path / "w" / "0" / "seed0").mkdir(parents=True)
  (tmp_path / "w" / "0" / "seed0" / "eval.json").write_text(json.dumps({"step": 4}))
  done = subprocess.run(_sweep_command(sweep_file, tmp_path / "w", "--collect",
                                       "--num_shards=2"), cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  assert "--collect trains nothing" in done.stderr  # a training flag with --collect is refused
  done = subprocess.run(_sweep_command(sweep_file, tmp_path / "w", "--collect"), cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert "1 of 2 runs have no eval.json: 3/seed0 (shard 0 of 1)" in done.stderr
  assert sorted(os.listdir(tmp_path / "w")) == ["0"]
