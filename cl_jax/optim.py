"""Optimizer and learning-rate schedule from the config (docs/method.md §3), built from optax parts."""
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cl_jax import spec

SCHEDULES = ("cosine", "linear", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")

# The fields of config.optim: those every optimizer reads, and per optimizer.
FIELDS = {
    "learning_rate": spec.positive(),
    "lr_scaling": spec.one_of(*LR_SCALINGS),
    "schedule": spec.one_of(*SCHEDULES),
    "warmup_epochs": spec.at_least(0),
    "weight_decay": spec.at_least(0),
}
_MOMENTUM = {"momentum": spec.in_range(0, 1, closed_high=False)}
OPTIMIZER_FIELDS = {"adam": _MOMENTUM, "sgd": _MOMENTUM, "lars": _MOMENTUM}


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, batch_size: int,
                           num_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up for `warmup_epochs`, then cosine / linear decay to 0 or constant.

  Peak LR = learning_rate × {1, B/256, √B} for lr_scaling {none, linear, sqrt} (SimCLR).
  """
  scale = {"none": 1.0, "linear": batch_size / 256, "sqrt": math.sqrt(batch_size)}
  peak = optim_config.learning_rate * scale[optim_config.lr_scaling]
  warmup = min(int(round(optim_config.warmup_epochs * steps_per_epoch)), num_steps)
  decay_steps = max(num_steps - warmup, 1)
  after_warmup = {
      "cosine": optax.cosine_decay_schedule(peak, decay_steps),
      "linear": optax.linear_schedule(peak, 0.0, decay_steps),
      "constant": optax.constant_schedule(peak),
  }[optim_config.schedule]
  if warmup == 0:
    return after_warmup
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after_warmup], [warmup])


def decay_mask(params):
  """True for the weights that get weight decay and the LARS trust ratio: conv/dense kernels of
  the encoder and head. False for BatchNorm scales/biases, biases and the online linear probes."""
  flat = flax.traverse_util.flatten_dict(params)
  mask = {path: path[-1] == "kernel" and not any(p.startswith("probe_") for p in path)
          for path in flat}
  return flax.traverse_util.unflatten_dict(mask)


def kernel_l2_penalty(params) -> jax.Array:
  """Σ‖W‖² over the kernels `decay_mask` selects (encoder and head conv/dense kernels): the
  Keras `kernel_regularizer=l2(c)` term is c times this, added to the loss."""
  return sum(jnp.sum(w ** 2) for w, decayed in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(decay_mask(params)))
             if decayed)


def create_optimizer(optim_config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """adam (adamw when weight_decay > 0; `momentum` is its β1, the decay of the first-moment
  average), sgd with momentum, or LARS (trust coefficient 1e-3)."""
  wd = optim_config.weight_decay
  if optim_config.name == "adam":
    if wd > 0:
      return optax.adamw(schedule, b1=optim_config.momentum, weight_decay=wd, mask=decay_mask)
    return optax.adam(schedule, b1=optim_config.momentum)
  if optim_config.name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                       optax.sgd(schedule, momentum=optim_config.momentum))
  return optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                    trust_coefficient=1e-3, trust_ratio_mask=decay_mask,
                    momentum=optim_config.momentum)
