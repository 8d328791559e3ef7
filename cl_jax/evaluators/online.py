"""`online`: test accuracy of the online linear probes trained along with the encoder on
stop_gradient(h) of the augmented training views (the randbits colab's metric).

  config.evals.online_probe = dict(type="online")
"""
from cl_jax import evaluate as evaluation

FIELDS = {}


def title(cfg) -> str:
  """The heading of this evaluator's column in accuracy tables."""
  del cfg
  return "online probe"


def evaluate(context, cfg) -> dict:
  del cfg
  test = context.features()[1]
  if not set(test.online) & set(test.labels):
    return evaluation.nothing_to_probe(context, "online")
  return evaluation.online_probe_accuracy(test)
