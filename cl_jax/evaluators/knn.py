"""`knn`: weighted k-NN accuracy on the frozen features h (InstDisc): cosine similarity, the k
nearest train rows vote exp(s / temperature).

  config.evals.knn = dict(type="knn", k=200, temperature=0.07)
"""
from cl_jax import evaluate as evaluation
from cl_jax import spec

FIELDS = {"k": spec.positive_int("neighbours for the k-NN accuracy (default 200)"),
          "temperature": spec.positive()}


def title(cfg) -> str:
  return f"{cfg.k}-NN"


def evaluate(context, cfg) -> dict:
  train, test = context.features()
  if not test.num_classes:
    return evaluation.nothing_to_probe(context, "knn")
  return evaluation.knn_accuracies(train, test, k=cfg.k, temperature=cfg.temperature)
