"""Plot linear-probe accuracy over training (the learn-then-unlearn curves of Xue et al. 2023).

  python -m cl_jax.analysis.plot_curves RUN_DIR [RUN_DIR ...] --out=curves.png

Reads RUN_DIR/curve.json (written when eval.every_steps > 0); one panel per probed label, one line
per run. Training writes RUN_DIR/curve.png itself; a sweep plots each grid point's mean curve
over its seeds with a ±std band.
"""
from typing import Mapping, Sequence

import numpy as np

from cl_jax import paths


def plot_curves(curves: Mapping[str, Sequence[Sequence[dict]]], path):
  """curves: name → one curve per seed, each [{"step": s, label: accuracy, ...}, ...] → one panel
  per label, one line per name: the mean over seeds, shaded ± their std (ddof=1) when > 1."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = sorted({k for runs in curves.values() for points in runs for p in points for k in p}
                  - {"step"})
  fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False)
  for ax, label in zip(axes[0], labels):
    for name, runs in curves.items():
      steps = [p["step"] for p in runs[0]]
      values = np.array([[p.get(label, np.nan) for p in points] for points in runs], float)
      mean = values.mean(0)
      line, = ax.plot(steps, mean, marker=".", label=name if len(runs) == 1 else
                      f"{name} (n={len(runs)})")
      if len(runs) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_title(f"linear probe: {label}")
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, path)
