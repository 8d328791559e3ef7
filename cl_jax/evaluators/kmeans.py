"""`kmeans`: local features (Chen, Luo, Li 2021) — K-means on the ℓ2-normalised encoder feature
map BEFORE global pooling, for each K in `clusters`; writes <workdir>/local_features_k<K>.png
(images with their per-location clusters). Returns nothing for eval.json.

  config.evals.kmeans = dict(type="kmeans", clusters=(2, 4, 8), num_fit=256, num_images=8)
"""
import functools

import jax
import numpy as np
from jax.experimental import multihost_utils

from cl_jax import plots, spec
from cl_jax.data import pipeline

FIELDS = {"clusters": spec.Field("must be a non-empty tuple of cluster counts >= 2",
                                 lambda v: len(v) > 0 and all(k >= 2 for k in v)),
          "num_fit": spec.positive(), "num_images": spec.positive()}


@functools.partial(jax.jit, static_argnames="model")
def _intermediates(variables, images, *, model):
  return model.apply(variables, images, train=False, mutable=["intermediates"])[1]


def feature_maps(model, variables, images) -> np.ndarray:
  """[N, h, w, c] encoder feature map (BatchNorm in inference mode) of `images`."""
  maps = _intermediates(variables, images, model=model)
  return np.asarray(maps["intermediates"]["encoder"]["feature_map"][0])


def kmeans_segments(maps: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
  """[N, h, w] cluster index of every location: K-means over all locations of all images of the
  ℓ2-normalised feature vectors."""
  from sklearn import cluster  # pylint: disable=g-import-not-at-top
  n, h, w, c = maps.shape
  x = maps.reshape(-1, c)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  labels = cluster.KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
  return labels.reshape(n, h, w)


def evaluate(context, cfg) -> dict:
  """Cluster the feature maps of the first `num_fit` test images (as composed for evaluation,
  bit planes included) and plot the first `num_images` (without their bit planes); one PNG per K.
  Every process computes the maps (a jitted program); process 0 writes."""
  config, split, mesh = context.config, context.test_split, context.mesh
  batch = next(iter(pipeline.EvalBatches(
      split, config.data, seeds=[config.seed], split_name="test", mesh=mesh,
      batch_size=spec.round_up(min(cfg.num_fit, len(split)), mesh.devices.size))))
  images = np.asarray(multihost_utils.process_allgather(batch["image"][0], tiled=True))
  images = images[:min(cfg.num_fit, len(split))]
  shown = images[:cfg.num_images, ..., :images.shape[-1] - config.data.random_bits]
  maps = feature_maps(context.model, context.variables, images)
  if jax.process_index() == 0:
    for k in cfg.clusters:
      plots.plot_segments(shown,
                          kmeans_segments(maps, k, config.seed)[:cfg.num_images], k,
                          context.workdir / f"local_features_k{k}.png")
  return {}
