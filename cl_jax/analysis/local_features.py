"""Local features (Chen, Luo, Li 2021): K-means on the ℓ2-normalised encoder feature map BEFORE
global pooling, for several K; one PNG per K shows images with their per-location clusters.

Training calls `save_kmeans_pngs` at the end when `eval.kmeans_clusters` is set, writing
<workdir>/local_features_k<K>.png.
"""
from typing import Sequence

import jax
import numpy as np

from cl_jax import paths
from cl_jax.data import pipeline


def feature_maps(model, variables, images) -> np.ndarray:
  """[N, h, w, c] encoder feature map (BatchNorm in inference mode) of `images`."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])[1])
  return np.asarray(apply(variables, images)["intermediates"]["encoder"]["feature_map"][0])


def kmeans_segments(maps: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
  """[N, h, w] cluster index of every location: K-means over all locations of all images of the
  ℓ2-normalised feature vectors."""
  from sklearn import cluster  # pylint: disable=g-import-not-at-top
  n, h, w, c = maps.shape
  x = maps.reshape(-1, c)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  labels = cluster.KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
  return labels.reshape(n, h, w)


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


def save_kmeans_pngs(model, variables, split, config, workdir, ks: Sequence[int],
                     num_images: int = 8, num_fit: int = 256) -> list:
  """Cluster the feature maps of the first `num_fit` evaluation images (as composed for
  evaluation, bit planes included) and plot the first `num_images`; one PNG per K.
  Every process computes the maps (a jitted program over the mesh); process 0 writes."""
  ds, _ = pipeline.eval_dataset(split, config.data, seed=config.seed, split_name="test",
                                batch_size=min(num_fit, len(split)))
  images = next(ds.as_numpy_iterator())["image"]
  maps = feature_maps(model, variables, images)
  written = []
  if jax.process_index() == 0:
    for k in ks:
      path = workdir / f"local_features_k{k}.png"
      plot_segments(images[:num_images], kmeans_segments(maps, k, config.seed)[:num_images], k,
                    path)
      written.append(path)
  return written
