"""A sweep spread over independent processes: each shard trains its share of the grid.

SLURM array tasks, TPU hosts or local processes run the same sweep command with
`--num_shards=N --shard_index=i` (inside a SLURM array job both default to the array's
variables). The pending runs' vmapped groups — the runs that train as one program: same
`train.group_key`, at most `--parallel_runs` of them (on CPU one run each) — are dealt to the
shards whole, heaviest first to the least loaded shard (`assign`), by an estimate of their cost:
steps × batch × pixels × runs. A group is never split; a sweep point's seeds that would train one
after another anyway may go to different shards (on CPU the random-bits table is 5 group keys of
9 runs: dealt by key, 2 shards would get 27 and 18 runs). The deal depends only on the grid and
what is finished, so every shard computes the same one without talking to the others.

Shards share one directory (or bucket). Before training a run, a shard claims it
(`<run>/claim.json`: host, pid, time; created exclusively on a local filesystem, written then read
back on a bucket) and keeps the claim fresh while it trains; a run with an eval.json or a fresh
claim of another process is skipped; a claim older than the timeout (a dead shard's) is taken
over, or at once with `reclaim`.
"""
import dataclasses
import json
import os
import socket
import threading
import time
from typing import Mapping, Optional

from cl_jax import paths, spec

CLAIM = "claim.json"


def group_cost(configs: list) -> float:
  """The estimated cost of training `configs` as one group: steps × batch × pixels × runs
  (`train.num_steps`, or 1,000 steps per epoch when the run counts epochs)."""
  config = configs[0]
  steps = config.train.num_steps if config.train.num_steps > 0 else 1000 * config.train.num_epochs
  return float(steps * config.train.batch_size * config.data.image_size**2 * len(configs))


def assign(groups: list, num_shards: int) -> list:
  """The shard of each group (a list of (config, run_dir)): groups in order of decreasing cost
  (ties: by their first run's directory) each go to the least loaded shard (ties: the lowest
  index). Deterministic; groups are never split."""
  order = sorted(range(len(groups)), key=lambda g: (-group_cost([c for c, _ in groups[g]]),
                                                    str(groups[g][0][1])))
  load, shard = [0.0] * num_shards, [0] * len(groups)
  for g in order:
    shard[g] = min(range(num_shards), key=lambda s: (load[s], s))
    load[shard[g]] += group_cost([c for c, _ in groups[g]])
  return shard


def _integer(name: str, value) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise spec.ConfigError(f"{name}={value!r} is not an integer: a sweep shard is given by "
                           "--num_shards and --shard_index, or inside a SLURM array job by "
                           "SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_ID and "
                           "SLURM_ARRAY_TASK_MIN.") from None


def from_flags_or_slurm(num_shards: Optional[int], shard_index: Optional[int],
                        environ: Mapping[str, str] = os.environ) -> tuple:
  """(num_shards, shard_index): the flags when given, else a SLURM array task's
  (SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN), else (1, 0)."""
  in_array = "SLURM_ARRAY_TASK_ID" in environ
  if num_shards is None:
    num_shards = (_integer("SLURM_ARRAY_TASK_COUNT", environ.get("SLURM_ARRAY_TASK_COUNT"))
                  if in_array else 1)
  if shard_index is None:
    shard_index = (_integer("SLURM_ARRAY_TASK_ID", environ["SLURM_ARRAY_TASK_ID"]) -
                   _integer("SLURM_ARRAY_TASK_MIN", environ.get("SLURM_ARRAY_TASK_MIN", "0"))
                   if in_array else 0)
  if num_shards < 1:
    raise spec.ConfigError(f"--num_shards={num_shards} must be >= 1.")
  if not 0 <= shard_index < num_shards:
    raise spec.ConfigError(f"--shard_index={shard_index} must be in [0, {num_shards - 1}] "
                           f"(--num_shards={num_shards}): shards are numbered from 0.")
  return num_shards, shard_index


@dataclasses.dataclass
class Claims:
  """This process's claims on runs (module docstring). `timeout_s`: a claim not refreshed for
  that long belongs to a dead process and is taken over; `reclaim`: take every claim over."""
  timeout_s: float = 3600.0
  reclaim: bool = False
  owner: dict = dataclasses.field(default_factory=lambda: {"host": socket.gethostname(),
                                                           "pid": os.getpid()})

  def __post_init__(self):
    self._held, self._stop = [], threading.Event()
    self._thread = None

  def _record(self) -> str:
    return json.dumps({**self.owner, "time": time.time()})

  def _mine(self, path) -> bool:
    try:
      claim = json.loads(path.read_text())
    except (OSError, ValueError):
      return False
    return all(claim.get(k) == v for k, v in self.owner.items())

  def holder(self, run_dir) -> Optional[dict]:
    """The live claim on `run_dir` of another process, or None (none, stale, or ours)."""
    path = paths.workdir_path(run_dir) / CLAIM
    try:
      claim = json.loads(path.read_text())
    except (OSError, ValueError, FileNotFoundError):
      return None
    if all(claim.get(k) == v for k, v in self.owner.items()):
      return None
    if self.reclaim or time.time() - claim.get("time", 0) > self.timeout_s:
      return None
    return claim

  def take(self, run_dir) -> bool:
    """Claim `run_dir` unless it is finished or another live process holds it."""
    run_dir = paths.workdir_path(run_dir)
    if (run_dir / "eval.json").exists() or self.holder(run_dir) is not None:
      return False
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM
    if path.exists():  # stale (or reclaimed): replace it
      path.unlink()
    if paths.is_local(path):
      try:
        fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:  # another shard created it first
        return False
      with os.fdopen(fd, "w") as f:
        f.write(self._record())
    else:
      path.write_text(self._record())
    if not self._mine(path):  # a bucket: the last writer wins, the others read it back
      return False
    self._held.append(path)
    self._keep_fresh()
    return True

  def _keep_fresh(self):
    if self._thread is None:
      def refresh():
        while not self._stop.wait(self.timeout_s / 4):
          for path in list(self._held):
            if self._mine(path):
              path.write_text(self._record())
      self._thread = threading.Thread(target=refresh, daemon=True)
      self._thread.start()

  def release(self, run_dir):
    """Drop the claim on `run_dir` (after its eval.json is written, or on preemption)."""
    path = paths.workdir_path(run_dir) / CLAIM
    if path in self._held:
      self._held.remove(path)
      if self._mine(path):
        path.unlink()

  def close(self):
    self._stop.set()
    for path in list(self._held):
      self.release(path.parent)
