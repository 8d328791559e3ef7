"""Plot linear-probe accuracy over training (the learn-then-unlearn curves of Xue et al. 2023).

  python -m cl_jax.analysis.plot_curves RUN_DIR [RUN_DIR ...] --out=curves.png

Reads RUN_DIR/curve.json (written when eval.every_steps > 0); one panel per probed label, one line
per run. Training writes RUN_DIR/curve.png itself.
"""
from typing import Mapping, Sequence

from cl_jax import paths


def plot_curves(curves: Mapping[str, Sequence[dict]], path):
  """curves: run name → [{"step": s, label: accuracy, ...}, ...] → one panel per label."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = sorted({k for points in curves.values() for p in points for k in p} - {"step"})
  fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False)
  for ax, label in zip(axes[0], labels):
    for name, points in curves.items():
      ax.plot([p["step"] for p in points], [p.get(label) for p in points], marker=".",
              label=name)
    ax.set_title(f"linear probe: {label}")
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, path)
