"""`metrics`: Wang & Isola alignment and uniformity and the effective rank (docs/method.md §1.8)
of the head outputs z (BatchNorm in inference mode) for two augmented views of up to
eval.batch_size test images — the same views in every run with the same seed.

  config.evals.metrics = dict(type="metrics")
"""
from cl_jax import evaluate as evaluation

FIELDS = {}


def evaluate(context, cfg) -> dict:
  del cfg
  return evaluation.test_representation_metrics(context.model, context.variables,
                                                context.test_split, context.config, context.mesh)
