"""Plot writers: pictures from arrays and result dicts, written through `paths` (local or bucket).
They import nothing of the loop or the evaluators, which call them.

- `plot_embeddings`: 2-D maps of the test features h coloured by each probed label: one column per
  label (the dataset's labels; for random bits the integer of the first bits, b mod 2^min(k, 4)),
  one row per map — PCA (always) and t-SNE (scikit-learn, when installed). When the encoder
  suppresses a feature, its column shows no structure while the dominant feature's shows clusters.
- `plot_curves`: accuracies over training, mean ± std over seeds.
- `plot_segments`: images with their K-means clusters of local features overlaid.
"""
from typing import Mapping, Sequence

import numpy as np

from cl_jax import paths

MAX_POINTS = 2000      # t-SNE is O(N²) in memory: maps use a fixed subsample beyond this
MAX_BITS_SHOWN = 4     # bits → colour: the integer of the first ≤ 4 bits (≤ 16 colours)


def pca_2d(features: np.ndarray) -> np.ndarray:
  """Projection of centred `features` [N, D] on their top two principal directions (SVD)."""
  centred = features - features.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def tsne_2d(features: np.ndarray, seed: int = 0):
  """t-SNE of standardised features (scikit-learn), or None when scikit-learn is missing."""
  try:
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  standardised = (features - features.mean(0)) / (features.std(0) + 1e-6)
  perplexity = min(30.0, (len(features) - 1) / 3)
  return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(standardised)


def colour_labels(labels: Mapping[str, np.ndarray]) -> dict:
  """{column title: integer colour per point}: each [N] label as is; [N, k] bits as the integer
  b mod 2^min(k, MAX_BITS_SHOWN) = Σ_{i<4} bit_i·2^i."""
  columns = {}
  for name, values in labels.items():
    if values.ndim == 2:
      shown = min(values.shape[1], MAX_BITS_SHOWN)
      columns[f"{name}: first {shown} as an integer"] = values[:, :shown] @ (2 ** np.arange(shown))
    else:
      columns[name] = values
  return columns


def plot_embeddings(features: np.ndarray, labels: Mapping[str, np.ndarray], path,
                    title: str = "", seed: int = 0):
  """Write the PCA (and t-SNE) maps of `features` [N, D] coloured by every label to `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if len(features) > MAX_POINTS:
    keep = np.random.default_rng(seed).choice(len(features), MAX_POINTS, replace=False)
    features, labels = features[keep], {k: v[keep] for k, v in labels.items()}
  maps = {"PCA": pca_2d(features)}
  tsne = tsne_2d(features, seed)
  if tsne is not None:
    maps["t-SNE"] = tsne
  columns = colour_labels(labels)
  fig, axes = plt.subplots(len(maps), len(columns), squeeze=False,
                           figsize=(3.6 * len(columns), 3.4 * len(maps)))
  for row, (method, xy) in enumerate(maps.items()):
    for col, (name, colour) in enumerate(columns.items()):
      ax = axes[row][col]
      cmap = "tab10" if colour.max() < 10 else "tab20"
      ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=cmap, s=6, alpha=0.8, linewidths=0)
      ax.set_title(f"{method} of h — colour: {name}", fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)


def plot_curves(curves: Mapping[str, Sequence[Sequence[dict]]], path, title: str = "linear probe"):
  """Accuracies over training (the learn-then-unlearn curves of Xue et al. 2023).
  curves: name → one curve per seed, each [{"step": s, label: accuracy, ...}, ...] → one panel
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
    ax.set_title(f"{title}: {label}")
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, path)


def plot_segments(images: np.ndarray, segments: np.ndarray, k: int, path: str):
  """Row 1: the images (their first 3 channels, or the first as grey); row 2: clusters overlaid."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(images)
  shown = images[..., :3] if images.shape[-1] >= 3 else images[..., :1].repeat(3, -1)
  fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
  for i in range(n):
    size = shown.shape[1]
    scale = size // segments.shape[1]
    seg = np.kron(segments[i], np.ones((scale, scale), int))
    axes[0, i].imshow(np.clip(shown[i], 0, 1))
    axes[1, i].imshow(np.clip(shown[i], 0, 1))
    axes[1, i].imshow(seg, cmap="tab10", vmin=0, vmax=9, alpha=0.55,
                      extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
    for ax in axes[:, i]:
      ax.axis("off")
  fig.suptitle(f"K-means on local features, K = {k}")
  fig.tight_layout()
  paths.save_figure(fig, path)
