"""`embeddings`: writes <workdir>/embeddings.png, PCA and t-SNE maps of (a fixed subsample of) the
test features h coloured by every probed label. Returns nothing for eval.json.

  config.evals.embeddings = dict(type="embeddings")
"""
import jax

from cl_jax import evaluate as evaluation
from cl_jax import plots

FIELDS = {}


def evaluate(context, cfg) -> dict:
  del cfg
  sample = evaluation.host_sample(context.features()[1], plots.MAX_POINTS,
                                  seed=context.config.seed)
  if jax.process_index() == 0:
    plots.plot_embeddings(*sample, context.workdir / "embeddings.png", seed=context.config.seed,
                          title=f"{context.workdir.name}: test features h at step {context.step}")
  return {}
