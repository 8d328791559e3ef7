"""A picture of what was learned: 2-D maps of the test features h, coloured by each probed label.

Every run writes workdir/embeddings.png: one column per label (the dataset's labels, and for
random bits the integer formed by the first bits, b mod 2^min(k, 4)), one row per map — PCA
(always) and t-SNE (scikit-learn, when installed). When the encoder suppresses a feature, its
column shows no structure while the dominant feature's column shows clusters.
"""
from typing import Mapping

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
