"""`linear`: the offline linear probe (docs/method.md §3) — per label, a logistic regression on the
frozen, standardised features of the un-augmented train images (L-BFGS, L2 penalty (l2/2)·‖W‖²),
reported as test accuracy; `bits`: the mean over bits of one binary probe per random bit
(0.5 = not decodable). Run every `every_steps` it gives the probe curve (learn, then unlearn).
`features`: "encoder" probes the encoder's output h (the standard linear evaluation),
"embedding" the normalised head output z/‖z‖ the loss is computed on — where class collapse
(Xue et al. 2023) is defined.

  config.evals.linear_eval = dict(type="linear", features="encoder", l2=1e-3, probe_steps=200)
"""
import dataclasses

from cl_jax import evaluate as evaluation
from cl_jax import spec

FIELDS = {
    "features": spec.Field('must be "encoder" (the encoder output h) or "embedding" (the '
                           "normalised head output z/‖z‖)", lambda v: v in ("encoder", "embedding")),
    "l2": spec.Field("must be >= 0: it is the L2 penalty (l2/2)·‖W‖² of the linear probe on "
                     "standardised features (default 1e-3)", lambda v: v >= 0),
    "probe_steps": spec.Field("must be a positive number of L-BFGS iterations for the linear "
                              "probe (default 200); with 0 the probe would report an untrained "
                              "classifier", lambda v: isinstance(v, int) and v > 0),
}


def title(cfg) -> str:
  """The heading of this evaluator's column in accuracy tables."""
  return "linear eval" if cfg.features == "encoder" else "linear eval of z"


def evaluate(context, cfg) -> dict:
  features = context.features()
  if not features[1].num_classes and "bits" not in features[1].labels:
    return evaluation.nothing_to_probe(context, "linear")
  if cfg.features == "embedding":
    features = [dataclasses.replace(f, h=f.z) for f in features]
  return evaluation.probe_all_labels(*features, l2=cfg.l2, steps=cfg.probe_steps)
