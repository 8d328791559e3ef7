"""A sweep's reports from its runs' eval.json dicts: rows of mean ± std over seeds, markdown
tables (also in the papers' two-axis layout), and plots. Used by `sweep` and `results_doc`."""
from typing import Sequence

import numpy as np

from cl_jax import evaluators, paths


def _mean_std(dicts: Sequence[dict]):
  """Per key present in every dict: (mean, sample std with ddof=1; 0 for a single value)."""
  keys = [k for k in dicts[0] if all(k in d for d in dicts)]
  values = {k: np.array([d[k] for d in dicts], np.float64) for k in keys}
  return ({k: float(v.mean()) for k, v in values.items()},
          {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()})


def aggregate(name: str, labels: dict, overrides: dict, runs: Sequence[dict]) -> dict:
  """One results row for a grid point from its seeds' eval.json dicts (each with `seed`): for
  every evaluator's entry of numbers (a dict), the mean over seeds and (as `<entry>_std`) the
  sample std."""
  row = {"name": name, "point": labels, "overrides": overrides, "n": len(runs)}
  entries = [k for k, v in runs[0].items() if isinstance(v, dict)]
  for entry in entries:
    row[entry], row[f"{entry}_std"] = _mean_std([r.get(entry, {}) for r in runs])
  return {**row, "runs": list(runs)}


def accuracy_sections(config) -> dict:
  """{eval.json entry: its table heading} for the evaluators of `config` that report per-label
  test accuracies (those with a title in the registry), in the config's order."""
  sections = {}
  for name in evaluators.in_table_order(config.evals):
    cfg = config.evals[name]
    title = evaluators.EVALUATORS[cfg.type].title
    if title and not cfg.get("every_steps", 0):
      sections[name] = title(cfg)
  return sections


def _lookup(row, metric: str):
  """(mean, std) of `metric`: a linear_eval key ('label') or 'section/key'
  ('online_probe/label'); (None, None) when the row lacks it."""
  section, key = metric.split("/") if "/" in metric else ("linear_eval", metric)
  return row.get(section, {}).get(key), row.get(f"{section}_std", {}).get(key)


def table_metrics(rows, sections: dict) -> list[str]:
  """The table's columns: the keys of the first accuracy section ('label', as `_lookup` reads
  them), then those of the others as 'section/key'."""
  first, *others = [s for s in sections if any(s in r for r in rows)]
  return sorted({m for r in rows for m in r[first]}) + [
      f"{section}/{m}" for section in others for m in sorted({m for r in rows
                                                             for m in r.get(section, {})})]


def markdown_table(rows, axes, metrics, sections=None) -> str:
  """Axis values, then "mean ± std (n)" of every metric (see `_lookup`); headings from
  `sections` ({entry: title}, see `accuracy_sections`)."""
  def title(metric):
    section, key = metric.split("/") if "/" in metric else (None, metric)
    return f"{(sections or {}).get(section, section)} {key} acc" if section else f"{key} acc"
  titles = [title(m) for m in metrics]
  lines = ["| " + " | ".join(list(axes) + titles) + " |",
           "|" + "---|" * (len(axes) + len(metrics))]
  for r in rows:
    cells = [r["point"][a] for a in axes]
    for m in metrics:
      mean, std = _lookup(r, m)
      cells.append("–" if mean is None else f"{mean:.3f} ± {std:.3f} ({r['n']})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def pivot_table(rows, axes, metric: str) -> str:
  """For a two-axis sweep, the paper's layout: first axis down, second across, cells "mean ± std"
  of `metric` (e.g. docs/method.md §2.1's τ × bits table)."""
  down, across = list(axes)
  columns = list(axes[across])
  lines = [f"{metric} (mean ± std over seeds)", "",
           f"| {down} \\ {across} | " + " | ".join(columns) + " |",
           "|---|" + "---|" * len(columns)]
  cells = {(r["point"][down], r["point"][across]): _lookup(r, metric) for r in rows}
  for value in axes[down]:
    entries = [cells.get((value, c), (None, None)) for c in columns]
    lines.append(f"| {value} | " + " | ".join(
        "–" if m is None else f"{m:.3f} ± {sd:.3f}" for m, sd in entries) + " |")
  return "\n".join(lines)


def collect_embeddings(rows, workdir, path):
  """One figure of every grid point's embeddings.png (seed 0), titled by the point."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  found = [(r["name"], workdir / r["name"] / "seed0" / "embeddings.png") for r in rows]
  found = [(name, png) for name, png in found if png.exists()]
  if not found:
    return
  cols = min(len(found), 3)
  rows_n = -(-len(found) // cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 5.5 * rows_n), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (name, png) in zip(axes.flat, found):
    with png.open("rb") as f:
      ax.imshow(mpimg.imread(f, format="png"))
    ax.set_title(name, fontsize=10)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)


def plot(rows, axes, metric: str, path):
  """Mean accuracy of `metric` (see `_lookup`) against the last axis, error bars = std over
  seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  *series_axes, x_axis = list(axes)
  series = {}
  for r in rows:
    key = ", ".join(f"{a}={r['point'][a]}" for a in series_axes)
    series.setdefault(key, []).append((r["point"][x_axis], *_lookup(r, metric)))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for key, values in series.items():
    ax.errorbar([v[0] for v in values], [v[1] for v in values], yerr=[v[2] for v in values],
                marker="o", capsize=3, label=key or metric)
  n = sorted({r["n"] for r in rows})
  ax.set_xlabel(x_axis)
  ax.set_ylabel(f"{metric if '/' in metric else 'linear_eval/' + metric} (test accuracy)")
  ax.set_title(f"mean ± std over {'/'.join(map(str, n))} seed(s)", fontsize=9)
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=120)
