"""Run a grid of experiments over several seeds and report it as a table, JSON and a plot.

  python -m cl_jax.analysis.sweep --config=configs/simclr_randbit.py \
      --sweep=configs/sweeps/randbit_table.json --workdir=runs/randbit_table [--seeds=3]

The sweep file holds named axes; every axis value is a set of config overrides:

  {"axes": {"tau": {"0.1": {"loss.temperature": 0.1}, "0.2": {"loss.temperature": 0.2}},
            "bits": {"0": {"data.random_bits": 0}, "5": {"data.random_bits": 5}}},
   "overrides": {"train.num_steps": 500},
   "seeds": 3}

Every grid point trains with seeds 0..S−1 (`"seeds"`, or --seeds) in
<workdir>/<axis values joined by '_'>/seed<s> with the ordinary training loop; a rerun skips
finished seeds and resumes unfinished ones. Runs that differ only in seed and loss.temperature
train together as one vmapped program (`train.train_and_evaluate_runs`), up to --parallel_runs
at a time (default: 1 on CPU, where it does not pay; up to 16 on accelerators); each keeps its own
run directory, checkpoints and eval.json, equal to its sequential run's up to float order. Reports, in <workdir>, from what the evaluators put in
eval.json:
  results.json  one row per point: `runs` (each seed's eval.json), and for every evaluator's
                entry (`linear_eval`, `online_probe`, `knn`, `metrics`, ...) the mean over seeds
                with the sample std (`linear_eval_std`, ...)
  results.md    the table, "mean ± std (n)" of the accuracies (the evaluators with a title:
                linear eval, online probe, k-NN)
  results.png   accuracy of --metric against the last axis, one line per combination of the
                others, error bars = std over seeds
  <name>s.png   per periodic evaluator (e.g. curves.png): mean curve per point with a ±std band
  embeddings.png  every point's embeddings.png (seed 0) in one figure
  sweep.json    the command, the sweep file, devices, date and wall time (for docs/results.md:
                python -m cl_jax.analysis.results_doc --add=<workdir>)
Two-axis sweeps also get the paper's layout in results.md: first axis down, second across.
The runs share decoded data, and a persistent compilation cache in <workdir>/.jax_cache, so a
program (one per shape: seeds and temperatures are traced arguments) compiles once.

Like cl_jax.main, the sweep runs on several processes (a pod slice, SLURM, launch/local_cluster.py;
`--distributed`): every process trains every run together, process 0 writes the reports. On
SIGTERM it saves the run in progress and exits 75; rerunning the command resumes it.

Spread over independent processes instead (SLURM array tasks, TPU hosts, local processes:
`cl_jax.analysis.shards`), each shard trains its share: `--num_shards=N --shard_index=i`
(defaults from a SLURM array's variables), every run claimed before it is trained, and
`--collect` writes the reports once every run has its eval.json (a shard that finds the whole
grid finished writes them itself). Each shard records what it trained and its wall time in
<workdir>/shards/shard<i>.json.
"""
import itertools
import math
import socket
import sys
import time

import jax
from absl import flags, logging
from ml_collections import config_flags

from cl_jax import cli, jit_cache, paths, plots, spec, train
from cl_jax.analysis import shards
from cl_jax.analysis.reports import (accuracy_sections, aggregate, collect_embeddings,  # noqa: F401
                                     markdown_table, pivot_table, plot, table_metrics)
from cl_jax.spec import apply_overrides

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file[:variant].",
                                          lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "JSON file with the sweep's axes.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
_METRIC = flags.DEFINE_string("metric", "label", "What results.png shows: a linear_eval key "
                              "('label') or 'online_probe/<label>'.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per grid point (default: the sweep file's "
                              "\"seeds\", else 1).")
_PARALLEL_RUNS = flags.DEFINE_integer(
    "parallel_runs", None, "Runs trained together as one vmapped program, at most (runs that "
    "differ only in seed and loss.temperature). Default: 1 on CPU, where vmapped runs are slower "
    "than sequential ones; on accelerators up to 16, fewer for large batches of large images "
    "(default_parallel_runs).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process job (as cl_jax.main "
                                 "--distributed): every process trains every run.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "Spread the sweep over this many "
                                   "independent processes (default: SLURM_ARRAY_TASK_COUNT in a "
                                   "SLURM array job, else 1).")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", None, "This process's shard, 0..num_shards−1 "
                                    "(default: SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN, else 0).")
_COLLECT = flags.DEFINE_bool("collect", False, "Train nothing: read every run's eval.json and "
                             "write the reports; exit 1 listing the runs without one.")
_CLAIM_TIMEOUT = flags.DEFINE_float("claim_timeout", 3600.0, "Seconds after which a run's claim "
                                    "that was not refreshed (its shard died) is taken over.")
_RECLAIM = flags.DEFINE_bool("reclaim", False, "Take over every claim at once (the shards that "
                             "held them are known to be dead).")
flags.mark_flags_as_required(["config", "sweep", "workdir"])
TRAINING_FLAGS = ("num_shards", "shard_index", "parallel_runs", "distributed", "reclaim",
                  "claim_timeout")


def grid(spec: dict):
  """[(name, {axis: value}, overrides)] over the product of the axes."""
  axes = spec["axes"]
  points = []
  for values in itertools.product(*(list(v.items()) for v in axes.values())):
    overrides = dict(spec.get("overrides", {}))
    for _, axis_overrides in values:
      overrides.update(axis_overrides)
    labels = dict(zip(axes, (name for name, _ in values)))
    points.append(("_".join(labels.values()), labels, overrides))
  return points


def run_configs(base_config, overrides: dict, seeds: int, point_dir) -> list:
  """[(config, run_dir)] of one grid point's seeds 0..seeds−1. Only seed 0 draws the embedding
  maps (the sweep shows seed 0's; their t-SNE is a large part of a small run)."""
  runs = []
  for seed in range(seeds):
    config = base_config.copy_and_resolve_references()
    apply_overrides(config, {**overrides, "seed": seed})
    if seed > 0 and "embeddings" in config.evals:
      with config.unlocked():
        del config.evals["embeddings"]
    runs.append((config, point_dir / f"seed{seed}"))
  return runs


def default_parallel_runs(config) -> int:
  """How many runs of one shape train as one vmapped program by default: 1 on CPU (there a
  vmapped group of 3 or 9 embedded-default runs takes 1.3–1.45× longer per run-step than
  sequential runs: benchmarks/README.md); on accelerators up to 16, fewer when
  runs × batch × pixels would exceed 2^24 (e.g. 1 for ResNet-50 at 224 px, B = 256)."""
  if jax.default_backend() == "cpu":
    return 1
  pixels = config.train.batch_size * config.data.image_size**2
  return int(max(1, min(16, 2**24 // pixels)))


def pending_groups(runs: list, parallel_runs) -> list:
  """The runs without an eval.json as the vmapped groups they train in: runs with the same
  `train.group_key` (first appearance order), in chunks of at most `parallel_runs` (None: the
  default for their config)."""
  groups = {}
  for config, run_dir in runs:
    if not (run_dir / "eval.json").exists():
      groups.setdefault(train.group_key(config), []).append((config, run_dir))
  chunks = []
  for group in groups.values():
    size = parallel_runs or default_parallel_runs(group[0][0])
    chunks += [group[first:first + size] for first in range(0, len(group), size)]
  return chunks


def train_pending(runs: list, parallel_runs, num_shards: int = 1, shard_index: int = 0,
                  claims=None) -> list:
  """Train this shard's share of the runs without an eval.json: their vmapped groups
  (`pending_groups`), dealt whole by `shards.assign`, each one program; unfinished runs resume
  from their checkpoints. With `claims`, a run is trained only once claimed (another shard may
  hold it or have finished it). Returns the run directories trained ("point/seedS")."""
  groups = pending_groups(runs, parallel_runs)
  trained, previous_key = [], None
  for group, shard in zip(groups, shards.assign(groups, num_shards)):
    if shard != shard_index:
      continue
    key = train.group_key(group[0][0])
    if previous_key is not None and key != previous_key:
      jit_cache.clear()  # another shape: the persistent cache keeps the compiled programs
    previous_key = key
    if claims is not None:
      group = [(c, d) for c, d in group if claims.take(d)]
      if not group:
        continue
    logging.info("Sweep: training %s", ", ".join(f"{d.parent.name}/{d.name}" for _, d in group))
    try:
      train.train_and_evaluate_runs([c for c, _ in group], [d for _, d in group])
    finally:
      if claims is not None:
        for _, d in group:
          claims.release(d)
    trained += [f"{d.parent.name}/{d.name}" for _, d in group]
  return trained


def missing_runs(point_runs: list, num_shards: int, parallel_runs) -> list:
  """"point/seedS (shard i of N)" of every run without an eval.json."""
  groups = pending_groups([run for runs in point_runs for run in runs], parallel_runs)
  return [f"{d.parent.name}/{d.name} (shard {shard} of {num_shards})"
          for group, shard in zip(groups, shards.assign(groups, num_shards)) for _, d in group]


_STARTED = time.time()  # this invocation's start (sweep.json, the shard reports)


def main(argv):
  del argv
  spec_file = paths.read_json(_SWEEP.value)
  seeds = _SEEDS.value or spec_file.get("seeds", 1)
  points = grid(spec_file)
  base = _CONFIG.value
  given = [f"--{name}" for name in TRAINING_FLAGS if flags.FLAGS[name].present]
  if _COLLECT.value and given:
    raise spec.ConfigError(f"--collect trains nothing, so {', '.join(given)} would be ignored: "
                           "drop them (collect reads every run's eval.json and writes the "
                           "reports).")
  num_shards, shard_index = shards.from_flags_or_slurm(_NUM_SHARDS.value, _SHARD_INDEX.value)
  if num_shards > 1 and _DISTRIBUTED.value:
    raise spec.ConfigError("--distributed makes every process train every run together; "
                           f"--num_shards={num_shards} spreads the runs over independent "
                           "processes instead. Use one of them.")
  cli.setup(None if _COLLECT.value else math.gcd(*(
      overrides.get("train.batch_size", base.train.batch_size) for _, _, overrides in points)),
            _DISTRIBUTED.value)
  workdir = paths.workdir_path(_WORKDIR.value)
  point_runs = [run_configs(base, overrides, seeds, workdir / name)
                for name, _, overrides in points]
  if _COLLECT.value:
    reports = [paths.read_json(p) for p in sorted((workdir / "shards").glob("shard*.json"))] if (
        workdir / "shards").exists() else []
    missing = missing_runs(point_runs, max([r["num_shards"] for r in reports], default=1),
                           next((r["parallel_runs"] for r in reports), None))
    if missing:
      total = sum(len(runs) for runs in point_runs)
      raise spec.ConfigError(f"{len(missing)} of {total} runs have no eval.json: "
                             f"{', '.join(missing)}. Train them (rerun those shards), then "
                             "collect again; nothing was written.")
    write_all_reports(base, points, point_runs, spec_file, seeds, workdir, reports)
    return
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_count() == 1:  # one process per cache folder: the same files are never written
    cache = workdir / ".jax_cache" / (f"shard{shard_index}" if num_shards > 1 else "")
    jax.config.update("jax_compilation_cache_dir", str(cache))  # twice (docs/design.md)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  claims = shards.Claims(_CLAIM_TIMEOUT.value, _RECLAIM.value) if num_shards > 1 else None
  try:
    trained = train_pending([run for runs in point_runs for run in runs], _PARALLEL_RUNS.value,
                            num_shards, shard_index, claims)
  finally:
    if claims is not None:
      claims.close()
  report = {"shard": shard_index, "num_shards": num_shards, "trained": trained,
            "parallel_runs": _PARALLEL_RUNS.value,
            "wall_seconds": round(time.time() - _STARTED, 1), "host": socket.gethostname()}
  if num_shards > 1 and jax.process_index() == 0:
    (workdir / "shards").mkdir(exist_ok=True)
    paths.write_json(workdir / "shards" / f"shard{shard_index}.json", report)
  if missing_runs(point_runs, num_shards, _PARALLEL_RUNS.value):  # other shards still train
    logging.info("Shard %d of %d done (%d runs); --collect writes the reports once every shard "
                 "has finished.", shard_index, num_shards, len(trained))
    return
  reports = ([paths.read_json(p) for p in sorted((workdir / "shards").glob("shard*.json"))]
             if num_shards > 1 else [report])
  write_all_reports(base, points, point_runs, spec_file, seeds, workdir, reports)


def write_all_reports(base, points, point_runs, spec_file: dict, seeds: int, workdir,
                      reports: list):
  """Every report of the finished grid (process 0 writes), and the table printed; `reports`:
  the shards' records (what each trained and its wall time)."""
  rows = [aggregate(name, labels, overrides,
                    [{"seed": config.seed, **paths.read_json(run_dir / "eval.json")}
                     for config, run_dir in runs])
          for (name, labels, overrides), runs in zip(points, point_runs)]
  sections = accuracy_sections(base)
  table = markdown_table(rows, spec_file["axes"], table_metrics(rows, sections), sections)
  if len(spec_file["axes"]) == 2:
    table += "\n\n" + pivot_table(rows, spec_file["axes"], _METRIC.value)
  if jax.process_index() == 0:
    write_reports(rows, spec_file, table, workdir)
    paths.write_json(workdir / "sweep.json", {
        "command": " ".join(["python -m cl_jax.analysis.sweep", *sys.argv[1:]]),
        "spec": spec_file, "seeds": seeds, "metric": _METRIC.value, "sections": sections,
        "shards": max([r.get("num_shards", 1) for r in reports], default=1),
        "wall_seconds_this_invocation": round(time.time() - _STARTED, 1),
        "wall_seconds_all_shards": round(sum(r["wall_seconds"] for r in reports), 1),
        "date": time.strftime("%Y-%m-%d"), "devices": f"{jax.device_count()} × "
        f"{jax.devices()[0].device_kind}", "jax": jax.__version__})
  print(table)


def write_reports(rows, spec: dict, table: str, workdir):
  """results.json, results.md, results.png, <curve>s.png and embeddings.png in `workdir`."""
  paths.write_json(workdir / "results.json", rows)
  (workdir / "results.md").write_text(table + "\n")
  plot(rows, spec["axes"], _METRIC.value, workdir / "results.png")
  curve_names = {k for r in rows for run in r["runs"] for k, v in run.items()
                 if isinstance(v, list)}
  for curve in sorted(curve_names):
    point_curves = {r["name"]: [run[curve] for run in r["runs"]] for r in rows
                    if all(curve in run for run in r["runs"])}
    if point_curves:
      plots.plot_curves(point_curves, workdir / f"{curve}s.png", title=f"linear probe: {curve}")
  collect_embeddings(rows, workdir, workdir / "embeddings.png")


if __name__ == "__main__":
  cli.run(main)
