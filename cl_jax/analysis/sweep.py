"""Run a grid of experiments and report them as a table (results.md), JSON and a plot.

  python -m cl_jax.analysis.sweep --config=configs/generalized_losses.py \
      --sweep=configs/sweeps/generalized_losses.json --workdir=runs/sweep_generalized

The sweep file holds named axes; every axis value is a set of config overrides:

  {"axes": {"loss": {"ntxent": {"loss.name": "ntxent"}, "gaussian": {"loss.prior": "gaussian"}},
            "head": {"2": {"model.head_layers": 2}, "3": {"model.head_layers": 3}},
            "bits": {"0": {"data.random_bits": 0}, "5": {"data.random_bits": 5}}},
   "overrides": {"train.num_steps": 500}}

Each grid point trains in <workdir>/<axis values joined by '_'> with the ordinary training loop;
a rerun skips finished points and resumes unfinished ones. The plot shows linear-eval accuracy of
`--metric` (default: label) against the last axis, one line per combination of the others.
"""
import itertools

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cl_jax import paths, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file[:variant].",
                                          lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "JSON file with the sweep's axes.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
_METRIC = flags.DEFINE_string("metric", "label", "linear_eval key to plot.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def apply_overrides(config, overrides: dict):
  """Set dotted fields ('loss.prior': 'gaussian'); unknown fields are an error."""
  for dotted, value in overrides.items():
    *path, field = dotted.split(".")
    node = config
    for p in path:
      node = node[p]
    if field not in node:
      raise KeyError(f"Sweep override {dotted!r}: the config has no such field.")
    node[field] = value


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


def markdown_table(rows, axes, metrics) -> str:
  header = "| " + " | ".join(list(axes) + [f"{m} acc" for m in metrics]) + " |"
  lines = [header, "|" + "---|" * (len(axes) + len(metrics))]
  for r in rows:
    cells = [r["point"][a] for a in axes]
    cells += [f"{r['linear_eval'][m]:.3f}" if m in r["linear_eval"] else "–" for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows, axes, metric: str, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  *series_axes, x_axis = list(axes)
  series = {}
  for r in rows:
    key = ", ".join(f"{a}={r['point'][a]}" for a in series_axes)
    series.setdefault(key, []).append((r["point"][x_axis], r["linear_eval"].get(metric)))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for key, values in series.items():
    ax.plot([v[0] for v in values], [v[1] for v in values], marker="o", label=key or metric)
  ax.set_xlabel(x_axis)
  ax.set_ylabel(f"linear eval: {metric} (test accuracy)")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=120)


def main(argv):
  del argv
  train.quiet_library_logs()
  spec = paths.read_json(_SWEEP.value)
  workdir = paths.workdir_path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for name, labels, overrides in grid(spec):
    config = _CONFIG.value.copy_and_resolve_references()
    apply_overrides(config, overrides)
    run_dir = workdir / name
    result_path = run_dir / "eval.json"
    if result_path.exists():
      result = paths.read_json(result_path)
    else:
      logging.info("Sweep point %s: %s", name, overrides)
      result = train.train_and_evaluate(config, run_dir)
    rows.append({"name": name, "point": labels, "overrides": overrides, **result})
    jax.clear_caches()
  metrics = sorted({m for r in rows for m in r["linear_eval"]})
  table = markdown_table(rows, spec["axes"], metrics)
  paths.write_json(workdir / "results.json", rows)
  (workdir / "results.md").write_text(table + "\n")
  plot(rows, spec["axes"], _METRIC.value, workdir / "results.png")
  print(table)


if __name__ == "__main__":
  app.run(main)
