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
finished seeds and resumes unfinished ones. Reports, in <workdir>, from what the evaluators put in
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
"""
import itertools
import math
import sys
import time

import jax
from absl import flags, logging
from ml_collections import config_flags

from cl_jax import cli, paths, plots, train
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
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process job (as cl_jax.main "
                                 "--distributed): every process trains every run.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


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


def run_point(base_config, overrides: dict, seeds: int, point_dir) -> list[dict]:
  """Train (or read back) seeds 0..seeds−1 of one grid point → their eval.json dicts."""
  runs = []
  for seed in range(seeds):
    run_dir = point_dir / f"seed{seed}"
    result_path = run_dir / "eval.json"
    if result_path.exists():
      result = paths.read_json(result_path)
    else:
      config = base_config.copy_and_resolve_references()
      apply_overrides(config, {**overrides, "seed": seed})
      logging.info("Sweep point %s, seed %d: %s", point_dir.name, seed, overrides)
      result = train.train_and_evaluate(config, run_dir)
    runs.append({"seed": seed, **result})
  return runs


def main(argv):
  del argv
  spec = paths.read_json(_SWEEP.value)
  seeds = _SEEDS.value or spec.get("seeds", 1)
  points = grid(spec)
  base = _CONFIG.value
  cli.setup(math.gcd(*(overrides.get("train.batch_size", base.train.batch_size)
                       for _, _, overrides in points)), _DISTRIBUTED.value)
  workdir = paths.workdir_path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(workdir / ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  started = time.time()
  rows = []
  for name, labels, overrides in points:
    runs = run_point(base, overrides, seeds, workdir / name)
    rows.append(aggregate(name, labels, overrides, runs))
    jax.clear_caches()  # the persistent cache keeps the compiled programs
  sections = accuracy_sections(base)
  table = markdown_table(rows, spec["axes"], table_metrics(rows, sections), sections)
  if len(spec["axes"]) == 2:
    table += "\n\n" + pivot_table(rows, spec["axes"], _METRIC.value)
  if jax.process_index() == 0:
    write_reports(rows, spec, table, workdir)
    paths.write_json(workdir / "sweep.json", {
        "command": " ".join(["python -m cl_jax.analysis.sweep", *sys.argv[1:]]),
        "spec": spec, "seeds": seeds, "metric": _METRIC.value, "sections": sections,
        "wall_seconds_this_invocation": round(time.time() - started, 1),
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
      plots.plot_curves(point_curves, workdir / f"{curve}s.png")
  collect_embeddings(rows, workdir, workdir / "embeddings.png")


if __name__ == "__main__":
  cli.run(main)
